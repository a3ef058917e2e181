"""
End-to-end: the whole service (C{makeServer}) on real loopback sockets, driven by real clients:
treq for REST, Autobahn's Twisted WebSocket client for the JSON dialect.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.web.client import HTTPConnectionPool
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, reactor, task
from twisted.trial import unittest

from xmppjson.config import Config
from xmppjson.service import makeServer
from xmppjson.websocket import batchedTimer


class _Client(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.closed: defer.Deferred[Any] = defer.Deferred()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.closed.called:
            self.closed.callback(code)

    def send(self, frame: Any) -> None:
        self.sendMessage(json.dumps(frame).encode("utf-8"))


async def waitFor(predicate: Any, timeout: float = 5.0) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("timed out")
        await task.deferLater(reactor, 0.01, lambda: None)


class EndToEndTests(unittest.TestCase):
    def setUp(self) -> None:
        # No keep-alive: every connection is closed when its response is read.
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def startServer(self) -> str:
        db = self.mktemp() + ".sqlite3"
        config = Config(
            web="tcp:0:interface=127.0.0.1", c2s="tcp:0:interface=127.0.0.1", db="sqlite:" + db,
            allowPlaintext=True, scramIterations=64,
        )
        self.server = makeServer(config, reactor)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        port = await self.server.getServiceNamed("web")._waitingForPort
        await self.server.store.start()  # fires once the store is ready
        return f"127.0.0.1:{port.getHost().port}"

    async def login(self, base: str, user: str) -> str:
        response = await treq.post(pool=self.pool, url=f"http://{base}/users", json={"jid": user, "password": "secret123"})
        self.assertEqual(response.code, 201, await response.text())
        response = await treq.post(pool=self.pool, url=f"http://{base}/login", json={"jid": user, "password": "secret123"})
        self.assertEqual(response.code, 200)
        body = await response.json()
        self.assertEqual(body["jid"], f"{user}@localhost/")
        return body["token"]

    async def connect(self, base: str, token: str) -> _Client:
        factory = WebSocketClientFactory(f"ws://{base}/stream?token={token}")
        factory.protocol = _Client
        factory._batched_timer = batchedTimer(reactor)
        host, port = base.split(":")
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, int(port))
        client = await endpoint.connect(factory)
        self.addCleanup(self._close, client)
        await waitFor(lambda: client.frames)
        self.assertEqual(client.frames[0]["type"], "session")
        return client

    async def _close(self, client: _Client) -> None:
        if not client.closed.called:
            client.sendClose()
        await client.closed

    def test_registerLoginChat(self) -> defer.Deferred:
        async def run() -> None:
            base = await self.startServer()
            szymon = await self.connect(base, await self.login(base, "szymon"))
            alicja = await self.connect(base, await self.login(base, "alicja"))
            szymon.send({"type": "message", "payload": {"to": "alicja@localhost", "id": "e1",
                                                        "type": "chat", "body": "zażółć gęślą jaźń 🎉"}})
            await waitFor(lambda: len(alicja.frames) >= 2)
            message = alicja.frames[1]
            self.assertEqual(message["type"], "message")
            self.assertEqual(message["payload"]["body"], "zażółć gęślą jaźń 🎉")
            self.assertEqual(message["payload"]["from"], szymon.frames[0]["payload"]["jid"])
            # A bad frame leaves the socket usable.
            alicja.sendMessage(b"{oops")
            await waitFor(lambda: len(alicja.frames) >= 3)
            self.assertEqual(alicja.frames[2]["type"], "error")
            alicja.send({"type": "iq", "payload": {"type": "get", "id": "p", "to": "localhost", "ping": {}}})
            await waitFor(lambda: len(alicja.frames) >= 4)
            self.assertEqual(alicja.frames[3]["payload"]["type"], "result")
            health = await (await treq.get(pool=self.pool, url=f"http://{base}/health")).json()
            self.assertEqual(health["status"], "ok")

        return defer.ensureDeferred(run())

    def test_userSurvivesRestart(self) -> defer.Deferred:
        async def run() -> None:
            db = self.mktemp() + ".sqlite3"
            for attempt in range(2):
                config = Config(web="tcp:0:interface=127.0.0.1", c2s="tcp:0:interface=127.0.0.1",
                                db="sqlite:" + db, scramIterations=64)
                server = makeServer(config, reactor)
                server.startService()
                try:
                    port = await server.getServiceNamed("web")._waitingForPort
                    await server.store.start()
                    base = f"http://127.0.0.1:{port.getHost().port}"
                    if attempt == 0:
                        response = await treq.post(pool=self.pool, url=base + "/users", json={"jid": "Ewa", "password": "secret123"})
                        self.assertEqual(response.code, 201)
                    response = await treq.post(pool=self.pool, url=base + "/login", json={"jid": "ewa", "password": "secret123"})
                    self.assertEqual(response.code, 200)
                    await response.content()
                finally:
                    await server.stopService()

        return defer.ensureDeferred(run())
