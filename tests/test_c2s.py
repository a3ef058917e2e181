"""
Tests for the XMPP door (L{xmppjson.c2s}): the real protocol on a L{StringTransport} with a
L{task.Clock}, a real L{Accounts} and a real L{IMServer} on C{sqlite::memory:}.

The store runs SQLite in a worker thread of the real reactor, so tests that authenticate or bind
wait (briefly, on the real reactor) for the answer to appear on the transport; the code under
test only ever sees the Clock.
"""

from __future__ import annotations

import base64
import os
import stat
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scramp import ScramClient
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.words.protocols.jabber.xmpp_stringprep import resourceprep
from twisted.words.xish import domish

from tests.helpers import parentLinks
from xmppjson.accounts import Accounts
from xmppjson.c2s import sasl, tls
from xmppjson.c2s.sm import StreamManagement
from xmppjson.c2s.stream import (
    MAX_AUTH_FAILURES,
    NS_BIND,
    NS_CLIENT,
    NS_SASL,
    NS_SESSION,
    NS_STREAMS,
    NS_TLS,
    C2SFactory,
    C2SSession,
    _prepareResource,
    makeC2SFactory,
    serialize,
)
from xmppjson.config import Config
from xmppjson.im.server import IMServer
from xmppjson.storage import openStore

DOMAIN = "localhost"
NS_XMPP_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

HEADER = (
    "<?xml version='1.0'?><stream:stream to='{to}' version='1.0' xml:lang='en' "
    "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)

_serverTLS: tls.ServerTLS | None = None


def serverTLS() -> tls.ServerTLS:
    """One generated certificate for the whole module (RSA generation takes a moment)."""
    global _serverTLS
    if _serverTLS is None:
        _serverTLS = tls.ServerTLS(*_optionsFor(tls.generateSelfSigned(DOMAIN)))
    return _serverTLS


def _optionsFor(pem: bytes) -> tuple[Any, str, bool, str]:
    options, fingerprint = tls.contextFromPEM(pem, pem)
    return options, "<memory>", True, fingerprint


def realReactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def waitUntil(predicate: Any, timeout: float = 5.0) -> None:
    """Let the store's thread and its callbacks run until C{predicate()} holds."""
    reactor = realReactor()
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("timed out waiting for the server")
        await task.deferLater(reactor, 0.002, lambda: None)


class Wire:
    """
    One client connection on a StringTransport, with a client-side parser for what the server
    writes.

    @ivar elements: top-level elements the server sent since the last L{take}.
    @ivar headers: stream headers the server sent, in order.
    """

    def __init__(self, factory: C2SFactory, host: str = "127.0.0.1"):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.tlsStarted: list[Any] = []
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.elements: list[domish.Element] = []
        self.headers: list[domish.Element] = []
        self.ended = False
        self._newParser()
        self.protocol.makeConnection(self.transport)

    def fakeStartTLS(self) -> None:
        """StringTransport has no TLS: record the call instead (the bytes stay readable)."""
        self.transport.startTLS = self.tlsStarted.append  # type: ignore[attr-defined]

    def _newParser(self) -> None:
        self._parser = domish.elementStream()
        self._parser.DocumentStartEvent = self.headers.append
        self._parser.ElementEvent = self.elements.append
        self._parser.DocumentEndEvent = self._onEnd

    def _onEnd(self) -> None:
        self.ended = True

    def restart(self) -> None:
        """The server restarted the stream (after TLS or SASL): read a new document."""
        self.pump()
        self._newParser()

    def send(self, data: str | bytes) -> None:
        self.protocol.dataReceived(data.encode("utf-8") if isinstance(data, str) else data)

    def pump(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        if data:
            self._parser.parse(data)

    def take(self) -> list[domish.Element]:
        self.pump()
        elements, self.elements[:] = list(self.elements), []
        return elements

    def streamError(self) -> str | None:
        """The condition of a stream error the server sent, if any."""
        for element in self.take():
            if element.uri == NS_STREAMS and element.name == "error":
                for child in element.elements():
                    if child.uri == NS_XMPP_STREAMS and child.name != "text":
                        return child.name
        return None

    async def waitFor(self, name: str, uri: str | None = None) -> domish.Element:
        """Wait until the server sends a top-level C{name} element; return it."""
        found: list[domish.Element] = []

        def look() -> bool:
            self.pump()
            for element in self.elements:
                if element.name == name and (uri is None or element.uri == uri):
                    found.append(element)
                    self.elements.remove(element)
                    return True
            return False

        await waitUntil(look)
        return found[0]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    @property
    def session(self) -> C2SSession:
        """The bound session (the stream must have one)."""
        session = self.protocol.session
        assert session is not None
        return session

    @property
    def sm(self) -> StreamManagement:
        """The session's XEP-0198 state (it must have been enabled)."""
        sm = self.session.sm
        assert sm is not None
        return sm

    def lose(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))


def saslText(element: domish.Element) -> bytes:
    text = str(element).strip()
    return b"" if text in ("", "=") else base64.b64decode(text)


def failureCondition(element: domish.Element) -> str:
    assert element.name == "failure", element.toXml()
    return next(c.name for c in element.elements() if c.name != "text")


def mechanisms(features: domish.Element) -> list[str]:
    for child in features.elements(NS_SASL, "mechanisms"):
        return [str(m) for m in child.elements(NS_SASL, "mechanism")]
    return []


class C2SFixture:
    """A real Accounts and IMServer on sqlite::memory:, a Clock, and a factory for Wires."""

    def __init__(self, testCase: unittest.TestCase, useTLS: bool = True, **configArgs: Any):
        self.clock = task.Clock()
        settings: dict[str, Any] = {
            "domain": DOMAIN,
            "db": "sqlite::memory:",
            "scramIterations": 4096,
        }
        settings.update(configArgs)
        self.config = Config(**settings)
        self.store = openStore(self.config.db, realReactor())
        self.accounts = Accounts(self.config, self.store, self.clock)
        self.im = IMServer(self.config, self.store, self.clock)
        self.factory = C2SFactory(
            self.config, self.accounts, self.im, self.clock, serverTLS() if useTLS else None
        )
        self.wires: list[Wire] = []
        testCase.addCleanup(self.stop)

    async def start(self, *users: str) -> C2SFixture:
        await self.store.start()
        for user in users:
            await self.accounts.register(user, "secret123")
        return self

    async def stop(self) -> None:
        for wire in self.wires:
            if not wire.protocol.lost:
                wire.lose()
        await self.im.shutdown()
        await self.store.close()

    def recordUndeliverable(self) -> list[domish.Element]:
        """Replace the core's C{undeliverable} with a list of what the door hands back."""
        handedBack: list[domish.Element] = []

        def record(session: Any, element: domish.Element) -> None:
            handedBack.append(element)

        self.im.undeliverable = record  # type: ignore[method-assign]
        return handedBack

    def recordClosed(self) -> list[Any]:
        """Sessions the door closes in the core (the real C{closeSession} still runs)."""
        closed: list[Any] = []
        original = self.im.closeSession

        def record(session: Any) -> None:
            closed.append(session)
            original(session)

        self.im.closeSession = record  # type: ignore[method-assign]
        return closed

    def connect(self, host: str = "127.0.0.1") -> Wire:
        wire = Wire(self.factory, host)
        self.wires.append(wire)
        return wire

    def open(self, host: str = "127.0.0.1") -> tuple[Wire, domish.Element]:
        """Connect and send the stream header; return the wire and the features."""
        wire = self.connect(host)
        wire.send(HEADER.format(to=DOMAIN))
        elements = wire.take()
        assert elements and elements[0].name == "features", [e.toXml() for e in elements]
        return wire, elements[0]

    async def plainLogin(
        self, wire: Wire, user: str = "juliet", password: str = "secret123"
    ) -> domish.Element:
        payload = base64.b64encode(f"\x00{user}\x00{password}".encode()).decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        return await wire.waitFor("success", NS_SASL)

    async def login(
        self, user: str = "juliet", resource: str | None = "balcony", host: str = "127.0.0.1"
    ) -> Wire:
        """A bound session over PLAIN (the fixture must allow plaintext)."""
        wire, _ = self.open(host)
        await self.plainLogin(wire, user)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        resourceXML = f"<resource>{resource}</resource>" if resource else ""
        wire.send(f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'>{resourceXML}</bind></iq>")
        result = await wire.waitFor("iq")
        assert result["type"] == "result", result.toXml()
        return wire


def stanzaErrorCondition(stanza: domish.Element) -> str:
    error = next(stanza.elements(NS_CLIENT, "error"))
    return next(c.name for c in error.elements() if c.uri == NS_STANZAS)


def jidOfBind(result: domish.Element) -> str:
    bind = next(result.elements(NS_BIND, "bind"))
    return str(next(bind.elements(NS_BIND, "jid")))


class StreamHeaderTests(unittest.TestCase):
    """RFC 6120 section 4: the stream header and features."""

    async def test_headerAndFeaturesTLSRequired(self) -> None:
        fx = await C2SFixture(self).start()
        wire, features = fx.open()
        header = wire.headers[0]
        self.assertEqual((header.uri, header.name), (NS_STREAMS, "stream"))
        self.assertEqual(header["from"], DOMAIN)
        self.assertEqual(header["version"], "1.0")
        self.assertTrue(header["id"])
        self.assertEqual(
            header.getAttribute(("http://www.w3.org/XML/1998/namespace", "lang")), "en"
        )
        starttls = next(features.elements(NS_TLS, "starttls"))
        self.assertEqual([c.name for c in starttls.elements()], ["required"])
        # Nothing else may be negotiated before TLS when TLS is required.
        self.assertEqual(mechanisms(features), [])

    async def test_featuresAllowPlaintext(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start()
        _, features = fx.open()
        starttls = next(features.elements(NS_TLS, "starttls"))
        self.assertEqual(list(starttls.elements()), [])
        self.assertEqual(mechanisms(features), ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])

    async def test_featuresWithoutCertificate(self) -> None:
        fx = await C2SFixture(self, useTLS=False).start()
        _, features = fx.open()
        self.assertEqual(list(features.elements(NS_TLS, "starttls")), [])
        self.assertEqual(mechanisms(features), ["SCRAM-SHA-256", "SCRAM-SHA-1"])

    async def test_hostUnknown(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send(HEADER.format(to="example.org"))
        self.assertEqual(wire.streamError(), "host-unknown")
        self.assertEqual(wire.headers[0]["from"], DOMAIN)
        self.assertTrue(wire.ended)
        self.assertTrue(wire.closed)

    async def test_missingTo(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send(HEADER.replace("to='{to}' ", ""))
        self.assertEqual(wire.streamError(), "host-unknown")

    async def test_toIsCaseInsensitive(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send(HEADER.format(to="LocalHost"))
        self.assertEqual(wire.take()[0].name, "features")

    async def test_invalidNamespace(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send(HEADER.format(to=DOMAIN).replace("jabber:client", "jabber:server"))
        self.assertEqual(wire.streamError(), "invalid-namespace")

    async def test_wrongStreamNamespace(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send(HEADER.format(to=DOMAIN).replace("http://etherx.jabber.org/streams", "urn:x"))
        self.assertEqual(wire.streamError(), "invalid-namespace")

    async def test_unsupportedVersion(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send(HEADER.format(to=DOMAIN).replace(" version='1.0' xml:lang", " xml:lang"))
        self.assertEqual(wire.streamError(), "unsupported-version")

    async def test_streamIdChangesOnRestart(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        self.assertNotEqual(wire.headers[0]["id"], wire.headers[1]["id"])

    async def test_clientCloses(self) -> None:
        """C{</stream:stream>} from the client is answered with ours, then the connection closes."""
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.send("</stream:stream>")
        wire.pump()
        self.assertTrue(wire.ended)
        self.assertTrue(wire.closed)

    async def test_clientStreamError(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.send(f"<stream:error><system-shutdown xmlns='{NS_XMPP_STREAMS}'/></stream:error>")
        wire.pump()
        self.assertTrue(wire.ended)
        self.assertTrue(wire.closed)

    async def test_whitespaceKeepalive(self) -> None:
        fx = await C2SFixture(self, maxStanzaSizePreAuth=64).start()
        wire, _ = fx.open()
        for _ in range(200):
            wire.send(" ")
        wire.send("\n\t ")
        self.assertFalse(wire.closed)
        self.assertEqual(wire.take(), [])


class StartTLSTests(unittest.TestCase):
    """RFC 6120 section 5, on a StringTransport whose startTLS is faked."""

    async def test_proceed(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.fakeStartTLS()
        wire.send(f"<starttls xmlns='{NS_TLS}'/>")
        proceed = wire.take()
        self.assertEqual([(e.uri, e.name) for e in proceed], [(NS_TLS, "proceed")])
        self.assertEqual(wire.tlsStarted, [serverTLS().contextFactory])
        self.assertTrue(wire.protocol.secure)
        # The stream restarts: a new header gets a new header and the post-TLS features.
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        features = wire.take()[0]
        self.assertEqual(list(features.elements(NS_TLS, "starttls")), [])
        self.assertEqual(mechanisms(features), ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
        self.assertEqual(len(wire.headers), 2)

    async def test_plaintextAfterStartTLSIsDiscarded(self) -> None:
        """
        Bytes sent in the same packet after C{<starttls/>} (before the TLS handshake) never
        become elements of the new stream (the STARTTLS command injection attack).
        """
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.fakeStartTLS()
        wire.send(
            f"<starttls xmlns='{NS_TLS}'/>"
            f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGp1bGlldABzZWNyZXQxMjM=</auth>"
        )
        wire.take()
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        self.assertEqual([e.name for e in wire.take()], ["features"])
        self.assertFalse(wire.closed)
        self.assertIsNone(wire.protocol.authenticator.authenticated)

    async def test_startTLSTwice(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.fakeStartTLS()
        wire.send(f"<starttls xmlns='{NS_TLS}'/>")
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.assertEqual([e.name for e in wire.take()], ["failure"])
        self.assertTrue(wire.closed)

    async def test_noCertificate(self) -> None:
        fx = await C2SFixture(self, useTLS=False).start()
        wire, _ = fx.open()
        wire.send(f"<starttls xmlns='{NS_TLS}'/>")
        self.assertEqual([e.name for e in wire.take()], ["failure"])
        self.assertTrue(wire.closed)


class PlainTests(unittest.TestCase):
    """SASL PLAIN (RFC 4616) and the failure conditions of RFC 6120 section 6.5."""

    async def test_refusedWithoutTLS(self) -> None:
        fx = await C2SFixture(self, useTLS=False).start("juliet")
        wire, _ = fx.open()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGp1bGlldABzZWNyZXQxMjM=</auth>")
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "encryption-required")
        self.assertIsNone(wire.protocol.authenticator.authenticated)

    async def test_refusedBeforeRequiredTLS(self) -> None:
        fx = await C2SFixture(self).start("juliet")
        wire, _ = fx.open()
        wire.send(
            f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>biwsbj1qdWxpZXQscj1hYmM=</auth>"
        )
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "encryption-required")

    async def test_allowedOverTLS(self) -> None:
        fx = await C2SFixture(self).start("juliet")
        wire, _ = fx.open()
        wire.fakeStartTLS()
        wire.send(f"<starttls xmlns='{NS_TLS}'/>")
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        await fx.plainLogin(wire)
        self.assertEqual(wire.protocol.authenticator.authenticated, "juliet")

    async def test_ok(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        success = await fx.plainLogin(wire, user="Juliet")
        self.assertEqual(str(success), "")
        self.assertEqual(wire.protocol.authenticator.authenticated, "juliet")
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        features = wire.take()[0]
        self.assertEqual(len(list(features.elements(NS_BIND, "bind"))), 1)
        session = next(features.elements(NS_SESSION, "session"))
        self.assertEqual([c.name for c in session.elements()], ["optional"])
        self.assertEqual(mechanisms(features), [])

    async def test_noInitialResponse(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'/>")
        challenge = await wire.waitFor("challenge", NS_SASL)
        self.assertEqual(saslText(challenge), b"")
        payload = base64.b64encode(b"\x00juliet\x00secret123").decode()
        wire.send(f"<response xmlns='{NS_SASL}'>{payload}</response>")
        await wire.waitFor("success", NS_SASL)

    async def test_authzidOwnJID(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        payload = base64.b64encode(b"juliet@localhost\x00juliet\x00secret123").decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        await wire.waitFor("success", NS_SASL)

    async def test_authzidOther(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet", "romeo")
        wire, _ = fx.open()
        payload = base64.b64encode(b"romeo@localhost\x00juliet\x00secret123").decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "invalid-authzid")

    async def test_badPassword(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        payload = base64.b64encode(b"\x00juliet\x00wrong-password").decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "not-authorized")
        self.assertFalse(wire.closed)
        # A retry with the right password works.
        await fx.plainLogin(wire)

    async def test_unknownUser(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        payload = base64.b64encode(b"\x00nobody\x00secret123").decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "not-authorized")

    async def test_tooManyFailures(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        payload = base64.b64encode(b"\x00juliet\x00wrong-password").decode()
        for attempt in range(MAX_AUTH_FAILURES):
            wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
            failure = await wire.waitFor("failure", NS_SASL)
            self.assertEqual(failureCondition(failure), "not-authorized")
        self.assertEqual(wire.streamError(), "policy-violation")
        self.assertTrue(wire.closed)

    async def test_malformed(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        for message in (
            b"juliet secret123",
            b"\x00juliet",
            b"a\x00b\x00c\x00d",
            b"\xff\x00\xfe\x00x",
        ):
            payload = base64.b64encode(message).decode()
            wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
            failure = await wire.waitFor("failure", NS_SASL)
            self.assertEqual(failureCondition(failure), "malformed-request", message)
            wire.protocol.authenticator.authFailures = 0

    async def test_badBase64(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>not*base64!</auth>")
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "incorrect-encoding")

    async def test_invalidMechanism(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        for name in ("DIGEST-MD5", "SCRAM-SHA-1-PLUS", ""):
            wire.send(f"<auth xmlns='{NS_SASL}' mechanism='{name}'>=</auth>")
            failure = await wire.waitFor("failure", NS_SASL)
            self.assertEqual(failureCondition(failure), "invalid-mechanism")
            wire.protocol.authenticator.authFailures = 0

    async def test_abort(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'/>")
        await wire.waitFor("challenge", NS_SASL)
        wire.send(f"<abort xmlns='{NS_SASL}'/>")
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "aborted")
        # The aborted exchange is gone: a response now is out of place.
        wire.send(f"<response xmlns='{NS_SASL}'>AGp1bGlldABzZWNyZXQxMjM=</response>")
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "malformed-request")

    async def test_authAfterSuccess(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGp1bGlldABzZWNyZXQxMjM=</auth>")
        self.assertEqual(wire.streamError(), "policy-violation")


class ScramTests(unittest.TestCase):
    """SCRAM-SHA-256 and SCRAM-SHA-1, computed on the client side by scramp."""

    async def exchange(
        self, mechanism: str, user: str = "juliet", password: str = "secret123"
    ) -> tuple[Wire, domish.Element, ScramClient]:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, features = fx.open()
        self.assertIn(mechanism, mechanisms(features))
        client = ScramClient([mechanism], user, password)
        first = base64.b64encode(client.get_client_first().encode()).decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{first}</auth>")
        challenge = await wire.waitFor("challenge", NS_SASL)
        client.set_server_first(saslText(challenge).decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        wire.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
        result = await waitForEither(wire, "success", "failure")
        return wire, result, client

    async def test_sha256(self) -> None:
        wire, result, client = await self.exchange("SCRAM-SHA-256")
        self.assertEqual(result.name, "success")
        # The server proves it knows the keys too (additional data with success).
        client.set_server_final(saslText(result).decode())
        self.assertEqual(wire.protocol.authenticator.authenticated, "juliet")

    async def test_sha1(self) -> None:
        _, result, client = await self.exchange("SCRAM-SHA-1")
        self.assertEqual(result.name, "success")
        client.set_server_final(saslText(result).decode())

    async def test_badProof(self) -> None:
        wire, result, _ = await self.exchange("SCRAM-SHA-256", password="wrong-password")
        self.assertEqual(failureCondition(result), "not-authorized")
        self.assertIsNone(wire.protocol.authenticator.authenticated)

    async def test_unknownUser(self) -> None:
        """
        An unknown user gets a normal-looking challenge (with a salt that stays the same) and
        fails only at the end, like a wrong password.
        """
        wire, result, client = await self.exchange("SCRAM-SHA-256", user="nobody")
        self.assertEqual(failureCondition(result), "not-authorized")
        salt = client.salt
        again = ScramClient(["SCRAM-SHA-256"], "nobody", "x")
        first = base64.b64encode(again.get_client_first().encode()).decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
        challenge = await wire.waitFor("challenge", NS_SASL)
        again.set_server_first(saslText(challenge).decode())
        self.assertEqual(again.salt, salt)

    async def test_clientFirstInResponse(self) -> None:
        """Without an initial response the server asks for the client-first-message."""
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        client = ScramClient(["SCRAM-SHA-1"], "juliet", "secret123")
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'/>")
        self.assertEqual(saslText(await wire.waitFor("challenge", NS_SASL)), b"")
        first = base64.b64encode(client.get_client_first().encode()).decode()
        wire.send(f"<response xmlns='{NS_SASL}'>{first}</response>")
        client.set_server_first(saslText(await wire.waitFor("challenge", NS_SASL)).decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        wire.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
        client.set_server_final(saslText(await wire.waitFor("success", NS_SASL)).decode())

    async def test_malformedMessages(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        for message in (
            b"garbage",
            b"n,,r=abc",
            b"n,,n=juliet",
            b"n,,n=jul=41iet,r=abc",
            b"x,,n=juliet,r=abc",
            b"n,,n=juliet,r=abc,m=ext",
            b"n,a=juliet@localhost,n=juliet,r=abc",
            b"p=tls-unique,,n=juliet,r=abc",
            b"\xff\xfe",
        ):
            payload = base64.b64encode(message).decode()
            wire.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{payload}</auth>")
            failure = await wire.waitFor("failure", NS_SASL)
            self.assertEqual(failureCondition(failure), "malformed-request", message)
            wire.protocol.authenticator.authFailures = 0
        # A broken client-final after a good client-first.
        client = ScramClient(["SCRAM-SHA-256"], "juliet", "secret123")
        first = base64.b64encode(client.get_client_first().encode()).decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
        await wire.waitFor("challenge", NS_SASL)
        wire.send(
            f"<response xmlns='{NS_SASL}'>{base64.b64encode(b'c=biws,r=zzz').decode()}</response>"
        )
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "malformed-request")
        self.assertFalse(wire.closed)

    def test_usernameEscapes(self) -> None:
        self.assertEqual(sasl.parseScramUsername("n,,n=a=2Cb=3Dc,r=x"), "a,b=c")
        self.assertRaises(sasl.SASLFailure, sasl.parseScramUsername, "n,,n=a=2,r=x")


async def waitForEither(wire: Wire, *names: str) -> domish.Element:
    found: list[domish.Element] = []

    def look() -> bool:
        wire.pump()
        for element in wire.elements:
            if element.name in names:
                found.append(element)
                wire.elements.remove(element)
                return True
        return False

    await waitUntil(look)
    return found[0]


class BindTests(unittest.TestCase):
    """Resource binding (RFC 6120 section 7) and the legacy session."""

    def test_prepareResourceLikeStringprep(self) -> None:
        """
        The printable-ASCII shortcut prepares (or refuses) every resource exactly as the full
        resourceprep profile does.
        """

        def outcome(prepare: Any, text: str) -> str | None:
            try:
                return prepare(text)
            except UnicodeError:
                return None

        samples = [f"Ab{chr(code)} c" for code in range(128)]
        samples += ["", " ", "Phone", "\u00c9cran", "\u2168", "a\u00adb", "\ufb01", "\u05d0a"]
        for text in samples:
            self.assertEqual(
                outcome(_prepareResource, text), outcome(resourceprep.prepare, text), repr(text)
            )

    async def test_clientResource(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login(resource="balcony")
        session = wire.session
        self.assertIsInstance(session, C2SSession)
        self.assertEqual(session.full, "juliet@localhost/balcony")
        self.assertIs(fx.im.router.session("juliet@localhost", "balcony"), session)

    async def test_bindResultJID(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(
            f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'><resource>Home Ⅳ</resource></bind></iq>"
        )
        result = await wire.waitFor("iq")
        self.assertEqual(result["id"], "b1")
        # resourceprep (NFKC) applies to the requested resource.
        self.assertEqual(jidOfBind(result), "juliet@localhost/Home IV")

    async def test_generatedResource(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'/></iq>")
        result = await wire.waitFor("iq")
        jid = jidOfBind(result)
        self.assertTrue(jid.startswith("juliet@localhost/"))
        self.assertGreater(len(jid), len("juliet@localhost/"))
        self.assertEqual(wire.session.full, jid)

    async def test_invalidResource(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(
            f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'><resource>a\ue000b</resource></bind></iq>"
        )
        error = await wire.waitFor("iq")
        self.assertEqual(error["type"], "error")
        condition = stanzaErrorCondition(error)
        self.assertEqual(condition, "bad-request")
        self.assertIsNone(wire.protocol.session)
        # The client may try again.
        wire.send(
            f"<iq type='set' id='b2'><bind xmlns='{NS_BIND}'><resource>ok</resource></bind></iq>"
        )
        self.assertEqual((await wire.waitFor("iq"))["type"], "result")

    async def test_bindTwice(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.send(
            f"<iq type='set' id='b2'><bind xmlns='{NS_BIND}'><resource>other</resource></bind></iq>"
        )
        error = wire.take()[0]
        self.assertEqual((error["type"], error["id"]), ("error", "b2"))
        self.assertEqual(stanzaErrorCondition(error), "not-allowed")
        self.assertEqual(wire.session.resource, "balcony")

    async def test_legacySession(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.send(f"<iq type='set' id='s1'><session xmlns='{NS_SESSION}'/></iq>")
        result = wire.take()[0]
        self.assertEqual((result.name, result["type"], result["id"]), ("iq", "result", "s1"))

    async def test_openSessionRefused(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, maxSessionsPerUser=1).start("juliet")
        await fx.login(resource="one")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(
            f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'><resource>two</resource></bind></iq>"
        )
        error = await wire.waitFor("iq")
        self.assertEqual(error["type"], "error")
        self.assertIsNone(wire.protocol.session)
        self.assertFalse(wire.closed)

    async def test_conflict(self) -> None:
        """A second bind of the same full JID replaces the first, which ends with conflict."""
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        first = await fx.login(resource="same")
        second = await fx.login(resource="same")
        self.assertEqual(first.streamError(), "conflict")
        self.assertTrue(first.closed)
        first.lose()
        self.assertIs(fx.im.router.session("juliet@localhost", "same"), second.protocol.session)

    async def test_pipelinedAfterBind(self) -> None:
        """Stanzas sent right behind the bind request are handled once it is bound."""
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(
            f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'><resource>r</resource></bind></iq>"
            f"<iq type='set' id='s1'><session xmlns='{NS_SESSION}'/></iq>"
        )
        def both() -> bool:
            wire.pump()
            return len(wire.elements) >= 2

        await waitUntil(both)
        self.assertEqual([e["id"] for e in wire.take()], ["b1", "s1"])
        self.assertFalse(wire.closed)


class StanzaGateTests(unittest.TestCase):
    """What may and may not be sent before the stream is bound."""

    async def test_stanzaBeforeAuth(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.send("<message to='romeo@localhost'><body>hi</body></message>")
        self.assertEqual(wire.streamError(), "not-authorized")
        self.assertTrue(wire.closed)

    async def test_stanzaBeforeBind(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send("<presence/>")
        self.assertEqual(wire.streamError(), "not-authorized")

    async def test_unknownTopLevelElement(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.send("<frobnicate xmlns='urn:example:unknown'/>")
        self.assertEqual(wire.streamError(), "unsupported-stanza-type")


class XMLRestrictionTests(unittest.TestCase):
    """Malformed and restricted XML, and the size limits."""

    async def test_notWellFormed(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.send("<message><body>hi</message>")
        self.assertEqual(wire.streamError(), "not-well-formed")
        self.assertTrue(wire.closed)

    async def test_notWellFormedHeader(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send("<<<")
        self.assertEqual(wire.streamError(), "not-well-formed")
        self.assertEqual(len(wire.headers), 1)

    async def test_undefinedEntity(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.send("<message><body>&lol;</body></message>")
        self.assertEqual(wire.streamError(), "not-well-formed")

    async def test_dtdRefused(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send(
            "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
            "<!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>" + HEADER.format(to=DOMAIN)[21:]
        )
        self.assertEqual(wire.streamError(), "restricted-xml")
        self.assertTrue(wire.closed)

    async def test_processingInstructionRefused(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.send("<?evil data?>")
        self.assertEqual(wire.streamError(), "restricted-xml")

    async def test_commentRefused(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.send("<!-- hello -->")
        self.assertEqual(wire.streamError(), "restricted-xml")

    async def test_oversizePreAuth(self) -> None:
        fx = await C2SFixture(self, maxStanzaSizePreAuth=1024).start()
        wire, _ = fx.open()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>")
        wire.send("A" * 600)
        self.assertFalse(wire.closed)
        wire.send("A" * 600)
        self.assertEqual(wire.streamError(), "policy-violation")
        self.assertTrue(wire.closed)

    async def test_oversizePartialTag(self) -> None:
        """An endless start tag is counted too, though expat has not produced an element yet."""
        fx = await C2SFixture(self, maxStanzaSizePreAuth=1024).start()
        wire, _ = fx.open()
        wire.send("<auth a='")
        for _ in range(5):
            wire.send("x" * 300)
        self.assertEqual(wire.streamError(), "policy-violation")

    async def test_oversizeAfterAuth(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, maxStanzaSize=4096).start("juliet")
        wire = await fx.login()
        wire.send("<message to='juliet@localhost'><body>" + "x" * 3000 + "</body></message>")
        self.assertFalse(wire.closed)
        wire.send("<message to='juliet@localhost'><body>" + "x" * 5000)
        self.assertEqual(wire.streamError(), "policy-violation")

    async def test_manySmallStanzasInOneChunk(self) -> None:
        """The limit is per stanza, not per read."""
        fx = await C2SFixture(self, allowPlaintext=True, maxStanzaSize=1024).start("juliet")
        wire = await fx.login()
        wire.send(
            "<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
            * 100
        )
        self.assertFalse(wire.closed)
        self.assertEqual(len(wire.take()), 100)

    async def test_tooDeep(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.send("<message><x xmlns='urn:x'>" + "<a>" * 200 + "</a>" * 200 + "</x></message>")
        self.assertEqual(wire.streamError(), "policy-violation")


class TimeoutTests(unittest.TestCase):
    async def test_handshakeTimeout(self) -> None:
        fx = await C2SFixture(self, handshakeTimeout=30).start()
        wire, _ = fx.open()
        fx.clock.advance(29)
        self.assertFalse(wire.closed)
        fx.clock.advance(2)
        self.assertEqual(wire.streamError(), "connection-timeout")
        self.assertTrue(wire.closed)

    async def test_silentConnection(self) -> None:
        fx = await C2SFixture(self, handshakeTimeout=30).start()
        wire = fx.connect()
        fx.clock.advance(31)
        self.assertEqual(wire.streamError(), "connection-timeout")

    async def test_noTimeoutOnceBound(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, handshakeTimeout=30).start("juliet")
        wire = await fx.login()
        fx.clock.advance(3600)
        self.assertFalse(wire.closed)

    async def test_idleTimeout(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, idleTimeout=100).start("juliet")
        wire = await fx.login()
        fx.clock.advance(60)
        wire.send(" ")
        fx.clock.advance(60)
        self.assertFalse(wire.closed)
        fx.clock.advance(50)
        self.assertEqual(wire.streamError(), "connection-timeout")

    async def test_slowReaderIsCut(self) -> None:
        """A closed stream whose peer never reads is aborted after a while."""
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send("</junk>")
        self.assertTrue(wire.transport.disconnecting)
        fx.clock.advance(60)
        self.assertTrue(wire.transport.disconnected)


class SessionTests(unittest.TestCase):
    """The bound session: routing through the real core, delivery, close, connection loss."""

    async def test_messageBetweenSessions(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet", "romeo")
        juliet = await fx.login("juliet", "balcony")
        romeo = await fx.login("romeo", "garden")
        juliet.send(
            "<message to='romeo@localhost/garden' type='chat' id='m1'>"
            "<body>Wherefore art thou?</body><request xmlns='urn:xmpp:receipts'/></message>"
        )
        message = await romeo.waitFor("message")
        self.assertEqual(message["from"], "juliet@localhost/balcony")
        self.assertEqual(message["id"], "m1")
        self.assertEqual(str(next(message.elements(NS_CLIENT, "body"))), "Wherefore art thou?")
        self.assertEqual(len(list(message.elements("urn:xmpp:receipts", "request"))), 1)

    async def test_messageKeepsItsText(self) -> None:
        """
        A message keeps the text written for it (the archive stores it instead of serialising
        the message again); other stanzas do not carry theirs.
        """
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.take()
        message = parseStanza("<message from='romeo@localhost/garden' type='chat'>"
                              "<body>Wherefore art thou?</body></message>")
        presence = parseStanza("<presence from='romeo@localhost/garden'/>")
        for stanza in (message, presence):
            wire.session.deliver(stanza)
        written = wire.transport.value().decode("utf-8")
        self.assertEqual(message.__dict__["_c2sText"] + serialize(presence), written)
        self.assertNotIn("_c2sText", presence.__dict__)

    async def test_serverIqAnswered(self) -> None:
        """An iq for the server goes to the core, which answers it (ping here)."""
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        result = await wire.waitFor("iq")
        self.assertEqual((result["type"], result["id"]), ("result", "p1"))

    async def test_connectionLostClosesSession(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        session = wire.session
        calls = fx.recordClosed()
        wire.lose()
        self.assertEqual(calls, [session])
        self.assertIsNone(fx.im.router.session("juliet@localhost", "balcony"))
        self.assertFalse(session.active)

    async def test_connectionLostBeforeBind(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        calls = fx.recordClosed()
        wire.lose()
        self.assertEqual(calls, [])

    async def test_deliverAfterLossIsUndeliverable(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        session = wire.session
        handedBack = fx.recordUndeliverable()
        wire.lose()
        message = domish.Element((NS_CLIENT, "message"))
        session.deliver(message)
        self.assertEqual(handedBack, [message])
        self.assertEqual(wire.transport.value(), b"")

    async def test_closeWithCondition(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.session.close("system-shutdown", "bye")
        self.assertEqual(wire.streamError(), "system-shutdown")
        self.assertTrue(wire.ended)
        self.assertTrue(wire.closed)
        # Closing twice writes nothing more.
        wire.session.close("conflict")
        self.assertEqual(wire.transport.value(), b"")

    async def test_coreFailureAnswersInternalError(self) -> None:
        """A crash while handling one stanza answers it with an error; the stream carries on."""
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        original = fx.im.receive

        def explode(session: Any, element: domish.Element) -> None:
            if element.getAttribute("id") == "boom":
                raise RuntimeError("bug")
            original(session, element)

        fx.im.receive = explode  # type: ignore[method-assign]
        wire.send("<iq type='get' id='boom' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        error = wire.take()[0]
        self.assertEqual((error["type"], error["id"]), ("error", "boom"))
        self.assertEqual(stanzaErrorCondition(error), "internal-server-error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        wire.send("<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual((await wire.waitFor("iq"))["id"], "p2")
        self.assertFalse(wire.closed)

    async def test_coreGetsNoParentLinks(self) -> None:
        """
        What the door hands the core links no element to its parent
        (L{xmppjson.xmltext.StanzaParser}), so that it is freed without the collector.
        """
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        original = fx.im.receive
        parents: list[Any] = []

        def spy(session: Any, element: domish.Element) -> None:
            parents.extend(parentLinks(element))
            original(session, element)

        fx.im.receive = spy  # type: ignore[method-assign]
        wire.send("<iq type='get' id='v1' to='localhost'><query xmlns='jabber:iq:version'>"
                  "<x xmlns='urn:example'><y/></x></query></iq>")
        await wire.waitFor("iq")
        self.assertEqual(parents, [None, None, None])

    async def test_shutdownClosesNegotiatingStreams(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        fx.factory.stopFactory()
        self.assertEqual(wire.streamError(), "system-shutdown")

    async def test_connectionsPerAddress(self) -> None:
        fx = await C2SFixture(self, maxConnectionsPerAddress=2).start()
        first, second, third = fx.connect(), fx.connect(), fx.connect()
        self.assertEqual(third.streamError(), "policy-violation")
        self.assertFalse(first.closed or second.closed)
        first.lose()
        third.lose()
        fourth = fx.connect()
        self.assertFalse(fourth.closed)
        self.assertFalse(fx.connect("10.0.0.1").closed)


class TLSFileTests(unittest.TestCase):
    """The certificate: configured PEM files, or one generated once and reused."""

    def test_generatedOnceAndReused(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = Config(domain="chat.example", db=f"sqlite:{directory}/db.sqlite3")
        first = tls.loadServerTLS(config)
        assert first is not None
        path = os.path.join(directory, "xmppjson-tls", "chat.example.pem")
        self.assertEqual(first.certificatePath, path)
        self.assertTrue(first.selfSigned)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        second = tls.loadServerTLS(config)
        assert second is not None
        self.assertEqual(first.fingerprint, second.fingerprint)

    def test_generatedCertificate(self) -> None:
        from cryptography import x509

        pem = tls.generateSelfSigned("chat.example")
        certificate = x509.load_pem_x509_certificates(pem)[0]
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["chat.example"])
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        self.assertGreaterEqual(lifetime.days, 3650)

    def test_otherDomainRegenerated(self) -> None:
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "xmppjson-tls"))
        path = os.path.join(directory, "xmppjson-tls", "a.example.pem")
        with open(path, "wb") as f:
            f.write(tls.generateSelfSigned("b.example"))
        config = Config(domain="a.example", db=f"sqlite:{directory}/db.sqlite3")
        loaded = tls.loadServerTLS(config)
        assert loaded is not None
        from cryptography import x509

        with open(path, "rb") as f:
            certificate = x509.load_pem_x509_certificates(f.read())[0]
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["a.example"])

    def test_configuredFiles(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        pem = tls.generateSelfSigned("chat.example")
        keyEnd = pem.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----\n")
        certPath, keyPath = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(certPath, "wb") as f:
            f.write(pem[keyEnd:])
        with open(keyPath, "wb") as f:
            f.write(pem[:keyEnd])
        config = Config(
            domain="chat.example", db="sqlite::memory:", tlsCert=certPath, tlsKey=keyPath
        )
        loaded = tls.loadServerTLS(config)
        assert loaded is not None
        self.assertFalse(loaded.selfSigned)
        self.assertFalse(os.path.exists(os.path.join(directory, "xmppjson-tls")))

    def test_mismatchedKey(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        one, two = tls.generateSelfSigned("a.example"), tls.generateSelfSigned("a.example")
        keyEnd = one.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----\n")
        certPath, keyPath = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(certPath, "wb") as f:
            f.write(one[keyEnd:])
        with open(keyPath, "wb") as f:
            f.write(two[:keyEnd])
        config = Config(domain="a.example", tlsCert=certPath, tlsKey=keyPath)
        self.assertRaises(tls.TLSConfigurationError, tls.loadServerTLS, config)

    def test_missingFile(self) -> None:
        config = Config(
            domain="a.example", tlsCert="/nonexistent/c.pem", tlsKey="/nonexistent/k.pem"
        )
        self.assertRaises(tls.TLSConfigurationError, tls.loadServerTLS, config)

    def test_makeC2SFactory(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        config = Config(domain=DOMAIN, db=f"sqlite:{directory}/x.sqlite3")
        factory = makeC2SFactory(config, accounts=None, im=None, reactor=task.Clock())
        self.assertIsNotNone(factory.tls)
        self.assertTrue(factory.tlsRequired)
        plaintext = makeC2SFactory(
            Config(domain=DOMAIN, db=f"sqlite:{directory}/x.sqlite3", allowPlaintext=True),
            accounts=None,
            im=None,
            reactor=task.Clock(),
        )
        self.assertFalse(plaintext.tlsRequired)


_NAMES = st.sampled_from(["message", "body", "x", "item", "a"])
_NAMESPACES = st.sampled_from([None, NS_CLIENT, "urn:x", "urn:y", ""])
_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8
)
_ATTRIBUTE_NAMES = st.one_of(
    st.sampled_from(["to", "id", "type", "from"]),
    st.sampled_from([("http://www.w3.org/XML/1998/namespace", "lang"), ("urn:attr", "a")]),
)


@st.composite
def elements(draw: Any, depth: int = 0) -> domish.Element:
    uri = draw(_NAMESPACES)
    defaultUri = draw(st.one_of(st.none(), _NAMESPACES))
    prefixes = draw(st.sampled_from([None, None, None, {"p": "urn:p"}]))
    element = domish.Element((uri, draw(_NAMES)), defaultUri, localPrefixes=prefixes)
    for name in draw(st.lists(_ATTRIBUTE_NAMES, max_size=3, unique=True)):
        element[name] = draw(_TEXT)
    if depth < 3:
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                element.addContent(draw(_TEXT))
            else:
                element.addChild(draw(elements(depth + 1)))
    return element


class SerializeTests(unittest.TestCase):
    """The door's fast serialiser writes exactly what domish writes."""

    @given(elements())
    @settings(max_examples=400, deadline=None)
    def test_sameAsDomish(self, element: domish.Element) -> None:
        self.assertEqual(serialize(element), element.toXml(defaultUri=NS_CLIENT))

    def test_parsedStanzas(self) -> None:
        stanzas = [
            (
                "<message to='a@b/c' type='chat' id='x&amp;y'><body>1 &lt; 2 &amp; 'q' \"</body>"
                "<request xmlns='urn:xmpp:receipts'/></message>"
            ),
            (
                "<presence xml:lang='de'><show>away</show><status>weg</status>"
                "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/>"
                "</presence>"
            ),
            (
                "<message><html xmlns='http://jabber.org/protocol/xhtml-im'><body "
                "xmlns='http://www.w3.org/1999/xhtml'><p>hi</p></body></html></message>"
            ),
            "<iq type='set' xmlns:p='urn:p'><p:query><p:item/></p:query></iq>",
        ]
        for xml in stanzas:
            element = parseStanza(xml)
            self.assertEqual(serialize(element), element.toXml(defaultUri=NS_CLIENT), xml)


def parseStanza(xml: str) -> domish.Element:
    found: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = found.append
    stream.parse(HEADER.format(to=DOMAIN).encode() + xml.encode())
    return found[0]


class BackpressureTests(unittest.TestCase):
    """A client that stops reading cannot make the server buffer without bound."""

    async def test_pauseStopsReadingAndResumes(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        self.assertIs(wire.transport.producer, wire.protocol)
        wire.protocol.pauseProducing()
        self.assertEqual(wire.transport.producerState, "paused")
        wire.protocol.resumeProducing()
        self.assertEqual(wire.transport.producerState, "producing")

    async def test_archiveBehindHoldsReading(self) -> None:
        """
        While the archive writer is behind (too many messages waiting, the database up),
        the door stops reading from its clients; messages already read are still delivered
        at once, and reading resumes when the writer has caught up.
        """
        fx = await C2SFixture(self, allowPlaintext=True, archive=True, stanzaRate=0).start(
            "juliet", "romeo")
        juliet = await fx.login("juliet", "a")
        romeo = await fx.login("romeo", "b")
        for wire in (juliet, romeo):
            wire.send("<presence/>")
            wire.take()
        archive = fx.im.archive
        archive.highWater, archive.lowWater = 3, 1
        juliet.send("".join(f"<message to='romeo@{DOMAIN}' type='chat'><body>{n}</body></message>"
                            for n in range(2)))
        self.assertEqual(juliet.transport.producerState, "producing")
        juliet.send(f"<message to='romeo@{DOMAIN}' type='chat'><body>2</body></message>")
        self.assertTrue(fx.im.intakeHeld)
        self.assertEqual(juliet.transport.producerState, "paused")
        self.assertEqual(len([e for e in romeo.take() if e.name == "message"]), 3)
        # romeo reads on: the hold applies to a door connection at its next read
        romeo.send("<presence/>")
        self.assertEqual(romeo.transport.producerState, "paused")
        fx.clock.advance(archive.interval)
        for _ in range(50):
            if not fx.im.intakeHeld:
                break
            await task.deferLater(realReactor(), 0.01, lambda: None)
        self.assertEqual(archive.written, 3)
        self.assertFalse(fx.im.intakeHeld)
        self.assertEqual(juliet.transport.producerState, "producing")
        self.assertEqual(romeo.transport.producerState, "producing")

    async def test_backlogCutsTheConnection(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, maxStanzaSize=64 * 1024).start("juliet")
        wire = await fx.login()
        session = wire.session
        handedBack = fx.recordUndeliverable()
        wire.protocol.pauseProducing()
        message = domish.Element((NS_CLIENT, "message"))
        message.addElement("body", content="x" * 10000)
        for _ in range(200):
            session.deliver(message)
        self.assertTrue(wire.transport.disconnected)
        # Handed back once the session has left the core (in the next turn).
        self.assertEqual(handedBack, [])
        fx.clock.advance(0)
        self.assertFalse(session.active)
        self.assertGreater(len(handedBack), 0)
        self.assertEqual(len(bodies(wire.take())) + len(handedBack), 200)


class FeaturesTests(unittest.TestCase):
    async def test_coreFeaturesAdvertised(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        features = wire.take()[0]
        names = {(c.uri, c.name) for c in features.elements()}
        self.assertIn(("urn:xmpp:features:rosterver", "ver"), names)
        self.assertIn(("urn:xmpp:features:pre-approval", "sub"), names)


class WireFormatTests(unittest.TestCase):
    """What the bytes look like, for clients that match tag names rather than namespaces."""

    async def test_streamPrefix(self) -> None:
        fx = await C2SFixture(self).start()
        wire = fx.connect()
        wire.send(HEADER.format(to=DOMAIN))
        data = wire.transport.value()
        self.assertTrue(data.startswith(b"<?xml version='1.0'?><stream:stream "), data)
        self.assertIn(b"<stream:features>", data)
        self.assertIn(b"</stream:features>", data)
        wire.transport.clear()
        wire.send("<junk/>")
        data = wire.transport.value()
        self.assertIn(b"<stream:error><unsupported-stanza-type xmlns=", data)
        self.assertTrue(data.endswith(b"</stream:error></stream:stream>"), data)

    async def test_deliveredStanzaHasNoRedundantNamespace(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.transport.clear()
        message = domish.Element((NS_CLIENT, "message"))
        message["to"] = "juliet@localhost/balcony"
        message.addElement("body", content="a < b")
        wire.session.deliver(message)
        self.assertEqual(
            wire.transport.value(),
            b"<message to='juliet@localhost/balcony'><body>a &lt; b</body></message>",
        )


class ShutdownTests(unittest.TestCase):
    async def test_drainClosesEveryStreamAndWaits(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        bound = await fx.login()
        negotiating, _ = fx.open()
        d = fx.factory.drain()
        self.assertEqual(bound.streamError(), "system-shutdown")
        self.assertEqual(negotiating.streamError(), "system-shutdown")
        self.assertFalse(d.called)
        bound.lose()
        self.assertFalse(d.called)
        negotiating.lose()
        self.assertTrue(d.called)

    async def test_drainGivesUp(self) -> None:
        fx = await C2SFixture(self).start()
        fx.open()
        d = fx.factory.drain(grace=3)
        fx.clock.advance(3)
        self.assertTrue(d.called)


class _RefusingAccounts:
    """Accounts that know nobody, answering at once: the fuzz test never needs a store."""

    def nodeprep(self, localpart: str) -> str:
        return localpart.lower()

    async def checkPassword(self, localpart: str, password: str) -> bool:
        return False

    async def getScramKeys(self, localpart: str, mechanism: str) -> None:
        return None

    # Never throttled: every fuzzed attempt must reach the SASL code.
    def loginRetryAfter(self, localpart: str | None, address: str | None) -> float:
        return 0.0

    def loginFailed(self, localpart: str | None, address: str | None) -> None:
        pass

    def loginSucceeded(self, localpart: str, address: str | None) -> None:
        pass


_FRAGMENTS = st.sampled_from(
    [
        HEADER.format(to=DOMAIN),
        HEADER.format(to="elsewhere"),
        "<?xml version='1.0'?>",
        "<!DOCTYPE x [<!ENTITY a 'b'>]>",
        "<?pi x?>",
        "<!-- c -->",
        "&amp;",
        "&undefined;",
        "<message><body>hi</body></message>",
        "<presence/>",
        "<iq type='set' id='1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
        f"<starttls xmlns='{NS_TLS}'/>",
        f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGEAYg==</auth>",
        f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>biwsbj1hLHI9Yg==</auth>",
        f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>@@@</auth>",
        f"<response xmlns='{NS_SASL}'/>",
        f"<abort xmlns='{NS_SASL}'/>",
        "</stream:stream>",
        "<a><b><c>",
        "</a>",
        " ",
        "\u00e9\u4e2d",
    ]
)


class FuzzTests(unittest.TestCase):
    """Whatever arrives, in whatever chunks, the door never raises and closes properly."""

    @given(
        st.lists(st.one_of(_FRAGMENTS, st.binary(max_size=40).map(repr)), max_size=12),
        st.lists(st.integers(1, 64), min_size=1, max_size=8),
        st.binary(max_size=64),
    )
    @settings(max_examples=300, deadline=None)
    def test_anyInput(self, fragments: list[str], cuts: list[int], raw: bytes) -> None:
        config = Config(domain=DOMAIN, allowPlaintext=True, maxStanzaSizePreAuth=512)
        factory = C2SFactory(
            config, _RefusingAccounts(), IMServer(config, None, task.Clock()), task.Clock(), None
        )
        wire = Wire(factory)
        data = "".join(fragments).encode("utf-8") + raw
        position, index = 0, 0
        while position < len(data):
            size = cuts[index % len(cuts)]
            wire.protocol.dataReceived(data[position : position + size])
            position += size
            index += 1
        output = wire.transport.value()
        if wire.closed:
            self.assertTrue(output.endswith(b"</stream:stream>"), output)
        self.assertEqual(self.flushLoggedErrors(), [])


# -- XEP-0198 stream management -----------------------------------------------------------

NS_SM = "urn:xmpp:sm:3"
NS_CSI = "urn:xmpp:csi:0"
NS_REGISTER = "jabber:iq:register"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


def chat(to: str, body: str, ident: str = "m") -> str:
    return f"<message to='{to}' type='chat' id='{ident}'><body>{body}</body></message>"


def bodies(elements: list[domish.Element]) -> list[str]:
    """The bodies of the messages among C{elements}, in order."""
    found = []
    for element in elements:
        if element.name == "message":
            for body in element.elements(NS_CLIENT, "body"):
                found.append(str(body))
    return found


def named(elements: list[domish.Element], uri: str, name: str) -> list[domish.Element]:
    return [e for e in elements if (e.uri, e.name) == (uri, name)]


def enableSM(wire: Wire, resume: bool = True, extra: str = "") -> domish.Element:
    wire.send(f"<enable xmlns='{NS_SM}'{' resume=' + chr(39) + 'true' + chr(39) if resume else ''}{extra}/>")
    elements = wire.take()
    assert len(elements) == 1, [e.toXml() for e in elements]
    return elements[0]


async def resumeOn(
    fx: C2SFixture, user: str, previd: str, h: int, host: str = "127.0.0.1"
) -> tuple[Wire, list[domish.Element]]:
    """Log C{user} in on a new connection and resume C{previd} instead of binding."""
    wire, _ = fx.open(host)
    await fx.plainLogin(wire, user)
    wire.restart()
    wire.send(HEADER.format(to=DOMAIN))
    wire.take()
    wire.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
    return wire, wire.take()


class StreamManagementTests(unittest.TestCase):
    """XEP-0198: acks, the unacknowledged queue, detaching, resumption and its expiry."""

    async def pair(self, **config: Any) -> tuple[C2SFixture, Wire, Wire]:
        fx = await C2SFixture(self, allowPlaintext=True, **config).start("juliet", "romeo")
        juliet = await fx.login("juliet", "balcony")
        romeo = await fx.login("romeo", "garden")
        return fx, juliet, romeo

    async def test_featuresAfterAuthentication(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        features = wire.take()[0]
        names = [(c.uri, c.name) for c in features.elements()]
        self.assertEqual(
            names,
            [
                (NS_BIND, "bind"),
                (NS_SESSION, "session"),
                ("urn:xmpp:features:rosterver", "ver"),
                ("urn:xmpp:features:pre-approval", "sub"),
                (NS_SM, "sm"),
                (NS_CSI, "csi"),
            ],
        )

    async def test_enable(self) -> None:
        fx, juliet, _ = await self.pair()
        enabled = enableSM(juliet)
        self.assertEqual((enabled.uri, enabled.name), (NS_SM, "enabled"))
        self.assertEqual(enabled["resume"], "true")
        self.assertEqual(enabled["max"], "300")
        self.assertGreaterEqual(len(enabled["id"]), 20)
        self.assertIs(fx.factory.smSessions[enabled["id"]], juliet.session)

    async def test_enableClientMax(self) -> None:
        _, juliet, _ = await self.pair()
        enabled = enableSM(juliet, extra=" max='60'")
        self.assertEqual(enabled["max"], "60")

    async def test_enableWithoutResumption(self) -> None:
        fx, juliet, _ = await self.pair()
        enabled = enableSM(juliet, resume=False)
        self.assertEqual(enabled.name, "enabled")
        self.assertIsNone(enabled.getAttribute("id"))
        self.assertEqual(fx.factory.smSessions, {})

    async def test_resumptionDisabledByConfig(self) -> None:
        fx, juliet, _ = await self.pair(smResumeTimeout=0)
        enabled = enableSM(juliet)
        self.assertIsNone(enabled.getAttribute("resume"))
        self.assertEqual(fx.factory.smSessions, {})

    async def test_enableTwiceOrBeforeBind(self) -> None:
        fx, juliet, _ = await self.pair()
        enableSM(juliet)
        juliet.send(f"<enable xmlns='{NS_SM}'/>")
        failed = juliet.take()[0]
        self.assertEqual((failed.name, [c.name for c in failed.elements()]),
                         ("failed", ["unexpected-request"]))
        wire, _ = fx.open()
        await fx.plainLogin(wire)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(f"<enable xmlns='{NS_SM}'/>")
        self.assertEqual(wire.take()[0].name, "failed")
        self.assertFalse(wire.closed)

    async def test_ackRequestedByClient(self) -> None:
        """<r/> is answered with the number of stanzas handled since <enable/>."""
        _, juliet, _ = await self.pair()
        juliet.send("<presence/>")  # before enabling: not counted
        enableSM(juliet)
        juliet.send("<presence><show>away</show></presence>")
        juliet.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        juliet.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        juliet.take()
        juliet.send(f"<r xmlns='{NS_SM}'/>")
        ack = named(juliet.take(), NS_SM, "a")
        self.assertEqual([a["h"] for a in ack], ["3"])

    async def test_serverRequestsAcks(self) -> None:
        """The server asks for an ack after five stanzas, once per round trip, and when idle."""
        fx, juliet, romeo = await self.pair()
        enableSM(juliet)
        for n in range(4):
            romeo.send(chat("juliet@localhost/balcony", f"m{n}"))
        self.assertEqual(named(juliet.take(), NS_SM, "r"), [])
        romeo.send(chat("juliet@localhost/balcony", "m4"))
        self.assertEqual(len(named(juliet.take(), NS_SM, "r")), 1)
        # Outstanding: no second request however much follows.
        for n in range(5, 12):
            romeo.send(chat("juliet@localhost/balcony", f"m{n}"))
        self.assertEqual(named(juliet.take(), NS_SM, "r"), [])
        self.assertEqual(len(juliet.sm.unacked), 12)
        juliet.send(f"<a xmlns='{NS_SM}' h='10'/>")
        self.assertEqual(bodies(list(juliet.sm.unacked)), ["m10", "m11"])
        # Two stanzas unacknowledged and no traffic: asked again after 30 s.
        fx.clock.advance(31)
        self.assertEqual(len(named(juliet.take(), NS_SM, "r")), 1)
        juliet.send(f"<a xmlns='{NS_SM}' h='12'/>")
        self.assertEqual(len(juliet.sm.unacked), 0)

    async def test_doorRepliesAreCounted(self) -> None:
        """Stanzas the door answers itself (legacy session, second bind) count like any."""
        _, juliet, _ = await self.pair()
        enableSM(juliet)
        juliet.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        juliet.send(f"<iq type='set' id='b2'><bind xmlns='{NS_BIND}'/></iq>")
        self.assertEqual(len(juliet.take()), 2)
        self.assertEqual(len(juliet.sm.unacked), 2)

    async def test_ackTooHigh(self) -> None:
        _, juliet, romeo = await self.pair()
        enableSM(juliet)
        romeo.send(chat("juliet@localhost/balcony", "one"))
        juliet.take()
        juliet.send(f"<a xmlns='{NS_SM}' h='2'/>")
        errors = named(juliet.take(), NS_STREAMS, "error")
        self.assertEqual(len(errors), 1)
        conditions = {(c.uri, c.name) for c in errors[0].elements()}
        self.assertIn((NS_XMPP_STREAMS, "undefined-condition"), conditions)
        self.assertIn((NS_SM, "handled-count-too-high"), conditions)

    async def test_badAck(self) -> None:
        for h in ("-1", "1.0", "", "4294967296", "\u00b2", "\u0663", "0x1"):
            _, juliet, _ = await self.pair()
            enableSM(juliet)
            juliet.send(f"<a xmlns='{NS_SM}' h='{h}'/>")
            self.assertEqual(juliet.streamError(), "bad-format", h)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_parseCount(self) -> None:
        from xmppjson.c2s.sm import parseCount

        self.assertEqual(parseCount("0"), 0)
        self.assertEqual(parseCount("4294967295"), 4294967295)
        for bad in (None, "", "-1", "+1", " 1", "4294967296", "\u00b2", "\u0663", "99999999999"):
            self.assertIsNone(parseCount(bad), bad)

    async def test_requestWithoutSM(self) -> None:
        _, juliet, _ = await self.pair()
        juliet.send(f"<r xmlns='{NS_SM}'/>")
        self.assertEqual(juliet.streamError(), "unsupported-stanza-type")

    async def test_detachKeepsTheSessionAndQueues(self) -> None:
        fx, juliet, romeo = await self.pair()
        enableSM(juliet)
        session = juliet.session
        closed = fx.recordClosed()
        juliet.send("<presence/>")
        romeo.send(chat("juliet@localhost/balcony", "before"))
        juliet.lose()
        # Still registered and active: the core routes to it, nobody is told it left.
        self.assertIs(fx.im.router.session("juliet@localhost", "balcony"), session)
        self.assertTrue(session.active)
        self.assertEqual(closed, [])
        romeo.send(chat("juliet@localhost/balcony", "while away"))
        romeo.send(chat("juliet@localhost", "to the bare JID"))
        self.assertEqual(romeo.take(), [])  # no errors bounced
        self.assertEqual(
            bodies(list(juliet.sm.unacked)), ["before", "while away", "to the bare JID"]
        )

    async def test_resume(self) -> None:
        fx, juliet, romeo = await self.pair()
        previd = enableSM(juliet)["id"]
        session = juliet.session
        juliet.send("<presence/>")
        romeo.send(chat("juliet@localhost/balcony", "one"))
        romeo.send(chat("juliet@localhost/balcony", "two"))
        self.assertEqual(bodies(juliet.take()), ["one", "two"])
        juliet.lose()
        romeo.send(chat("juliet@localhost/balcony", "three"))
        # The client got "one" (h=1) but not "two".
        wire, answer = await resumeOn(fx, "juliet", previd, 1)
        resumed = answer[0]
        self.assertEqual((resumed.uri, resumed.name), (NS_SM, "resumed"))
        self.assertEqual((resumed["previd"], resumed["h"]), (previd, "1"))
        self.assertEqual(bodies(answer[1:]), ["two", "three"])
        self.assertEqual(len(named(answer, NS_SM, "r")), 1)
        # The same session object, now on the new stream, for both directions.
        self.assertIs(wire.session, session)
        self.assertIs(session.stream, wire.protocol)
        self.assertIs(fx.im.router.session("juliet@localhost", "balcony"), session)
        romeo.send(chat("juliet@localhost/balcony", "four"))
        self.assertEqual(bodies(wire.take()), ["four"])
        wire.send(chat("romeo@localhost/garden", "back"))
        self.assertEqual(bodies(romeo.take()), ["back"])
        wire.send(f"<r xmlns='{NS_SM}'/>")
        self.assertEqual([a["h"] for a in named(wire.take(), NS_SM, "a")], ["2"])
        # And it may be resumed again with the same id.
        wire.lose()
        _again, answer = await resumeOn(fx, "juliet", previd, 4)
        self.assertEqual(answer[0].name, "resumed")
        self.assertEqual(bodies(answer), [])

    async def test_resumeWhileTheOldStreamIsOpen(self) -> None:
        """The client saw the connection die before the server did: the new stream wins."""
        fx, juliet, romeo = await self.pair()
        previd = enableSM(juliet)["id"]
        romeo.send(chat("juliet@localhost/balcony", "one"))
        juliet.take()
        wire, answer = await resumeOn(fx, "juliet", previd, 0)
        self.assertEqual(answer[0].name, "resumed")
        self.assertEqual(bodies(answer), ["one"])
        self.assertEqual(juliet.streamError(), "conflict")
        self.assertTrue(juliet.closed)
        juliet.lose()
        # The old connection going away does not end the session it no longer holds.
        self.assertTrue(wire.session.active)
        romeo.send(chat("juliet@localhost/balcony", "two"))
        self.assertEqual(bodies(wire.take()), ["two"])

    async def test_resumeUnknownId(self) -> None:
        fx, _juliet, _ = await self.pair()
        wire, answer = await resumeOn(fx, "juliet", "nonsense", 0)
        self.assertEqual(
            (answer[0].name, [c.name for c in answer[0].elements()]),
            ("failed", ["item-not-found"]),
        )
        # The stream carries on: the client binds instead.
        wire.send(f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'/></iq>")
        self.assertEqual((await wire.waitFor("iq"))["type"], "result")

    async def test_resumeSomeoneElsesSession(self) -> None:
        fx, juliet, _ = await self.pair()
        previd = enableSM(juliet)["id"]
        juliet.lose()
        _, answer = await resumeOn(fx, "romeo", previd, 0)
        self.assertEqual([c.name for c in answer[0].elements()], ["item-not-found"])
        self.assertTrue(juliet.sm.detached)

    async def test_resumeBeforeAuthentication(self) -> None:
        fx, juliet, _ = await self.pair()
        previd = enableSM(juliet)["id"]
        wire, _ = fx.open()
        wire.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>")
        self.assertEqual([c.name for c in wire.take()[0].elements()], ["unexpected-request"])

    async def test_resumeWithTooHighCount(self) -> None:
        fx, juliet, _ = await self.pair()
        previd = enableSM(juliet)["id"]
        juliet.lose()
        _wire, answer = await resumeOn(fx, "juliet", previd, 5)
        errors = named(answer, NS_STREAMS, "error")
        self.assertIn("handled-count-too-high", [c.name for c in errors[0].elements()])
        self.assertTrue(juliet.sm.detached)

    async def test_expiry(self) -> None:
        """Not resumed in time: the session ends, and what it never got is stored offline."""
        fx, juliet, romeo = await self.pair()
        previd = enableSM(juliet)["id"]
        session = juliet.session
        closed = fx.recordClosed()
        romeo.send(chat("juliet@localhost/balcony", "unacked", "u1"))
        juliet.lose()
        romeo.send(chat("juliet@localhost/balcony", "queued", "q1"))
        fx.clock.advance(299)
        self.assertEqual(closed, [])
        fx.clock.advance(2)
        self.assertEqual(closed, [session])
        self.assertFalse(session.active)
        self.assertIsNone(fx.im.router.session("juliet@localhost", "balcony"))
        self.assertNotIn(previd, fx.factory.smSessions)
        _, answer = await resumeOn(fx, "juliet", previd, 0)
        self.assertEqual([c.name for c in answer[0].elements()], ["item-not-found"])
        # Offline storage: the next session of juliet gets both, with their ids.
        back = await fx.login("juliet", "tower")
        back.send("<presence/>")
        received: list[domish.Element] = []

        def got() -> bool:
            received.extend(m for m in back.take() if m.name == "message")
            return len(received) >= 2

        await waitUntil(got)
        self.assertEqual(sorted(bodies(received)), ["queued", "unacked"])
        self.assertEqual(sorted(m["id"] for m in received), ["q1", "u1"])

    async def test_serverCloseEndsTheSession(self) -> None:
        """A stream the server closes is never resumed; unacked messages go back to the core."""
        fx, juliet, romeo = await self.pair()
        previd = enableSM(juliet)["id"]
        session = juliet.session
        handedBack = fx.recordUndeliverable()
        romeo.send(chat("juliet@localhost/balcony", "unacked"))
        session.close("system-shutdown")
        self.assertEqual(juliet.streamError(), "system-shutdown")
        self.assertFalse(session.active)
        self.assertEqual(bodies(handedBack), ["unacked"])
        self.assertNotIn(previd, fx.factory.smSessions)
        juliet.lose()
        self.assertEqual(len(handedBack), 1)

    async def test_clientCloseEndsTheSession(self) -> None:
        fx, juliet, _ = await self.pair()
        previd = enableSM(juliet)["id"]
        juliet.send("</stream:stream>")
        juliet.lose()
        self.assertFalse(juliet.session.active)
        self.assertNotIn(previd, fx.factory.smSessions)

    async def test_withoutResumptionLossEndsTheSession(self) -> None:
        fx, juliet, romeo = await self.pair()
        enableSM(juliet, resume=False)
        handedBack = fx.recordUndeliverable()
        romeo.send(chat("juliet@localhost/balcony", "unacked"))
        juliet.lose()
        self.assertFalse(juliet.session.active)
        self.assertEqual(bodies(handedBack), ["unacked"])

    async def test_conflictWhileDetached(self) -> None:
        """A new login with the same resource replaces the detached session and gets its queue."""
        fx, juliet, romeo = await self.pair()
        enableSM(juliet)
        old = juliet.session
        juliet.lose()
        romeo.send(chat("juliet@localhost/balcony", "queued"))
        new = await fx.login("juliet", "balcony")
        self.assertFalse(old.active)
        self.assertFalse(old.sm is not None and old.sm.detached)
        # Handed back to the core, which routes it to the bare JID: stored until the new
        # session is available.
        new.send("<presence/>")
        message = await new.waitFor("message")
        self.assertEqual(bodies([message]), ["queued"])

    async def test_shutdownWhileDetached(self) -> None:
        fx, juliet, romeo = await self.pair()
        enableSM(juliet)
        handedBack = fx.recordUndeliverable()
        juliet.lose()
        romeo.send(chat("juliet@localhost/balcony", "queued"))
        await fx.im.shutdown()
        self.assertEqual(bodies(handedBack), ["queued"])

    async def test_tooManyUnacked(self) -> None:
        from xmppjson.c2s import sm

        self.patch(sm, "MAX_UNACKED", 10)
        fx, juliet, romeo = await self.pair()
        enableSM(juliet)
        handedBack = fx.recordUndeliverable()
        for n in range(11):
            romeo.send(chat("juliet@localhost/balcony", f"m{n}"))
        fx.clock.advance(0)
        self.assertEqual(juliet.streamError(), "policy-violation")
        self.assertEqual(len(handedBack), 11)

    async def test_tooManyQueuedWhileDetached(self) -> None:
        from xmppjson.c2s import sm

        self.patch(sm, "MAX_UNACKED", 10)
        fx, juliet, romeo = await self.pair()
        enableSM(juliet)
        session = juliet.session
        handedBack = fx.recordUndeliverable()
        juliet.lose()
        for n in range(11):
            romeo.send(chat("juliet@localhost/balcony", f"m{n}"))
        fx.clock.advance(0)
        self.assertFalse(session.active)
        self.assertEqual(len(handedBack), 11)

    async def test_notEnabledCostsNothing(self) -> None:
        """Without <enable/>, nothing is kept: a delivered stanza is written and forgotten."""
        _, juliet, romeo = await self.pair()
        romeo.send(chat("juliet@localhost/balcony", "hi"))
        self.assertIsNone(juliet.session.sm)
        self.assertIsNone(juliet.protocol._sm)
        juliet.lose()
        self.assertFalse(juliet.session.active)


# -- XEP-0352 client state indication -----------------------------------------------------


def stanza(xml: str) -> domish.Element:
    return parseStanza(xml)


class CSIBufferTests(unittest.TestCase):
    """The holding policy, on its own."""

    def setUp(self) -> None:
        from xmppjson.c2s.csi import CSIBuffer

        self.buffer = CSIBuffer()

    def test_latestPresencePerSender(self) -> None:
        for xml in (
            "<presence from='a@x/1'><show>away</show></presence>",
            "<presence from='b@x/1'/>",
            "<presence from='a@x/1'><show>dnd</show></presence>",
            "<presence from='a@x/2' type='unavailable'/>",
        ):
            self.assertTrue(self.buffer.hold(stanza(xml)))
        released = self.buffer.release()
        self.assertEqual(
            [(p["from"], p.getAttribute("type"), str(next(p.elements(NS_CLIENT, "show"), "")))
             for p in released],
            [("b@x/1", None, ""), ("a@x/1", None, "dnd"), ("a@x/2", "unavailable", "")],
        )
        self.assertEqual(len(self.buffer), 0)

    def test_latestChatStatePerSender(self) -> None:
        composing = f"<message from='a@x/1' type='chat'><composing xmlns='{NS_CHATSTATES}'/></message>"
        paused = (
            f"<message from='a@x/2' type='chat'><paused xmlns='{NS_CHATSTATES}'/>"
            "<stanza-id xmlns='urn:xmpp:sid:0' by='me@x' id='1'/></message>"
        )
        self.assertTrue(self.buffer.hold(stanza(composing)))
        self.assertTrue(self.buffer.hold(stanza(paused)))
        released = self.buffer.release()
        self.assertEqual([m["from"] for m in released], ["a@x/2"])

    def test_bodyDropsTheSendersChatStates(self) -> None:
        self.buffer.hold(stanza(
            f"<message from='a@x/1'><composing xmlns='{NS_CHATSTATES}'/></message>"))
        self.buffer.hold(stanza(
            f"<message from='b@x/1'><composing xmlns='{NS_CHATSTATES}'/></message>"))
        self.buffer.hold(stanza("<presence from='a@x/1'/>"))
        body = stanza(
            f"<message from='a@x/1'><body>hi</body><active xmlns='{NS_CHATSTATES}'/></message>")
        self.assertFalse(self.buffer.hold(body))
        released = self.buffer.release(body)
        self.assertEqual([(e.name, e["from"]) for e in released],
                         [("message", "b@x/1"), ("presence", "a@x/1")])

    def test_receiptsAndMarkersHeldInOrder(self) -> None:
        for ident in ("1", "2"):
            self.assertTrue(self.buffer.hold(stanza(
                f"<message from='a@x/1'><received xmlns='urn:xmpp:receipts' id='{ident}'/></message>")))
        self.assertTrue(self.buffer.hold(stanza(
            "<message from='a@x/1'><displayed xmlns='urn:xmpp:chat-markers:0' id='2'/></message>")))
        self.assertEqual(len(self.buffer.release()), 3)

    def test_urgent(self) -> None:
        for xml in (
            "<message from='a@x/1'><body>hi</body></message>",
            "<message from='a@x/1'><subject>topic</subject></message>",
            "<message from='a@x/1' type='error'><error type='cancel'/></message>",
            "<message from='a@x/1'><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>",
            "<iq from='a@x/1' type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<presence from='a@x' type='subscribe'/>",
            "<presence from='a@x/1' type='error'/>",
        ):
            self.assertFalse(self.buffer.hold(stanza(xml)), xml)
        self.assertEqual(len(self.buffer), 0)

    def test_bounded(self) -> None:
        from xmppjson.c2s.csi import MAX_HELD

        for n in range(MAX_HELD):
            self.assertTrue(self.buffer.hold(stanza(f"<presence from='a@x/{n}'/>")))
        self.assertFalse(self.buffer.hold(stanza("<presence from='b@x/1'/>")))


class ClientStateTests(unittest.TestCase):
    """XEP-0352 on the wire."""

    async def pair(self) -> tuple[C2SFixture, Wire, Wire]:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet", "romeo")
        juliet = await fx.login("juliet", "balcony")
        romeo = await fx.login("romeo", "garden")
        return fx, juliet, romeo

    async def test_inactiveHoldsAndBodyFlushes(self) -> None:
        _, juliet, romeo = await self.pair()
        juliet.send(f"<inactive xmlns='{NS_CSI}'/>")
        to = "juliet@localhost/balcony"
        romeo.send(f"<presence to='{to}'><show>away</show></presence>")
        romeo.send(f"<message to='{to}' type='chat'><composing xmlns='{NS_CHATSTATES}'/></message>")
        romeo.send(f"<presence to='{to}'><show>dnd</show></presence>")
        self.assertEqual(juliet.take(), [])
        romeo.send(chat(to, "hello"))
        received = juliet.take()
        # The latest presence, then the message; the stale "composing" is gone.
        self.assertEqual([e.name for e in received], ["presence", "message"])
        self.assertEqual(str(next(received[0].elements(NS_CLIENT, "show"))), "dnd")
        self.assertEqual(bodies(received), ["hello"])
        # Still inactive: holding goes on.
        romeo.send(f"<presence to='{to}'/>")
        self.assertEqual(juliet.take(), [])
        juliet.send(f"<active xmlns='{NS_CSI}'/>")
        self.assertEqual([e.name for e in juliet.take()], ["presence"])
        romeo.send(f"<presence to='{to}'/>")
        self.assertEqual([e.name for e in juliet.take()], ["presence"])

    async def test_iqFlushes(self) -> None:
        _, juliet, romeo = await self.pair()
        juliet.send(f"<inactive xmlns='{NS_CSI}'/>")
        romeo.send("<presence to='juliet@localhost/balcony'/>")
        juliet.session.deliver(
            stanza(
                "<iq from='romeo@localhost/garden' to='juliet@localhost/balcony' type='get' "
                "id='v1'><query xmlns='jabber:iq:version'/></iq>"
            )
        )
        self.assertEqual([e.name for e in juliet.take()], ["presence", "iq"])

    async def test_heldStanzasAreNotCountedUntilWritten(self) -> None:
        _, juliet, romeo = await self.pair()
        enableSM(juliet)
        juliet.send(f"<inactive xmlns='{NS_CSI}'/>")
        romeo.send("<presence to='juliet@localhost/balcony'/>")
        self.assertEqual(len(juliet.sm.unacked), 0)
        juliet.send(f"<active xmlns='{NS_CSI}'/>")
        self.assertEqual(len(juliet.sm.unacked), 1)

    async def test_heldStanzasGoBackWhenTheSessionEnds(self) -> None:
        fx, juliet, romeo = await self.pair()
        handedBack = fx.recordUndeliverable()
        juliet.send(f"<inactive xmlns='{NS_CSI}'/>")
        romeo.send("<message to='juliet@localhost/balcony'><received xmlns='urn:xmpp:receipts' id='x'/></message>")
        juliet.lose()
        self.assertEqual([e.name for e in handedBack], ["message"])

    async def test_unknownCSIElement(self) -> None:
        _, juliet, _ = await self.pair()
        juliet.send(f"<sleepy xmlns='{NS_CSI}'/>")
        self.assertEqual(juliet.streamError(), "unsupported-stanza-type")


# -- XEP-0077 in-band registration ----------------------------------------------------------


def registerXML(username: str | None, password: str | None, ident: str = "r1", extra: str = "") -> str:
    fields = ""
    if username is not None:
        fields += f"<username>{username}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return f"<iq type='set' id='{ident}'><query xmlns='{NS_REGISTER}'>{fields}{extra}</query></iq>"


class RegistrationTests(unittest.TestCase):
    """XEP-0077 before authentication, and the password change after binding."""

    async def register(
        self, fx: C2SFixture, username: str | None, password: str | None,
        host: str = "127.0.0.1", extra: str = "",
    ) -> domish.Element:
        wire, _ = fx.open(host)
        wire.send(registerXML(username, password, extra=extra))
        return await wire.waitFor("iq")

    async def test_feature(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start()
        _, features = fx.open()
        self.assertIn(
            ("http://jabber.org/features/iq-register", "register"),
            [(c.uri, c.name) for c in features.elements()],
        )

    async def test_noFeatureWhenClosed(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, registration="closed").start()
        _, features = fx.open()
        self.assertNotIn("register", [c.name for c in features.elements()])

    async def test_form(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start()
        wire, _ = fx.open()
        wire.send(f"<iq type='get' id='g1'><query xmlns='{NS_REGISTER}'/></iq>")
        reply = wire.take()[0]
        self.assertEqual((reply["type"], reply["id"]), ("result", "g1"))
        query = next(reply.elements(NS_REGISTER, "query"))
        self.assertEqual([c.name for c in query.elements()], ["instructions", "username", "password"])

    async def test_registerThenLogIn(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start()
        reply = await self.register(fx, "Mercutio", "queen-mab")
        self.assertEqual((reply["type"], reply["id"]), ("result", "r1"))
        self.assertTrue(await fx.accounts.checkPassword("mercutio", "queen-mab"))
        wire, _ = fx.open()
        await fx.plainLogin(wire, "mercutio", "queen-mab")

    async def test_errors(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        cases = [
            (("juliet", "secret123"), "conflict"),
            (("bad'name", "secret123"), "not-acceptable"),
            (("nurse", "short"), "not-acceptable"),
            (("nurse", None), "not-acceptable"),
            ((None, "secret123"), "not-acceptable"),
        ]
        for (username, password), condition in cases:
            reply = await self.register(fx, username, password)
            self.assertEqual(reply["type"], "error")
            self.assertEqual(stanzaErrorCondition(reply), condition, (username, password))
        self.assertFalse(await fx.accounts.userExists("nurse"))

    async def test_remove(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        reply = await self.register(fx, None, None, extra="<remove/>")
        self.assertEqual(stanzaErrorCondition(reply), "not-allowed")

    async def test_closed(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, registration="closed").start()
        reply = await self.register(fx, "nurse", "secret123")
        self.assertEqual(stanzaErrorCondition(reply), "not-allowed")
        wire, _ = fx.open()
        wire.send(f"<iq type='get' id='g1'><query xmlns='{NS_REGISTER}'/></iq>")
        self.assertEqual(stanzaErrorCondition(await wire.waitFor("iq")), "not-allowed")

    async def test_notBeforeRequiredTLS(self) -> None:
        fx = await C2SFixture(self).start()
        wire, _ = fx.open()
        wire.send(registerXML("nurse", "secret123"))
        reply = wire.take()[0]
        self.assertEqual(stanzaErrorCondition(reply), "not-allowed")
        self.assertFalse(await fx.accounts.userExists("nurse"))

    async def test_otherStanzasStillNeedAuthentication(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start()
        wire, _ = fx.open()
        wire.send("<iq type='get' id='v'><query xmlns='jabber:iq:version'/></iq>")
        self.assertEqual(wire.streamError(), "not-authorized")

    async def test_failedAttemptsPerConnection(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire, _ = fx.open()
        for n in range(MAX_AUTH_FAILURES):
            wire.send(registerXML("juliet", "secret123", ident=f"r{n}"))
            await wire.waitFor("iq")
        self.assertEqual(wire.streamError(), "policy-violation")

    async def test_throttlePerAddress(self) -> None:
        fx = await C2SFixture(
            self, allowPlaintext=True, registrationsPerAddress=2, registrationPeriod=600
        ).start()
        for name in ("a1", "a2"):
            self.assertEqual((await self.register(fx, name, "secret123", "10.0.0.7"))["type"], "result")
        refused = await self.register(fx, "a3", "secret123", "10.0.0.7")
        self.assertEqual(stanzaErrorCondition(refused), "policy-violation")
        self.assertEqual(next(refused.elements(NS_CLIENT, "error"))["type"], "wait")
        # Other addresses, and loopback (exempt by default), are not affected.
        self.assertEqual((await self.register(fx, "b1", "secret123", "10.0.0.8"))["type"], "result")
        for name in ("c1", "c2", "c3"):
            self.assertEqual((await self.register(fx, name, "secret123"))["type"], "result")
        fx.clock.advance(601)
        self.assertEqual((await self.register(fx, "a3", "secret123", "10.0.0.7"))["type"], "result")

    def test_addressKey(self) -> None:
        from xmppjson.c2s.register import addressKey

        self.assertEqual(addressKey("10.1.2.3"), "10.1.2.3")
        self.assertEqual(addressKey("2001:db8::1"), "2001:db8::/64")
        self.assertEqual(addressKey("2001:db8::1:2:3:4"), "2001:db8::/64")
        self.assertEqual(addressKey("::ffff:10.1.2.3"), "10.1.2.3")
        self.assertEqual(addressKey("::1"), "::1")
        self.assertEqual(addressKey("::2"), "::/64")
        self.assertEqual(addressKey("unix-socket"), "unix-socket")

    async def test_throttleIPv6Prefix(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, registrationsPerAddress=1).start()
        self.assertEqual((await self.register(fx, "v1", "secret123", "2001:db8::1"))["type"], "result")
        refused = await self.register(fx, "v2", "secret123", "2001:db8::ffff")
        self.assertEqual(stanzaErrorCondition(refused), "policy-violation")

    async def test_concurrentRegistrationsFromOneAddress(self) -> None:
        """Parallel connections cannot slip past the limit: one address registers in turn."""
        fx = await C2SFixture(self, allowPlaintext=True, registrationsPerAddress=2).start()
        wires = []
        for n in range(4):
            wire, _ = fx.open("10.0.0.9")
            wire.send(registerXML(f"p{n}", "secret123"))
            wires.append(wire)
        replies = [await wire.waitFor("iq") for wire in wires]
        self.assertEqual(sorted(r["type"] for r in replies), ["error", "error", "result", "result"])

    async def test_changePassword(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet")
        wire = await fx.login()
        wire.send(f"<iq type='get' id='g'><query xmlns='{NS_REGISTER}'/></iq>")
        form = await wire.waitFor("iq")
        query = next(form.elements(NS_REGISTER, "query"))
        self.assertEqual([c.name for c in query.elements()], ["registered", "username", "password"])
        self.assertEqual(str(next(query.elements(NS_REGISTER, "username"))), "juliet")
        wire.send(
            f"<iq type='set' id='c1' to='localhost'><query xmlns='{NS_REGISTER}'>"
            "<username>juliet</username><password>new-secret</password></query></iq>"
        )
        reply = await wire.waitFor("iq")
        self.assertEqual((reply["type"], reply["id"]), ("result", "c1"))
        self.assertTrue(await fx.accounts.checkPassword("juliet", "new-secret"))
        self.assertFalse(await fx.accounts.checkPassword("juliet", "secret123"))

    async def test_changePasswordErrors(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet", "romeo")
        wire = await fx.login()
        cases = [
            ("<username>romeo</username><password>new-secret</password>", "not-allowed"),
            ("<password>short</password>", "not-acceptable"),
            ("<username>juliet</username>", "not-acceptable"),
            ("<remove/>", "not-allowed"),
        ]
        for n, (payload, condition) in enumerate(cases):
            wire.send(f"<iq type='set' id='e{n}'><query xmlns='{NS_REGISTER}'>{payload}</query></iq>")
            reply = await wire.waitFor("iq")
            self.assertEqual(stanzaErrorCondition(reply), condition, payload)
        self.assertTrue(await fx.accounts.checkPassword("romeo", "secret123"))
        self.assertTrue(await fx.accounts.checkPassword("juliet", "secret123"))


# -- throttles --------------------------------------------------------------------------------


class StanzaRateTests(unittest.TestCase):
    """Over its rate a client is slowed down (its socket paused), never cut off or dropped."""

    async def test_burstThenPause(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, stanzaRate=50, stanzaBurst=200).start(
            "juliet", "romeo"
        )
        juliet = await fx.login("juliet", "balcony")
        romeo = await fx.login("romeo", "garden")
        romeo.send("".join(chat("juliet@localhost/balcony", f"m{n}") for n in range(150)))
        self.assertEqual(romeo.transport.producerState, "producing")
        romeo.send("".join(chat("juliet@localhost/balcony", f"m{n}") for n in range(150, 300)))
        # Everything sent is handled; reading stops for the 100-stanza deficit (2 s).
        self.assertEqual(len(bodies(juliet.take())), 300)
        self.assertEqual(romeo.transport.producerState, "paused")
        fx.clock.advance(1.9)
        self.assertEqual(romeo.transport.producerState, "paused")
        fx.clock.advance(0.2)
        self.assertEqual(romeo.transport.producerState, "producing")
        self.assertFalse(romeo.closed)

    async def test_throttleAndBackpressure(self) -> None:
        """Reading resumes only when neither the rate nor a full output buffer holds it."""
        fx = await C2SFixture(self, allowPlaintext=True, stanzaRate=10, stanzaBurst=1).start("juliet")
        juliet = await fx.login()
        juliet.send("<presence/><presence/><presence/>")
        self.assertEqual(juliet.transport.producerState, "paused")
        juliet.protocol.pauseProducing()
        juliet.protocol.resumeProducing()
        self.assertEqual(juliet.transport.producerState, "paused")
        juliet.protocol.pauseProducing()
        fx.clock.advance(1)
        self.assertEqual(juliet.transport.producerState, "paused")
        juliet.protocol.resumeProducing()
        self.assertEqual(juliet.transport.producerState, "producing")

    async def test_disabled(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, stanzaRate=0).start("juliet")
        juliet = await fx.login()
        juliet.send("<presence/>" * 1000)
        self.assertEqual(juliet.transport.producerState, "producing")


class LoginThrottleTests(unittest.TestCase):
    """Failed logins are counted per address and per account, across connections."""

    async def attempt(
        self, fx: C2SFixture, user: str, password: str, host: str
    ) -> str:
        """One PLAIN attempt on a new connection: C{"success"} or the failure condition."""
        wire, _ = fx.open(host)
        payload = base64.b64encode(f"\x00{user}\x00{password}".encode()).decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        found: list[domish.Element] = []

        def answered() -> bool:
            found.extend(e for e in wire.take() if e.uri == NS_SASL)
            return bool(found)

        await waitUntil(answered)
        wire.lose()
        return "success" if found[0].name == "success" else failureCondition(found[0])

    async def test_perAddress(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, authFailureLimit=3).start("juliet", "romeo")
        for user in ("juliet", "romeo", "nobody"):
            self.assertEqual(await self.attempt(fx, user, "wrong-one", "10.1.1.1"), "not-authorized")
        # The right password, from that address: refused for a while.
        self.assertEqual(
            await self.attempt(fx, "juliet", "secret123", "10.1.1.1"), "temporary-auth-failure"
        )
        self.assertEqual(await self.attempt(fx, "romeo", "secret123", "10.1.1.2"), "success")
        fx.clock.advance(61)
        self.assertEqual(await self.attempt(fx, "juliet", "secret123", "10.1.1.1"), "success")

    async def test_perAccount(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, authFailureLimit=3).start("juliet", "romeo")
        for n in range(3):
            self.assertEqual(
                await self.attempt(fx, "juliet", "wrong-one", f"10.2.0.{n}"), "not-authorized"
            )
        self.assertEqual(
            await self.attempt(fx, "Juliet", "secret123", "10.2.1.1"), "temporary-auth-failure"
        )
        self.assertEqual(await self.attempt(fx, "romeo", "secret123", "10.2.0.1"), "success")
        fx.clock.advance(61)
        self.assertEqual(await self.attempt(fx, "juliet", "secret123", "10.2.1.1"), "success")

    async def test_successClearsTheAccount(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, authFailureLimit=3).start("juliet")
        for n in range(2):
            await self.attempt(fx, "juliet", "wrong-one", f"10.3.0.{n}")
        self.assertEqual(await self.attempt(fx, "juliet", "secret123", "10.3.1.1"), "success")
        await self.attempt(fx, "juliet", "wrong-one", "10.3.0.9")
        self.assertEqual(await self.attempt(fx, "juliet", "secret123", "10.3.1.1"), "success")

    async def test_scramAccountGate(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, authFailureLimit=2).start("juliet")
        for n in range(2):
            await self.attempt(fx, "juliet", "wrong-one", f"10.4.0.{n}")
        wire, _ = fx.open("10.4.1.1")
        client = ScramClient(["SCRAM-SHA-256"], "juliet", "secret123")
        first = base64.b64encode(client.get_client_first().encode()).decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
        failure = await wire.waitFor("failure", NS_SASL)
        self.assertEqual(failureCondition(failure), "temporary-auth-failure")

    async def test_disabled(self) -> None:
        fx = await C2SFixture(self, allowPlaintext=True, authFailureLimit=0).start("juliet")
        for _ in range(10):
            await self.attempt(fx, "juliet", "wrong-one", "10.5.0.1")
        self.assertEqual(await self.attempt(fx, "juliet", "secret123", "10.5.0.1"), "success")


class ClosingSessionTests(unittest.TestCase):
    async def test_closedStreamLeavesTheCoreAtOnce(self) -> None:
        """
        Between the server closing a stream and the socket going away, the session is no
        longer routable: a message for it goes offline instead of looping back to it.
        """
        fx = await C2SFixture(self, allowPlaintext=True, idleTimeout=10).start("juliet", "romeo")
        juliet = await fx.login("juliet", "balcony")
        juliet.send("<presence/>")
        fx.clock.advance(11)
        romeo = await fx.login("romeo", "garden")
        self.assertEqual(juliet.streamError(), "connection-timeout")
        self.assertFalse(juliet.protocol.lost)
        self.assertIsNone(fx.im.router.session("juliet@localhost", "balcony"))
        romeo.send("<presence/>")
        romeo.send(chat("juliet@localhost", "later"))
        self.assertEqual([e for e in romeo.take() if e.name == "message"], [])
        back = await fx.login("juliet", "tower")
        back.send("<presence/>")
        message = await back.waitFor("message")
        self.assertEqual(bodies([message]), ["later"])

    async def test_cutSlowReaderLeavesTheCore(self) -> None:
        """
        A client cut for not reading is unroutable from that moment: messages for it (to its
        bare JID, with the real core) go offline instead of looping back to it.
        """
        fx = await C2SFixture(self, allowPlaintext=True, maxStanzaSize=16 * 1024).start(
            "juliet", "romeo"
        )
        juliet = await fx.login("juliet", "balcony")
        juliet.send("<presence/>")
        romeo = await fx.login("romeo", "garden")
        juliet.protocol.pauseProducing()
        big = "x" * 8000
        for n in range(200):
            romeo.send(chat("juliet@localhost", f"{n} {big}", f"m{n}"))
        self.assertTrue(juliet.transport.disconnected)
        fx.clock.advance(0)
        self.assertIsNone(fx.im.router.session("juliet@localhost", "balcony"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([e for e in romeo.take() if e.name == "message"], [])
        written = len(bodies(juliet.take()))
        back = await fx.login("juliet", "tower")
        back.send("<presence/>")
        stored: list[domish.Element] = []

        def allThere() -> bool:
            stored.extend(e for e in back.take() if e.name == "message")
            return written + len(stored) >= 200

        await waitUntil(allThere)
        self.assertEqual(written + len(stored), 200)


class HalfCloseTests(unittest.TestCase):
    """A client that shuts its side of the connection (FIN), perhaps mid-stanza."""

    async def test_sessionEndsAndLaterMessagesGoOffline(self) -> None:
        fx = await C2SFixture(self, useTLS=False, allowPlaintext=True).start("juliet", "romeo")
        juliet = await fx.login("juliet", "balcony")
        juliet.send("<presence/>")
        romeo = await fx.login("romeo", "orchard")
        juliet.send("<message to='romeo@localhost/orchard' type='chat'><body>part")  # cut short
        juliet.protocol.readConnectionLost()
        # The session left the core at once, and the socket closes after what was written.
        self.assertIsNone(fx.im.router.session("juliet@localhost", "balcony"))
        self.assertTrue(juliet.transport.disconnecting)
        romeo.send("<message to='juliet@localhost' type='chat' id='late'><body>still there?</body></message>")
        for _ in range(200):
            stored = await fx.store.getOffline("juliet")
            if stored:
                break
            await waitUntil(lambda: True)
        self.assertEqual(len(stored), 1)
        self.assertIn("late", stored[0].xml)
