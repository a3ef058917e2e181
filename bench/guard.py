#!/usr/bin/env python3
"""
bench/guard.py: a CPU-efficiency regression guard for CI (well under 2 minutes).

In ONE run it starts two servers on loopback:

* xmppjson (fresh process, fresh SQLite database in a temporary directory), and
* the shared ``twisted_echo_router.py``: a Twisted epoll forwarder with no XML parsing, the
  same reactor and interpreter as xmppjson, so the machine's speed of the moment cancels out;

runs the same short c2s chat (xmppbench ``chat``, default 50 pairs x window 10) against both,
interleaved for ``--rounds`` rounds, and compares xmppjson's delivered messages per server
CPU-second with the baseline's, per round. It fails (exit 1) when the median ratio is below
``min_fraction`` recorded in ``bench/guard.json``, or when any message was lost or duplicated.

  python3 bench/guard.py                 # check against bench/guard.json
  python3 bench/guard.py --record        # measure, then write guard.json (fraction x margin)
  python3 bench/guard.py --json-out FILE # also append the raw JSON lines

Timing is noisy on shared CI machines: the fraction recorded is the measured median times
``--margin`` (default 0.7), so only a real regression (about 30 % more CPU per message) fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl

GUARD_JSON = os.path.join(bl.BENCH, "guard.json")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=GUARD_JSON, help="the recorded threshold (JSON)")
    ap.add_argument("--record", action="store_true", help="write the measured fraction x --margin to --config")
    ap.add_argument("--margin", type=float, default=0.7, help="with --record: fraction kept of the measured ratio")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default from the config, else 2)")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per run")
    ap.add_argument("--iterations", type=int, default=4096, help="xmppjson --scram-iterations")
    ap.add_argument("--harness-python", default=None)
    ap.add_argument("--server-python", default=None)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--xmppjson-arg", action="append", default=[], metavar="ARG",
                    help="extra xmppjson option (repeatable), e.g. --xmppjson-arg=--no-archive")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return ap


def load_config(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    conf = load_config(args.config)
    shape = conf.get("shape", {})
    pairs = args.pairs or shape.get("pairs", 50)
    window = args.window or shape.get("window", 10)
    duration = args.duration or shape.get("duration", 4.0)
    rounds = args.rounds or conf.get("rounds", 2)
    if not args.xmppjson_arg and not args.record:
        args.xmppjson_arg = list(conf.get("xmppjson_args", []))  # measured as it was recorded
    if not args.record and "min_fraction" not in conf:
        raise SystemExit(f"{args.config} has no min_fraction: run with --record first")
    harness = args.harness_python or bl.default_harness_python()
    server_py = args.server_python or bl.default_server_python()
    tmp = tempfile.mkdtemp(prefix="xmppjson-guard-")
    t_start = time.monotonic()
    c2s, web, echo = bl.free_port(), bl.free_port(), bl.free_port()
    db = f"sqlite:{os.path.join(tmp, 'guard.sqlite3')}"
    common = ["--host", "127.0.0.1", "--domain", bl.DOMAIN, "--password", bl.PASSWORD, "--timeout", "30"]
    chat = ["chat", "--pairs", str(pairs), "--window", str(window), "--duration", str(duration),
            "--warmup", "1", "--drain", "5"]
    ratios, lost, results = [], 0, []
    try:
        # accounts once (the database outlives each fresh process)
        xj = bl.start_xmppjson(tmp, c2s, web, db, args.iterations, server_py, extra=args.xmppjson_arg)
        try:
            res = bl.run_json([harness, bl.WSBENCH, "--xmppbench", bl.XMPPBENCH, "--port", str(web), *common,
                               "--concurrency", "8", "provision", "--users", str(2 * pairs)], timeout=120)
        finally:
            xj.stop()
        if res.get("error") or res.get("failed"):
            print(f"guard: provisioning failed: {json.dumps(res)[:500]}", file=sys.stderr)
            return 2
        for rnd in range(1, rounds + 1):
            per = {}
            for which in (("echo", "xmppjson") if rnd % 2 else ("xmppjson", "echo")):
                if which == "echo":
                    proc = bl.start_twisted_echo(tmp, echo, server_py)
                    port = echo
                else:
                    proc = bl.start_xmppjson(tmp, c2s, web, db, args.iterations, server_py, extra=args.xmppjson_arg)
                    port = c2s
                try:
                    time.sleep(0.5)
                    r = bl.run_json([harness, bl.XMPPBENCH, "--port", str(port), "--server-pid", str(proc.pid),
                                     *common, "--label", f"guard/{which}", *chat], timeout=90)
                finally:
                    proc.stop()
                r.update({"round": rnd, "server": which})
                results.append(r)
                per[which] = r
                bl.log(f"guard round {rnd} {which}: {r.get('msgs_per_server_cpu_s')} msgs/CPU-s, "
                       f"{r.get('msgs_per_s')} msgs/s, harness {r.get('harness_cpu_pct')}% "
                       f"lost {r.get('lost')} dup {r.get('duplicated')}" + (f" ERROR {r.get('error')}" if r.get("error") else ""))
            x, e = per["xmppjson"], per["echo"]
            if x.get("error") or e.get("error"):
                print(f"guard: a run failed: {json.dumps(x)[:300]} {json.dumps(e)[:300]}", file=sys.stderr)
                return 2
            lost += (x.get("lost") or 0) + (x.get("duplicated") or 0)
            ratios.append(x["msgs_per_server_cpu_s"] / e["msgs_per_server_cpu_s"])
    finally:
        if args.json_out:
            with open(args.json_out, "a") as f:
                for r in results:
                    f.write(json.dumps(r) + "\n")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    ratio = bl.median(ratios) or 0.0
    took = time.monotonic() - t_start
    summary = {"guard": "xmppjson msgs/server-CPU-s / twisted_echo_router msgs/server-CPU-s",
               "ratios": [round(r, 4) for r in ratios], "median": round(ratio, 4), "lost_or_duplicated": lost,
               "seconds": round(took, 1)}
    if args.record:
        history = list(conf.get("history", []))
        if "measured_median" in conf:
            history.append({k: conf.get(k) for k in ("recorded", "measured_median", "min_fraction", "git")})
        git = subprocess.run(["git", "-C", bl.REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip()
        conf = {"min_fraction": round(ratio * args.margin, 4), "git": git, "measured_median": round(ratio, 4),
                "margin": args.margin, "rounds": rounds, "xmppjson_args": args.xmppjson_arg,
                "shape": {"pairs": pairs, "window": window, "duration": duration},
                "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "note": "min_fraction = measured_median x margin; re-record (--record) after a deliberate change",
                "history": history}
        with open(args.config, "w") as f:
            json.dump(conf, f, indent=2)
            f.write("\n")
        summary["recorded"] = conf
        print(json.dumps(summary))
        return 0 if lost == 0 else 1
    floor = conf["min_fraction"]
    ok = ratio >= floor and lost == 0
    summary.update({"min_fraction": floor, "pass": ok})
    print(json.dumps(summary))
    if not ok:
        why = (f"lost or duplicated messages: {lost}" if lost else
               f"xmppjson reached {ratio:.3f} of the Twisted forwarder's msgs per CPU-s, below the recorded {floor}")
        print(f"guard: FAIL: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
