#!/bin/bash
# Start/stop the peer XMPP servers for bench/run.py. A copy of
# /work/shared/bench/servers/server.sh (same behaviour; ejabberd ports differ, see below) extended with
# two variants that store SCRAM/PBKDF2 keys instead of plain passwords, so that
# the login scenario can be compared with xmppjson at EQUAL PBKDF2 iterations:
#
#   prosody          the shared baseline config (internal_plain, no PBKDF2)
#   ejabberd         the shared baseline config (auth_password_format: plain)
#   prosody-hashed   internal_hashed, default_iteration_count = $BENCH_ITERATIONS (default 4096)
#   ejabberd-scram   auth_password_format: scram (ejabberd 23.01 uses 4096 iterations, fixed)
#   prosody-mam      the baseline plus mod_mam archiving every message (default_archive_policy = true)
#   ejabberd-mam     the baseline plus mod_mam (default: always), Mnesia
#                    (xmppjson archives every chat message, XEP-0313, by default: these two
#                    compare chat at equal features)
#
#   server.sh start|stop|pid|register|wipe NAME [args]
#
# The baseline configs are read from $SHARED_SERVERS (default /work/shared/bench/servers,
# which may be read-only: nothing is written there). Variants use their own data dir
# under /tmp, so their accounts never mix with the plain ones. Only one variant of a
# server can run at a time (same ports). Loopback only.
#
# Two deliberate differences from the shared script, both about ejabberd's ports:
#  * ejabberd listens on 29222 (c2s) / 29280 (http) with distribution port 29300 instead
#    of 35222 / 35280 / 35300. Those are inside Linux's ephemeral range (32768-60999): on a
#    busy machine (tens of thousands of TIME_WAIT sockets from test suites and load runs)
#    some socket often holds 35222 as its local port, and ejabberd, which binds without
#    SO_REUSEADDR, then fails with eaddrinuse. The config is otherwise the shared one.
#  * stop sends SIGTERM to beam (a graceful init:stop) instead of `ejabberdctl stop`: the
#    ctl connection leaves a TIME_WAIT on the distribution port and the next start within
#    60 s failed with "register/listen error: eaddrinuse".
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
SHARED_SERVERS=${SHARED_SERVERS:-/work/shared/bench/servers}
DOMAIN=bench.local
ITER=${BENCH_ITERATIONS:-4096}

cmd=${1:-}; name=${2:-}
case "$name" in
  prosody)        BASE=/tmp/bench-prosody;         PORT=25222; KIND=prosody ;;
  prosody-hashed) BASE=/tmp/bench-prosody-hashed;  PORT=25222; KIND=prosody ;;
  ejabberd)       BASE=/tmp/bench-ejabberd;        PORT=29222; KIND=ejabberd ;;
  ejabberd-scram) BASE=/tmp/bench-ejabberd-scram;  PORT=29222; KIND=ejabberd ;;
  prosody-mam)    BASE=/tmp/bench-prosody-mam;     PORT=25222; KIND=prosody ;;
  ejabberd-mam)   BASE=/tmp/bench-ejabberd-mam;    PORT=29222; KIND=ejabberd ;;
  *) echo "usage: $0 start|stop|pid|register|wipe prosody|prosody-hashed|prosody-mam|ejabberd|ejabberd-scram|ejabberd-mam [args]" >&2; exit 2 ;;
esac
PIDFILE=$BASE/server.pid        # the real server process (lua5.4 / beam.smp)
LAUNCHPID=$BASE/launcher.pid    # what we spawned (same as server for prosody)

# The config actually used. Variants are generated from the shared file with the
# paths and the auth lines rewritten, into $BASE (never into the shared folder).
config_for() {
  case "$name" in
    prosody)  echo "$SHARED_SERVERS/prosody.cfg.lua" ;;
    ejabberd)
      sed -e "s#port: 35222#port: 29222#" -e "s#port: 35280#port: 29280#" \
          "$SHARED_SERVERS/ejabberd.yml" >"$BASE/ejabberd.yml"
      echo "$BASE/ejabberd.yml" ;;
    prosody-hashed)
      sed -e "s#/tmp/bench-prosody/#$BASE/#g" \
          -e "s#^authentication = \"internal_plain\"#authentication = \"internal_hashed\"\ndefault_iteration_count = $ITER#" \
          "$SHARED_SERVERS/prosody.cfg.lua" >"$BASE/prosody.cfg.lua"
      echo "$BASE/prosody.cfg.lua" ;;
    prosody-mam)
      sed -e "s#/tmp/bench-prosody/#$BASE/#g" -e 's#"posix";#"posix"; "mam";#' \
          -e "s#^storage = \"internal\"#storage = \"internal\"\ndefault_archive_policy = true\narchive_expires_after = \"never\"#" \
          "$SHARED_SERVERS/prosody.cfg.lua" >"$BASE/prosody.cfg.lua"
      echo "$BASE/prosody.cfg.lua" ;;
    ejabberd-mam)
      sed -e "s#port: 35222#port: 29222#" -e "s#port: 35280#port: 29280#" \
          -e "s#^  mod_roster: {}#  mod_roster: {}\n  mod_mam:\n    default: always#" \
          "$SHARED_SERVERS/ejabberd.yml" >"$BASE/ejabberd.yml"
      echo "$BASE/ejabberd.yml" ;;
    ejabberd-scram)
      sed -e "s#port: 35222#port: 29222#" -e "s#port: 35280#port: 29280#" \
          -e "s#^auth_password_format: plain#auth_password_format: scram#" \
          "$SHARED_SERVERS/ejabberd.yml" >"$BASE/ejabberd.yml"
      echo "$BASE/ejabberd.yml" ;;
  esac
}

ctlcfg() {  # the shared ejabberdctl.cfg with the distribution port moved to 29300
  sed -e "s#^ERL_DIST_PORT=35300#ERL_DIST_PORT=29300#" "$SHARED_SERVERS/ejabberdctl.cfg" >"$BASE/ejabberdctl.cfg"
  echo "$BASE/ejabberdctl.cfg"
}

ejctl() {
  /usr/sbin/ejabberdctl --ctl-config "$(ctlcfg)" --config "$CONFIG" \
     --spool "$BASE/db" --logs "$BASE/log" "$@"
}

wait_port() {  # wait until 127.0.0.1:$1 accepts, up to $2 seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

descendant_named() {  # first descendant of PID $1 whose comm is $2
  local p kids
  kids=$(ps -o pid= --ppid "$1" 2>/dev/null)
  for p in $kids; do
    if [ "$(cat /proc/$p/comm 2>/dev/null)" = "$2" ]; then echo "$p"; return 0; fi
    descendant_named "$p" "$2" && return 0
  done
  return 1
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "$cmd" in
start)
  if alive "$PIDFILE"; then echo "$name already running, pid $(cat "$PIDFILE")"; exit 0; fi
  if ! port_free "$PORT"; then echo "port $PORT is busy (another variant of $KIND running?)" >&2; exit 1; fi
  mkdir -p "$BASE"
  CONFIG=$(config_for)
  if [ "$KIND" = prosody ]; then
    mkdir -p "$BASE/data" "$BASE/certs"; chown -R prosody:prosody "$BASE"
    ( cd "$BASE" && exec setsid setpriv --reuid=prosody --regid=prosody --init-groups \
        prosody --config "$CONFIG" -F ) \
        >"$BASE/stdout.log" 2>&1 </dev/null &
    echo $! >"$LAUNCHPID"; echo $! >"$PIDFILE"
  else
    mkdir -p "$BASE/db" "$BASE/log"; CTLCFG=$(ctlcfg); chown -R ejabberd:ejabberd "$BASE"
    ( cd "$BASE" && exec setsid env HOME=/var/lib/ejabberd setpriv --reuid=ejabberd --regid=ejabberd \
        --init-groups /usr/sbin/ejabberdctl --ctl-config "$CTLCFG" \
        --config "$CONFIG" --spool "$BASE/db" --logs "$BASE/log" foreground ) \
        >"$BASE/stdout.log" 2>&1 </dev/null &
    echo $! >"$LAUNCHPID"
    for ((i = 0; i < 100; i++)); do
      b=$(descendant_named "$(cat "$LAUNCHPID")" beam.smp) && { echo "$b" >"$PIDFILE"; break; }
      sleep 0.1
    done
  fi
  if wait_port "$PORT" 60; then
    echo "$name started, pid $(cat "$PIDFILE"), c2s 127.0.0.1:$PORT"
  else
    echo "$name failed to open port $PORT; see $BASE/stdout.log" >&2; tail -20 "$BASE/stdout.log" >&2; exit 1
  fi
  ;;
stop)
  if ! alive "$PIDFILE"; then echo "$name not running"; rm -f "$PIDFILE" "$LAUNCHPID"; exit 0; fi
  pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  lp=$(cat "$LAUNCHPID" 2>/dev/null); [ -n "$lp" ] && wait "$lp" 2>/dev/null
  rm -f "$PIDFILE" "$LAUNCHPID"; echo "$name stopped (pid $pid)"
  ;;
pid)
  alive "$PIDFILE" && cat "$PIDFILE" || { echo "$name not running" >&2; exit 1; }
  ;;
register)
  user=$3; pass=$4
  CONFIG=$(config_for)
  if [ "$KIND" = prosody ]; then
    prosodyctl --config "$CONFIG" register "$user" "$DOMAIN" "$pass"
  else
    ejctl register "$user" "$DOMAIN" "$pass"
  fi
  ;;
wipe)
  "$0" stop "$name"; rm -rf "$BASE"; echo "wiped $BASE"
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
