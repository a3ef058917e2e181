"""
Tests for the benchmark scripts in C{bench/}: they import, parse their arguments, and their pure
helpers (WebSocket framing, scenario selection, the results table) behave.  Nothing here starts
a server or measures time: the measurements themselves are C{bench/run.py} and
C{bench/guard.py}, run by hand or by CI (see C{docs/performance.md}).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from types import ModuleType
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _load(name: str) -> ModuleType:
    """Import C{bench/<name>.py} (C{bench/} is a folder of scripts, not a package)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)  # the scripts import their sibling benchlib
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class WSBenchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ws = _load("wsbench")

    def test_scenarios(self) -> None:
        parser = self.ws.build_parser()
        cfg = parser.parse_args(["--port", "8081", "--domain", "bench.local", "--password", "benchpass",
                                 "chat", "--pairs", "3", "--window", "2", "--duration", "1"])
        self.assertEqual((cfg.scenario, cfg.pairs, cfg.window, cfg.duration), ("chat", 3, 2, 1.0))
        cfg = parser.parse_args(["cross", "--pairs", "2", "--prefix", "x"])
        self.assertEqual((cfg.scenario, cfg.prefix, cfg.c2s_port), ("cross", "x", 5222))
        cfg = parser.parse_args(["--prefix", "wring", "presence", "--users", "20", "--contacts", "4"])
        self.assertEqual((cfg.users, cfg.contacts), (20, 4))
        for argv in (["login", "--clients", "5"], ["idle", "--clients", "5"], ["provision", "--users", "5"],
                     ["rosters", "--users", "6", "--contacts", "2"]):
            self.assertEqual(parser.parse_args(argv).scenario, argv[0])

    def test_unknownScenario(self) -> None:
        with contextlib.redirect_stderr(io.StringIO()):
            self.assertRaises(SystemExit, self.ws.build_parser().parse_args, ["nope"])

    def test_c2sChatScenario(self) -> None:
        """c2s-chat takes chat's options, and --carbons."""
        parser = self.ws.build_parser()
        cfg = parser.parse_args(["--c2s-port", "5333", "c2s-chat", "--pairs", "4", "--window", "3"])
        self.assertEqual((cfg.scenario, cfg.pairs, cfg.window, cfg.carbons, cfg.c2s_port),
                         ("c2s-chat", 4, 3, False, 5333))
        self.assertTrue(parser.parse_args(["c2s-chat", "--carbons"]).carbons)
        with contextlib.redirect_stderr(io.StringIO()):
            self.assertRaises(SystemExit, parser.parse_args, ["chat", "--carbons"])

    def test_enableCarbons(self) -> None:
        """Every client asks for carbons; an error answer stops the run instead of measuring without."""
        import asyncio
        import re

        ws: Any = self.ws

        class Client:
            def __init__(self, answer: bytes):
                self.sent: list[str] = []
                self.answer = answer

            def send(self, data: str) -> None:
                self.sent.append(data)

            async def expect(self, pattern: Any) -> Any:
                assert pattern == "re_iq carbons-on", pattern  # what the harness's re_iq is asked for
                return re.match(rb".*", self.answer)

        old = ws.xb
        ws.xb = type("xb", (), {"re_iq": staticmethod(lambda iqId: f"re_iq {iqId}")})
        self.addCleanup(setattr, ws, "xb", old)
        clients = [Client(b"<iq type='result' id='carbons-on' to='a@b/c'/>") for _ in range(2)]
        asyncio.run(ws.enable_carbons(clients))
        for client in clients:
            self.assertEqual(client.sent, [ws.CARBONS_ENABLE])
            self.assertIn("urn:xmpp:carbons:2", client.sent[0])
        refused = Client(b"<iq type='error' id='carbons-on'><error type='cancel'/></iq>")
        self.assertRaises(ws.WSError, asyncio.run, ws.enable_carbons([clients[0], refused]))

    def test_frameMasked(self) -> None:
        """Client frames are masked; unmasking with the key gives the payload back."""
        for payload in (b"", b"x", b"{" + b"a" * 200 + b"}", b"b" * 70000):
            mask = b"\x01\x02\x03\x04"
            frame = self.ws.ws_frame(payload, mask)
            self.assertEqual(frame[0], 0x81)
            self.assertTrue(frame[1] & 0x80)
            n = frame[1] & 0x7F
            start = 2
            if n == 126:
                n, start = int.from_bytes(frame[2:4], "big"), 4
            elif n == 127:
                n, start = int.from_bytes(frame[2:10], "big"), 10
            self.assertEqual(n, len(payload))
            key, body = frame[start:start + 4], frame[start + 4:]
            self.assertEqual(key, mask)
            self.assertEqual(bytes(b ^ key[i % 4] for i, b in enumerate(body)), payload)

    def test_parseServerFrames(self) -> None:
        """Unmasked server frames split across reads reach the fast path whole, in order."""

        class Cfg:
            domain = "bench.local"

        client = self.ws.WSClient.__new__(self.ws.WSClient)
        client.handshaking, client.buf, client.frag = False, b"", None
        got: list[bytes] = []
        client.fast = got.extend
        frames = [b'{"type":"message","payload":{"body":"%d:1"}}' % i for i in range(3)]
        wire = b"".join(bytes((0x81, len(f))) + f for f in frames)
        client.data_received(wire[:5])
        client.data_received(wire[5:40])
        client.data_received(wire[40:])
        self.assertEqual(got, frames)
        self.assertEqual([m[0] for m in self.ws.RE_BODY.findall(b"\n".join(got))], [b"0", b"1", b"2"])


class RunTests(unittest.TestCase):
    def setUp(self) -> None:
        self.runpy = _load("run")

    def test_arguments(self) -> None:
        args = self.runpy.build_parser().parse_args(["--quick", "--scenarios", "chat-50x10,ws-chat-50x10",
                                                   "--rounds", "2", "--servers", "xmppjson,prosody"])
        scenarios, servers = self.runpy.select(args)
        self.assertEqual([s.name for s in scenarios], ["chat-50x10", "ws-chat-50x10"])
        self.assertEqual(servers, ["xmppjson", "prosody"])
        self.assertEqual(args.rounds, 2)

    def test_defaultsAndUnknown(self) -> None:
        parser = self.runpy.build_parser()
        scenarios, _ = self.runpy.select(parser.parse_args([]))
        self.assertIn("chat-50x10", [s.name for s in scenarios])
        self.assertRaises(SystemExit, self.runpy.select, parser.parse_args(["--scenarios", "nope"]))
        self.assertRaises(SystemExit, self.runpy.select, parser.parse_args(["--servers", "openfire"]))

    def test_planPairsTheDoors(self) -> None:
        """
        Each JSON door run follows its c2s counterpart on the same xmppjson variant; servers
        rotate from round to round; peers run only their own scenarios.
        """
        r = self.runpy
        scs = [r.SCENARIOS[n] for n in ("chat-50x10", "presence-200x10", "ws-chat-50x10",
                                        "ws-presence-200x10")]
        plan = r.run_plan(scs, ["xmppjson", "ejabberd"], ["xmppjson"], True, 2)
        runs = [(rnd, sc.name, server) for rnd, sc, server in plan if sc is not None]
        self.assertEqual([rnd for rnd, sc, _ in plan if sc is None], [1, 2])
        self.assertEqual(runs[:7], [
            (1, "chat-50x10", "xmppjson"), (1, "ws-chat-50x10", "xmppjson"),
            (1, "chat-50x10", "xmppjson-noarch"), (1, "ws-chat-50x10", "xmppjson-noarch"),
            (1, "chat-50x10", "ejabberd"),
            (1, "presence-200x10", "xmppjson"), (1, "ws-presence-200x10", "xmppjson"),
        ])
        self.assertEqual(runs[8:10], [(2, "chat-50x10", "xmppjson-noarch"),
                                      (2, "ws-chat-50x10", "xmppjson-noarch")])
        # every run of the selection, each once per round
        self.assertEqual(len(runs), 2 * (3 + 2 + 2 + 1))
        # a JSON door scenario selected alone still runs
        alone = r.run_plan([r.SCENARIOS["ws-chat-50x10"]], ["xmppjson"], ["xmppjson"], False, 1)
        self.assertEqual([(sc.name, s) for _, sc, s in alone if sc], [("ws-chat-50x10", "xmppjson")])

    def test_everyRowNamesAScenario(self) -> None:
        for row in self.runpy.ROWS:
            self.assertIn(row.scenario, self.runpy.SCENARIOS)

    def test_table(self) -> None:
        """Medians per label, and ratios computed within each round."""
        results = []
        for rnd, (x, e, p) in enumerate([(1000.0, 500.0, 250.0), (3000.0, 1000.0, 1000.0), (2000.0, 1000.0, 500.0)], 1):
            for server, v in (("xmppjson", x), ("ejabberd", e), ("prosody", p)):
                results.append({"kind": "run", "round": rnd, "label": f"{server}/chat-50x10",
                                "msgs_per_server_cpu_s": v, "lat_p99_ms": 5.0, "lost": 0, "duplicated": 0})
        md = self.runpy.table(json.loads(json.dumps(results)))
        row = next(line for line in md.splitlines() if line.startswith("| chat 50x10 msgs/CPU-s | xmppjson |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        self.assertEqual(cells[2:5], ["2,000", "1,000", "500"])
        self.assertEqual(cells[5:7], ["2.00x", "4.00x"])
        self.assertIn("MET", cells[-1])


class GuardTests(unittest.TestCase):
    def test_arguments(self) -> None:
        guard = _load("guard")
        args = guard.build_parser().parse_args(["--record", "--margin", "0.5", "--rounds", "3"])
        self.assertEqual((args.record, args.margin, args.rounds), (True, 0.5, 3))

    def test_recordedThreshold(self) -> None:
        guard = _load("guard")
        conf = guard.load_config(guard.GUARD_JSON)
        self.assertGreater(conf["min_fraction"], 0)
        self.assertLess(conf["min_fraction"], 1)


class InprocTests(unittest.TestCase):
    """bench/inproc.py drives the real doors: what it feeds is delivered, through both."""

    def test_doorsDeliver(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._doorsDeliver())

    async def _doorsDeliver(self) -> None:
        inproc = _load("inproc")
        for make, marker in ((inproc.c2sDoor, b" hello</body>"), (inproc.wsDoor, b' hello"')):
            door = await make(self, False)
            door.received.kept = []
            micros = inproc.measure(door.feed, door.batches, 10 * inproc.BATCH)
            self.assertGreater(micros, 0)
            # every message reached the recipient, once: each stanza or frame carries its body
            self.assertEqual(b"".join(door.received.kept).count(marker), 10 * inproc.BATCH)
            self.assertEqual(door.fixture.im.router.countOf(f"bob@{door.fixture.config.domain}"), 1)

    def test_carbons(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._carbons())

    async def _carbons(self) -> None:
        """
        The JSON door's sessions have carbons on; inproc turns them on and off for the c2s
        door's, and with one session per user a message is still delivered once.
        """
        inproc = _load("inproc")
        ws = await inproc.wsDoor(self, False)
        self.assertEqual(len(ws.sessions), 2)
        self.assertTrue(all(ws.fixture.im.carbons.enabledFor(s) for s in ws.sessions))
        c2s = await inproc.c2sDoor(self, False)
        carbons = c2s.fixture.im.carbons
        self.assertEqual([s.door for s in c2s.sessions], ["c2s", "c2s"])
        self.assertFalse(any(carbons.enabledFor(s) for s in c2s.sessions))
        inproc.carbons(c2s, True)
        self.assertTrue(all(carbons.enabledFor(s) for s in c2s.sessions))
        c2s.received.kept = []
        inproc.measure(c2s.feed, c2s.batches, 2 * inproc.BATCH)
        self.assertEqual(b"".join(c2s.received.kept).count(b" hello</body>"), 2 * inproc.BATCH)
        inproc.carbons(c2s, False)
        self.assertFalse(any(carbons.enabledFor(s) for s in c2s.sessions))


class InstructionsTests(unittest.TestCase):
    """bench/instructions.py's measured run (here without valgrind) goes through the door."""

    def test_childRuns(self) -> None:
        import subprocess

        instructions = _load("instructions")
        root = os.path.dirname(BENCH)
        for door, carbonsOn in instructions.DOORS.values():
            done = subprocess.run(instructions.child(root, door, carbonsOn, "on", 30), cwd=root,
                                  capture_output=True, text=True, timeout=120)
            self.assertEqual(done.returncode, 0, done.stderr[-2000:])
            # the warm-up's messages and the measured ones, each archived once
            self.assertEqual(done.stdout.split()[-2:], ["archived", "2030"])


class ArchiveDroppedTests(unittest.TestCase):
    def test_countsFromOffset(self) -> None:
        """The archive's shutdown line is read from where this run's part of the log starts."""
        runpy = _load("run")
        log = self.mktemp()
        line = ("2026 [xmppjson.im.archive.Archive#warn] Message archive: {n} messages were not"
                " archived since the server started (1 were)\n")
        earlier = line.format(n=7)
        with open(log, "w") as f:
            f.write(earlier)
            f.write("2026 [x#info] something else\n")
            f.write(line.format(n=40))
        self.assertEqual(runpy.archive_dropped(log), 47)
        self.assertEqual(runpy.archive_dropped(log, len(earlier)), 40)


class PortOffsetTests(unittest.TestCase):
    def test_portOffset(self) -> None:
        runpy = _load("run")
        args = runpy.build_parser().parse_args(["--port-offset", "1000"])
        ctx = runpy.Ctx(args, "python3", "python3", "/tmp/w", "/tmp/o.jsonl")
        conf = runpy.xj_conf(ctx, "xmppjson")
        self.assertEqual((conf["c2s"], conf["web"]), (runpy.XJ_C2S + 1000, runpy.XJ_WEB + 1000))
