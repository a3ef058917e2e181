"""
Faults: what the server does when its database falters and when it is stopped.

 - L{OfflineRetryTests}: a message for an offline user is stored even when the store fails a
   few times (retries on the core's clock), delivered live if the user arrives meanwhile, and
   bounced with C{resource-constraint}/C{wait} only once the retries run out: never lost.
 - L{StoreOutageTests}: the store goes away under a running server (a wrapper that makes every
   call fail as the real store does while it reconnects): logins and token checks answer 503,
   live sessions keep chatting and exchanging presence, and everything works again when the
   store is back.  In memory, on a L{task.Clock}.
 - L{PostgreSQLOutageTests}: the same with the whole service on real sockets and a real
   PostgreSQL behind a TCP relay that the test cuts and restores (skipped without
   C{XMPPJSON_TEST_PG}).
 - L{ShutdownTests}: stopping the service (what SIGTERM does) closes every stream on both doors
   with C{system-shutdown}, broadcasts unavailable and keeps what must be stored; and once for
   real, with C{twistd -n xmppjson} in a subprocess and SIGTERM.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols import portforward
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests import pgtest
from tests.helpers import DOMAIN, RestClient, makeStore, realReactor
from tests.imhelpers import CoreFixture, RecordingSession, settle, until
from tests.test_websocket import UPGRADE, parseResponse, rawHTTP
from tests.wshelpers import WebFixture
from xmppjson.accounts import Accounts
from xmppjson.config import Config
from xmppjson.error import StoreUnavailable
from xmppjson.im.server import IMServer
from xmppjson.service import makeServer
from xmppjson.storage import RosterItem
from xmppjson.web import makeSite
from xmppjson.websocket import batchedTimer

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "secret123"

#: Store methods that keep working while a L{FlakyStore} is down: its life cycle.
_LIFECYCLE = frozenset({"start", "close", "isReady", "backendName"})


class FlakyStore:
    """
    A store in front of a real one that fails like the real one does while its database is
    unreachable: every call fails at once with L{StoreUnavailable}.

    @ivar down: every call fails while this is set.
    @ivar failures: method name -> how many of its next calls fail (then it works again).
    @ivar calls: method name -> how many times it was called.
    """

    def __init__(self, real: Any):
        self.real = real
        self.down = False
        self.failures: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.real, name)
        if name in _LIFECYCLE or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.down:
                return defer.fail(StoreUnavailable())
            if self.failures.get(name, 0) > 0:
                self.failures[name] -= 1
                return defer.fail(StoreUnavailable())
            return attribute(*args, **kwargs)

        return call


class SlowStore:
    """A store in front of a real one whose C{storeOffline} takes C{seconds} to start."""

    def __init__(self, real: Any, seconds: float):
        self.real = real
        self.seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def storeOffline(self, *args: Any) -> defer.Deferred[Any]:
        d = task.deferLater(realReactor(), self.seconds, lambda: None)
        return d.addCallback(lambda _: self.real.storeOffline(*args))


def _d(f: Callable[..., Any]) -> Callable[..., defer.Deferred[Any]]:
    def wrapper(self: Any, *a: Any, **kw: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


def child(element: Any, name: str) -> Any:
    """The first child element called C{name}, whatever its namespace, or C{None}."""
    return next((c for c in element.elements() if c.name == name), None)


async def friends(store: Any, one: str, two: str) -> None:
    """Make two users mutual contacts (subscription both), straight in the store."""
    await store.setRosterItem(one, RosterItem(jid=f"{two}@{DOMAIN}", subscription="both"))
    await store.setRosterItem(two, RosterItem(jid=f"{one}@{DOMAIN}", subscription="both"))


# -- offline storage retries ----------------------------------------------------------------


class OfflineRetryTests(unittest.TestCase):
    """The core stores an offline message through a short store outage."""

    async def core(self, **config: Any) -> tuple[CoreFixture, FlakyStore, RecordingSession]:
        fixture = await CoreFixture(self, **config).start("szymon", "alicja")
        flaky = FlakyStore(fixture.store)
        fixture.im = IMServer(fixture.config, flaky, fixture.clock)
        sender = await fixture.connect("szymon@localhost/phone", presence="<presence/>")
        return fixture, flaky, sender

    def chat(self, sender: RecordingSession, body: str = "are you there?") -> None:
        sender.send(f"<message to='alicja@localhost' id='o1' type='chat'><body>{body}</body></message>")

    @_d
    async def test_storedAfterTransientFailures(self) -> None:
        """Two failures, then the store works: stored on the third attempt, no error."""
        fixture, flaky, sender = await self.core()
        flaky.failures["storeOffline"] = 2
        self.chat(sender)
        await settle()
        self.assertEqual(await fixture.store.getOffline("alicja"), [])
        fixture.clock.advance(0.5)
        await settle()
        self.assertEqual(await fixture.store.getOffline("alicja"), [])
        fixture.clock.advance(1.0)
        await until(lambda: flaky.calls.get("storeOffline") == 3)
        await settle()
        [stored] = await fixture.store.getOffline("alicja")
        # one delay stamp, not one per attempt
        self.assertEqual(stored.xml.count("urn:xmpp:delay"), 1)
        self.assertIn("are you there?", stored.xml)
        self.assertEqual(sender.take("message"), [])
        await fixture.im.messages.drain()

    @_d
    async def test_bouncedWhenRetriesRunOut(self) -> None:
        """Still failing after 0.5 + 1 + 2 seconds: resource-constraint/wait to the sender."""
        fixture, flaky, sender = await self.core()
        flaky.failures["storeOffline"] = 99
        self.chat(sender)
        await settle()
        for delay in (0.5, 1.0):
            fixture.clock.advance(delay)
            await settle()
            self.assertEqual(sender.take("message"), [])
        fixture.clock.advance(2.0)
        await until(lambda: sender.received)
        [bounce] = sender.take("message")
        self.assertEqual(bounce.getAttribute("type"), "error")
        self.assertEqual(bounce.getAttribute("id"), "o1")
        error = child(bounce, "error")
        self.assertEqual(error.getAttribute("type"), "wait")
        self.assertEqual(next(c.name for c in error.elements()), "resource-constraint")
        self.assertEqual(flaky.calls["storeOffline"], 4)
        self.assertEqual(fixture.im.messages._storing, set())

    @_d
    async def test_userCheckFailsToo(self) -> None:
        """The recipient check is part of the attempt: a failure there is retried as well."""
        fixture, flaky, sender = await self.core()
        flaky.failures["userExists"] = 1
        self.chat(sender)
        await settle()
        fixture.clock.advance(0.5)
        await until(lambda: flaky.calls.get("storeOffline") == 1)
        await settle()
        self.assertEqual(len(await fixture.store.getOffline("alicja")), 1)
        self.assertEqual(sender.take("message"), [])

    @_d
    async def test_deliveredLiveWhenRecipientArrives(self) -> None:
        """The recipient logs in during the retry delay: the message goes to it, unstamped."""
        fixture, flaky, sender = await self.core()
        flaky.failures["storeOffline"] = 1
        self.chat(sender)
        await settle()
        alicja = await fixture.connect("alicja@localhost/web", messagesAtOnce=True)
        fixture.clock.advance(0.5)
        await settle()
        [message] = alicja.take("message")
        self.assertEqual(str(child(message, "body")), "are you there?")
        self.assertIsNone(child(message, "delay"))
        self.assertEqual(flaky.calls["storeOffline"], 1)
        self.assertEqual(await fixture.store.getOffline("alicja"), [])

    @_d
    async def test_noRetriesConfigured(self) -> None:
        """C{offlineRetryDelays=()}: the first failure bounces at once."""
        _fixture, flaky, sender = await self.core(offlineRetryDelays=())
        flaky.failures["storeOffline"] = 1
        self.chat(sender)
        await until(lambda: sender.received)
        [bounce] = sender.take("message")
        self.assertEqual(bounce.getAttribute("type"), "error")

    @_d
    async def test_drainWaitsForRetries(self) -> None:
        """L{MessageHandler.drain} fires only once a retried message is stored."""
        fixture, flaky, sender = await self.core()
        flaky.failures["storeOffline"] = 1
        self.chat(sender)
        # (the blocking filter reads the recipient's blocklist before the message is routed)
        await until(lambda: fixture.im.messages._storing)
        drained = defer.ensureDeferred(fixture.im.messages.drain())
        await settle()
        self.assertFalse(drained.called)
        fixture.clock.advance(0.5)
        await until(lambda: drained.called)
        self.assertEqual(len(await fixture.store.getOffline("alicja")), 1)


# -- a store outage under a running server (memory transports) ------------------------------


class OutageFixture(WebFixture):
    """L{WebFixture} whose core and accounts use the store through a L{FlakyStore}."""

    def __init__(self, testCase: Any, **config: Any):
        super().__init__(testCase, scramIterations=4096, **config)
        self.flaky = FlakyStore(self.store)
        self.im = IMServer(self.config, self.flaky, self.clock)
        self.accounts = Accounts(self.config, self.flaky, self.clock)
        self.site = makeSite(self.config, self.accounts, self.im, self.clock)
        self.rest = RestClient(self.site.resource)

    async def upgrade(self, token: str) -> tuple[int, dict[str, Any], bytes]:
        """A WebSocket handshake with C{token} on a raw transport: status, headers, body."""
        transport, _ = rawHTTP(self, UPGRADE % (b"?token=" + token.encode(), b""))
        await self.until(lambda: b"\r\n\r\n" in transport.value())
        await self.flush()
        raw = transport.value()
        head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        headers = dict(
            line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line
        )
        status, body = parseResponse(raw)
        return status, headers, body


class StoreOutageTests(unittest.TestCase):
    """The database goes away while users are online, and comes back."""

    @_d
    async def test_outageAndRecovery(self) -> None:
        web = await OutageFixture(self).start("szymon", "alicja", "celina")
        await friends(web.store, "szymon", "alicja")
        spareToken = await web.token("celina")
        szymon = await web.connect("szymon", presence={})
        alicja = await web.connect("alicja", presence={})
        await web.until(lambda: any(f["type"] == "presence" for f in szymon.frames))
        szymon.take()
        alicja.take()

        web.flaky.down = True
        # Logins and token checks: a clear 503 with Retry-After, on REST and on /stream.
        response = await web.rest.post("/login", json={"jid": "celina", "password": PASSWORD})
        self.assertEqual(response.code, 503, response.body)
        self.assertEqual(response.json()["error"], "service-unavailable")
        self.assertEqual(response.header("retry-after"), "5")
        status, headers, body = await web.upgrade(spareToken)
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["error"], "service-unavailable")
        self.assertEqual(headers.get("retry-after"), "5")
        self.assertEqual((await web.rest.get("/health")).code, 503)
        # A failed login during the outage is not a wrong password: no throttling follows.
        self.assertTrue(web.accounts.loginAllowed("celina", "127.0.0.1"))

        # Live sessions chat and see each other's presence: none of it needs the database.
        szymon.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "id": "l1",
                                                        "type": "chat", "body": "still up?"}})
        await web.until(lambda: alicja.frames)
        [message] = alicja.take("message")
        self.assertEqual(message["payload"]["body"], "still up?")
        alicja.sendJSON({"type": "presence", "payload": {"show": "dnd", "status": "db is down"}})
        await web.until(lambda: szymon.frames)
        [presence] = szymon.take("presence")
        self.assertEqual(presence["payload"]["show"], "dnd")
        self.assertEqual(szymon.take(), [])
        self.assertIsNone(szymon.closedWith)
        self.assertIsNone(alicja.closedWith)
        # The batched last-presence write fails quietly (a warning), nothing else happens.
        web.clock.advance(1.5)
        await web.flush()

        # Back: everything works again, without a restart.
        web.flaky.down = False
        response = await web.rest.post("/login", json={"jid": "celina", "password": PASSWORD})
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual((await web.rest.get("/health")).code, 200)
        celina = await web.connect("celina")
        self.assertEqual(celina.frames[0]["type"], "session")
        szymon.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "id": "l2",
                                                        "type": "chat", "body": "back"}})
        await web.until(lambda: alicja.frames)
        self.assertEqual(alicja.take("message")[0]["payload"]["body"], "back")

    @_d
    async def test_offlineMessageAcrossOutage(self) -> None:
        """
        A message for an offline user sent while the database is down is stored once it is
        back within the retry window, and delivered at the user's next login.
        """
        web = await OutageFixture(self).start("szymon", "celina")
        szymon = await web.connect("szymon")
        szymon.take()
        web.flaky.down = True
        szymon.sendJSON({"type": "message", "payload": {"to": "celina@localhost", "id": "q1",
                                                        "type": "chat", "body": "for later"}})
        await web.flush()
        web.clock.advance(0.5)
        await web.flush()
        web.flaky.down = False
        web.clock.advance(1.0)
        await web.until(lambda: web.flaky.calls.get("storeOffline") == 1 or szymon.frames)
        await web.im.messages.drain()
        self.assertEqual(szymon.take(), [])
        celina = await web.connect("celina")
        await web.until(lambda: any(f["type"] == "message" for f in celina.frames))
        [message] = celina.take("message")
        self.assertEqual(message["payload"]["body"], "for later")
        self.assertEqual(message["payload"]["delay"]["from"], "localhost")



class DroppedSocketTests(unittest.TestCase):
    """A client goes away in the middle of a conversation."""

    @_d
    async def test_halfClosedSocketKeepsWhatWasWritten(self) -> None:
        """
        The client shuts its side (FIN) while a message for it is written but not yet sent:
        that message still leaves before the connection closes, and the next one, routed
        after the session ended, is stored offline.  (Twisted's default would close the socket
        at once, dropping the first message although the core counted it as delivered.)
        """
        web = await WebFixture(self).start("szymon", "alicja")
        szymon = await web.connect("szymon")
        alicja = await web.connect("alicja")
        szymon.take()
        alicja.take()
        fromSzymon = next(p for p in web.pumps if p.client is szymon)
        toAlicja = next(p for p in web.pumps if p.client is alicja)
        szymon.sendJSON(message("alicja@localhost", "first", id="m1"))
        fromSzymon.pump()  # routed and written to alicja's socket, not sent yet
        server = toAlicja.serverIO.protocol
        # what makes a TCP transport call readConnectionLost rather than connectionLost
        self.assertTrue(IHalfCloseableProtocol.providedBy(server))
        server.readConnectionLost()
        self.assertEqual(web.im.router.countOf("alicja@localhost"), 0)
        szymon.sendJSON(message("alicja@localhost", "second", id="m2"))
        await web.until(lambda: alicja.closedWith is not None)
        self.assertEqual([f["payload"]["id"] for f in alicja.take("message")], ["m1"])
        stored = []
        for _ in range(200):
            stored = await web.store.getOffline("alicja")
            if stored:
                break
            await web.flush(1)
        [entry] = stored
        self.assertIn("second", entry.xml)
        self.assertEqual(szymon.take(), [])


def message(to: str, body: str, **more: Any) -> dict[str, Any]:
    return {"type": "message", "payload": {"to": to, "type": "chat", "body": body, **more}}


# -- real sockets: clients for both doors ---------------------------------------------------


async def waitFor(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    """Let the real reactor run until C{predicate()} holds."""
    reactor = realReactor()
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await task.deferLater(reactor, 0.01, lambda: None)


class WSClient(WebSocketClientProtocol):
    """A JSON-door client on a real socket, recording every frame and how it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.closeCode: Any = None
        self.closed: defer.Deferred[Any] = defer.Deferred()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.closeCode = code
        if not self.closed.called:
            self.closed.callback(code)

    def sendJSON(self, frame: Any) -> None:
        self.sendMessage(json.dumps(frame).encode("utf-8"))

    def of(self, ftype: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == ftype]


async def connectWS(host: str, port: int, token: str) -> WSClient:
    """Open C{/stream} with C{token}; fires once the session frame arrived."""
    reactor = realReactor()
    factory = WebSocketClientFactory(f"ws://{host}:{port}/stream?token={token}")
    factory.protocol = WSClient
    factory._batched_timer = batchedTimer(reactor)
    client = await endpoints.TCP4ClientEndpoint(reactor, host, port).connect(factory)
    await waitFor(lambda: client.frames, what="the session frame")
    assert client.frames[0]["type"] == "session", client.frames
    return client


class XMPPClient(protocol.Protocol):
    """
    A deliberately small XMPP client on a real socket: raw bytes in, regular expressions over
    them, SASL PLAIN (the server runs with allowPlaintext) and resource binding.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.closed.called:
            self.closed.callback(None)

    def send(self, xml: str) -> None:
        self.transport.write(xml.encode("utf-8"))

    async def expect(self, pattern: bytes, since: int = 0) -> re.Match[bytes]:
        regex = re.compile(pattern, re.DOTALL)
        await waitFor(lambda: regex.search(self.received, since), what=pattern.decode())
        match = regex.search(self.received, since)
        assert match is not None
        return match

    def openStream(self) -> None:
        self.send(f"<stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams'>")

    async def login(self, user: str, password: str = PASSWORD) -> str:
        """SASL PLAIN, bind, initial presence; the full JID."""
        self.openStream()
        await self.expect(rb"</stream:features>")
        mark = len(self.received)
        credentials = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>")
        await self.expect(rb"<success", mark)
        mark = len(self.received)
        self.openStream()
        await self.expect(rb"</stream:features>", mark)
        self.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        jid = (await self.expect(rb"<jid>([^<]+)</jid>", mark)).group(1).decode()
        self.send("<presence/>")
        return jid


async def connectXMPP(host: str, port: int, user: str) -> XMPPClient:
    factory = protocol.Factory.forProtocol(XMPPClient)
    client = await endpoints.TCP4ClientEndpoint(realReactor(), host, port).connect(factory)
    await client.login(user)
    return client


class LiveServer:
    """The whole service (C{makeServer}) on loopback ports chosen by the system."""

    def __init__(self, testCase: unittest.TestCase, db: str, **config: Any):
        self.config = Config(
            web="tcp:0:interface=127.0.0.1", c2s="tcp:0:interface=127.0.0.1", db=db,
            allowPlaintext=True, scramIterations=4096, **config,
        )
        self.server = makeServer(self.config, realReactor())
        self.pool = HTTPConnectionPool(realReactor(), persistent=False)
        self.testCase = testCase
        self.stopped = False

    async def start(self) -> LiveServer:
        self.server.startService()
        self.testCase.addCleanup(self.stop)
        web = await self.server.getServiceNamed("web")._waitingForPort
        c2s = await self.server.getServiceNamed("c2s")._waitingForPort
        self.webPort = web.getHost().port
        self.c2sPort = c2s.getHost().port
        await self.server.store.start()
        return self

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.server.stopService()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.webPort}{path}"

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        response = await treq.post(self.url(path), json=body, pool=self.pool)
        return response.code, await response.json()

    async def register(self, *users: str) -> None:
        for user in users:
            code, body = await self.post("/users", {"jid": user, "password": PASSWORD})
            assert code == 201, body

    async def token(self, user: str) -> str:
        code, body = await self.post("/login", {"jid": user, "password": PASSWORD})
        assert code == 200, body
        return str(body["token"])


# -- PostgreSQL outage behind a relay --------------------------------------------------------


class _RelayConnection(portforward.ProxyServer):
    factory: Relay

    def connectionMade(self) -> None:
        self.factory.open.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.open.discard(self)
        super().connectionLost(reason)


class Relay(portforward.ProxyFactory):
    """A TCP relay in front of the database: the network between it and the server."""

    protocol = _RelayConnection
    noisy = False

    def __init__(self, host: str, port: int):
        super().__init__(host, port)
        self.open: set[_RelayConnection] = set()
        self.port_: Any = None
        self.listenPort = 0

    def listen(self) -> None:
        self.port_ = realReactor().listenTCP(self.listenPort, self, interface="127.0.0.1")
        self.listenPort = self.port_.getHost().port

    async def cut(self) -> None:
        """Refuse new connections and abort every open one, both ways."""
        if self.port_ is not None:
            await self.port_.stopListening()
            self.port_ = None
        for relay in list(self.open):
            for side in (relay, relay.peer):
                if side is not None and side.transport is not None:
                    side.transport.abortConnection()
        await waitFor(lambda: not self.open, what="the relay to close")


class PostgreSQLOutageTests(unittest.TestCase):
    """The whole service on PostgreSQL, whose network connection is cut and restored."""

    SCHEMA = "xmppjson_faults"

    def setUp(self) -> None:
        from psycopg2.extensions import parse_dsn

        dsn = pgtest.postgresDSN()
        parameters = parse_dsn(dsn)
        host = parameters.get("host", "127.0.0.1")
        if host.startswith("/"):
            raise unittest.SkipTest("the test database is on a Unix socket; the relay needs TCP")
        # A schema of our own: other test modules empty the default one between their tests.
        self._resetSchema(dsn)
        self.relay = Relay(host, int(parameters.get("port", 5432)))
        self.relay.listen()
        self.addCleanup(self.relay.cut)
        self.dsn = (
            f"postgresql://{quote(parameters.get('user', ''))}:"
            f"{quote(parameters.get('password', ''))}@127.0.0.1:{self.relay.listenPort}/"
            f"{quote(parameters.get('dbname', ''))}"
            f"?options={quote(f'-c search_path={self.SCHEMA}')}"
        )

    def _resetSchema(self, dsn: str) -> None:
        import psycopg2

        connection = psycopg2.connect(dsn, connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"DROP SCHEMA IF EXISTS {self.SCHEMA} CASCADE")
                cursor.execute(f"CREATE SCHEMA {self.SCHEMA}")
        finally:
            connection.close()

    @_d
    async def test_outageAndRecovery(self) -> None:
        live = await LiveServer(self, self.dsn).start()
        store = live.server.store
        # Reconnect quickly, so that the test does not wait for the production backoff.
        store._retryInitial, store._retryMax = 0.05, 0.2
        await live.register("szymon", "alicja", "celina")
        await friends(store, "szymon", "alicja")
        spare = await live.token("celina")
        web = await connectWS("127.0.0.1", live.webPort, await live.token("szymon"))
        web.sendJSON({"type": "presence", "payload": {}})
        xmpp = await connectXMPP("127.0.0.1", live.c2sPort, "alicja")
        await waitFor(lambda: web.of("presence"), what="alicja's presence")

        await self.relay.cut()
        await waitFor(lambda: not store.isReady, what="the store to notice")
        code, body = await live.post("/login", {"jid": "celina", "password": PASSWORD})
        self.assertEqual((code, body["error"]), (503, "service-unavailable"))
        response = await treq.get(live.url(f"/stream?token={spare}"), pool=live.pool,
                                  headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                           "Sec-WebSocket-Version": "13"})
        self.assertEqual(response.code, 503)
        self.assertEqual((await response.json())["error"], "service-unavailable")
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["5"])
        # Both doors keep chatting, presence keeps flowing.
        web.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "id": "pg1",
                                                     "type": "chat", "body": "db is gone"}})
        await xmpp.expect(rb"<body>db is gone</body>")
        mark = len(xmpp.received)
        xmpp.send("<message to='szymon@localhost' type='chat' id='pg2'><body>carry on</body></message>")
        xmpp.send("<presence><show>away</show></presence>")
        await waitFor(lambda: any(f["payload"].get("body") == "carry on" for f in web.of("message")))
        await waitFor(lambda: any(f["payload"].get("show") == "away" for f in web.of("presence")))
        self.assertNotIn(b"stream:error", xmpp.received[mark:])

        # The network comes back: the store reconnects by itself.
        self.relay.listen()
        await waitFor(lambda: store.isReady, timeout=10, what="the store to reconnect")
        code, body = await live.post("/login", {"jid": "celina", "password": PASSWORD})
        self.assertEqual(code, 200, body)
        celina = await connectWS("127.0.0.1", live.webPort, body["token"])
        self.assertEqual(celina.frames[0]["type"], "session")
        await live.stop()
        # txpostgres reports the connections the relay cut
        import psycopg2

        self.flushLoggedErrors(psycopg2.Error)


# -- shutdown --------------------------------------------------------------------------------


class ShutdownTests(unittest.TestCase):
    """Stopping the service: what SIGTERM makes twistd do."""

    @_d
    async def test_stopClosesBothDoorsAndKeepsState(self) -> None:
        db = os.path.abspath(self.mktemp() + ".sqlite3")
        live = await LiveServer(self, "sqlite:" + db).start()
        await live.register("szymon", "alicja", "celina")
        await friends(live.server.store, "szymon", "alicja")
        web = await connectWS("127.0.0.1", live.webPort, await live.token("szymon"))
        web.sendJSON({"type": "presence", "payload": {"show": "chat", "status": "here"}})
        xmpp = await connectXMPP("127.0.0.1", live.c2sPort, "alicja")
        await waitFor(lambda: web.of("presence"), what="alicja's presence")
        # A message for an offline user, accepted (the sender saw the round trip) just before.
        web.sendJSON({"type": "message", "payload": {"to": "celina@localhost", "id": "s1",
                                                     "type": "chat", "body": "see you"}})
        web.sendJSON({"type": "iq", "payload": {"type": "get", "id": "sync", "to": "localhost",
                                                "ping": {}}})
        await waitFor(lambda: web.of("iq"), what="the ping result")
        mark = len(xmpp.received)

        await live.stop()
        await waitFor(lambda: web.closed.called and xmpp.closed.called, what="both doors to close")
        # JSON door: an error frame saying why, then close code 4503.
        self.assertEqual([f["payload"]["condition"] for f in web.of("error")], ["system-shutdown"])
        self.assertEqual(web.closeCode, 4503)
        # XMPP door: the stream error, then the end of the stream.
        tail = xmpp.received[mark:]
        self.assertIn(b"system-shutdown", tail)
        self.assertTrue(tail.rstrip().endswith(b"</stream:stream>"), tail[-200:])
        # Unavailable was broadcast: whichever session closed first told the other one.
        unavailable = any(f["payload"].get("type") == "unavailable" for f in web.of("presence"))
        self.assertTrue(unavailable or b"type='unavailable'" in tail or b'type="unavailable"' in tail)

        # Nothing that had to be stored was lost.
        store = makeStore("sqlite:" + db)
        self.addCleanup(store.close)
        await store.start()
        for user in ("szymon", "alicja"):
            profile = await store.getProfile(user)
            self.assertEqual(profile["presence"], "unavailable", user)
            self.assertIsNotNone(profile["last_seen"])
        [offline] = await store.getOffline("celina")
        self.assertIn("see you", offline.xml)

    @_d
    async def test_pendingOfflineWriteFinishes(self) -> None:
        """
        An offline message whose write is still under way (a slow database) when the service
        stops is written before the store closes.
        """
        db = os.path.abspath(self.mktemp() + ".sqlite3")
        # No retries: a write refused by a closed store bounces at once, nothing stays pending.
        live = await LiveServer(self, "sqlite:" + db, offlineRetryDelays=()).start()
        await live.register("szymon", "celina")
        messages = live.server.im.messages
        messages.store = SlowStore(live.server.store, 0.3)
        web = await connectWS("127.0.0.1", live.webPort, await live.token("szymon"))
        web.sendJSON({"type": "message", "payload": {"to": "celina@localhost", "id": "p1",
                                                     "type": "chat", "body": "in flight"}})
        await waitFor(lambda: messages._storing, what="the write to start")
        await live.stop()
        await messages.drain()
        store = makeStore("sqlite:" + db)
        self.addCleanup(store.close)
        await store.start()
        self.assertEqual(len(await store.getOffline("celina")), 1)



def _freePort() -> int:
    # Only for twistd, which must be told its ports: the race with another process taking the
    # port in between is accepted (the log then shows the failure).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Twistd(protocol.ProcessProtocol):
    """C{twistd -n xmppjson} as a child process, its log collected."""

    def __init__(self) -> None:
        self.output = b""
        #: fires with C{(exit code, signal)} when the process has ended
        self.ended: defer.Deferred[tuple[int | None, int | None]] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone, ProcessTerminated):
            self.ended.callback((reason.value.exitCode, reason.value.signal))
        else:
            self.ended.callback((None, None))


class TwistdTests(unittest.TestCase):
    """The real thing: a twistd process stopped with SIGTERM."""

    @_d
    async def test_sigterm(self) -> None:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        db = os.path.join(workdir, "xmppjson.sqlite3")
        process = _Twistd()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
            str(REPO), os.environ.get("PYTHONPATH", "")])))
        # tcp:0 and the ports read back from the log: twistd logs "<Factory> starting on N".
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "xmppjson",
                "--web", "tcp:0:interface=127.0.0.1", "--c2s", "tcp:0:interface=127.0.0.1",
                "--db", "sqlite:" + db, "--allow-plaintext"]
        transport = realReactor().spawnProcess(process, sys.executable, args, env=env, path=workdir)
        self.addCleanup(self._kill, transport, process)
        await waitFor(lambda: b"store ready" in process.output, timeout=20,
                      what="twistd to start")
        webPort = int(re.search(rb"XmppJsonSite starting on (\d+)", process.output).group(1))
        c2sPort = int(re.search(rb"C2SFactory starting on (\d+)", process.output).group(1))
        pool = HTTPConnectionPool(realReactor(), persistent=False)

        async def post(path: str, body: Any) -> Any:
            response = await treq.post(f"http://127.0.0.1:{webPort}{path}", json=body, pool=pool)
            return response.code, await response.json()

        for user in ("szymon", "alicja"):
            self.assertEqual((await post("/users", {"jid": user, "password": PASSWORD}))[0], 201)
        _code, body = await post("/login", {"jid": "szymon", "password": PASSWORD})
        web = await connectWS("127.0.0.1", webPort, body["token"])
        web.sendJSON({"type": "presence", "payload": {"show": "away"}})
        xmpp = await connectXMPP("127.0.0.1", c2sPort, "alicja")
        xmpp.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        await xmpp.expect(rb"id=.sync.")
        mark = len(xmpp.received)

        transport.signalProcess("TERM")
        # twistd stops cleanly, then ends itself with the signal it received, as a process
        # stopped by SIGTERM should (so its parent sees how it ended).
        ended = await process.ended
        self.assertIn(ended, [(0, None), (None, signal.SIGTERM)], process.output[-2000:])
        await waitFor(lambda: web.closed.called and xmpp.closed.called, what="both doors to close")
        self.assertEqual([f["payload"]["condition"] for f in web.of("error")], ["system-shutdown"])
        self.assertEqual(web.closeCode, 4503)
        self.assertIn(b"system-shutdown", xmpp.received[mark:])
        self.assertTrue(xmpp.received.rstrip().endswith(b"</stream:stream>"))
        where = process.output.find(b"Traceback")
        self.assertEqual(where, -1, process.output[where - 1500:where + 2500].decode(errors="replace"))
        store = makeStore("sqlite:" + db)
        self.addCleanup(store.close)
        await store.start()
        self.assertEqual((await store.getProfile("szymon"))["presence"], "unavailable")
        self.assertEqual((await store.getProfile("alicja"))["presence"], "unavailable")

    def _kill(self, transport: Any, process: _Twistd) -> Any:
        if not process.ended.called:
            transport.signalProcess(signal.SIGKILL)
            return process.ended
        return None
