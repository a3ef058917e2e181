#!/usr/bin/env python3
"""
bench/profile.py: where xmppjson spends its CPU under a load shape, with py-spy.

Starts a fresh xmppjson (its own temporary SQLite database), provisions the accounts through
REST, then samples the server with ``py-spy record`` while one load generator scenario runs,
and prints the top functions by own time and by inclusive time (percent of CPU samples; idle
samples are excluded by py-spy). Also writes a flame graph (SVG) and the raw collapsed stacks.

  python3 bench/profile.py                                # c2s chat 50x10, 15 s
  python3 bench/profile.py --load ws-chat                 # the JSON door
  python3 bench/profile.py --load presence --top 30
  python3 bench/profile.py --load login --clients 1000

py-spy comes from PyPI (``pip install py-spy``, in the harness venv is fine); it samples from
outside the process (``--nonblocking``: the server is not paused), so the profile costs the
server little, but take throughput figures from bench/run.py, not from here.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl

LOADS = ("chat", "ws-chat", "cross-chat", "presence", "ws-presence", "login", "ws-login")


def find_pyspy(explicit: str | None) -> str:
    for cand in (explicit, shutil.which("py-spy"), os.path.join(os.path.dirname(bl.default_harness_python()), "py-spy")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise SystemExit("py-spy not found: pip install py-spy (or pass --py-spy PATH)")


def summarize(raw_path: str, top: int) -> str:
    """Own and inclusive percentages per function from py-spy's collapsed stacks."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            count = int(n)
            frames = [fr for fr in stack.split(";") if fr and not fr.startswith("process ") and not fr.startswith("thread ")]
            if not frames:
                continue
            total += count
            own[_short(frames[-1])] += count
            for fr in {_short(x) for x in frames}:
                incl[fr] += count
    out = [f"{total} samples", "", "| own % | function (file:line of def) |", "|---|---|"]
    for fn, c in own.most_common(top):
        out.append(f"| {100 * c / total:.1f} | {fn} |")
    out += ["", "| inclusive % | function |", "|---|---|"]
    for fn, c in incl.most_common(top * 2):
        out.append(f"| {100 * c / total:.1f} | {fn} |")
    return "\n".join(out)


# Cost categories, for a one-glance breakdown. A sample belongs to "logging" when any frame of
# its stack is logging (the formatting runs deep inside it); otherwise to the category of its
# innermost frame that matches a rule (first matching rule wins).
LOGGING = ("twisted/logger/", "twisted/python/logfile", "twisted/python/log.py:msg", "Logger.debug", "Logger.emit",
           "hltype (", "hl (", "hlval (", "click/termui", "string.py")
CATEGORIES = [
    ("storage (SQL, thread pool)", ("xmppjson/storage/", "sqlite3", "adbapi", "txpostgres", "psycopg")),
    ("PBKDF2 / SCRAM / SASL", ("pbkdf2", "scram", "hashlib", "hmac", "c2s/sasl.py", "saslprep", "stringprep")),
    ("JSON codec (jsonstanza, json)", ("xmppjson/jsonstanza.py", "python3.11/json/")),
    ("stanza-id (XEP-0359)", ("newStanzaId", "_stampId", "base64.py")),
    ("XML codec (expat, domish, serializer)", ("xish/domish.py", "_serializeInto", "C2SStream.dataReceived",
                                               "c2s/stream.py:serialize", "xmlstream.py")),
    ("WebSocket framing (autobahn, txaio)", ("autobahn/", "txaio/")),
    ("IM core (router, message, presence, roster)", ("xmppjson/im/", "xmppjson/router.py", "xmppjson/session.py",
                                                     "twisted/words/protocols/jabber/jid.py")),
    ("doors (c2s, websocket glue)", ("xmppjson/c2s/", "xmppjson/websocket.py")),
    ("Deferreds", ("twisted/internet/defer.py",)),
    ("reactor + TCP I/O", ("twisted/internet/", "twisted/python/context.py", "twisted/python/util.py")),
]


def categorize(raw_path: str) -> str:
    cats: collections.Counter = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(n)
            frames = [fr for fr in stack.split(";") if fr and not fr.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += count
            if any(any(m in fr for m in LOGGING) for fr in frames):
                cats["logging (twisted.logger, autobahn debug)"] += count
                continue
            for fr in reversed(frames):
                key = fr.replace(" (", "(")
                hit = next((name for name, marks in CATEGORIES if any(m in fr or m in key for m in marks)), None)
                if hit:
                    cats[hit] += count
                    break
            else:
                cats["other"] += count
    out = ["| category (innermost matching frame) | % of CPU samples |", "|---|---|"]
    for name, c in cats.most_common():
        out.append(f"| {name} | {100 * c / total:.1f} |")
    return "\n".join(out)


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    path = loc.rpartition(":")[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", choices=LOADS, default="chat")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--clients", type=int, default=1000, help="login loads")
    ap.add_argument("--duration", type=float, default=15.0, help="sampled seconds")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--iterations", type=int, default=4096)
    ap.add_argument("--out", default=os.path.join(bl.BENCH, "results", "profile"), help="output prefix")
    ap.add_argument("--py-spy", default=None)
    ap.add_argument("--summarize", default=None, metavar="RAW", help="only summarize an earlier raw file")
    ap.add_argument("--code", default="worktree", metavar="REV|worktree",
                    help="xmppjson code to profile: the working tree (default) or a commit (exported to /tmp)")
    ap.add_argument("--xmppjson-arg", action="append", default=[], metavar="ARG",
                    help="extra xmppjson option (repeatable), e.g. --xmppjson-arg=--no-archive")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.summarize:
        print(categorize(args.summarize) + "\n\n" + summarize(args.summarize, args.top))
        return 0
    pyspy = find_pyspy(args.py_spy)
    harness, server_py = bl.default_harness_python(), bl.default_server_python()
    code = bl.REPO if args.code == "worktree" else bl.snapshot(args.code)[0]
    tmp = tempfile.mkdtemp(prefix="xmppjson-profile-")
    c2s, web = bl.free_port(), bl.free_port()
    db = f"sqlite:{os.path.join(tmp, 'p.sqlite3')}"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tag = f"{args.out}-{args.load}"
    common = ["--host", "127.0.0.1", "--domain", bl.DOMAIN, "--password", bl.PASSWORD, "--timeout", "60"]
    ws = [harness, bl.WSBENCH, "--xmppbench", bl.XMPPBENCH, "--port", str(web), "--c2s-port", str(c2s), *common]
    ring = args.load.endswith("presence")
    n = 200 if ring else (args.clients if "login" in args.load else 2 * args.pairs)
    prefix = ["--prefix", "ring"] if ring else []
    xj = bl.start_xmppjson(tmp, c2s, web, db, args.iterations, server_py, extra=args.xmppjson_arg, code=code)
    try:
        res = bl.run_json(ws + prefix + ["--concurrency", "8", "provision", "--users", str(n)], timeout=600)
        if res.get("error"):
            raise SystemExit(f"provisioning failed: {res}")
        if ring:
            res = bl.run_json(ws + prefix + ["rosters", "--users", "200", "--contacts", "10"], timeout=900)
            if res.get("error"):
                raise SystemExit(f"roster setup failed: {res}")
    finally:
        xj.stop()
    xj = bl.start_xmppjson(tmp, c2s, web, db, args.iterations, server_py, extra=args.xmppjson_arg, code=code)
    try:
        pid = ["--server-pid", str(xj.pid)]
        x = [harness, bl.XMPPBENCH, "--port", str(c2s), *pid, *common]
        w = ws + pid
        long = ["--duration", str(args.duration + 30), "--warmup", "1"]
        load = {
            "chat": x + ["chat", "--pairs", str(args.pairs), "--window", str(args.window), *long],
            "ws-chat": w + ["chat", "--pairs", str(args.pairs), "--window", str(args.window), *long],
            "cross-chat": w + ["cross", "--pairs", str(args.pairs), "--window", str(args.window), *long],
            "presence": x + prefix + ["presence", "--users", "200", "--contacts", "10", *long],
            "ws-presence": w + prefix + ["presence", "--users", "200", "--contacts", "10", *long],
            "login": x + ["login", "--clients", str(args.clients)],
            "ws-login": w + ["login", "--clients", str(args.clients)],
        }[args.load]
        gen = subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0 if "login" in args.load else 5.0)  # logins (and warm-up) before sampling
        spy = [pyspy, "record", "--pid", str(xj.pid), "--rate", str(args.rate), "--nonblocking"]
        # the flame graph samples the first seconds alongside (a login load may end early)
        svg = subprocess.Popen(spy + ["--duration", str(min(5, int(args.duration))), "--format", "flamegraph",
                                      "-o", tag + ".svg"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = subprocess.run(spy + ["--duration", str(int(args.duration)), "--format", "raw", "-o", tag + ".txt"],
                           capture_output=True, text=True, check=False)
        svg.wait(60)
        if r.returncode != 0:
            raise SystemExit(f"py-spy failed: {r.stderr[-500:]}")
        gen.terminate()  # the load is bounded anyway (duration + 30 s); stop it now
        gen.wait(60)
    finally:
        xj.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report = categorize(tag + ".txt") + "\n\n" + summarize(tag + ".txt", args.top)
    with open(tag + ".md", "w") as f:
        f.write(f"# py-spy profile of xmppjson under {args.load} ({args.duration:.0f} s at {args.rate} Hz)\n\n")
        f.write(report + "\n")
    print(report)
    bl.log(f"raw stacks {tag}.txt, flame graph {tag}.svg, summary {tag}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
