"""
Helpers shared by the test modules.

Time in tests is always a L{twisted.internet.task.Clock}.  The one use of the real reactor is to
drive the embedded store's thread pool (SQLite runs in a worker thread) and to wait for it: the
reactor is passed explicitly (L{realReactor}), never picked up by the code under test.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any

from twisted.internet import task
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from xmppjson.config import Config

#: The XMPP domain of test servers.
DOMAIN = "localhost"

#: Far fewer PBKDF2 iterations than production, so tests stay fast.  Tests that check the
#: derivation itself set their own count.
TEST_ITERATIONS = 64


def realReactor() -> Any:
    """
    The running reactor, for what genuinely needs one: the store's thread pool, real sockets
    in end-to-end tests, and waiting for either.
    """
    from twisted.internet import reactor

    return reactor


def makeConfig(**overrides: Any) -> Config:
    """A L{Config} for tests: the test domain, cheap SCRAM, and any C{overrides}."""
    settings: dict[str, Any] = {"domain": DOMAIN, "scramIterations": TEST_ITERATIONS}
    settings.update(overrides)
    return Config(**settings)


def makeStore(url: str = "sqlite::memory:") -> Any:
    """
    Build (not start) a store on the real reactor's thread pool, with a L{task.Clock} for its
    reconnection schedule so that nothing is left pending after a test.
    """
    from xmppjson.storage.sqlite import SQLiteStore

    if not url.startswith("sqlite:"):
        from xmppjson.storage import openStore

        return openStore(url, realReactor())
    return SQLiteStore(url[len("sqlite:"):], reactor=realReactor(), clock=task.Clock())


async def startedStore(testCase: unittest.TestCase, url: str = "sqlite::memory:") -> Any:
    """A started store for C{url}, closed when C{testCase} ends."""
    store = makeStore(url)
    testCase.addCleanup(store.close)
    await store.start()
    return store


async def sleep(seconds: float) -> None:
    """Let the real reactor run (store threads, sockets) for C{seconds}."""
    await task.deferLater(realReactor(), seconds, lambda: None)


@dataclass
class HTTPResponse:
    """A fully read HTTP response."""

    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        return jsonlib.loads(self.body.decode("utf-8"))


class RestClient:
    """
    Requests against an in-memory resource tree with L{treq.testing.StubTreq}.  Handlers answer
    asynchronously (the store runs in a thread), so each request pumps the in-memory connection
    until the response is complete.  Redirects are not followed: tests see each answer.

    @ivar stub: the L{StubTreq}.
    """

    #: Give up on a response after this many seconds of real time.
    timeout = 10.0

    def __init__(self, resource: Any, base: str = "http://xmppjson.test"):
        from treq.testing import StubTreq

        self.stub = StubTreq(resource)
        self.base = base

    async def _settle(self, d: Any) -> Any:
        # d.called is not enough: a Deferred waiting on an inner one is "called" but has no
        # result yet.
        results: list[Any] = []
        d.addBoth(lambda result: results.append(result))
        waited = 0.0
        while True:
            self.stub.flush()
            if results:
                result = results[0]
                if isinstance(result, Failure):
                    result.raiseException()
                return result
            if waited > self.timeout:
                raise AssertionError("no response from the server")
            await sleep(0.002)
            waited += 0.002

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> HTTPResponse:
        """
        Send one request.

        @param json: a body to send as C{application/json}.
        @param data: a raw body (sent with the given C{headers} only).
        @param token: sent as C{Authorization: Bearer}.
        """
        sendHeaders = dict(headers or {})
        if json is not None:
            data = jsonlib.dumps(json).encode("utf-8")
            sendHeaders.setdefault("Content-Type", "application/json")
        if token is not None:
            sendHeaders["Authorization"] = f"Bearer {token}"
        response = await self._settle(
            self.stub.request(method, self.base + path, data=data, headers=sendHeaders,
                              allow_redirects=False)
        )
        body = await self._settle(self.stub.content(response))
        return HTTPResponse(response.code, response.headers, body)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)


@dataclass
class LoopbackC2S:
    """The XMPP door of L{startLoopbackC2S}: its parts, and the port it listens on."""

    config: Config
    store: Any
    accounts: Any
    im: Any
    factory: Any
    port: int


async def startLoopbackC2S(
    testCase: unittest.TestCase, directTLS: bool = False, **configArgs: Any
) -> LoopbackC2S:
    """
    The c2s door on 127.0.0.1 (a free port), on a fresh SQLite file and the real reactor, with
    users C{alice} (C{wonderland1}) and C{bob} (C{builder123}); stopped at the test's cleanup.
    For the end-to-end tests that run real clients in another process.
    """
    import os

    from twisted.internet import endpoints

    from xmppjson.accounts import Accounts
    from xmppjson.c2s.stream import makeC2SFactory
    from xmppjson.im.server import IMServer
    from xmppjson.storage import openStore

    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    config = Config(domain=DOMAIN, db=f"sqlite:{os.path.join(directory, 'xmppjson.sqlite3')}",
                    **configArgs)
    reactor = realReactor()
    store = openStore(config.db, reactor)
    await store.start()
    accounts = Accounts(config, store, reactor)
    im = IMServer(config, store, reactor)
    factory = makeC2SFactory(config, accounts, im, reactor)
    endpoint = "tcp:0:interface=127.0.0.1"
    if directTLS:
        assert factory.tls is not None
        endpoint = f"ssl:0:interface=127.0.0.1:privateKey={factory.tls.certificatePath}"
    listening = await endpoints.serverFromString(reactor, endpoint).listen(factory)

    async def stop() -> None:
        await listening.stopListening()
        for stream in list(factory.streams):
            stream.transport.abortConnection()
        await im.shutdown()
        # Let the aborted connections report their loss before the store goes away.
        await task.deferLater(reactor, 0.05, lambda: None)
        await store.close()

    testCase.addCleanup(stop)
    await accounts.register("alice", "wonderland1")
    await accounts.register("bob", "builder123")
    return LoopbackC2S(config, store, accounts, im, factory, listening.getHost().port)


async def runJSONScript(
    testCase: unittest.TestCase, script: str, *args: str
) -> tuple[dict[str, Any], str]:
    """
    Run a client script (C{tests/slixmpp_*.py}) with this interpreter and read the JSON object
    it prints last; fail the test when there is none.  Returns it and the end of its stderr.
    """
    import os
    import sys

    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(
        sys.executable, [script, *args], env=dict(os.environ), reactor=realReactor()
    )
    try:
        result: dict[str, Any] = jsonlib.loads(out.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError):
        testCase.fail(f"client printed no JSON (exit {code}):\n{out!r}\n{err.decode()[-3000:]}")
    return result, err.decode("utf-8", "replace")[-3000:]


def parentLinks(element: Any) -> list[Any]:
    """The C{parent} of every element below C{element} (what a door must leave C{None})."""
    found = []
    stack = [element]
    while stack:
        for child in stack.pop().elements():
            found.append(child.parent)
            stack.append(child)
    return found


def child(element: Any, name: str) -> Any:
    """
    The first child element of C{element} named C{name}, or C{None}: what domish's
    C{element.name} lookup finds, which the server's own elements do not have
    (L{xmppjson.xmltext.Element}).
    """
    for node in element.elements():
        if node.name == name:
            return node
    return None
