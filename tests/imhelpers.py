"""
Helpers for tests of the IM core: a real core on a real (SQLite, in-memory) store, and a
recording session standing in for a door.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import task
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from xmppjson.config import Config
from xmppjson.im.server import IMServer
from xmppjson.im.stanzas import NS_CLIENT
from xmppjson.session import Session
from xmppjson.storage import openStore
from xmppjson.scram import makeCredentials


class RecordingSession(Session):
    """A door that records what the core delivers to it."""

    door = "test"

    def __init__(self, full: str, im: IMServer, messagesAtOnce: bool = False):
        super().__init__(JID(full))
        self.im = im
        self.received: list[domish.Element] = []
        self.closedWith: Optional[str] = None
        if messagesAtOnce:
            # Behaves as a session of the JSON door.
            self.messagesWhileUnavailable = True
            self.receivesMessages = True
            self.interested = True

    def deliver(self, element: domish.Element) -> None:
        if not self.active:
            self.im.undeliverable(self, element)
            return
        self.received.append(element)

    def close(self, condition: Optional[str] = None, text: Optional[str] = None) -> None:
        self.closedWith = condition
        self.im.closeSession(self)

    def take(self, name: Optional[str] = None) -> list[domish.Element]:
        """Everything received so far (of one stanza name), emptying the record."""
        got = [e for e in self.received if name is None or e.name == name]
        self.received = [e for e in self.received if not (name is None or e.name == name)]
        return got

    def send(self, xml: str) -> None:
        self.im.receive(self, parse(xml))


def parse(xml: str) -> domish.Element:
    """One stanza from XML text, in jabber:client."""
    result: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = result.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(f"<s xmlns='{NS_CLIENT}'>{xml}</s>".encode("utf-8"))
    assert len(result) == 1, xml
    return result[0]


class CoreFixture:
    """A started core on sqlite::memory:, with users."""

    def __init__(self, testCase: Any, domain: str = "localhost", **configArgs: Any):
        from twisted.internet import reactor

        self.clock = task.Clock()
        self.config = Config(domain=domain, db="sqlite::memory:", **configArgs)
        self.store = openStore(self.config.db, reactor)
        self.im = IMServer(self.config, self.store, self.clock)
        testCase.addCleanup(self.stop)

    async def start(self, *users: str) -> "CoreFixture":
        await self.store.start()
        for user in users:
            await self.store.createUser(user, makeCredentials("secret123", 64))
        return self

    async def stop(self) -> None:
        await self.im.shutdown()
        await self.store.close()

    async def connect(self, full: str, messagesAtOnce: bool = False, presence: Optional[str] = None) -> RecordingSession:
        session = RecordingSession(full, self.im, messagesAtOnce)
        await self.im.openSession(session)
        if presence is not None:
            session.send(presence)
            await settle()
        return session


async def settle(rounds: int = 4) -> None:
    """Let store round trips (SQLite runs in a thread) and their callbacks finish."""
    from twisted.internet import reactor

    for _ in range(rounds):
        await task.deferLater(reactor, 0.002, lambda: None)


async def until(predicate: Any, timeout: float = 3.0) -> None:
    """Wait (on the real reactor) until C{predicate()} is true; fail after C{timeout} seconds."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await task.deferLater(reactor, 0.002, lambda: None)


