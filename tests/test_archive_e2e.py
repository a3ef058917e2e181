"""
End-to-end test of the message archive with a real XMPP client: slixmpp and its XEP-0313 plugin
(C{tests/slixmpp_mam.py}, run as a subprocess) against the c2s door on a loopback port of the
trial reactor, with the real core on a temporary SQLite file.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial import unittest

from tests.helpers import runJSONScript, startLoopbackC2S


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

    async def startServer(self) -> None:
        server = await startLoopbackC2S(self, allowPlaintext=True)
        self.im, self.port = server.im, server.port

    async def runClient(self, *extra: str) -> dict[str, Any]:
        result, err = await runJSONScript(
            self, CLIENT, "--port", str(self.port),
            "--sender", "alice@localhost/rabbit-hole", "--sender-password", "wonderland1",
            "--receiver", "bob@localhost/site", "--receiver-password", "builder123",
            *extra,
        )
        self.assertTrue(result["ok"], f"{result}\n{err}")
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
