"""
Hostile input on the JSON door and the REST door.

Each test sends one kind of abuse to a real server (the real Site, WebSocket door, REST resource
and IM core on memory transports and an in-memory SQLite store, time on a L{task.Clock}), checks
the answer the abuser gets, and then checks that the rest of the server did not notice: two
bystanders, C{bob} and C{celina}, chat through it before and after (L{Server.stillWorks}).

The XMPP door's own hostile-input tests live with that door (C{tests/test_c2s.py}).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.helpers import HTTPResponse, RestClient
from tests.test_c2s import waitUntil
from tests.test_websocket import UPGRADE, parseResponse, rawHTTP
from tests.wshelpers import JSONClient, WebFixture

PASSWORD = "secret123"

#: SQL that must stay data wherever it goes.
SQL_NASTIES = ("'; DROP TABLE users; --", "%s", "%(x)s", "\\", "1' OR '1'='1", "?;--", "$1")


def _d(f: Callable[..., Any]) -> Callable[..., defer.Deferred[Any]]:
    def wrapper(self: Any, *a: Any, **kw: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


class Server(WebFixture):
    """
    A server with an attacker (C{mallory}), a target (C{alicja}) and two bystanders (C{bob},
    C{celina}) who are online on the JSON door; REST on the same Site.
    """

    def __init__(self, testCase: unittest.TestCase, **config: Any):
        config.setdefault("scramIterations", 4096)
        super().__init__(testCase, **config)
        self.testCase = testCase
        self.rest = RestClient(self.site.resource)

    async def begin(self, *more: str) -> Server:
        await self.start("mallory", "alicja", "bob", "celina", *more)
        self.bob = await self.connect("bob")
        self.celina = await self.connect("celina")
        self.bob.take()
        self.celina.take()
        return self

    async def stillWorks(self) -> None:
        """The bystanders still chat both ways, and a new login still works."""
        test = self.testCase
        for sender, receiver, to in ((self.bob, self.celina, "celina"),
                                     (self.celina, self.bob, "bob")):
            sender.sendJSON({"type": "message", "payload": {"to": f"{to}@localhost", "id": "ok",
                                                            "type": "chat", "body": "fine"}})
            await self.until(lambda r=receiver: r.frames)
            [frame] = receiver.take("message")
            test.assertEqual(frame["payload"]["body"], "fine")
            test.assertIsNone(receiver.closedWith)
        response = await self.rest.post("/login", json={"jid": "bob", "password": PASSWORD})
        test.assertEqual(response.code, 200, response.body)

    async def mallory(self) -> JSONClient:
        client = await self.connect("mallory")
        client.take()
        return client

    async def errorsOf(self, client: JSONClient, count: int = 1) -> list[dict[str, Any]]:
        """The next C{count} error frames C{client} receives (their payloads)."""
        await self.until(lambda: len([f for f in client.frames if f["type"] == "error"]) >= count)
        return [f["payload"] for f in client.take("error")]


class EagerClient(JSONClient):
    """Sends C{early} frames the moment the socket opens, before the session frame arrives."""

    #: set on each instance by the test (the protocol is built before its class is changed)
    early: tuple[str, ...] = ()

    def onOpen(self) -> None:
        super().onOpen()
        for text in self.early:
            self.sendText(text)


def message(to: str, body: str, **more: Any) -> dict[str, Any]:
    return {"type": "message", "payload": {"to": to, "type": "chat", "body": body, **more}}


# -- the JSON door ---------------------------------------------------------------------------


class JSONDoorTests(unittest.TestCase):
    """Abuse on C{/stream}."""

    @_d
    async def test_oversizedFrame(self) -> None:
        """
        A 2 MiB frame (the limit is 256 KiB): Autobahn refuses it from its header, without
        buffering it, and the server closes with 1009 (message too big).
        """
        web = await Server(self).begin()
        mallory = await web.mallory()
        mallory.sendJSON(message("alicja@localhost", "x" * (2 * 1024 * 1024)))
        await web.until(lambda: mallory.closedWith is not None)
        self.assertEqual(mallory.closedWith[0], 1009)
        await web.until(lambda: web.im.router.countOf("mallory@localhost") == 0)
        await web.stillWorks()

    @_d
    async def test_messageToASocketBeingClosed(self) -> None:
        """
        A message routed to a session whose socket Autobahn is already closing (after a frame
        over the limit, before the close handshake ends) is not lost and breaks nothing: the
        session ends at once and the message is stored offline.
        """
        web = await Server(self).begin()
        mallory = await web.mallory()
        pump = next(p for p in web.pumps if p.client is mallory)
        mallory.sendJSON(message("alicja@localhost", "x" * (2 * 1024 * 1024)))
        pump.pump()  # the server reads the frame header and starts closing; no reply yet
        server = pump.serverIO.protocol
        self.assertEqual(server.state, server.STATE_CLOSING)
        self.assertEqual(web.im.router.countOf("mallory@localhost"), 1)
        web.bob.sendJSON(message("mallory@localhost", "are you there?", id="late"))
        await web.until(lambda: web.im.router.countOf("mallory@localhost") == 0)
        await web.im.messages.drain()
        await web.flush()
        [stored] = await web.store.getOffline("mallory")
        self.assertIn("are you there?", stored.xml)
        self.assertEqual(web.bob.take(), [])
        await web.until(lambda: mallory.closedWith is not None)
        self.assertEqual(mallory.closedWith[0], 1009)
        await web.stillWorks()

    @_d
    async def test_frameJustUnderTheLimit(self) -> None:
        """A body as large as the frame allows goes through, intact."""
        web = await Server(self).begin()
        mallory = await web.mallory()
        alicja = await web.connect("alicja")
        alicja.take()
        body = "ż" * (120 * 1024)  # 240 KiB of UTF-8
        mallory.sendText(json.dumps(message("alicja@localhost", body), ensure_ascii=False))
        await web.until(lambda: alicja.frames)
        self.assertEqual(alicja.take("message")[0]["payload"]["body"], body)
        await web.stillWorks()

    @_d
    async def test_badJSON(self) -> None:
        web = await Server(self).begin()
        mallory = await web.mallory()
        for text in ("{", "", "null", "[]", '"x"', "{'single': 'quotes'}", '{"type": NaN}',
                     '{"type": "message", "payload": {"body": "\\ud800"}}'):
            mallory.sendText(text)
        errors = await web.errorsOf(mallory, 8)
        self.assertEqual({e["condition"] for e in errors}, {"bad-request"})
        self.assertIsNone(mallory.closedWith)
        await web.stillWorks()

    @_d
    async def test_invalidUTF8InTextFrame(self) -> None:
        """Not UTF-8 in a text frame breaks RFC 6455: the connection is failed with 1007."""
        web = await Server(self).begin()
        mallory = await web.mallory()
        mallory.sendMessage(b'{"type": "message", "payload": {"body": "\xc3\x28"}}', isBinary=False)
        await web.until(lambda: mallory.closedWith is not None)
        self.assertEqual(mallory.closedWith[0], 1007)
        await web.stillWorks()

    @_d
    async def test_binaryFrame(self) -> None:
        """The dialect is text only: a binary frame gets an error frame, the socket stays."""
        web = await Server(self).begin()
        mallory = await web.mallory()
        alicja = await web.connect("alicja")
        alicja.take()
        mallory.sendMessage(json.dumps(message("alicja@localhost", "bin")).encode(), isBinary=True)
        [error] = await web.errorsOf(mallory)
        self.assertEqual(error["condition"], "bad-request")
        self.assertIn("binary", error["text"])
        await web.flush()
        self.assertEqual(alicja.take("message"), [])
        mallory.sendJSON(message("alicja@localhost", "text"))
        await web.until(lambda: alicja.frames)
        self.assertEqual(alicja.take("message")[0]["payload"]["body"], "text")
        await web.stillWorks()

    @_d
    async def test_deepNesting(self) -> None:
        web = await Server(self).begin()
        mallory = await web.mallory()
        deep = '{"a":' * 10_000 + "1" + "}" * 10_000
        mallory.sendText('{"type": "message", "payload": {"to": "alicja@localhost", "x": ' + deep + "}}")
        mallory.sendText("[" * 50_000 + "]" * 50_000)
        xml = "<a>" * 1000 + "</a>" * 1000
        mallory.sendJSON({"type": "message", "payload": {"id": "x", "to": "alicja@localhost",
                                                         "xml": [xml]}})
        errors = await web.errorsOf(mallory, 3)
        self.assertIn("nested deeper than 32 levels", errors[0]["text"])
        self.assertIn("nested deeper than 32 levels", errors[1]["text"])
        self.assertIn("elements nested deeper than 32 levels", errors[2]["text"])
        self.assertEqual(errors[2]["id"], "x")
        await web.stillWorks()

    @_d
    async def test_hugeStrings(self) -> None:
        """Strings with a limit of their own are refused by name; the socket stays."""
        web = await Server(self).begin()
        mallory = await web.mallory()
        mallory.sendJSON(message("alicja@localhost", "hi", id="i" * 100_000))
        mallory.sendJSON({"type": "presence", "payload": {"status": "s" * 100_000}})
        mallory.sendJSON(message("a" * 5000 + "@localhost", "hi", id="j"))
        mallory.sendJSON({"type": "iq", "payload": {
            "type": "set", "id": "r", "query": "jabber:iq:roster",
            "item": {"jid": "alicja@localhost", "groups": [str(i) for i in range(1000)]}}})
        errors = await web.errorsOf(mallory, 4)
        self.assertIn("payload.id: longer than 1024 characters", errors[0]["text"])
        self.assertIn("payload.status: longer than 4096 characters", errors[1]["text"])
        self.assertIn("payload.to:", errors[2]["text"])
        self.assertIn("more than 128 groups", errors[3]["text"])
        await web.stillWorks()

    @_d
    async def test_forgedFrom(self) -> None:
        """A C{from} naming someone else (or the server) is ignored: the sender's JID is used."""
        web = await Server(self).begin()
        mallory = await web.mallory()
        alicja = await web.connect("alicja")
        alicja.take()
        for forged in ("bob@localhost/phone", "localhost", "admin@example.org", "", "@@@"):
            mallory.sendJSON(message("alicja@localhost", "it's me", **{"from": forged}))
        await web.until(lambda: len(alicja.frames) == 5)
        senders = {f["payload"]["from"] for f in alicja.take("message")}
        self.assertEqual(len(senders), 1)
        self.assertTrue(senders.pop().startswith("mallory@localhost/web-"))
        await web.stillWorks()

    @_d
    async def test_entityBomb(self) -> None:
        """DTDs, entity declarations and external entities in C{xml} are refused unparsed."""
        web = await Server(self).begin()
        mallory = await web.mallory()
        alicja = await web.connect("alicja")
        alicja.take()
        bomb = ("<!DOCTYPE lolz [<!ENTITY lol 'lol'>"
                + "".join(f"<!ENTITY lol{i} '{('&lol' + str(i - 1) + ';') * 10 if i else '&lol;' * 10}'>"
                          for i in range(10))
                + "]><lolz>&lol9;</lolz>")
        for i, xml in enumerate((
            bomb,
            "<!DOCTYPE x SYSTEM 'file:///etc/passwd'><x>&xxe;</x>",
            "<x>&undefined;</x>",
            "<?xml version='1.0'?><x/>",
            "<?php system('id'); ?><x/>",
        )):
            mallory.sendJSON({"type": "message", "payload": {"id": f"e{i}", "to": "alicja@localhost",
                                                             "body": "b", "xml": [xml]}})
        errors = await web.errorsOf(mallory, 5)
        self.assertEqual([e["id"] for e in errors], [f"e{i}" for i in range(5)])
        self.assertIn("DTDs are not allowed", errors[0]["text"])
        self.assertIn("DTDs are not allowed", errors[1]["text"])
        self.assertIn("not well-formed", errors[2]["text"])
        self.assertIn("XML declaration", errors[3]["text"])
        self.assertIn("processing instruction", errors[4]["text"])
        await web.flush()
        self.assertEqual(alicja.take("message"), [])
        await web.stillWorks()

    @_d
    async def test_unknownFrameTypes(self) -> None:
        web = await Server(self).begin()
        mallory = await web.mallory()
        for frame in ({"type": "chat", "payload": {}}, {"type": "session", "payload": {}},
                      {"type": "error", "payload": {}}, {"type": 7, "payload": {}},
                      {"payload": {}}, {"type": "message"}, {"type": "message", "payload": []},
                      {"type": "message", "payload": {}, "extra": 1}):
            mallory.sendJSON(frame)
        errors = await web.errorsOf(mallory, 8)
        texts = [e["text"] for e in errors]
        self.assertIn("unknown frame type 'chat'", texts[0])
        self.assertIn("sent by the server only", texts[1])
        self.assertIn("sent by the server only", texts[2])
        self.assertEqual(texts[3:7], ["type: must be a string", "type: missing",
                                      "payload: missing", "payload: must be an object"])
        self.assertIn("unknown key 'extra'", texts[7])
        self.assertIsNone(mallory.closedWith)
        await web.stillWorks()

    @_d
    async def test_framesBeforeTheSessionOpened(self) -> None:
        """
        Frames sent before the session frame are kept, in order, and handled once the session
        is open; more than 64 of them close the socket (C{policy-violation}, 4429).
        """
        web = await Server(self).begin()
        alicja = await web.connect("alicja")
        alicja.take()
        token = await web.token("mallory")
        # Opening a session loads the user's roster first; hold that, so the frames surely
        # arrive before the session is open.
        load = web.im.rosters.load
        gate: defer.Deferred[None] = defer.Deferred()

        async def slowLoad(localpart: str, state: Any = None) -> Any:
            await gate
            return await load(localpart, state)

        web.im.rosters.load = slowLoad

        def eager(count: int) -> JSONClient:
            client = web.open(f"/stream?token={token}")
            # iosim built the protocol already: give it the eager behaviour and the frames.
            client.__class__ = EagerClient
            client.early = tuple(json.dumps(message("alicja@localhost", str(i))) for i in range(count))
            return client

        rude = eager(200)
        await web.until(lambda: rude.closedWith is not None)
        self.assertEqual(rude.closedWith[0], 4429)
        polite = eager(10)
        await web.until(lambda: polite.opened)
        await web.flush()
        self.assertEqual((polite.frames, alicja.frames), ([], []))
        gate.callback(None)
        await web.until(lambda: len(alicja.frames) == 10)
        self.assertEqual(polite.frames[0]["type"], "session")
        self.assertEqual([f["payload"]["body"] for f in alicja.take("message")],
                         [str(i) for i in range(10)])
        self.assertEqual(web.im.router.countOf("mallory@localhost"), 1)
        await web.stillWorks()

    @_d
    async def test_flood(self) -> None:
        """
        Over the stanza rate the flooder's socket stops being read for as long as its excess
        takes to pay back at the rate; nothing it sent is dropped, and the bystanders are not
        slowed at all.  (Memory transports ignore the pause itself: this checks how long it
        is and that it ends.)
        """
        web = await Server(self, stanzaRate=10, stanzaBurst=5).begin()
        mallory = await web.mallory()
        alicja = await web.connect("alicja")
        alicja.take()
        server = next(p for p in web.pumps if p.client is mallory).serverIO.protocol
        for i in range(100):
            mallory.sendJSON(message("alicja@localhost", str(i)))
        await web.until(lambda: len(alicja.frames) == 100)
        self.assertTrue(server._paused)
        await web.stillWorks()
        # 95 frames over the burst, at 10 a second: 9.5 seconds without reading.
        for _ in range(94):
            web.clock.advance(0.1)
        self.assertTrue(server._paused)
        web.clock.advance(0.11)
        self.assertFalse(server._paused)
        self.assertEqual([f["payload"]["body"] for f in alicja.take("message")],
                         [str(i) for i in range(100)])
        self.assertIsNone(mallory.closedWith)

    @_d
    async def test_plainGetOnStream(self) -> None:
        web = await Server(self).begin()
        for request in (b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n",
                        b"POST /stream HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
                        b"GET /stream HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\n\r\n"):
            transport, _ = rawHTTP(web, request)
            status, body = parseResponse(transport.value())
            self.assertEqual(status, 426)
            self.assertEqual(json.loads(body)["error"], "upgrade-required")
        await web.stillWorks()

    @_d
    async def test_badToken(self) -> None:
        web = await Server(self).begin()
        for token in (b"nope", b"x" * 10_000, b"%00", b"%C3%28", b"%27%20OR%201%3D1%20--"):
            transport, _ = rawHTTP(web, UPGRADE % (b"?token=" + token, b""))
            await web.until(lambda t=transport: b"\r\n\r\n" in t.value())
            await web.flush()
            status, body = parseResponse(transport.value())
            self.assertEqual(status, 401, token)
            self.assertEqual(json.loads(body)["error"], "not-authorized")
        transport, _ = rawHTTP(web, UPGRADE % (b"", b"Authorization: Bearer \r\n"))
        self.assertEqual(parseResponse(transport.value())[0], 401)
        self.assertEqual(web.im.router.countOf("mallory@localhost"), 0)
        await web.stillWorks()


# -- the REST door ---------------------------------------------------------------------------


def assertError(test: unittest.TestCase, response: HTTPResponse, code: int,
                condition: str) -> dict[str, Any]:
    test.assertEqual(response.code, code, response.body)
    body = response.json()
    test.assertEqual(body["error"], condition, body)
    return body


class RESTInputTests(unittest.TestCase):
    """Abuse on the REST API."""

    @_d
    async def test_malformedJSON(self) -> None:
        web = await Server(self).begin()
        raw = {"Content-Type": "application/json"}
        for body in (b"{", b"\x00\x01\x02", b"[" * 30_000 + b"]" * 30_000,
                     b'{"jid": "a", "password": "b"' + b" " * 1000, b"\xef\xbb\xbf",
                     b'{"jid": Infinity, "password": "x"}', b"true", b"1e999999"):
            response = await web.rest.post("/login", data=body, headers=raw)
            assertError(self, response, 400, "bad-request")
        await web.stillWorks()

    @_d
    async def test_wrongTypes(self) -> None:
        web = await Server(self).begin()
        for body in ({"jid": ["bob"], "password": PASSWORD}, {"jid": "bob", "password": 123456},
                     {"jid": {"$ne": None}, "password": {"$ne": None}}, {"jid": None},
                     {"jid": True, "password": False}):
            assertError(self, await web.rest.post("/login", json=body), 400, "bad-request")
            assertError(self, await web.rest.post("/users", json=body), 400, "bad-request")
        token = await web.token("mallory")
        for patch in ({"about": 1}, {"about": ["x"]}, {"about": {"x": 1}}, {"jid": "bob"},
                      {"__proto__": "x"}):
            response = await web.rest.patch("/me", json=patch, token=token)
            assertError(self, response, 422, "not-acceptable")
        assertError(self, await web.rest.patch("/me", json=[1], token=token), 400, "bad-request")
        await web.stillWorks()

    @_d
    async def test_hugeBodies(self) -> None:
        """Over C{--max-http-body}: 413, declared or not, and nothing is buffered."""
        web = await Server(self).begin()
        big = json.dumps({"jid": "x", "password": "y" * (1024 * 1024)}).encode()
        response = await web.rest.post("/login", data=big, headers={"Content-Type": "application/json"})
        assertError(self, response, 413, "payload-too-large")
        # Chunked, with no length announced: cut off while it arrives.
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4242))
        channel = web.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4242))
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 8192
        for _ in range(64):
            channel.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        request = channel._channel.requests[-1]  # (the request being received)
        self.assertTrue(request.bodyTooLarge)
        request.content.seek(0, 2)
        self.assertEqual(request.content.tell(), 0)
        channel.dataReceived(b"0\r\n\r\n")
        await web.until(lambda: b"\r\n\r\n" in transport.value())
        status, body = parseResponse(transport.value())
        self.assertEqual((status, json.loads(body)["error"]), (413, "payload-too-large"))
        await web.stillWorks()

    @_d
    async def test_sqlMetacharacters(self) -> None:
        """Names, passwords and profile fields full of SQL stay data; the tables stay."""
        # (every wrong password below would otherwise soon be throttled)
        web = await Server(self, authFailureLimit=0).begin()
        # Localparts: what nodeprep allows is registered as is, the rest is refused (422).
        registered = []
        for nasty in SQL_NASTIES:
            for localpart in (nasty, "x" + nasty.replace(" ", "")):
                response = await web.rest.post("/users", json={"jid": localpart, "password": nasty * 3})
                self.assertIn(response.code, (201, 409, 422), response.body)
                if response.code == 201:
                    registered.append((response.json()["jid"].split("@")[0], nasty * 3))
        self.assertGreater(len(registered), 3)
        for localpart, password in registered:
            login = await web.rest.post("/login", json={"jid": localpart, "password": password})
            self.assertEqual(login.code, 200, (localpart, login.body))
            wrong = await web.rest.post("/login", json={"jid": localpart, "password": "' OR '1'='1"})
            assertError(self, wrong, 401, "not-authorized")
            exists = await web.rest.get("/users/" + localpart.replace("%", "%25").replace("?", "%3F"))
            self.assertEqual(exists.code, 200, localpart)
        # Passwords with NUL: refused by SASLprep at registration, simply wrong at login.
        assertError(self, await web.rest.post("/users", json={"jid": "nul", "password": "abc\x00defgh"}),
                    422, "not-acceptable")
        assertError(self, await web.rest.post("/login", json={"jid": "bob", "password": "\x00" + PASSWORD}),
                    401, "not-authorized")
        # Profile fields: stored and read back byte for byte.
        token = await web.token("mallory")
        profile = {"about": SQL_NASTIES[0], "city": "%s%s%s", "company": "%(about)s",
                   "street": "\\'\\\"", "www": "'); DELETE FROM tokens; --"}
        response = await web.rest.patch("/me", json=profile, token=token)
        self.assertEqual(response.code, 200, response.body)
        me = (await web.rest.get("/me", token=token)).json()
        for key, value in profile.items():
            self.assertEqual(me[key], value)
        # NUL and other characters XML cannot carry: the profile is the user's vCard too.
        response = await web.rest.patch("/me", json={"about": "a\x00b", "city": "\x07"}, token=token)
        body = assertError(self, response, 422, "not-acceptable")
        self.assertEqual({e["field"] for e in body["errors"]}, {"about", "city"})
        # Everything still there.
        self.assertEqual((await web.rest.get("/users/bob")).code, 200)
        await web.stillWorks()

    @_d
    async def test_unknownPathsAndMethods(self) -> None:
        web = await Server(self).begin()
        for path in ("/nope", "/users/bob/extra", "/../../etc/passwd", "/%00", "/users/%ff",
                     "/" + "a" * 8000, "/me/../users"):
            response = await web.rest.get(path)
            self.assertIn(response.code, (404, 400), path)
            self.assertEqual(response.header("content-type"), "application/json; charset=utf-8")
        for method in ("DELETE", "PUT", "TRACE", "PROPFIND", "CONNECT"):
            response = await web.rest.request(method, "/login")
            body = assertError(self, response, 405, "not-allowed")
            self.assertIn("POST", response.header("allow"))
            self.assertTrue(body["description"])
        # Methods and request lines HTTP itself refuses: 400 from twisted.web, connection closed.
        for line in (b"G\x00T / HTTP/1.1", b"GET", b"GET / HTTP/9.9", b"\xff\xfe / HTTP/1.1"):
            transport, _channel = rawHTTP(web, line + b"\r\nHost: x\r\n\r\n")
            await web.flush()
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400") or transport.disconnecting,
                            transport.value())
        await web.stillWorks()

    @_d
    async def test_slowLoris(self) -> None:
        """
        A client that sends its request a byte at a time (each byte restarts the idle timeout)
        is answered 408 and disconnected 30 seconds after its request line, whatever it sends.
        """
        web = await Server(self).begin()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4343))
        channel = web.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4343))
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /login HTTP/1.1\r\n")
        headers = b"Host: x\r\nContent-Type: application/json\r\nX-Padding: " + b"a" * 1000
        elapsed = 0
        for byte in headers:
            if transport.disconnecting:
                break
            channel.dataReceived(bytes([byte]))
            web.clock.advance(1)
            elapsed += 1
        self.assertTrue(transport.disconnecting)
        self.assertEqual(elapsed, 30)
        status, body = parseResponse(transport.value())
        self.assertEqual((status, json.loads(body)["error"]), (408, "request-timeout"))
        # The body, too: headers at once, then a byte a second.
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4344))
        channel = web.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4344))
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(40):
            if transport.disconnecting:
                break
            channel.dataReceived(b" ")
            web.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(parseResponse(transport.value())[0], 408)
        # An ordinary request is not affected (and leaves nothing scheduled behind it).
        await web.stillWorks()
        self.assertEqual((await web.rest.get("/users/bob")).code, 200)

    @_d
    async def test_slowRequestLine(self) -> None:
        """The request line itself, a byte every 59 seconds: closed within 5 minutes."""
        web = await Server(self).begin()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4345))
        channel = web.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4345))
        channel.makeConnection(transport)
        for byte in b"GET /users/bob" + b"x" * 100:
            if transport.disconnecting:
                break
            channel.dataReceived(bytes([byte]))
            web.clock.advance(59)
        self.assertLessEqual(web.clock.seconds(), 300)
        self.assertTrue(transport.disconnecting)

    @_d
    async def test_requestLineDeadlineOnKeepAlive(self) -> None:
        """
        The request line's 30 seconds start at its first byte: an idle kept-alive connection is
        left to the idle timeout, a line sent in pieces within the time is served, a slow line
        after a served request is cut, and a served request leaves nothing scheduled.
        """
        web = await Server(self).begin()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4346))
        channel = web.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4346))
        channel.makeConnection(transport)
        pending = len(web.clock.getDelayedCalls())  # the idle timeout
        web.clock.advance(45)
        self.assertFalse(transport.disconnecting)
        for piece in (b"GET /users/", b"bob HTTP/1.1\r\n", b"Host: x\r\n\r\n"):
            channel.dataReceived(piece)
            web.clock.advance(10)
        await waitUntil(lambda: b"\r\n\r\n" in transport.value())
        self.assertEqual(parseResponse(transport.value())[0], 200)
        self.assertEqual(len(web.clock.getDelayedCalls()), pending)
        transport.clear()
        channel.dataReceived(b"GET /users")
        web.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        web.clock.advance(1)
        self.assertTrue(transport.disconnecting)



class ThrottleTests(unittest.TestCase):
    """
    Failed logins and registrations, throttled per account and per address.  Addresses are
    told apart with C{X-Forwarded-For} from a trusted proxy (the test client's 127.0.0.1).
    """

    async def server(self, **config: Any) -> Server:
        config.setdefault("trustedProxies", ("127.0.0.1",))
        return await Server(self, **config).begin("szymon")

    async def login(self, web: Server, jid: str, password: str, address: str) -> HTTPResponse:
        return await web.rest.post("/login", json={"jid": jid, "password": password},
                                   headers={"X-Forwarded-For": address})

    @_d
    async def test_perAccount(self) -> None:
        """5 wrong passwords for one account, from 5 addresses: the 6th try is refused, even right."""
        web = await self.server()
        for i in range(5):
            response = await self.login(web, "szymon", "wrong!", f"192.0.2.{i}")
            assertError(self, response, 401, "not-authorized")
        response = await self.login(web, "szymon", PASSWORD, "198.51.100.7")
        body = assertError(self, response, 429, "policy-violation")
        self.assertIn("too many failed logins", body["description"])
        self.assertEqual(response.header("retry-after"), "60")
        # Other accounts, from the same addresses, are not affected.
        self.assertEqual((await self.login(web, "bob", PASSWORD, "192.0.2.0")).code, 200)
        # The window passes: the right password works and clears the account's record.
        web.clock.advance(30)
        self.assertEqual((await self.login(web, "szymon", PASSWORD, "198.51.100.7")).code, 429)
        self.assertEqual((await self.login(web, "szymon", PASSWORD, "198.51.100.7")).header(
            "retry-after"), "30")
        web.clock.advance(30)
        self.assertEqual((await self.login(web, "szymon", PASSWORD, "198.51.100.7")).code, 200)
        for i in range(4):
            await self.login(web, "szymon", "wrong!", "203.0.113.1")
        self.assertEqual((await self.login(web, "szymon", PASSWORD, "203.0.113.2")).code, 200)
        await web.stillWorks()

    @_d
    async def test_perAddress(self) -> None:
        """5 failures from one address on 5 accounts: that address waits, the others do not."""
        web = await self.server()
        for name in ("a1", "a2", "szymon", "a4", "a5"):
            assertError(self, await self.login(web, name, "guess", "192.0.2.66"), 401, "not-authorized")
        assertError(self, await self.login(web, "bob", PASSWORD, "192.0.2.66"), 429, "policy-violation")
        self.assertEqual((await self.login(web, "bob", PASSWORD, "192.0.2.67")).code, 200)
        # A success from the blocked address does not clear its record (it is not even checked).
        web.clock.advance(61)
        self.assertEqual((await self.login(web, "bob", PASSWORD, "192.0.2.66")).code, 200)
        # IPv6 addresses count by /64.
        for i in range(5):
            await self.login(web, f"b{i}", "guess", f"2001:db8::{i + 1}")
        response = await self.login(web, "bob", PASSWORD, "2001:db8::ffff:1")
        assertError(self, response, 429, "policy-violation")
        self.assertEqual((await self.login(web, "bob", PASSWORD, "2001:db8:0:1::1")).code, 200)
        await web.stillWorks()

    @_d
    async def test_doesNotRevealAccounts(self) -> None:
        """An unknown account fails, and is throttled, exactly like a known one."""
        web = await self.server()
        answers = {}
        for jid in ("szymon", "nobody"):
            seen = []
            for i in range(6):
                response = await self.login(web, jid, "wrong!", f"192.0.2.{10 * len(answers) + i}")
                seen.append((response.code, response.json(), response.header("retry-after")))
            answers[jid] = seen
        self.assertEqual(answers["szymon"], answers["nobody"])
        self.assertEqual([code for code, _, _ in answers["szymon"]], [401] * 5 + [429])

    @_d
    async def test_forwardedForOnlyFromTrustedProxies(self) -> None:
        """Without a trusted proxy, C{X-Forwarded-For} is the client's own claim: ignored."""
        web = await Server(self).begin("szymon")
        for i in range(5):
            await self.login(web, f"n{i}", "guess", f"192.0.2.{i}")
        assertError(self, await self.login(web, "bob", PASSWORD, "198.51.100.1"), 429,
                    "policy-violation")

    def test_proxyChain(self) -> None:
        """
        Through several trusted proxies the client is the last untrusted address; what the
        client itself put first in the header is never believed.
        """
        from twisted.web.test.requesthelper import DummyRequest

        from xmppjson.rest import clientAddress

        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", "10.0.0.1", 5000)
        request.requestHeaders.addRawHeader(b"X-Forwarded-For", b"198.51.100.1, 203.0.113.9")
        request.requestHeaders.addRawHeader(b"X-Forwarded-For", b"10.0.0.2")
        trusted = ("10.0.0.1", "10.0.0.2")
        self.assertEqual(clientAddress(request, trusted), "203.0.113.9")
        self.assertEqual(clientAddress(request, ("10.0.0.1",)), "10.0.0.2")
        self.assertEqual(clientAddress(request, ()), "10.0.0.1")

    @_d
    async def test_passwordChange(self) -> None:
        """Guessing C{old_password} with a stolen token is throttled like a login."""
        web = await self.server()
        token = await web.token("szymon")
        for _ in range(5):
            response = await web.rest.post("/me/password", token=token,
                                           json={"password": "newpassword", "old_password": "guess"})
            assertError(self, response, 403, "forbidden")
        response = await web.rest.post("/me/password", token=token,
                                       json={"password": "newpassword", "old_password": PASSWORD})
        assertError(self, response, 429, "policy-violation")

    @_d
    async def test_registrationPerAddress(self) -> None:
        """5 accounts per address in 10 minutes; loopback is exempt unless configured."""
        web = await self.server(registrationExempt=())
        for i in range(5):
            response = await web.rest.post("/users", json={"jid": f"new{i}", "password": PASSWORD},
                                           headers={"X-Forwarded-For": "192.0.2.5"})
            self.assertEqual(response.code, 201, response.body)
        response = await web.rest.post("/users", json={"jid": "new5", "password": PASSWORD},
                                       headers={"X-Forwarded-For": "192.0.2.5"})
        body = assertError(self, response, 429, "policy-violation")
        self.assertIn("too many registrations", body["description"])
        self.assertEqual(response.header("retry-after"), "600")
        self.assertEqual((await web.rest.get("/users/new5")).code, 404)
        response = await web.rest.post("/users", json={"jid": "new5", "password": PASSWORD},
                                       headers={"X-Forwarded-For": "192.0.2.6"})
        self.assertEqual(response.code, 201)
        web.clock.advance(600)
        response = await web.rest.post("/users", json={"jid": "new6", "password": PASSWORD},
                                       headers={"X-Forwarded-For": "192.0.2.5"})
        self.assertEqual(response.code, 201)
        await web.stillWorks()

    @_d
    async def test_registrationFromLoopbackExempt(self) -> None:
        web = await Server(self).begin()
        for i in range(8):
            response = await web.rest.post("/users", json={"jid": f"l{i}", "password": PASSWORD})
            self.assertEqual(response.code, 201)

    @_d
    async def test_parallelRegistrationsCannotSlipThrough(self) -> None:
        """Ten at once from one address: five are created, five are refused."""
        web = await self.server(registrationExempt=())
        requests = [
            defer.ensureDeferred(web.rest.post(
                "/users", json={"jid": f"p{i}", "password": PASSWORD},
                headers={"X-Forwarded-For": "192.0.2.9"}))
            for i in range(10)
        ]
        codes = sorted(r.code for r in await defer.gatherResults(requests))
        self.assertEqual(codes, [201] * 5 + [429] * 5)
