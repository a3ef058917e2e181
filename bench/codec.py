#!/usr/bin/env python3
"""
bench/codec.py: microseconds per frame of the JSON dialect codec (xmppjson/jsonstanza.py).

What the JSON door pays per frame of chat traffic, with no server, no socket and no reactor:
C{parseFrame} on the frames a web client sends, C{serialize} on the stanzas the router delivers
(as it delivers them: C{from} set, a XEP-0359 stanza-id added to messages, presences retargeted
to each contact).

  python3 bench/codec.py                   # the working tree's figures
  python3 bench/codec.py --compare HEAD~1  # the jsonstanza.py of a revision beside the working tree's

With C{--compare REV}, C{xmppjson/jsonstanza.py} as of REV (C{git show}) is loaded as a second
module and both are timed in turn, case by case, in the same process; the script also checks
that both give the same output (the same XML for every frame read, the same text for every
stanza written).  Figures are microseconds of the process's CPU time per frame, the best of
C{--repeat} runs of C{--number} calls each: on a shared machine the minimum is the figure that
carries over, the others measure the neighbours.  Serialising a presence once per contact is
timed twice: on two presences in turn (every call writes it all) and on the copies of one
broadcast (the rest after the addresses is written once, see L{jsonstanza._presenceFrame}).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from types import ModuleType
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.words.xish import domish

from xmppjson import jsonstanza
from xmppjson.im.stanzas import retarget

NS_SID = "urn:xmpp:sid:0"
SENDER = "szymon@localhost/web-3f2a9c01"
RECIPIENT = "alicja@localhost"
BODY = "Cześć, jak się masz? " * 4  # 84 characters, 96 bytes of UTF-8
FANOUT = 10  # contacts a presence is retargeted to in the fan-out case

# The frames a web client sends, as JSON text: what the door hands parseFrame since it reads
# whole text frames itself (9670b20); --bytes for UTF-8 bytes, as Autobahn handed them over.
FRAMES = {
    "chat message": '{"type":"message","payload":{"to":"alicja@localhost","type":"chat",'
    '"body":"' + BODY + '","id":"m-0042"}}',
    "chat + active": '{"type":"message","payload":{"to":"alicja@localhost","type":"chat",'
    '"body":"' + BODY + '","id":"m-0043","active":{}}}',
    "chat state": '{"type":"message","payload":{"to":"alicja@localhost","type":"chat",'
    '"body":"","composing":{}}}',
    "presence": '{"type":"presence","payload":{"show":"away","status":"Mam na imię Szymon",'
    '"priority":5}}',
}


def delivered(module: ModuleType, case: str) -> domish.Element:
    """The stanza of C{case} as the router hands it to the recipient's web session."""
    element = module.parseFrame(FRAMES[case])
    element["from"] = SENDER
    if element.name == "message":
        sid = domish.Element((NS_SID, "stanza-id"), NS_SID, {"by": RECIPIENT, "id": "kX3l0b9Qm2cV1pZr"})
        sid.parent = element
        element.children.append(sid)
    else:
        element = retarget(element, RECIPIENT)
    return element


def load(rev: str) -> ModuleType:
    """C{xmppjson/jsonstanza.py} as of C{rev}, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", ROOT, "show", f"{rev}:xmppjson/jsonstanza.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location(f"jsonstanza_{rev}", f.name)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        os.unlink(f.name)
    return module


def operations(module: ModuleType, asBytes: bool) -> list[tuple[str, Callable[[], Any]]]:
    """(label, call) for every measured operation of C{module}."""
    ops: list[tuple[str, Callable[[], Any]]] = []
    for case, text in FRAMES.items():
        frame: str | bytes = text.encode("utf-8") if asBytes else text

        def read(frame: str | bytes = frame) -> None:
            module.parseFrame(frame)

        ops.append((f"parseFrame  {case}", read))
    for case in FRAMES:
        # Two stanzas in turn, so that the fan-out cache of presences never hits.
        pair = [delivered(module, case), delivered(module, case)]

        def write(pair: list[domish.Element] = pair) -> None:
            for element in pair:
                module.serialize(element)

        ops.append((f"serialize   {case}", write))
    presence = delivered(module, "presence")
    copies = [retarget(presence, f"contact{n}@localhost") for n in range(FANOUT)]

    def fanout() -> None:
        serialize = module.serialize
        for copy in copies:
            serialize(copy)

    ops.append((f"serialize   presence, per copy of {FANOUT}", fanout))
    return ops


def check(before: ModuleType, after: ModuleType) -> None:
    """Both modules read every frame to the same stanza and write every stanza to the same text."""
    for case, text in FRAMES.items():
        old, new = before.parseFrame(text).toXml(), after.parseFrame(text).toXml()
        if old != new:
            raise SystemExit(f"parseFrame differs on {case}:\n  {old}\n  {new}")
        old, new = before.serialize(delivered(before, case)), after.serialize(delivered(after, case))
        if old != new:
            raise SystemExit(f"serialize differs on {case}:\n  {old}\n  {new}")


def best(calls: list[Callable[[], Any]], number: int, repeat: int, per: int = 1) -> list[float]:
    """
    Microseconds of CPU per call of each of C{calls}, best of C{repeat} runs.  The calls take
    turns run by run, so that a busy moment of the machine hits them alike, and the clock is
    the process's CPU time, which a neighbour's load does not inflate as much as wall time.
    """
    times = [float("inf")] * len(calls)
    for _ in range(repeat):
        for index, call in enumerate(calls):
            spent = timeit.Timer(call, timer=time.process_time).timeit(number)
            times[index] = min(times[index], spent)
    return [t / number / per * 1e6 for t in times]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", metavar="REV", help="also time jsonstanza.py as of this git revision")
    ap.add_argument("--number", type=int, default=20000, help="calls per run (default 20000)")
    ap.add_argument("--repeat", type=int, default=7, help="runs; the best is reported (default 7)")
    ap.add_argument("--bytes", action="store_true",
                    help="hand parseFrame UTF-8 bytes (what Autobahn handed over) instead of text")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    after = jsonstanza
    before = load(args.compare) if args.compare else None
    if before is not None:
        check(before, after)
    print(f"Python {sys.version.split()[0]}, best of {args.repeat} x {args.number} calls, µs of CPU per frame")
    if before is None:
        print(f"{'operation':40} {'µs':>8}")
    else:
        print(f"{'operation':40} {args.compare:>10} {'now':>8} {'ratio':>7}")
    afterOps = operations(after, args.bytes)
    beforeOps = operations(before, args.bytes) if before is not None else [None] * len(afterOps)
    for (label, call), other in zip(afterOps, beforeOps):
        per = FANOUT if "per copy" in label else 2 if label.startswith("serialize") else 1
        number = max(1, args.number // per)
        if other is None:
            (now,) = best([call], number, args.repeat, per)
            print(f"{label:40} {now:8.2f}")
        else:
            then, now = best([other[1], call], number, args.repeat, per)
            print(f"{label:40} {then:10.2f} {now:8.2f} {then / now:6.2f}x")

if __name__ == "__main__":
    main()
