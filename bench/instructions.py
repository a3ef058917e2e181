#!/usr/bin/env python3
"""
bench/instructions.py: machine instructions per chat message through each door, counted by
Valgrind, for comparing two versions of the code without this machine's timing noise.

CPU-time figures on a shared virtual machine move by 10-20 % between identical runs
(docs/performance.md, "Caveats"), so a 5 % change needs many alternating rounds to show.  An
instruction count does not move: the same code and input give the same count to a few parts
in a million.  It is not a time (a cache miss costs more than an instruction), so a change
that saves instructions still has to be confirmed in the server with bench/run.py or
alternating rounds; but it tells at once, and for certain, whether a change does less work.

What runs is bench/inproc.py's setting (the real doors, core and SQLite archive on in-memory
transports, two logged-in users, the sender's bytes fed to its protocol), under
``valgrind --tool=cachegrind``, twice: with FEW and with MANY messages after a warm-up. The
difference divided by MANY - FEW is the count per message, without the start-up.  The archive
is written every 1000 messages, and the collector runs with the server's settings
(L{xmppjson.service.CollectorService}).

  python3 bench/instructions.py                        # every door, archive on and off
  python3 bench/instructions.py --door ws --archive on
  python3 bench/instructions.py --code /tmp/other-checkout   # the same for another version

Needs valgrind (``apt-get install valgrind``).  About 30 s per door and setting.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: (name, carbons on): the c2s door as the load generator's clients use it (no carbons), with
#: carbons on (the JSON door's sessions always have them), and the JSON door.
DOORS = {"c2s": ("c2s", False), "c2s-carbons": ("c2s", True), "ws": ("ws", True)}

# The child: runs in the checkout measured (sys.path), under valgrind.
_CHILD = r"""
import gc, os, sys
code, bench, door, carbonsOn, archive, count = sys.argv[1:7]
sys.path[:0] = [code, bench]
from twisted.internet import defer, task
import inproc
from xmppjson.service import CollectorService

async def main():
    case = inproc._Case()
    try:
        make = inproc.c2sDoor if door == "c2s" else inproc.wsDoor
        d = await make(case, archive == "on")
        inproc.carbons(d, carbonsOn == "1")
        inproc.measure(d.feed, d.batches, 2000)
        gc.set_threshold(*CollectorService.thresholds)
        gc.freeze()
        done, total = 0, int(count)
        while done < total:
            step = min(1000, total - done)
            inproc.measure(d.feed, d.batches, step)
            done += step
            if archive == "on":
                await d.fixture.im.archive.flush()
        if d.received.written == 0:
            raise SystemExit("nothing was delivered")
        print("archived", d.fixture.im.archive.written)
    finally:
        await case.cleanup()

task.react(lambda reactor: defer.ensureDeferred(main()))
"""


def child(code: str, door: str, carbonsOn: bool, archive: str, messages: int) -> list[str]:
    """The command of one measured run: C{messages} messages after the warm-up's 2000."""
    return [sys.executable, "-c", _CHILD, code, HERE, door, "1" if carbonsOn else "0", archive,
            str(messages)]


def count(code: str, door: str, carbonsOn: bool, archive: str, messages: int) -> int:
    """Instructions of one run of the child, as cachegrind counts them."""
    with tempfile.TemporaryDirectory(prefix="xj-instructions-") as tmp:
        out = os.path.join(tmp, "cachegrind.out")
        argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
                *child(code, door, carbonsOn, archive, messages)]
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(argv, cwd=code, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the run failed ({door}, archive {archive}):\n{done.stderr[-3000:]}")
        with open(out) as f:
            for line in f:
                if line.startswith("summary:"):
                    return int(line.split()[1])
    raise SystemExit("cachegrind wrote no summary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--door", choices=sorted(DOORS), action="append")
    parser.add_argument("--archive", choices=("on", "off"), action="append")
    parser.add_argument("--code", default=ROOT, help="the xmppjson checkout to measure")
    parser.add_argument("--few", type=int, default=1000)
    parser.add_argument("--many", type=int, default=6000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    code = os.path.abspath(args.code)
    perMessage: dict[tuple[str, str], float] = {}
    for archive in args.archive or ["on", "off"]:
        for name in args.door or list(DOORS):
            door, carbonsOn = DOORS[name]
            few = count(code, door, carbonsOn, archive, args.few)
            many = count(code, door, carbonsOn, archive, args.many)
            perMessage[name, archive] = (many - few) / (args.many - args.few)
            print(f"archive {archive:3}  {name:12} {perMessage[name, archive]:10,.0f} "
                  f"instructions per message", flush=True)
    for archive in args.archive or ["on", "off"]:
        if ("c2s", archive) in perMessage and ("ws", archive) in perMessage:
            print(f"archive {archive:3}  JSON door / c2s door, per instruction: "
                  f"{perMessage['c2s', archive] / perMessage['ws', archive]:.2f}x")


if __name__ == "__main__":
    main()
