"""
Cross-door transcripts: an XMPP client (the real c2s door on a memory transport) and a JSON web
client (the real WebSocket door through the real Site) on one server, meeting the same users,
rosters, presence and messages through the one IM core.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest
from twisted.words.xish import domish

from xmppjson.c2s.stream import C2SFactory
from tests.test_c2s import DOMAIN, HEADER, NS_BIND, NS_SASL, Wire
from tests.wshelpers import WebFixture

NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


def _d(f):
    def wrapper(self, *a, **kw):
        return defer.ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    return wrapper


class Server(WebFixture):
    """Both doors on one core: WebFixture's Site plus a c2s factory on the same objects."""

    def __init__(self, testCase: Any):
        super().__init__(testCase, allowPlaintext=True)
        self.c2s = C2SFactory(self.config, self.accounts, self.im, self.clock, None)
        self.wires: list[Wire] = []
        testCase.addCleanup(self._dropWires)

    def _dropWires(self) -> None:
        for wire in self.wires:
            if not wire.protocol.lost:
                wire.lose()

    async def xmpp(self, user: str, resource: str, presence: str | None = "<presence/>") -> Wire:
        """Log an XMPP client in (PLAIN, bind) and optionally send presence."""
        wire = Wire(self.c2s)
        self.wires.append(wire)
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        payload = base64.b64encode(f"\x00{user}\x00secret123".encode()).decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        await wire.waitFor("success", NS_SASL)
        wire.restart()
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        wire.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>")
        await wire.waitFor("iq")
        wire.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        await wire.waitFor("iq")
        if presence:
            wire.send(presence)
        await self.flush()
        wire.take()
        return wire

    async def next(self, wire: Wire, name: str) -> domish.Element:
        found: list[domish.Element] = []

        def look() -> bool:
            wire.pump()
            for element in wire.elements:
                if element.name == name:
                    wire.elements.remove(element)
                    found.append(element)
                    return True
            return False

        await self.until(look)
        return found[0]


def child(element: domish.Element, name: str, uri: str | None = None) -> domish.Element | None:
    for c in element.elements():
        if c.name == name and (uri is None or c.uri == uri):
            return c
    return None


class CrossDoorTests(unittest.TestCase):
    async def friends(self, server: Server) -> tuple[Wire, Any, str]:
        """romeo (XMPP) and juliet (JSON) subscribe to each other, from both doors."""
        romeo = await server.xmpp("romeo", "pidgin")
        juliet = await server.connect("juliet", presence={})
        julietJID = juliet.take("session")[0]["payload"]["jid"]
        romeo.send("<presence type='subscribe' to='juliet@localhost'/>")
        await server.until(lambda: any(f["payload"].get("type") == "subscribe" for f in juliet.take("presence")))
        juliet.sendJSON({"type": "presence", "payload": {"type": "subscribed", "to": "romeo@localhost"}})
        juliet.sendJSON({"type": "presence", "payload": {"type": "subscribe", "to": "romeo@localhost"}})
        request = await server.next(romeo, "presence")
        while request.getAttribute("type") != "subscribe":
            request = await server.next(romeo, "presence")
        self.assertEqual(request["from"], "juliet@localhost")
        romeo.send("<presence type='subscribed' to='juliet@localhost'/>")
        await server.flush(10)
        romeo.take()
        juliet.take()
        return romeo, juliet, julietJID

    @_d
    async def test_subscriptionFromOneDoorSeenOnTheOther(self):
        server = await Server(self).start("romeo", "juliet")
        romeo, juliet, _ = await self.friends(server)
        juliet.sendJSON({"type": "iq", "payload": {"type": "get", "id": "r1", "query": "jabber:iq:roster"}})
        await server.until(lambda: juliet.frames)
        [item] = juliet.take("iq")[0]["payload"]["items"]
        self.assertEqual((item["jid"], item["subscription"]), ("romeo@localhost", "both"))
        romeo.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>")
        result = await server.next(romeo, "iq")
        [xmlItem] = list(child(result, "query").elements())
        self.assertEqual((xmlItem["jid"], xmlItem["subscription"]), ("juliet@localhost", "both"))

    @_d
    async def test_chatBothWaysWithChatStates(self):
        server = await Server(self).start("romeo", "juliet")
        romeo, juliet, julietJID = await self.friends(server)
        # XMPP -> JSON: typing, then a message with non-ASCII and emoji; the id is kept.
        romeo.send(f"<message to='juliet@localhost' type='chat' id='purple1'><composing xmlns='{NS_CHATSTATES}'/></message>")
        romeo.send(f"<message to='juliet@localhost' type='chat' id='purple2'><body>Wherefore art thou? 🌹 żółw</body>"
                   f"<active xmlns='{NS_CHATSTATES}'/></message>")
        await server.until(lambda: len(juliet.frames) >= 2)
        typing, message = juliet.take("message")
        self.assertEqual(typing["payload"]["composing"], {"ID": ""})
        self.assertEqual(typing["payload"]["from"], "romeo@localhost/pidgin")
        self.assertEqual(message["payload"]["id"], "purple2")
        self.assertEqual(message["payload"]["body"], "Wherefore art thou? 🌹 żółw")
        self.assertEqual(message["payload"]["active"], {})
        # JSON -> XMPP: paused, then an answer.
        juliet.sendJSON({"type": "message", "payload": {"to": "romeo@localhost/pidgin", "id": "w1", "type": "chat",
                                                        "body": "", "paused": {}}})
        juliet.sendJSON({"type": "message", "payload": {"to": "romeo@localhost", "id": "w2", "type": "chat",
                                                        "body": "Tu jestem 👋"}})
        paused = await server.next(romeo, "message")
        self.assertIsNotNone(child(paused, "paused", NS_CHATSTATES))
        self.assertEqual(paused["from"], julietJID)
        answer = await server.next(romeo, "message")
        self.assertEqual(answer["id"], "w2")
        self.assertEqual(str(child(answer, "body")), "Tu jestem 👋")

    @_d
    async def test_presenceBothWays(self):
        server = await Server(self).start("romeo", "juliet")
        romeo, juliet, julietJID = await self.friends(server)
        romeo.send("<presence><show>dnd</show><status>in Mantua</status></presence>")
        await server.until(lambda: juliet.frames)
        [p] = juliet.take("presence")
        self.assertEqual((p["payload"]["show"], p["payload"]["status"]), ("dnd", "in Mantua"))
        juliet.sendJSON({"type": "presence", "payload": {"show": "chat", "status": "na balkonie"}})
        presence = await server.next(romeo, "presence")
        self.assertEqual(presence["from"], julietJID)
        self.assertEqual((str(child(presence, "show")), str(child(presence, "status"))), ("chat", "na balkonie"))
        # A web client that leaves is seen leaving by the XMPP client.
        juliet.transport.loseConnection()
        gone = await server.next(romeo, "presence")
        self.assertEqual((gone["from"], gone["type"]), (julietJID, "unavailable"))

    @_d
    async def test_offlineFromOneDoorDeliveredOnTheOther(self):
        server = await Server(self).start("romeo", "juliet")
        juliet = await server.connect("juliet")
        juliet.sendJSON({"type": "message", "payload": {"to": "romeo@localhost", "id": "o1", "type": "chat",
                                                        "body": "Czekam 🕯"}})
        await server.flush(10)
        romeo = await server.xmpp("romeo", "gajim", presence=None)
        romeo.send("<presence/>")
        message = await server.next(romeo, "message")
        self.assertEqual((message["id"], str(child(message, "body"))), ("o1", "Czekam 🕯"))
        self.assertIsNotNone(child(message, "delay", "urn:xmpp:delay"))
        # and the other way: XMPP -> offline web user -> delivered when the socket opens
        romeo.send("<message to='juliet@localhost' type='chat' id='o2'><body>Jutro</body></message>")
        juliet.transport.loseConnection()
        await server.until(lambda: not server.im.router.hasSessions("juliet@localhost"))
        romeo.send("<message to='juliet@localhost' type='chat' id='o3'><body>Pojutrze</body></message>")
        await server.flush(10)
        again = await server.connect("juliet")
        await server.until(lambda: any(f["type"] == "message" for f in again.frames))
        [late] = again.take("message")
        self.assertEqual(late["payload"]["id"], "o3")
        self.assertIn("delay", late["payload"])


class ProfileAcrossDoorsTests(unittest.TestCase):
    @_d
    async def test_restAvatarReachesXMPPContactsAsPhotoHash(self):
        import hashlib

        from tests.helpers import RestClient

        server = await Server(self).start("romeo", "juliet")
        romeo, juliet, julietJID = await CrossDoorTests.friends(self, server)
        rest = RestClient(server.site.resource)
        token = await server.token("juliet")
        picture = b"\x89PNG\r\n\x1a\n not really a picture"
        avatar = "data:image/png;base64," + base64.b64encode(picture).decode()
        response = await rest.patch("/me", json={"avatar": avatar}, token=token)
        self.assertEqual(response.code, 200)
        presence = await server.next(romeo, "presence")
        update = child(presence, "x", "vcard-temp:x:update")
        self.assertEqual(str(child(update, "photo")), hashlib.sha1(picture).hexdigest())
        # The XMPP contact reads the same picture from the vCard.
        romeo.send("<iq type='get' id='v1' to='juliet@localhost'><vCard xmlns='vcard-temp'/></iq>")
        result = await server.next(romeo, "iq")
        photo = child(child(result, "vCard", "vcard-temp"), "PHOTO")
        self.assertEqual(base64.b64decode(str(child(photo, "BINVAL"))), picture)


class CarbonsAcrossDoorsTests(unittest.TestCase):
    @_d
    async def test_webSessionSeesWhatTheXMPPSessionReceivedAndSent(self):
        server = await Server(self).start("romeo", "juliet")
        juliet = await server.xmpp("juliet", "gajim")
        juliet.send("<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        await server.next(juliet, "iq")
        web = await server.connect("juliet")
        web.take()
        romeo = await server.xmpp("romeo", "psi")
        romeo.send("<message to='juliet@localhost/gajim' type='chat' id='k1'><body>Hello 🌙</body></message>")
        await server.next(juliet, "message")
        await server.until(lambda: web.frames)
        [copy] = web.take("message")
        self.assertEqual(copy["payload"]["carbon"]["direction"], "received")
        self.assertEqual(copy["payload"]["carbon"]["message"]["body"], "Hello 🌙")
        juliet.send("<message to='romeo@localhost/psi' type='chat' id='k2'><body>Good night</body></message>")
        await server.until(lambda: web.frames)
        [sent] = web.take("message")
        self.assertEqual(sent["payload"]["carbon"]["direction"], "sent")
        self.assertEqual(sent["payload"]["carbon"]["message"]["id"], "k2")


class SharedThrottleTests(unittest.TestCase):
    @_d
    async def test_failedRESTLoginsThrottleXMPPLogins(self):
        """Guessing a password on one door does not give fresh attempts on the other."""
        from tests.helpers import RestClient

        server = await Server(self).start("juliet")
        rest = RestClient(server.site.resource)
        for _ in range(server.config.authFailureLimit):
            response = await rest.post("/login", json={"jid": "juliet", "password": "wrong-guess"})
            self.assertEqual(response.code, 401)
        wire = Wire(server.c2s)
        server.wires.append(wire)
        wire.send(HEADER.format(to=DOMAIN))
        wire.take()
        payload = base64.b64encode(b"\x00juliet\x00secret123").decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        failure = await server.next(wire, "failure")
        self.assertIsNotNone(child(failure, "temporary-auth-failure"))
