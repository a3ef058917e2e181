#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the test suite and print, on stdout, the one line
#
#     export XMPPJSON_TEST_PG=postgresql://USER:PASSWORD@127.0.0.1:PORT/DBNAME
#
# so that CI can run:   eval "$(bash .ci/postgres.sh)"
# Everything else goes to stderr.
#
# Meant for a fresh Debian bookworm machine, run as root (the server then runs as the
# "postgres" user); also works as an ordinary user when PostgreSQL is already installed.
# Idempotent: when the server this script started earlier (in $XMPPJSON_PG_DIR) is still
# running, it is reused and the same line is printed again.
#
# Stop it with:  pg_ctl -D "$XMPPJSON_PG_DIR/data" stop   (as the user that runs it)

set -euo pipefail

# stdout is reserved for the export line; everything else is diagnostics
exec 3>&1 1>&2

STATE_DIR="${XMPPJSON_PG_DIR:-${TMPDIR:-/tmp}/xmppjson-ci-postgres}"
DATA_DIR="$STATE_DIR/data"
ENV_FILE="$STATE_DIR/env"
DB_NAME=xmppjson_test
DB_USER=xmppjson_test

log() { echo "postgres.sh: $*"; }

find_bindir() {
    local tool dir
    tool="$(command -v initdb || true)"
    if [ -n "$tool" ] && command -v pg_ctl >/dev/null; then
        # resolve Debian's /usr/local/bin or /usr/bin symlinks to the version's own bin dir,
        # where psql and postgres live too
        dirname "$(readlink -f "$tool")"
        return 0
    fi
    # Debian keeps the server binaries off PATH; take the newest version installed
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

if [ "$(id -u)" = 0 ]; then
    RUN_AS=postgres
else
    RUN_AS="$(id -un)"
fi

# Run a command as the user that owns the cluster.  fd 3 (our stdout) is closed for it: the
# server would otherwise inherit it and keep "$(bash .ci/postgres.sh)" waiting forever.
as_owner() {
    if [ "$(id -un)" = "$RUN_AS" ]; then
        "$@" 3>&-
    elif command -v runuser >/dev/null; then
        runuser -u "$RUN_AS" -- "$@" 3>&-
    else
        su "$RUN_AS" -s /bin/sh -c "$(printf '%q ' "$@")" 3>&-
    fi
}

if ! BINDIR="$(find_bindir)"; then
    if [ "$(id -u)" != 0 ]; then
        log "initdb/pg_ctl not found and not root: install PostgreSQL first"
        exit 1
    fi
    log "installing PostgreSQL"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q postgresql
    BINDIR="$(find_bindir)" || { log "initdb/pg_ctl still not found after installing"; exit 1; }
fi
log "using $("$BINDIR/pg_ctl" --version) from $BINDIR"
PSQL="$BINDIR/psql"
[ -x "$PSQL" ] || PSQL="$(command -v psql)"

if [ "$RUN_AS" = postgres ] && ! id postgres >/dev/null 2>&1; then
    # the Debian package creates this user; a hand-built PostgreSQL may not have
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# Reuse the server from an earlier run if it is still up.
if [ -f "$ENV_FILE" ] && as_owner "$BINDIR/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
    log "reusing the server already running in $DATA_DIR"
    cat "$ENV_FILE" >&3
    exit 0
fi

if [ -d "$DATA_DIR" ]; then
    log "removing the stale cluster in $DATA_DIR"
    as_owner "$BINDIR/pg_ctl" -D "$DATA_DIR" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$STATE_DIR"
fi

mkdir -p "$STATE_DIR"
chmod 755 "$STATE_DIR"
mkdir -m 700 "$DATA_DIR"
chown "$RUN_AS" "$DATA_DIR"

PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

log "initialising a cluster in $DATA_DIR"
# local (socket) connections trust the OS user; TCP, which the tests use, needs the password
as_owner "$BINDIR/initdb" -D "$DATA_DIR" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null

log "starting it on 127.0.0.1:$PORT"
as_owner "$BINDIR/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w -t 60 \
    -o "-p $PORT -k $DATA_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null

# fsync=off above: a test database need not survive a power cut, and tests run faster.
as_owner "$PSQL" -X -q -h "$DATA_DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL
CREATE ROLE $DB_USER LOGIN PASSWORD '$PASSWORD';
CREATE DATABASE $DB_NAME OWNER $DB_USER;
SQL

echo "export XMPPJSON_TEST_PG=postgresql://$DB_USER:$PASSWORD@127.0.0.1:$PORT/$DB_NAME" > "$ENV_FILE"
chmod 600 "$ENV_FILE"
log "ready; stop it with: pg_ctl -D $DATA_DIR stop"
cat "$ENV_FILE" >&3
