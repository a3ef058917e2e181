"""
End-to-end tests of the account features with slixmpp's own plugins over real sockets: vCards
(XEP-0054), vCard avatars (XEP-0153), last activity (XEP-0012), blocking (XEP-0191) and message
carbons (XEP-0280).

The server's c2s factory (a real L{Accounts} and L{IMServer} on a temporary SQLite file, with
plaintext allowed) listens on an ephemeral loopback port of the trial reactor;
C{tests/slixmpp_features.py} runs as a subprocess with three clients (two resources of alice,
one of bob) and reports what each plugin saw as JSON.  The test then checks that what XMPP
clients did is what the REST API reads from the store.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from twisted.trial import unittest

from tests.helpers import runJSONScript, startLoopbackC2S

from xmppjson.storage import RosterItem

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slixmpp_features.py")
AVATAR = b"\x89PNG\r\n\x1a\n" + bytes(range(200))

try:
    import slixmpp  # noqa: F401
except ImportError:  # pragma: no cover - slixmpp is a test dependency
    HAVE_SLIXMPP = False
else:
    HAVE_SLIXMPP = True


class FeaturesEndToEndTests(unittest.TestCase):
    """slixmpp's XEP plugins against the XMPP door on 127.0.0.1."""

    if not HAVE_SLIXMPP:
        skip = "slixmpp is not installed"

    timeout = 90

    async def startServer(self) -> None:
        server = await startLoopbackC2S(self, allowPlaintext=True)
        self.im, self.store, self.port = server.im, server.store, server.port
        # Mutual contacts: bob may see alice's presence and last activity.
        await self.store.setRosterItem("alice", RosterItem(jid="bob@localhost", subscription="both"))
        await self.store.setRosterItem("bob", RosterItem(jid="alice@localhost", subscription="both"))

    async def runClient(self) -> dict[str, Any]:
        result, err = await runJSONScript(
            self, CLIENT, "--port", str(self.port), "--domain", "localhost",
            "--alice-password", "wonderland1", "--bob-password", "builder123", "--timeout", "60",
        )
        result["_stderr"] = err
        return result

    async def test_everyFeatureWithSlixmpp(self) -> None:
        await self.startServer()
        result = await self.runClient()
        self.assertTrue(result["ok"], result)

        # XEP-0280: a message to one resource is copied to the other, both directions
        self.assertEqual(result["carbons"], {
            "receivedFrom": "alice@localhost",
            "receivedInner": ["bob@localhost/site", "alice@localhost/phone", "to the phone"],
            "sentInner": ["alice@localhost/phone", "bob@localhost", "from the phone"],
        })

        # XEP-0054 and XEP-0153: what alice published, bob reads, with the avatar's hash in
        # her presence
        self.assertEqual(result["vcard"], {
            "from": "alice@localhost",
            "FN": "Alice Liddell",
            "NICKNAME": ["alice"],
            "ORGNAME": "Wonderland",
            "USERID": "alice@example.org",
            "DESC": "Curiouser and curiouser",
            "TYPE": "image/png",
            "photoMatches": True,
            "unknown": "service-unavailable",
        })
        self.assertEqual(result["avatar"]["hash"], hashlib.sha1(AVATAR).hexdigest())

        # XEP-0012
        self.assertEqual(result["last"]["online"], 0)
        self.assertGreaterEqual(result["last"]["uptime"], 0)
        self.assertGreaterEqual(result["lastOffline"]["seconds"], 0)
        self.assertLess(result["lastOffline"]["seconds"], 30)
        self.assertEqual(result["lastOffline"]["status"], "Down the rabbit hole")

        # XEP-0191
        self.assertEqual(result["blocking"], {
            "initial": [],
            "pushed": ["bob@localhost"],
            "bobSawAliceGo": ["alice@localhost/desk", "alice@localhost/phone"],
            "list": ["bob@localhost"],
            "bobGot": "service-unavailable",
            "aliceGot": "not-acceptable",
            "aliceGotBlocked": True,
            "afterUnblock": "delivered",
        })

        # What the XMPP clients did is what the REST API reads (/login, GET /me).
        await self.im.presence.lastSeen.flush()
        profile = await self.store.getProfile("alice")
        self.assertEqual(
            {k: profile[k] for k in ("full_name", "nick_name", "company", "email", "about")},
            {"full_name": "Alice Liddell", "nick_name": "alice", "company": "Wonderland",
             "email": "alice@example.org", "about": "Curiouser and curiouser"},
        )
        self.assertEqual(profile["avatar"],
                         "data:image/png;base64," + base64.b64encode(AVATAR).decode())
        self.assertEqual((profile["presence"], profile["status"]),
                         ("unavailable", "Down the rabbit hole"))
        self.assertEqual(await self.store.getBlocklist("alice"), [])
