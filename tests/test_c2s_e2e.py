"""
End-to-end tests of the XMPP door with a real client over real sockets.

The server's c2s factory (with a real L{Accounts} and L{IMServer} on a temporary SQLite file)
listens on an ephemeral loopback port of the trial reactor; C{tests/slixmpp_client.py} runs as a
subprocess and logs two users in with slixmpp (asyncio), sends a message from one to the other,
and reports what happened as JSON on stdout.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial import unittest

from tests.helpers import runJSONScript, startLoopbackC2S

from xmppjson.c2s.stream import C2SFactory

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slixmpp_client.py")

try:
    import slixmpp  # noqa: F401
except ImportError:  # pragma: no cover - slixmpp is a test dependency
    HAVE_SLIXMPP = False
else:
    HAVE_SLIXMPP = True


class C2SEndToEndTests(unittest.TestCase):
    """Real slixmpp clients against the door on 127.0.0.1."""

    if not HAVE_SLIXMPP:
        skip = "slixmpp is not installed"

    timeout = 60

    async def startServer(self, directTLS: bool = False, **configArgs: Any) -> C2SFactory:
        server = await startLoopbackC2S(self, directTLS, **configArgs)
        self.config, self.accounts, self.im, self.port = (
            server.config, server.accounts, server.im, server.port)
        return server.factory

    async def runClient(
        self,
        *extra: str,
        bobPassword: str = "builder123",
        sender: str = "alice@localhost/rabbit-hole",
        senderPassword: str = "wonderland1",
    ) -> dict[str, Any]:
        result, err = await runJSONScript(
            self, CLIENT, "--port", str(self.port), "--domain", "localhost",
            "--sender", sender, "--sender-password", senderPassword,
            "--receiver", "bob@localhost/site", "--receiver-password", bobPassword,
            "--timeout", "12", *extra,
        )
        result["_stderr"] = err
        return result

    def assertDelivered(self, result: dict[str, Any]) -> None:
        self.assertTrue(result["ok"], result)
        self.assertEqual(result["sender"], "alice@localhost/rabbit-hole")
        self.assertEqual(result["receiver"], "bob@localhost/site")
        self.assertTrue(result["ping"])
        self.assertEqual(
            (result["received"]["from"], result["received"]["body"]),
            ("alice@localhost/rabbit-hole", "Hello from slixmpp"),
        )

    async def test_startTLSAndSCRAM(self) -> None:
        """The default setup: STARTTLS required (self-signed certificate), SCRAM-SHA-256."""
        factory = await self.startServer()
        assert factory.tls is not None
        self.assertTrue(factory.tlsRequired)
        result = await self.runClient(
            "--mode", "starttls", "--ca-file", factory.tls.certificatePath
        )
        self.assertDelivered(result)
        self.assertTrue(result["encrypted"])
        self.assertEqual(result["mechanism"], "SCRAM-SHA-256")

    async def test_startTLSAndSCRAMSHA1(self) -> None:
        factory = await self.startServer()
        assert factory.tls is not None
        result = await self.runClient(
            "--mode", "starttls", "--ca-file", factory.tls.certificatePath, "--mech", "SCRAM-SHA-1"
        )
        self.assertDelivered(result)
        self.assertEqual(result["mechanism"], "SCRAM-SHA-1")

    async def test_plaintextAndPLAIN(self) -> None:
        """With --allow-plaintext: no TLS, SASL PLAIN (the benchmark harness's setup)."""
        await self.startServer(allowPlaintext=True)
        result = await self.runClient("--mode", "plain", "--mech", "PLAIN")
        self.assertDelivered(result)
        self.assertFalse(result["encrypted"])
        self.assertEqual(result["mechanism"], "PLAIN")

    async def test_wrongPassword(self) -> None:
        factory = await self.startServer()
        assert factory.tls is not None
        result = await self.runClient(
            "--mode",
            "starttls",
            "--ca-file",
            factory.tls.certificatePath,
            bobPassword="not-the-password",
        )
        self.assertFalse(result["ok"])
        self.assertEqual(result["stage"], "login")
        self.assertIn(result["error"], ("failed_auth", "failed_all_auth"), result)

    async def test_directTLS(self) -> None:
        """On an C{ssl:} listener (XEP-0368) the stream is secure from the start: no STARTTLS."""
        factory = await self.startServer(directTLS=True)
        assert factory.tls is not None
        result = await self.runClient(
            "--mode", "directtls", "--ca-file", factory.tls.certificatePath
        )
        self.assertDelivered(result)
        self.assertTrue(result["encrypted"])
        self.assertEqual(result["mechanism"], "SCRAM-SHA-256")

    async def test_untrustedCertificate(self) -> None:
        """The client checks the certificate: without the server's PEM it refuses to go on."""
        await self.startServer()
        result = await self.runClient("--mode", "starttls")
        self.assertFalse(result["ok"])
        self.assertEqual(result["stage"], "login")

    async def test_streamManagementResumption(self) -> None:
        """
        XEP-0198 with slixmpp: the receiver's TCP connection is cut, messages sent meanwhile
        wait in its detached session, and after the resumption every message has arrived
        exactly once, on the same session.
        """
        await self.startServer(allowPlaintext=True)
        opened: list[Any] = []
        closed: list[Any] = []
        openSession, closeSession = self.im.openSession, self.im.closeSession

        async def recordOpen(session: Any) -> None:
            opened.append(session)
            await openSession(session)

        def recordClose(session: Any) -> None:
            closed.append(session)
            closeSession(session)

        self.im.openSession = recordOpen  # type: ignore[method-assign]
        self.im.closeSession = recordClose  # type: ignore[method-assign]
        result = await self.runClient("--mode", "plain", "--mech", "PLAIN", "--scenario", "sm")
        self.assertTrue(result["ok"], result)
        self.assertTrue(result["resumed"])
        self.assertEqual(
            result["bodies"],
            [f"before {n}" for n in range(3)] + [f"while away {n}" for n in range(3)] + ["after"],
        )
        bob = [s for s in opened if s.localpart == "bob"]
        self.assertEqual(len(bob), 1)
        # Closed once, at the very end (the client's clean disconnect), never while detached.
        self.assertEqual([s for s in closed if s.localpart == "bob"], bob)

    async def test_clientStateIndication(self) -> None:
        """XEP-0352 with slixmpp: presence and chat states wait until a message arrives."""
        await self.startServer(allowPlaintext=True)
        result = await self.runClient("--mode", "plain", "--mech", "PLAIN", "--scenario", "csi")
        self.assertTrue(result["ok"], result)
        self.assertTrue(result["csiAdvertised"])
        self.assertEqual(result["whileHeld"], [])
        self.assertEqual(result["afterBody"], ["presence:dnd", "body:wake up"], result)

    async def test_inBandRegistration(self) -> None:
        """XEP-0077 with slixmpp over STARTTLS: register, log in, change the password."""
        factory = await self.startServer()
        assert factory.tls is not None
        result = await self.runClient(
            "--mode", "starttls", "--ca-file", factory.tls.certificatePath,
            "--scenario", "register", "--new-password", "looking-glass",
            sender="carol@localhost/tea-party", senderPassword="mad-hatter",
        )
        self.assertTrue(result["ok"], result)
        self.assertTrue(result["registered"])
        self.assertTrue(result["loggedInAgain"])
        self.assertTrue(await self.accounts.checkPassword("carol", "looking-glass"))
