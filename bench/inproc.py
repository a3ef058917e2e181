#!/usr/bin/env python3
"""
bench/inproc.py: the server-side CPU of one chat message through each door, in one process.

No sockets and no load generator: two users are logged in on in-memory transports (the test
suite's fixtures, so the real door, core and store run), then batches of chat messages from one
to the other are fed to the sender's protocol and the recipient's output is thrown away. What
is measured is the door's reading, the core's routing and the door's writing of a message, in
microseconds of process CPU, for the c2s door and the JSON door side by side in the same run
(the ratio is what counts; absolute figures depend on the machine). System calls are not in
it: bench/run.py measures the whole server.

Every JSON door session has message carbons on (docs/json-dialect.md), and the c2s clients here,
like the load generator's, never enable them: so the c2s door is also measured with carbons
enabled on its two sessions, which is the same work in the core as the JSON door's.

  python3 bench/inproc.py                      # both doors, archive off, 3 rounds
  python3 bench/inproc.py --archive            # with the SQLite archive on
  python3 bench/inproc.py --profile ws         # cProfile of the JSON door, top functions
  python3 bench/inproc.py --profile c2s-carbons  # the c2s door with carbons on
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, NamedTuple

if __name__ == "__main__":
    # bench/ holds a profile.py that would shadow the standard library's (cProfile imports
    # it), and the fixtures come from tests/: run from the project root instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import defer, task  # noqa: E402


class Door(NamedTuple):
    """A logged-in sender and recipient on one door."""

    feed: Callable[[bytes], None]  # hands the sender's bytes to its protocol
    batches: list[bytes]  # BATCH messages each, to the recipient
    fixture: Any
    received: "_Sink"  # the recipient's transport
    sessions: list[Any]  # the sender's and the recipient's sessions in the core

BATCH = 10


class _Case:
    """What the test fixtures expect of a TestCase."""

    def __init__(self) -> None:
        self.cleanups: list[Any] = []

    def addCleanup(self, f: Any, *a: Any) -> None:
        self.cleanups.append((f, a))

    async def cleanup(self) -> None:
        for f, a in reversed(self.cleanups):
            await defer.maybeDeferred(f, *a)


class _Sink:
    """A transport that throws away what the server writes (and counts it)."""

    disconnecting = False

    def __init__(self, real: Any) -> None:
        self.real = real
        self.written = 0
        #: a list to keep what is written in (for tests), or None
        self.kept: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.kept is not None:
            self.kept.append(data)

    def writeSequence(self, seq: Any) -> None:
        for data in seq:
            self.written += len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def c2sDoor(case: Any, archive: bool) -> Door:
    from tests.test_c2s import C2SFixture

    fixture = await C2SFixture(case, useTLS=False, allowPlaintext=True, archive=archive,
                               stanzaRate=0).start("alice", "bob")
    alice = await fixture.login("alice", "a")
    bob = await fixture.login("bob", "b")
    for wire in (alice, bob):
        wire.send("<presence/>")
        await task.deferLater(_reactor(), 0.01, lambda: None)
        wire.take()
    bob.protocol.transport = received = _Sink(bob.protocol.transport)
    alice.protocol.transport = _Sink(alice.protocol.transport)
    batches = [
        "".join(
            f"<message to='bob@{fixture.config.domain}' type='chat'><body>{i}:{j} hello</body></message>"
            for j in range(BATCH)
        ).encode()
        for i in range(64)
    ]
    return Door(alice.protocol.dataReceived, batches, fixture, received, _sessions(fixture, "c2s"))


async def wsDoor(case: Any, archive: bool) -> Door:
    import json

    from tests.test_websocket import maskedFrame
    from tests.wshelpers import WebFixture

    fixture = await WebFixture(case, archive=archive, stanzaRate=0).start("alice", "bob")
    clients = [await fixture.connect(user, presence={}) for user in ("alice", "bob")]
    await fixture.flush()
    protocols = {s.jid.user: s.protocol for s in fixture.im.router if s.door == "websocket"}
    for protocol in protocols.values():
        protocol.transport = _Sink(protocol.transport)
    del clients
    batches = [
        b"".join(
            maskedFrame(json.dumps({"type": "message", "payload": {
                "to": f"bob@{fixture.config.domain}", "type": "chat", "body": f"{i}:{j} hello"}}).encode())
            for j in range(BATCH)
        )
        for i in range(64)
    ]
    return Door(protocols["alice"].dataReceived, batches, fixture, protocols["bob"].transport,
                _sessions(fixture, "websocket"))


def _sessions(fixture: Any, door: str) -> list[Any]:
    return sorted((s for s in fixture.im.router if s.door == door), key=lambda s: s.full)


def carbons(door: Door, on: bool) -> None:
    """Message carbons (XEP-0280) on or off for both sessions of C{door}."""
    for session in door.sessions:
        (door.fixture.im.carbons.enable if on else door.fixture.im.carbons.disable)(session)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def measure(feed: Any, batches: list[bytes], messages: int) -> float:
    """Microseconds of process CPU per message."""
    rounds = messages // BATCH
    n = len(batches)
    start = time.process_time()
    for i in range(rounds):
        feed(batches[i % n])
    return (time.process_time() - start) * 1e6 / (rounds * BATCH)


async def main(args: argparse.Namespace) -> None:
    case = _Case()
    try:
        c2s = await c2sDoor(case, args.archive)
        ws = await wsDoor(case, args.archive)
        # (name, door, carbons on its sessions): the JSON door's are on, as the door sets them
        runs = [("c2s", c2s, False), ("c2s-carbons", c2s, True), ("ws", ws, True)]
        for _, door, on in runs:
            carbons(door, on)
            measure(door.feed, door.batches, 2000)  # warm-up (caches, first allocations)
        if args.profile:
            import cProfile
            import pstats

            _, door, on = next(run for run in runs if run[0] == args.profile)
            carbons(door, on)
            profiler = cProfile.Profile()
            profiler.enable()
            measure(door.feed, door.batches, args.messages)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
            return
        results: dict[str, list[float]] = {name: [] for name, _, _ in runs}
        for _ in range(args.rounds):
            for name, door, on in runs:
                carbons(door, on)
                results[name].append(measure(door.feed, door.batches, args.messages))
                if args.archive:
                    await door.fixture.im.archive.flush()
        median = {name: sorted(r)[len(r) // 2] for name, r in results.items()}
        print(f"archive {'on' if args.archive else 'off'}, {args.messages} messages x {args.rounds} rounds, "
              f"median us of process CPU per message:")
        for name, label in (("c2s", "c2s door"), ("c2s-carbons", "c2s door, carbons on"),
                            ("ws", "JSON door (carbons on)")):
            print(f"  {label:23} {median[name]:7.1f}  {['%.1f' % r for r in results[name]]}")
        print(f"  JSON door / c2s door, per CPU-second: {median['c2s'] / median['ws']:.2f}x")
        print(f"  JSON door / c2s door with carbons on (the same core work): "
              f"{median['c2s-carbons'] / median['ws']:.2f}x")
    finally:
        await case.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--archive", action="store_true")
    parser.add_argument("--profile", choices=("c2s", "c2s-carbons", "ws"))
    parser.add_argument("--top", type=int, default=35)
    task.react(lambda reactor: defer.ensureDeferred(main(parser.parse_args())))
