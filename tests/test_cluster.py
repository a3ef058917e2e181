"""
Tests of L{xmppjson.cluster}: three nodes in this process, each the whole server
(L{xmppjson.service.makeServer}) on its own loopback ports, sharing one PostgreSQL database, with
real clients over real TCP: raw XMPP streams on the c2s door and Autobahn WebSocket clients on
the JSON door, the parties of each scenario on different nodes.

The database is C{XMPPJSON_TEST_PG}; the tests run in a schema of their own (dropped at the end)
and on NOTIFY channels of their own, so they share the database with anything else.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol, task
from twisted.trial import unittest
from twisted.words.xish import domish

from tests.pgtest import postgresDSN
from xmppjson.cluster import (
    PAYLOAD_LIMIT,
    ClusterNode,
    ClusterRouter,
    RemoteSession,
    _StanzaReader,
)
from xmppjson.config import Config
from xmppjson.service import XmppJsonServer, makeServer
from xmppjson.websocket import batchedTimer

HEARTBEAT = 0.2
TIMEOUT = 1.0
PASSWORD = "secret123"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Wait on the real reactor until C{predicate()} is true; fail after C{timeout} seconds."""
    deadline = reactor().seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor().seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await task.deferLater(reactor(), 0.01, lambda: None)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor(), seconds, lambda: None)


# ---------------------------------------------------------------------------- clients


class XMPPClient(protocol.Protocol):
    """
    A raw XMPP client: writes XML text, parses what it gets with domish and keeps every stanza.
    """

    def __init__(self) -> None:
        self.stanzas: list[domish.Element] = []
        self.streamError: str | None = None
        self.closed = False
        self.lost: defer.Deferred[None] = defer.Deferred()
        self._newParser()

    def _newParser(self) -> None:
        self.parser = domish.elementStream()
        self.parser.DocumentStartEvent = lambda root: None
        self.parser.ElementEvent = self._element
        self.parser.DocumentEndEvent = self._ended

    def _element(self, element: domish.Element) -> None:
        if element.name == "error" and element.uri == "http://etherx.jabber.org/streams":
            for child in element.elements():
                if child.uri == "urn:ietf:params:xml:ns:xmpp-streams" and child.name != "text":
                    self.streamError = child.name
            return
        self.stanzas.append(element)

    def _ended(self) -> None:
        self.closed = True

    def dataReceived(self, data: bytes) -> None:
        self.parser.parse(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if not self.lost.called:
            self.lost.callback(None)

    def send(self, xml: str) -> None:
        self.transport.write(xml.encode("utf-8"))

    def header(self) -> None:
        self._newParser()
        self.send(
            "<?xml version='1.0'?><stream:stream to='localhost' version='1.0'"
            " xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )

    async def expect(self, predicate: Callable[[domish.Element], bool], timeout: float = 10.0) -> domish.Element:
        found = await until(lambda: next((s for s in self.stanzas if predicate(s)), None), timeout)
        self.stanzas.remove(found)
        return found

    def take(self, name: str) -> list[domish.Element]:
        got = [s for s in self.stanzas if s.name == name]
        self.stanzas = [s for s in self.stanzas if s.name != name]
        return got

    async def login(self, user: str, resource: str) -> str:
        self.header()
        await self.expect(lambda s: s.name == "features")
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        await self.expect(lambda s: s.name == "success")
        self.header()
        await self.expect(lambda s: s.name == "features")
        self.send(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        bound = await self.expect(lambda s: s.getAttribute("id") == "bind1")
        if bound.getAttribute("type") != "result":
            raise AssertionError(f"bind failed: {bound.toXml()}")
        return str(next(bound.elements()).firstChildElement())

    async def iq(self, xml: str, ident: str) -> domish.Element:
        self.send(xml)
        return await self.expect(lambda s: s.name == "iq" and s.getAttribute("id") == ident)


class JSONClient(WebSocketClientProtocol):
    """A JSON dialect client that keeps every frame."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.closed: defer.Deferred[Any] = defer.Deferred()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.closed.called:
            self.closed.callback(code)

    def send(self, ftype: str, payload: dict[str, Any]) -> None:
        self.sendMessage(json.dumps({"type": ftype, "payload": payload}).encode("utf-8"))

    async def expect(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        found = await until(lambda: next((f for f in self.frames if predicate(f)), None), timeout)
        self.frames.remove(found)
        return found

    def take(self, ftype: str) -> list[dict[str, Any]]:
        got = [f for f in self.frames if f["type"] == ftype]
        self.frames = [f for f in self.frames if f["type"] != ftype]
        return got


def frame(ftype: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """A predicate on a frame's type and payload fields."""

    def match(f: dict[str, Any]) -> bool:
        payload = f.get("payload", {})
        return f.get("type") == ftype and all(payload.get(k) == v for k, v in fields.items())

    return match


def stanza(name: str, **attrs: str | None) -> Callable[[domish.Element], bool]:
    """A predicate on a stanza's name and attributes (C{None}: absent)."""

    def match(s: domish.Element) -> bool:
        return s.name == name and all(s.getAttribute(k) == v for k, v in attrs.items())

    return match


# ---------------------------------------------------------------------------- the cluster


class Node:
    """One running node: its server, its ports."""

    def __init__(self, name: str, server: XmppJsonServer, web: int, c2s: int):
        self.name = name
        self.server = server
        self.web = web
        self.c2s = c2s
        self.cluster: ClusterNode = server.cluster
        self.router: ClusterRouter = server.im.router  # type: ignore[assignment]

    def sees(self, full: str, available: bool | None = None) -> bool:
        """Whether this node's router has C{full}, available or not when C{available} is given."""
        bare, _, resource = full.partition("/")
        session = self.router.session(bare, resource)
        if session is None:
            return False
        return available is None or (session.presence is not None) == available


class ClusterTestCase(unittest.TestCase):
    """Starts nodes on a schema of their own and connects clients to them."""

    timeout = 40
    clusterTimeout = TIMEOUT

    def setUp(self) -> None:
        import psycopg2

        base = postgresDSN()
        self.schema = f"xj_cluster_{os.getpid()}"
        self.channel = "t" + os.urandom(4).hex()
        with psycopg2.connect(base, connect_timeout=10) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
                cursor.execute(f"CREATE SCHEMA {self.schema}")
        separator = "&" if "?" in base else "?"
        options = urllib.parse.quote(f"-csearch_path={self.schema}")
        self.dsn = f"{base}{separator}options={options}"
        self.addCleanup(self._dropSchema, base)

    def _dropSchema(self, base: str) -> None:
        import psycopg2

        connection = psycopg2.connect(base, connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        finally:
            connection.close()

    def config(self, name: str) -> Config:
        return Config(
            domain="localhost",
            web="tcp:0:interface=127.0.0.1",
            c2s="tcp:0:interface=127.0.0.1",
            db=self.dsn,
            allowPlaintext=True,
            scramIterations=64,
            stanzaRate=0,
            cluster=True,
            nodeName=name,
            clusterHeartbeat=HEARTBEAT,
            clusterTimeout=self.clusterTimeout,
            clusterChannel=self.channel,
        )

    async def startNode(self, name: str) -> Node:
        server = makeServer(self.config(name), reactor())
        server.startService()
        stopped: list[bool] = []

        async def stop() -> None:
            if not stopped:
                stopped.append(True)
                await server.stopService()

        self.addCleanup(stop)
        web = await server.getServiceNamed("web")._waitingForPort
        c2s = await server.getServiceNamed("c2s")._waitingForPort
        await server.store.start()
        await server.cluster.whenLive()
        node = Node(name, server, web.getHost().port, c2s.getHost().port)
        node.stop = stop  # type: ignore[attr-defined]
        return node

    async def startCluster(self, *users: str) -> list[Node]:
        nodes = [await self.startNode(name) for name in ("a", "b", "c")]
        for node in nodes:
            await until(lambda node=node: len(node.cluster.nodes) == 2, what="nodes know each other")
        for user in users:
            await nodes[0].server.accounts.register(user, PASSWORD)
        return nodes

    async def xmpp(self, node: Node, user: str, resource: str, presence: str | None = "<presence/>",
                   roster: bool = True) -> XMPPClient:
        client = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor(), "127.0.0.1", node.c2s), XMPPClient()
        )
        self.addCleanup(self._closeXMPP, client)
        full = await client.login(user, resource)
        self.assertEqual(full, f"{user}@localhost/{resource}")
        if roster:
            await client.iq("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>", "roster1")
        if presence is not None:
            client.send(presence)
        return client

    async def _closeXMPP(self, client: XMPPClient) -> None:
        if not client.closed:
            client.transport.loseConnection()
        await client.lost

    async def json(self, node: Node, user: str, presence: dict[str, Any] | None = None) -> tuple[JSONClient, str]:
        token, _ = await node.server.accounts.login(user, PASSWORD)
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{node.web}/stream?token={token}")
        factory.protocol = JSONClient
        factory._batched_timer = batchedTimer(reactor())
        client = await endpoints.TCP4ClientEndpoint(reactor(), "127.0.0.1", node.web).connect(factory)
        self.addCleanup(self._closeJSON, client)
        session = await client.expect(lambda f: f["type"] == "session")
        if presence is not None:
            client.send("presence", presence)
        return client, session["payload"]["jid"]

    async def _closeJSON(self, client: JSONClient) -> None:
        if not client.closed.called:
            client.sendClose()
        await client.closed

    async def befriend(self, nodes: list[Node], a: str, b: str) -> None:
        """A mutual subscription between two users, written to the store before they log in."""
        from xmppjson.storage import RosterItem

        store = nodes[0].server.store
        await store.setRosterItem(a, RosterItem(jid=f"{b}@localhost", subscription="both"))
        await store.setRosterItem(b, RosterItem(jid=f"{a}@localhost", subscription="both"))

    async def converged(self, nodes: list[Node], full: str, available: bool | None = True) -> None:
        """Wait until every node sees C{full} (available or not, as asked)."""
        for node in nodes:
            await until(lambda node=node: node.sees(full, available), what=f"{node.name} sees {full}")



def child(s: domish.Element, name: str) -> str | None:
    """The text of C{s}'s first child called C{name}, whatever its namespace."""
    for element in s.elements():
        if element.name == name:
            return str(element)
    return None


def body(s: domish.Element) -> str | None:
    return child(s, "body")


async def stored(node: Node, user: str, count: int) -> list[Any]:
    """Wait until C{user} has C{count} offline messages in the store; return them."""
    deadline = reactor().seconds() + 10
    while True:
        messages = await node.server.store.getOffline(user)
        if len(messages) >= count or reactor().seconds() > deadline:
            return messages
        await sleep(0.02)


def hasChild(s: domish.Element, name: str, uri: str) -> bool:
    return any(c.name == name and c.uri == uri for c in s.elements())


class CrossNodeTests(ClusterTestCase):
    """IM across nodes: the core's rules hold as if every session were on one node."""

    async def test_subscriptionAndPresence(self) -> None:
        """
        The subscription handshake between a c2s user on node a and a web user on node b, both
        ways: requests, approvals, roster pushes and presence reach the other node, and each
        node's copy of a roster follows the writes made on the other.
        """
        nodes = await self.startCluster("alice", "bob")
        alice = await self.xmpp(nodes[0], "alice", "desk")
        bob, bobJID = await self.json(nodes[1], "bob", presence={"status": "here"})
        await self.converged(nodes, "alice@localhost/desk")
        await self.converged(nodes, bobJID)

        alice.send("<presence to='bob@localhost' type='subscribe'/>")
        request = await bob.expect(frame("presence", type="subscribe"))
        self.assertEqual(request["payload"]["from"], "alice@localhost")
        bob.send("presence", {"to": "alice@localhost", "type": "subscribed"})
        await alice.expect(stanza("presence", type="subscribed", **{"from": "bob@localhost"}))
        # bob's presence follows the approval, from node b's replica of his session
        available = await alice.expect(stanza("presence", type=None, **{"from": bobJID}))
        self.assertEqual(child(available, "status"), "here")
        # roster pushes to both (alice's first push, "none" and asking, came with her request)
        push = await alice.expect(lambda s: s.name == "iq" and "subscription='to'" in s.toXml())
        self.assertIn("jid='bob@localhost'", push.toXml())
        pushed = await bob.expect(lambda f: f["type"] == "iq" and f["payload"].get("type") == "set")
        self.assertEqual(pushed["payload"]["items"][0]["subscription"], "from")

        # the other way round: node b must see alice's roster as node a wrote it
        bob.send("presence", {"to": "alice@localhost", "type": "subscribe"})
        await alice.expect(stanza("presence", type="subscribe", **{"from": "bob@localhost"}))
        alice.send("<presence to='bob@localhost' type='subscribed'/>")
        await bob.expect(frame("presence", type="subscribed", **{"from": "alice@localhost"}))
        await bob.expect(frame("presence", **{"from": "alice@localhost/desk"}))
        rosters = {}
        for user, node in (("alice", nodes[0]), ("bob", nodes[1])):
            rosters[user] = {i.jid: i.subscription for i in await node.server.store.getRoster(user)}
        self.assertEqual(rosters, {"alice": {"bob@localhost": "both"}, "bob": {"alice@localhost": "both"}})
        # each node's cache agrees with the store
        self.assertEqual(nodes[0].server.im.rosters.cached("alice")["bob@localhost"].subscription, "both")
        self.assertEqual(nodes[1].server.im.rosters.cached("bob")["alice@localhost"].subscription, "both")

        # a presence change and the end of a session reach the other node
        alice.send("<presence><show>away</show></presence>")
        await bob.expect(frame("presence", show="away", **{"from": "alice@localhost/desk"}))
        bob.sendClose()
        await bob.closed
        await alice.expect(stanza("presence", type="unavailable", **{"from": bobJID}))

    async def test_chatWithChatStates(self) -> None:
        """A c2s client on node a and a web client on node b chat both ways, with chat states."""
        nodes = await self.startCluster("alice", "bob")
        await self.befriend(nodes, "alice", "bob")
        alice = await self.xmpp(nodes[0], "alice", "desk")
        bob, bobJID = await self.json(nodes[1], "bob", presence={})
        await self.converged(nodes, "alice@localhost/desk")
        await self.converged(nodes, bobJID)

        alice.send(f"<message to='{bobJID}' type='chat' id='c1'>"
                   f"<composing xmlns='{NS_CHATSTATES}'/></message>")
        typing = await bob.expect(frame("message", id="c1"))
        self.assertEqual((typing["payload"]["composing"], typing["payload"]["body"]), ({"ID": ""}, ""))
        alice.send(f"<message to='{bobJID}' type='chat' id='m1'><body>Cześć 🎉</body>"
                   f"<active xmlns='{NS_CHATSTATES}'/></message>")
        message = await bob.expect(frame("message", id="m1"))
        self.assertEqual(message["payload"]["body"], "Cześć 🎉")
        self.assertEqual(message["payload"]["from"], "alice@localhost/desk")
        self.assertEqual(message["payload"]["active"], {})
        self.assertIn("stanza_id", message["payload"])

        bob.send("message", {"to": "alice@localhost", "type": "chat", "id": "c2", "composing": {}})
        state = await alice.expect(stanza("message", id="c2"))
        self.assertTrue(hasChild(state, "composing", NS_CHATSTATES))
        self.assertEqual(state["from"], bobJID)
        bob.send("message", {"to": "alice@localhost", "type": "chat", "id": "m2", "body": "hej", "paused": {}})
        reply = await alice.expect(stanza("message", id="m2"))
        self.assertEqual(body(reply), "hej")
        self.assertTrue(hasChild(reply, "paused", NS_CHATSTATES))

        # many in a row keep their order across the nodes
        for n in range(30):
            alice.send(f"<message to='bob@localhost' type='chat' id='s{n}'><body>{n}</body></message>")
        await until(lambda: len([f for f in bob.frames if f["type"] == "message"]) >= 30)
        self.assertEqual([f["payload"]["body"] for f in bob.take("message")], [str(n) for n in range(30)])

    async def test_bigStanza(self) -> None:
        """A stanza far over NOTIFY's 8000 bytes travels through the stanza table."""
        nodes = await self.startCluster("alice", "bob")
        alice = await self.xmpp(nodes[0], "alice", "desk")
        bob, bobJID = await self.json(nodes[2], "bob", presence={})
        await self.converged(nodes, bobJID)
        text = "ż" * (3 * PAYLOAD_LIMIT)
        alice.send(f"<message to='{bobJID}' type='chat' id='big'><body>{text}</body></message>")
        alice.send(f"<message to='{bobJID}' type='chat' id='after'><body>small</body></message>")
        await until(lambda: len(bob.frames) >= 2)
        got = bob.take("message")
        self.assertEqual([f["payload"]["id"] for f in got], ["big", "after"])
        self.assertEqual(got[0]["payload"]["body"], text)

    async def test_bareJIDToHighestPriority(self) -> None:
        """A message to a bare JID goes to the highest priority, whichever node holds it."""
        nodes = await self.startCluster("carol", "dave")
        low = await self.xmpp(nodes[0], "carol", "low", "<presence><priority>1</priority></presence>")
        await self.converged(nodes, "carol@localhost/low")
        high = await self.xmpp(nodes[2], "carol", "high", "<presence><priority>5</priority></presence>")
        dave, _ = await self.json(nodes[1], "dave")
        for full in ("carol@localhost/low", "carol@localhost/high"):
            await self.converged(nodes, full)
        await until(lambda: nodes[1].router.session("carol@localhost", "high").priority == 5)

        dave.send("message", {"to": "carol@localhost", "type": "chat", "id": "p1", "body": "to the best"})
        got = await high.expect(stanza("message", id="p1"))
        self.assertEqual(body(got), "to the best")
        # the sessions of one user see each other's presence across nodes
        await high.expect(stanza("presence", **{"from": "carol@localhost/low"}))
        await low.expect(stanza("presence", **{"from": "carol@localhost/high"}))

        high.send("<presence><priority>-1</priority></presence>")
        await until(lambda: nodes[1].router.session("carol@localhost", "high").priority == -1)
        dave.send("message", {"to": "carol@localhost", "type": "chat", "id": "p2", "body": "now low"})
        got = await low.expect(stanza("message", id="p2"))
        self.assertEqual(body(got), "now low")
        await sleep(0.2)
        self.assertEqual([s for s in low.take("message") + high.take("message") if s.getAttribute("id") == "p1"], [])
        self.assertEqual([s["id"] for s in high.take("message")], [])

    async def test_resourceConflict(self) -> None:
        """A new session with a full JID held on another node closes that one with conflict."""
        nodes = await self.startCluster("erin", "frank")
        first = await self.xmpp(nodes[0], "erin", "phone")
        await self.converged(nodes, "erin@localhost/phone")
        second = await self.xmpp(nodes[1], "erin", "phone")
        await until(lambda: first.closed, what="the first session closed")
        self.assertEqual(first.streamError, "conflict")
        for node in nodes:
            await until(lambda node=node: getattr(node.router.session("erin@localhost", "phone"), "node", None)
                        in (None, "b") and node.sees("erin@localhost/phone"))
        self.assertIs(nodes[1].router.session("erin@localhost", "phone"), nodes[1].router.local["erin@localhost/phone"])
        frank, _ = await self.json(nodes[2], "frank")
        frank.send("message", {"to": "erin@localhost/phone", "type": "chat", "id": "x1", "body": "who?"})
        got = await second.expect(stanza("message", id="x1"))
        self.assertEqual(body(got), "who?")

    async def test_offlineWhenOnNoNode(self) -> None:
        """A user on no node gets messages stored, then delivered on whichever node they log in."""
        nodes = await self.startCluster("gina", "henry")
        henry, henryJID = await self.json(nodes[1], "henry")
        await self.converged(nodes, henryJID, available=None)
        henry.sendClose()
        await henry.closed
        for node in nodes:
            await until(lambda node=node: not node.sees(henryJID), what=f"{node.name} forgot henry")
        gina, _ = await self.json(nodes[0], "gina")
        gina.send("message", {"to": "henry@localhost", "type": "chat", "id": "o1", "composing": {}})
        gina.send("message", {"to": "henry@localhost", "type": "chat", "id": "o2", "body": "call me"})
        self.assertEqual(len(await stored(nodes[0], "henry", 1)), 1)
        henry, _ = await self.json(nodes[2], "henry")
        got = await henry.expect(frame("message", id="o2"))
        self.assertEqual(got["payload"]["body"], "call me")
        self.assertIn("delay", got["payload"])
        await sleep(0.1)
        self.assertEqual(henry.take("message"), [])  # the chat state was not stored



class NodeFailureTests(ClusterTestCase):
    """A node that dies: nothing sent to its users is lost, their contacts see them go."""

    async def test_nodeKilledMidChat(self) -> None:
        nodes = await self.startCluster("alice", "bob")
        await self.befriend(nodes, "alice", "bob")
        alice, aliceJID = await self.json(nodes[0], "alice", presence={})
        bob = await self.xmpp(nodes[1], "bob", "laptop")
        await self.converged(nodes, aliceJID)
        await self.converged(nodes, "bob@localhost/laptop")
        await alice.expect(frame("presence", **{"from": "bob@localhost/laptop"}))
        alice.send("message", {"to": "bob@localhost", "type": "chat", "id": "before", "body": "are you there?"})
        await bob.expect(stanza("message", id="before"))
        # (acknowledged: one delivered but not yet acknowledged would be stored again, a
        # duplicate rather than a loss)
        await until(lambda: not nodes[0].cluster._unacked.get("b"), what="node b acknowledged")

        # node b dies: no goodbye, its clients' connections drop with it
        nodes[1].cluster.crash()
        bob.transport.abortConnection()
        for n in range(3):
            alice.send("message", {"to": "bob@localhost/laptop", "type": "chat", "id": f"lost{n}", "body": f"{n}"})
        alice.send("message", {"to": "bob@localhost", "type": "chat", "id": "typing", "composing": {}})

        # a survivor declares it dead; alice is told bob is gone, once
        gone = await alice.expect(frame("presence", type="unavailable", **{"from": "bob@localhost/laptop"}),
                                  timeout=TIMEOUT + 5)
        self.assertTrue(gone)
        for node in (nodes[0], nodes[2]):
            await until(lambda node=node: "b" not in node.cluster.nodes and not node.sees("bob@localhost/laptop"))
        self.assertEqual(len(await stored(nodes[0], "bob", 3)), 3)
        await nodes[1].stop()

        # bob comes back on another node and gets every message (the order of a burst stored
        # offline is the core's: it stores them concurrently)
        bob2, _ = await self.json(nodes[2], "bob")
        await until(lambda: len([f for f in bob2.frames if f["type"] == "message"]) >= 3)
        got = [f["payload"] for f in bob2.take("message")]
        self.assertEqual(sorted(m["body"] for m in got), ["0", "1", "2"])
        self.assertTrue(all("delay" in m for m in got))
        await sleep(0.1)
        self.assertEqual(bob2.take("message"), [])
        self.assertEqual([f for f in alice.frames if f["type"] == "presence" and f["payload"].get("type") == "unavailable"], [])

    async def test_restartedNodeCleansUp(self) -> None:
        """
        A node that restarts (same name) before anyone declared it dead deletes what its previous
        incarnation left: the others forget those sessions, and their contacts see them go.
        """
        self.clusterTimeout = 30.0  # nobody declares it dead: the restart alone must clean up
        nodes = await self.startCluster("alice", "bob")
        await self.befriend(nodes, "alice", "bob")
        alice, _ = await self.json(nodes[0], "alice", presence={})
        bob = await self.xmpp(nodes[1], "bob", "laptop")
        await self.converged(nodes, "bob@localhost/laptop")
        await alice.expect(frame("presence", **{"from": "bob@localhost/laptop"}))
        nodes[1].cluster.crash()
        bob.transport.abortConnection()
        await nodes[1].stop()
        alice.send("message", {"to": "bob@localhost", "type": "chat", "id": "m1", "body": "lost?"})
        await sleep(0.1)

        again = await self.startNode("b")
        await alice.expect(frame("presence", type="unavailable", **{"from": "bob@localhost/laptop"}))
        for node in (nodes[0], nodes[2], again):
            await until(lambda node=node: not node.sees("bob@localhost/laptop"))
        self.assertEqual(len(await stored(nodes[0], "bob", 1)), 1)
        bob2 = await self.xmpp(again, "bob", "laptop")
        got = await bob2.expect(stanza("message", id="m1"))
        self.assertEqual(body(got), "lost?")
        await alice.expect(frame("presence", **{"from": "bob@localhost/laptop"}))


class UnitTests(unittest.TestCase):
    """The pure parts, without a database."""

    def node(self) -> ClusterNode:
        from twisted.internet.task import Clock

        config = Config(db="postgresql://u:p@127.0.0.1:1/db", cluster=True, nodeName="n1",
                        clusterChannel="xj")
        node = ClusterNode(config, store=None, reactor=Clock())
        node.epoch = "e1"
        return node

    def test_configurationChecked(self) -> None:
        from twisted.internet.task import Clock

        bads: list[dict[str, Any]] = [
            {"db": "sqlite::memory:"}, {"nodeName": "a b"}, {"clusterChannel": "x.y"},
            {"clusterHeartbeat": 5.0, "clusterTimeout": 2.0},
        ]
        for bad in bads:
            settings: dict[str, Any] = {"db": "postgresql://u:p@h/db", "cluster": True, "nodeName": "n"}
            settings.update(bad)
            self.assertRaises(ValueError, ClusterNode, Config(**settings), None, Clock())

    def test_singleNodeHasNoCluster(self) -> None:
        """Without the option nothing of the cluster is built: the plain router, the plain store."""
        server = XmppJsonServer(Config(db="sqlite::memory:"), reactor())
        self.assertIsNone(server.cluster)
        self.assertIs(type(server.im.router).__name__, "Router")
        self.assertFalse(server.im.router.replicated)
        self.assertEqual([child.name for child in server], ["store", "im"])

    def test_connectionClosedUnderAQueryIsNoBug(self) -> None:
        """
        A flush or inbound fetch that fails because its connection closed (txpostgres fails
        it with Twisted's ConnectionDone, as when a node crashes) resets a live node and logs
        no error; any other failure is logged.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        from xmppjson.cluster import LIVE

        node = self.node()
        node.state = LIVE
        lost: list[str] = []
        node._connectionLost = lost.append  # type: ignore[method-assign]
        node._flushing = True
        node._flushFailed(Failure(ConnectionDone()))
        node._hold(self._failing(ConnectionDone()))
        self.assertEqual(len(lost), 2)
        self.assertFalse(node._flushing)
        self.assertEqual(self.flushLoggedErrors(), [])
        node._hold(self._failing(ValueError("a bug")))
        self.assertEqual(len(lost), 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    async def _failing(self, error: Exception) -> None:
        raise error

    def test_packing(self) -> None:
        """
        Records are packed per channel under the NOTIFY limit, in order; a statement closes the
        packs before it; an oversized record goes through the stanza table.
        """
        node = self.node()
        small = json.dumps(["M", 1, "a@x/r", "<message/>"])
        big = json.dumps(["M", 2, "a@x/r", "x" * (PAYLOAD_LIMIT + 10)])
        ops = [("n", "xj.a", small)] * 3 + [("n", "xj.b", small), ("q", "SELECT 1", []),
                                             ("n", "xj.a", small), ("n", "xj.a", big)]
        statements, params, notifies = node._compile(ops)
        self.assertEqual(statements[0], "SELECT pg_notify(%s, %s), pg_notify(%s, %s)")
        self.assertEqual(params[0], "xj.a")
        self.assertEqual(json.loads(params[1]), ["n1", "e1", *[json.loads(small)] * 3])
        self.assertEqual((params[2], json.loads(params[3])), ("xj.b", ["n1", "e1", json.loads(small)]))
        self.assertEqual(statements[1], "SELECT 1")
        self.assertEqual(statements[2], "SELECT pg_notify(%s, %s)")
        self.assertIn("INSERT INTO cluster_stanzas", statements[3])
        self.assertEqual(params[-3], "xj.a")
        self.assertEqual(json.loads(params[-2]), ["n1", "e1", json.loads(big)])
        self.assertEqual(notifies, 5)
        for payload in params[1:4:2]:
            self.assertLessEqual(len(payload.encode()), PAYLOAD_LIMIT)

    def test_packingSplits(self) -> None:
        node = self.node()
        record = json.dumps(["M", 1, "a@x/r", "é" * 1000])
        _, params, _ = node._compile([("n", "xj.a", record)] * 20)
        payloads = params[1::2]
        self.assertGreater(len(payloads), 1)
        self.assertTrue(all(len(p.encode()) <= PAYLOAD_LIMIT for p in payloads))
        self.assertEqual(sum(len(json.loads(p)) - 2 for p in payloads), 20)

    def test_reader(self) -> None:
        reader = _StanzaReader()
        got = reader.parse(["<message to='a@x'><body>1</body></message>", "<presence/>"])
        self.assertEqual([(e.name, e.uri) for e in got], [("message", "jabber:client"), ("presence", "jabber:client")])
        self.assertRaises(Exception, reader.parse, ["<message><body></message>"])  # noqa: B017 - expat's own error
        self.assertEqual(reader.parse(["<iq type='get'/>"])[0]["type"], "get")

    def test_routerCountsLocalSessions(self) -> None:
        from twisted.words.protocols.jabber.jid import JID

        from tests.imhelpers import RecordingSession

        node = self.node()
        node.state = "live"
        router = node.router
        remote = RemoteSession(JID("u@x/r1"), "n2", 1, node)
        router.putRemote(remote)
        self.assertFalse(router.hasSessions("u@x"))
        self.assertEqual(router.sessionsOf("u@x"), [remote])
        self.assertEqual(list(router), [])
        local = RecordingSession("u@x/r1", im=None)  # type: ignore[arg-type]
        self.assertIs(router.add(local), remote)
        self.assertFalse(remote.active)
        self.assertIsNone(remote.presence)
        self.assertTrue(router.hasSessions("u@x"))
        self.assertEqual(list(router), [local])
        self.assertEqual(router.remote, {})
        self.assertTrue(router.remove(local))
        self.assertFalse(router.hasSessions("u@x"))
        self.assertEqual(len(node._outbox), 2)  # the takeover, then the goodbye
