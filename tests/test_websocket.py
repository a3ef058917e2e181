"""
Tests for the JSON door (L{xmppjson.websocket}), written as transcripts between web users: real
Autobahn clients on in-memory transports through the real Site, token check and IM core.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.helpers import parentLinks
from tests.wshelpers import WebFixture


def _d(f):
    def wrapper(self, *a, **kw):
        return defer.ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    return wrapper


def rawHTTP(fixture: WebFixture, request: bytes) -> tuple[int, dict, bytes]:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 39999))
    protocol = fixture.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
    protocol.makeConnection(transport)
    protocol.dataReceived(request)
    return transport, protocol


def parseResponse(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        chunks, rest = [], body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            chunks.append(rest[:n])
            rest = rest[n + 2:]
        body = b"".join(chunks)
    return status, body


UPGRADE = (
    b"GET /stream%s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
)


class HandshakeTests(unittest.TestCase):
    @_d
    async def test_sessionFrameFirst(self):
        web = await WebFixture(self).start("szymon")
        client = await web.connect("szymon")
        [frame] = client.take("session")
        self.assertRegex(frame["payload"]["jid"], r"^szymon@localhost/web-[0-9a-f]{8}$")
        self.assertEqual(frame["payload"]["version"], 1)
        self.assertEqual(len(web.im.router), 1)

    @_d
    async def test_bearerHeader(self):
        web = await WebFixture(self).start("szymon")
        token = await web.token("szymon")
        client = web.open("/stream", headers={"Authorization": f"Bearer {token}"})
        await web.until(lambda: client.frames)
        self.assertEqual(client.frames[0]["type"], "session")

    @_d
    async def test_badTokenIs401WithJSON(self):
        web = await WebFixture(self).start("szymon")
        transport, _ = rawHTTP(web, UPGRADE % (b"?token=nope", b""))
        await web.until(lambda: b"\r\n\r\n" in transport.value())
        await web.flush()
        status, body = parseResponse(transport.value())
        self.assertEqual(status, 401)
        self.assertEqual(json.loads(body)["error"], "not-authorized")
        self.assertEqual(len(web.im.router), 0)

    @_d
    async def test_missingTokenIs401(self):
        web = await WebFixture(self).start()
        transport, _ = rawHTTP(web, UPGRADE % (b"", b""))
        status, body = parseResponse(transport.value())
        self.assertEqual(status, 401)
        self.assertIn("token", json.loads(body)["description"])

    @_d
    async def test_expiredToken(self):
        web = await WebFixture(self, tokenTTL=60).start("szymon")
        token = await web.token("szymon")
        web.clock.advance(61)
        transport, _ = rawHTTP(web, UPGRADE % (b"?token=" + token.encode(), b""))
        await web.until(lambda: b"\r\n\r\n" in transport.value())
        await web.flush()
        self.assertEqual(parseResponse(transport.value())[0], 401)

    @_d
    async def test_plainGetIs426(self):
        web = await WebFixture(self).start()
        transport, _ = rawHTTP(web, b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, body = parseResponse(transport.value())
        self.assertEqual(status, 426)
        self.assertEqual(json.loads(body)["error"], "upgrade-required")


class ChatTranscriptTests(unittest.TestCase):
    @_d
    async def test_twoWebUsersChatWithChatStates(self):
        web = await WebFixture(self).start("szymon", "alicja")
        szymon = await web.connect("szymon")
        alicja = await web.connect("alicja")
        alicjaJID = alicja.take("session")[0]["payload"]["jid"]
        szymonJID = szymon.take("session")[0]["payload"]["jid"]
        # szymon (JSON) types, then sends; alicja (JSON) sees both.
        szymon.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "id": "t1",
                                                        "type": "chat", "composing": {}}})
        szymon.sendJSON({"type": "message", "payload": {"name": "message", "from": "liar@x",
                                                        "to": "alicja@localhost", "id": "as12da11",
                                                        "type": "chat", "body": "Test wiadomości z Webscoketów"}})
        await web.until(lambda: len(alicja.frames) >= 2)
        typing, message = alicja.take("message")
        self.assertEqual(typing["payload"]["composing"], {"ID": ""})
        self.assertEqual(typing["payload"]["body"], "")
        payload = message["payload"]
        self.assertEqual(list(payload)[:5], ["from", "id", "to", "type", "body"])
        self.assertEqual(payload["from"], szymonJID)
        self.assertEqual(payload["id"], "as12da11")
        self.assertEqual(payload["body"], "Test wiadomości z Webscoketów")
        self.assertTrue(payload["stanza_id"])
        # and back, with a pause
        alicja.sendJSON({"type": "message", "payload": {"to": szymonJID, "id": "r1", "type": "chat",
                                                        "body": "", "paused": {}}})
        await web.until(lambda: szymon.frames)
        [paused] = szymon.take("message")
        self.assertEqual(paused["payload"]["paused"], {})
        self.assertEqual(paused["payload"]["from"], alicjaJID)

    @_d
    async def test_badFrameThenGoodFrame(self):
        web = await WebFixture(self).start("szymon", "alicja")
        szymon = await web.connect("szymon")
        alicja = await web.connect("alicja")
        szymon.take()
        alicja.take()
        szymon.sendText("{not json")
        szymon.sendJSON({"type": "telepathy", "payload": {}})
        szymon.sendJSON({"type": "message", "payload": {"to": "a@b@c", "id": "bad1", "body": "x"}})
        await web.until(lambda: len(szymon.frames) >= 3)
        errors = szymon.take("error")
        self.assertEqual(len(errors), 3)
        for error in errors:
            self.assertEqual(error["payload"]["condition"], "bad-request")
            self.assertTrue(error["payload"]["text"])
        self.assertEqual(errors[2]["payload"]["id"], "bad1")
        szymon.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "id": "ok",
                                                        "type": "chat", "body": "still here"}})
        await web.until(lambda: alicja.frames)
        self.assertEqual(alicja.take("message")[0]["payload"]["body"], "still here")
        self.assertIsNone(szymon.closedWith)

    @_d
    async def test_offlineMessageArrivesOnceWithDelay(self):
        web = await WebFixture(self).start("szymon", "alicja")
        szymon = await web.connect("szymon")
        szymon.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "id": "off1",
                                                        "type": "chat", "body": "while you were out"}})
        await web.flush()
        alicja = await web.connect("alicja")
        await web.until(lambda: any(f["type"] == "message" for f in alicja.frames))
        [message] = alicja.take("message")
        self.assertEqual(message["payload"]["id"], "off1")
        self.assertEqual(message["payload"]["delay"]["from"], "localhost")
        self.assertRegex(message["payload"]["delay"]["stamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
        again = await web.connect("alicja")
        await web.flush()
        self.assertEqual(again.take("message"), [])

    @_d
    async def test_unknownRecipientError(self):
        web = await WebFixture(self).start("szymon")
        szymon = await web.connect("szymon")
        szymon.take()
        szymon.sendJSON({"type": "message", "payload": {"to": "ghost@localhost", "id": "g1",
                                                        "type": "chat", "body": "hello?"}})
        await web.until(lambda: szymon.frames)
        [bounce] = szymon.take("message")
        self.assertEqual(bounce["payload"]["type"], "error")
        self.assertEqual(bounce["payload"]["error"]["condition"], "service-unavailable")


class RosterPresenceTranscriptTests(unittest.TestCase):
    async def _friends(self, web):
        szymon = await web.connect("szymon", presence={})
        alicja = await web.connect("alicja", presence={"show": "av"})
        szymon.sendJSON({"type": "presence", "payload": {"type": "subscribe", "to": "alicja@localhost"}})
        await web.until(lambda: any(f["type"] == "presence" and f["payload"].get("type") == "subscribe"
                                    for f in alicja.frames))
        alicja.sendJSON({"type": "presence", "payload": {"type": "subscribed", "to": "szymon@localhost"}})
        alicja.sendJSON({"type": "presence", "payload": {"type": "subscribe", "to": "szymon@localhost"}})
        await web.until(lambda: any(f["type"] == "presence" and f["payload"].get("type") == "subscribe"
                                    for f in szymon.frames))
        szymon.sendJSON({"type": "presence", "payload": {"type": "subscribed", "to": "alicja@localhost"}})
        await web.flush(10)
        return szymon, alicja

    @_d
    async def test_subscriptionHandshakeLeadsToBoth(self):
        web = await WebFixture(self).start("szymon", "alicja")
        szymon, alicja = await self._friends(web)
        pushes = [f for f in szymon.frames if f["type"] == "iq" and f["payload"].get("type") == "set"]
        self.assertEqual(pushes[-1]["payload"]["items"][0]["subscription"], "both")
        szymon.take()
        szymon.sendText('{"type": "iq", "payload": {"type": "get", "id": "12345", "query": {"jabber:iq:roster"}}}')
        await web.until(lambda: szymon.frames)
        [roster] = szymon.take("iq")
        self.assertEqual(roster["payload"]["type"], "result")
        self.assertEqual(roster["payload"]["id"], "12345")
        [item] = roster["payload"]["items"]
        self.assertEqual((item["jid"], item["subscription"]), ("alicja@localhost", "both"))

    @_d
    async def test_presenceShowStatusAndDisconnect(self):
        web = await WebFixture(self).start("szymon", "alicja")
        szymon, alicja = await self._friends(web)
        szymon.take()
        alicja.sendJSON({"type": "presence", "payload": {"show": "away", "status": "Mam  na imię alicja"}})
        await web.until(lambda: szymon.frames)
        [p] = szymon.take("presence")
        self.assertEqual(p["payload"]["show"], "away")
        self.assertEqual(p["payload"]["status"], "Mam  na imię alicja")
        self.assertTrue(p["payload"]["from"].startswith("alicja@localhost/web-"))
        alicja.sendJSON({"type": "presence", "payload": {"show": "av"}})
        await web.until(lambda: szymon.frames)
        [p] = szymon.take("presence")
        self.assertNotIn("show", p["payload"])
        self.assertNotIn("type", p["payload"])
        alicja.transport.loseConnection()
        await web.until(lambda: any(f["type"] == "presence" for f in szymon.frames))
        [p] = szymon.take("presence")
        self.assertEqual(p["payload"]["type"], "unavailable")
        self.assertEqual(len(web.im.router.sessionsOf("alicja@localhost")), 0)

    @_d
    async def test_rosterSetPushedToEverySession(self):
        web = await WebFixture(self).start("szymon", "alicja")
        one = await web.connect("szymon")
        two = await web.connect("szymon")
        one.take()
        two.take()
        one.sendJSON({"type": "iq", "payload": {"type": "set", "id": "r1", "query": "jabber:iq:roster",
                                                "item": {"jid": "alicja@localhost", "name": "Alicja",
                                                         "groups": ["Friends"]}}})
        await web.until(lambda: two.frames and len(one.frames) >= 2)
        [push] = two.take("iq")
        self.assertEqual(push["payload"]["items"][0]["name"], "Alicja")
        self.assertEqual(push["payload"]["items"][0]["groups"], ["Friends"])
        results = [f for f in one.take("iq") if f["payload"]["type"] == "result"]
        self.assertEqual([r["payload"]["id"] for r in results], ["r1"])

    @_d
    async def test_pingAndUnknownIQ(self):
        web = await WebFixture(self).start("szymon")
        szymon = await web.connect("szymon")
        szymon.take()
        szymon.sendJSON({"type": "iq", "payload": {"type": "get", "id": "p1", "to": "localhost", "ping": {}}})
        szymon.sendJSON({"type": "iq", "payload": {"type": "get", "id": "u1", "to": "localhost",
                                                   "xml": ["<query xmlns='urn:example:none'/>"]}})
        await web.until(lambda: len(szymon.frames) >= 2)
        pong, unknown = szymon.take("iq")
        self.assertEqual((pong["payload"]["type"], pong["payload"]["id"]), ("result", "p1"))
        self.assertEqual(unknown["payload"]["type"], "error")
        self.assertEqual(unknown["payload"]["error"]["condition"], "service-unavailable")

    @_d
    async def test_unmappedChildrenTravelAsXML(self):
        web = await WebFixture(self).start("szymon", "alicja")
        szymon = await web.connect("szymon")
        alicja = await web.connect("alicja")
        alicja.take()
        receipt = "<request xmlns='urn:xmpp:receipts'/>"
        szymon.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "id": "x1", "type": "chat",
                                                        "body": "hi", "xml": [receipt]}})
        await web.until(lambda: alicja.frames)
        [m] = alicja.take("message")
        self.assertEqual(m["payload"]["xml"], [receipt])


class LifecycleTests(unittest.TestCase):
    @_d
    async def test_shutdownClosesSockets(self):
        web = await WebFixture(self).start("szymon")
        szymon = await web.connect("szymon")
        await web.im.shutdown()
        await web.until(lambda: szymon.closedWith is not None)
        self.assertEqual(szymon.closedWith[0], 4503)
        self.assertEqual([f["payload"]["condition"] for f in szymon.take("error")], ["system-shutdown"])
        self.assertEqual(len(web.im.router), 0)

    @_d
    async def test_sessionFrameResourceIsUnique(self):
        web = await WebFixture(self).start("szymon")
        a = await web.connect("szymon")
        b = await web.connect("szymon")
        ja, jb = a.frames[0]["payload"]["jid"], b.frames[0]["payload"]["jid"]
        self.assertNotEqual(ja, jb)
        self.assertTrue(re.match(r"szymon@localhost/web-", jb))


class LimitTests(unittest.TestCase):
    @_d
    async def test_overRateIsSlowedNotDropped(self):
        web = await WebFixture(self, stanzaRate=10, stanzaBurst=5).start("szymon", "alicja")
        szymon = await web.connect("szymon")
        alicja = await web.connect("alicja")
        alicja.take()
        server = [p for p in web.pumps if p.client is szymon][0].serverIO.protocol
        for i in range(8):
            szymon.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "id": f"m{i}",
                                                            "type": "chat", "body": str(i)}})
        await web.flush()
        # The burst went through; the socket is paused until the bucket refills.
        self.assertTrue(server._paused)
        web.clock.advance(1)
        await web.until(lambda: len(alicja.frames) == 8)
        self.assertEqual([f["payload"]["body"] for f in alicja.take("message")], [str(i) for i in range(8)])
        self.assertFalse(server._paused)

    @_d
    async def test_originAllowList(self):
        web = await WebFixture(self, allowedOrigins=("https://chat.example",)).start("szymon")
        token = (await web.token("szymon")).encode()
        transport, _ = rawHTTP(web, UPGRADE % (b"?token=" + token, b"Origin: https://evil.example\r\n"))
        status, body = parseResponse(transport.value())
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(body)["error"], "forbidden")
        good = web.open(f"/stream?token={token.decode()}", headers={"Origin": "https://chat.example"})
        await web.until(lambda: good.frames)
        self.assertEqual(good.frames[0]["type"], "session")

    @_d
    async def test_connectionsPerAddressCap(self):
        web = await WebFixture(self, maxConnectionsPerAddress=2).start("szymon")
        first = await web.connect("szymon")
        await web.connect("szymon")
        token = (await web.token("szymon")).encode()
        transport, _ = rawHTTP(web, UPGRADE % (b"?token=" + token, b""))
        await web.until(lambda: b"\r\n\r\n" in transport.value())
        await web.flush()
        self.assertEqual(parseResponse(transport.value())[0], 429)
        first.transport.loseConnection()
        await web.until(lambda: len(web.im.router) == 1)
        third = await web.connect("szymon")
        self.assertEqual(third.frames[0]["type"], "session")


class RestViewTranscriptTests(unittest.TestCase):
    @_d
    async def test_loginResponseShowsLivePresence(self):
        """alicja (JSON) goes away with a status; REST /login shows it; she leaves; REST shows it."""
        from tests.helpers import RestClient

        web = await WebFixture(self).start("alicja")
        rest = RestClient(web.site.resource)
        alicja = await web.connect("alicja", presence={"show": "away", "status": "na obiedzie"})
        web.clock.advance(2)  # the coalesced last-presence write
        await web.im.presence.lastSeen.flush()
        response = await rest.post("/login", json={"jid": "alicja", "password": "secret123"})
        body = response.json()
        self.assertEqual((body["presence"], body["status"]), ("away", "na obiedzie"))
        self.assertIsNotNone(body["last_seen"])
        alicja.transport.loseConnection()
        await web.until(lambda: len(web.im.router) == 0)
        await web.im.presence.lastSeen.flush()
        body = (await rest.post("/login", json={"jid": "alicja", "password": "secret123"})).json()
        self.assertEqual(body["presence"], "unavailable")


class MaskerTests(unittest.TestCase):
    def test_smallFrameMaskerMatchesNative(self):
        """The small-frame masker gives the bytes Autobahn's native one gives, in any chunking."""
        import os

        from xmppjson.websocket import _SmallFrameMasker, _nativeMasker

        for size in (1, 3, 4, 5, 100, 2047):
            mask, data = os.urandom(4), os.urandom(size)
            expected = _nativeMasker(mask, size).process(data)
            for cut in (0, 1, 2, 3, size // 2, size):
                masker = _SmallFrameMasker(mask)
                got = masker.process(data[:cut]) + masker.process(data[cut:])
                self.assertEqual(got, expected)
                self.assertEqual(masker.pointer(), size)


def maskedFrame(payload: bytes, opcode: int = 1, fin: bool = True, lengthBytes: int = 0) -> bytes:
    """
    A client frame as RFC 6455 section 5.2 lays it out, masked; C{lengthBytes} 2 or 8 forces
    an extended length even where the payload is short (not the minimal encoding).
    """
    import os

    from xmppjson.websocket import _xor

    n = len(payload)
    if lengthBytes == 0:
        lengthBytes = 0 if n < 126 else 2 if n <= 0xFFFF else 8
    first = bytes(((0x80 if fin else 0) | opcode,))
    if lengthBytes == 0:
        head = first + bytes((0x80 | n,))
    elif lengthBytes == 2:
        head = first + bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        head = first + bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + _xor(payload, mask)


def chatFrame(to: str, body: str) -> bytes:
    return json.dumps(
        {"type": "message", "payload": {"to": to, "type": "chat", "body": body}}
    ).encode("utf-8")


class DirectFramePathTests(unittest.TestCase):
    """
    The door reads whole text frames itself and leaves everything else to Autobahn; whatever
    way the bytes arrive, the result is the same.
    """

    async def _pair(self, **config: Any) -> tuple[WebFixture, Any, Any]:
        web = await WebFixture(self, **config).start("szymon", "alicja")
        szymon = await web.connect("szymon")
        alicja = await web.connect("alicja")
        szymon.take()
        alicja.take()
        return web, szymon, alicja

    @_d
    async def test_severalFramesInOneRead(self):
        """Frames of both length encodings and a ping between them, in one read, all in order."""
        web, szymon, alicja = await self._pair()
        bodies = ["short", "ż" * 200, "x" * 70000, "last"]
        raw = b"".join(maskedFrame(chatFrame("alicja@localhost", b)) for b in bodies[:2])
        raw += maskedFrame(b"ping!", opcode=9)
        raw += b"".join(maskedFrame(chatFrame("alicja@localhost", b)) for b in bodies[2:])
        szymon.transport.write(raw)
        await web.until(lambda: len(alicja.frames) == len(bodies))
        self.assertEqual([f["payload"]["body"] for f in alicja.take("message")], bodies)
        self.assertIsNone(szymon.closedWith)

    @_d
    async def test_coreGetsNoParentLinks(self):
        """
        What the door hands the core links no element to its parent, the payload's XML
        included (L{xmppjson.im.server.IMServer.receive}: freed without the collector).
        """
        web, szymon, alicja = await self._pair()
        parents = []
        receive = web.im.receive

        def spy(session, element):
            parents.extend(parentLinks(element))
            receive(session, element)

        web.im.receive = spy
        frame = {"type": "message", "payload": {
            "to": "alicja@localhost", "type": "chat", "body": "z rodzicami?",
            "xml": ["<x xmlns='urn:example'><y><z/></y></x>"]}}
        szymon.transport.write(maskedFrame(json.dumps(frame).encode("utf-8")))
        await web.until(lambda: alicja.frames)
        self.assertEqual(alicja.take("message")[0]["payload"]["body"], "z rodzicami?")
        self.assertGreaterEqual(len(parents), 4)  # body, x, y, z
        self.assertEqual(parents, [None] * len(parents))

    @_d
    async def test_frameSplitIntoSingleBytes(self):
        """A frame arriving a byte per read (Autobahn's incremental reader) reads the same."""
        web, szymon, alicja = await self._pair()
        raw = maskedFrame(chatFrame("alicja@localhost", "po kawałku " * 20))
        raw += maskedFrame(chatFrame("alicja@localhost", "całość"))
        for i in range(len(raw)):
            szymon.transport.write(raw[i : i + 1])
            web.pump()
        await web.until(lambda: len(alicja.frames) == 2)
        self.assertEqual([f["payload"]["body"] for f in alicja.take("message")],
                         ["po kawałku " * 20, "całość"])

    @_d
    async def test_fragmentedMessage(self):
        """A message in three fragments (text + continuations) is one frame of the dialect."""
        web, szymon, alicja = await self._pair()
        payload = chatFrame("alicja@localhost", "w trzech częściach")
        parts = [payload[:10], payload[10:20], payload[20:]]
        raw = maskedFrame(parts[0], opcode=1, fin=False)
        raw += maskedFrame(parts[1], opcode=0, fin=False)
        raw += maskedFrame(parts[2], opcode=0, fin=True)
        szymon.transport.write(raw)
        await web.until(lambda: alicja.frames)
        self.assertEqual(alicja.take("message")[0]["payload"]["body"], "w trzech częściach")

    @_d
    async def test_nonMinimalLengthIsAProtocolError(self):
        """A short payload behind a 16-bit length breaks RFC 6455: closed with 1002."""
        web, szymon, alicja = await self._pair()
        szymon.transport.write(maskedFrame(chatFrame("alicja@localhost", "hi")[:100], lengthBytes=2))
        await web.until(lambda: szymon.closedWith is not None)
        self.assertEqual(szymon.closedWith[0], 1002)
        self.assertEqual(alicja.take("message"), [])

    @_d
    async def test_unmaskedClientFrameIsAProtocolError(self):
        web, szymon, alicja = await self._pair()
        payload = chatFrame("alicja@localhost", "bez maski")
        szymon.transport.write(bytes((0x81, len(payload))) + payload)
        await web.until(lambda: szymon.closedWith is not None)
        self.assertEqual(szymon.closedWith[0], 1002)
        self.assertEqual(alicja.take("message"), [])

    @_d
    async def test_serverFramesAreNotBoundByTheClientLimit(self):
        """
        The frame size limit is for what clients send: a stanza that grows on its way (the
        sender's JID, a stanza-id) still reaches a web client whole.
        """
        web, szymon, alicja = await self._pair(maxFrameSize=1000)
        body = "y" * (1000 - len(chatFrame("alicja@localhost", "")))
        szymon.sendJSON(json.loads(chatFrame("alicja@localhost", body)))
        await web.until(lambda: alicja.frames)
        [frame] = alicja.take("message")
        self.assertEqual(frame["payload"]["body"], body)
        self.assertGreater(len(json.dumps(frame, ensure_ascii=False)), 1000)
        self.assertIsNone(alicja.closedWith)


class IntakeHoldTests(unittest.TestCase):
    @_d
    async def test_archiveBehindHoldsReading(self):
        """
        While the archive writer is behind, the door stops reading from web clients at their
        next frame, and reads again once the core releases it; delivery never waits.
        """
        web = await WebFixture(self, archive=True, stanzaRate=0).start("szymon", "alicja")
        szymon = await web.connect("szymon", presence={})
        alicja = await web.connect("alicja", presence={})
        szymon.take()
        alicja.take()
        archive = web.im.archive
        archive.highWater, archive.lowWater = 3, 1
        protocol = next(s.protocol for s in web.im.router if s.jid.user == "szymon")
        calls: list[str] = []
        self.patch(protocol.transport, "pauseProducing", lambda: calls.append("pause"))
        self.patch(protocol.transport, "resumeProducing", lambda: calls.append("resume"))
        for n in range(3):
            szymon.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "type": "chat",
                                                            "body": str(n)}})
        await web.until(lambda: len(alicja.frames) == 3)
        self.assertTrue(web.im.intakeHeld)
        self.assertEqual(calls, ["pause"])
        web.clock.advance(archive.interval)
        await web.until(lambda: not web.im.intakeHeld)
        self.assertEqual(calls, ["pause", "resume"])
        self.assertEqual(archive.written, 3)
