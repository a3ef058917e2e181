"""
End-to-end test of the message archive with a real XMPP client: slixmpp and its XEP-0313 plugin
(C{tests/slixmpp_mam.py}, run as a subprocess) against the c2s door on a loopback port of the
trial reactor, with the real core on a temporary SQLite file.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from xmppjson.accounts import Accounts
from xmppjson.c2s.stream import makeC2SFactory
from xmppjson.config import Config
from xmppjson.im.server import IMServer
from xmppjson.storage import openStore

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slixmpp_mam.py")

try:
    import slixmpp  # noqa: F401
except ImportError:  # pragma: no cover - slixmpp is a test dependency
    HAVE_SLIXMPP = False
else:
    HAVE_SLIXMPP = True


class ArchiveEndToEndTests(unittest.TestCase):
    """slixmpp chats, then reads both archives back with XEP-0313."""

    if not HAVE_SLIXMPP:
        skip = "slixmpp is not installed"

    timeout = 90

    def reactor(self) -> Any:
        from twisted.internet import reactor

        return reactor

    async def startServer(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = Config(
            domain="localhost",
            db=f"sqlite:{os.path.join(directory, 'xmppjson.sqlite3')}",
            allowPlaintext=True,
        )
        reactor = self.reactor()
        store = openStore(config.db, reactor)
        await store.start()
        accounts = Accounts(config, store, reactor)
        self.im = IMServer(config, store, reactor)
        factory = makeC2SFactory(config, accounts, self.im, reactor)
        port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            factory)
        self.port = port.getHost().port

        async def stop() -> None:
            await port.stopListening()
            for stream in list(factory.streams):
                stream.transport.abortConnection()
            await self.im.shutdown()
            await task.deferLater(reactor, 0.05, lambda: None)
            await store.close()

        self.addCleanup(stop)
        await accounts.register("alice", "wonderland1")
        await accounts.register("bob", "builder123")

    async def runClient(self, *extra: str) -> dict[str, Any]:
        args = [
            CLIENT, "--port", str(self.port),
            "--sender", "alice@localhost/rabbit-hole", "--sender-password", "wonderland1",
            "--receiver", "bob@localhost/site", "--receiver-password", "builder123",
            *extra,
        ]
        out, err, code = await getProcessOutputAndValue(
            sys.executable, args, env=dict(os.environ), reactor=self.reactor()
        )
        try:
            result: dict[str, Any] = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail(f"client printed no JSON (exit {code}):\n{out!r}\n{err.decode()[-3000:]}")
        self.assertTrue(result["ok"], f"{result}\n{err.decode('utf-8', 'replace')[-3000:]}")
        return result

    async def test_chatThenQueryOwnArchive(self) -> None:
        await self.startServer()
        result = await self.runClient("--count", "5", "--page", "2")
        live = result["live"]
        self.assertEqual([m["body"] for m in live],
                         [f"message {n}" for n in range(5)] + ["reply"])
        # every live message carries the archive id as its stanza-id, by the recipient
        self.assertEqual([m["stanza_id_by"] for m in live],
                         ["bob@localhost"] * 5 + ["alice@localhost"])
        ids = [m["stanza_id"] for m in live]
        self.assertEqual(len(set(ids)), 6)
        self.assertIn("urn:xmpp:mam:2", result["features"])
        self.assertIn("urn:xmpp:mam:2#extended", result["features"])

        # bob's archive: what he received and what he sent, in order, under the same ids
        everything = result["receiver_all"]
        self.assertEqual([r["id"] for r in everything["results"]], ids)
        self.assertEqual([r["body"] for r in everything["results"]],
                         [m["body"] for m in live])
        first = everything["results"][0]
        self.assertEqual((first["from"], first["to"], first["message_id"]),
                         ("alice@localhost/rabbit-hole", "bob@localhost", live[0]["id"]))
        self.assertTrue(first["stamp"].endswith("+00:00"))
        self.assertEqual((everything["complete"], everything["count"]), ("true", "6"))
        self.assertEqual((everything["first"], everything["first_index"], everything["last"]),
                         (ids[0], "0", ids[-1]))
        # alice's archive holds the same conversation from her side
        self.assertEqual([r["id"] for r in result["sender_all"]["results"]], ids)
        self.assertEqual([r["id"] for r in result["receiver_with_sender"]["results"]], ids)

        # paged two at a time (XEP-0059 after=<last>) until complete: the same, in order
        self.assertEqual([r["id"] for r in result["paged"]], ids)
        # and backwards from the last page (an empty <before/>, then before=<first>)
        self.assertEqual([r["id"] for r in result["backwards"]], ids[::-1])

        self.assertTrue({"FORM_TYPE", "with", "start", "end"} <= set(result["fields"]))
        self.assertEqual(result["metadata"], {"start": ids[0], "end": ids[-1]})
