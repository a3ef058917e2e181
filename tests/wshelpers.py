"""
An in-memory JSON WebSocket client for tests: a real Autobahn client protocol connected to the
real Site (HTTP upgrade, token check, WebSocket framing) over L{twisted.test.iosim} transports.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.test import iosim

from xmppjson.accounts import Accounts
from xmppjson.web import makeSite
from xmppjson.websocket import batchedTimer
from tests.imhelpers import CoreFixture


class JSONClient(WebSocketClientProtocol):
    """Collects every frame the server sends, decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.opened = False
        self.closedWith: Optional[tuple[Any, Any]] = None
        self.httpStatus: Optional[int] = None

    def onConnect(self, response: Any) -> None:
        self.httpStatus = 101

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.closedWith = (code, reason)

    def sendJSON(self, frame: Any) -> None:
        self.sendText(json.dumps(frame))

    def sendText(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"), isBinary=False)

    def take(self, ftype: Optional[str] = None) -> list[dict[str, Any]]:
        got = [f for f in self.frames if ftype is None or f.get("type") == ftype]
        self.frames = [f for f in self.frames if not (ftype is None or f.get("type") == ftype)]
        return got


class WebFixture(CoreFixture):
    """A core plus accounts and the real Site, with in-memory WebSocket clients."""

    def __init__(self, testCase: Any, **configArgs: Any):
        super().__init__(testCase, **configArgs)
        from twisted.internet import reactor

        self.accounts = Accounts(self.config, self.store, self.clock)
        self.site = makeSite(self.config, self.accounts, self.im, self.clock)
        self.pumps: list[iosim.IOPump] = []
        self._realReactor = reactor

    async def start(self, *users: str) -> "WebFixture":
        await self.store.start()
        for user in users:
            await self.accounts.register(user, "secret123")
        return self

    async def token(self, user: str) -> str:
        token, _ = await self.accounts.login(user, "secret123")
        return token

    def open(self, path: str, headers: Optional[dict[str, str]] = None) -> JSONClient:
        factory = WebSocketClientFactory("ws://localhost:8080" + path, headers=headers or {})
        factory.protocol = JSONClient
        factory._batched_timer = batchedTimer(self.clock)
        client = factory.buildProtocol(None)
        serverProtocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8080))
        pump = iosim.connect(
            serverProtocol,
            iosim.FakeTransport(serverProtocol, isServer=True,
                                peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps))),
            client,
            iosim.FakeTransport(client, isServer=False),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return client

    async def connect(self, user: str, presence: Optional[dict[str, Any]] = None) -> JSONClient:  # type: ignore[override]
        token = await self.token(user)
        client = self.open(f"/stream?token={token}")
        await self.until(lambda: any(f.get("type") == "session" for f in client.frames))
        if presence is not None:
            client.sendJSON({"type": "presence", "payload": presence})
            await self.flush()
        return client

    def pump(self) -> None:
        for pump in self.pumps:
            pump.flush()

    async def until(self, predicate: Any, timeout: float = 3.0) -> None:
        """Pump the memory connections and the real reactor until C{predicate()} holds."""
        deadline = self._realReactor.seconds() + timeout
        while True:
            self.pump()
            if predicate():
                return
            if self._realReactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting for {predicate}")
            await task.deferLater(self._realReactor, 0.002, lambda: None)

    async def flush(self, rounds: int = 5) -> None:
        """Pump for a few reactor turns (for things that must NOT happen)."""
        for _ in range(rounds):
            self.pump()
            await task.deferLater(self._realReactor, 0.002, lambda: None)
        self.pump()
