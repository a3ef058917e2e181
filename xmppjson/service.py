"""
Assembly of the whole server from a L{Config}: the store, the accounts, the IM core, and the two
listeners (the web Site with REST and the WebSocket /stream, and the XMPP c2s factory).

L{makeServer} builds everything without touching the network; starting the returned service
starts the store and the listeners.  Tests build the same objects on memory transports.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from xmppjson.accounts import Accounts
from xmppjson.config import Config
from xmppjson.im.server import IMServer
from xmppjson.storage import openStore


class StoreService(service.Service):
    """
    Opens the store when the server starts and closes it last.  The store keeps retrying on its
    own while the database is unreachable, so the listeners can start at once and answer
    "unavailable" until it is back.
    """

    name = "store"
    log = Logger()

    def __init__(self, store: Any):
        self.store = store

    def startService(self) -> None:
        super().startService()
        d = defer.maybeDeferred(self.store.start)
        d.addErrback(lambda f: self.log.failure("Store failed to start", f))

    def stopService(self) -> Any:
        super().stopService()
        return self.store.close()


class IMService(service.Service):
    """Ends every session cleanly (C{system-shutdown}) when the server stops."""

    name = "im"

    def __init__(self, im: IMServer):
        self.im = im

    def stopService(self) -> Any:
        super().stopService()
        return defer.ensureDeferred(self.im.shutdown())


class XmppJsonServer(service.MultiService):
    """
    The named top-level service, holding the parts for whoever needs them (tests, tools).
    """

    def __init__(self, config: Config, reactor: Any):
        super().__init__()
        self.setName("xmppjson")
        self.config = config
        self.reactor = reactor
        self.store = openStore(config.db, reactor)
        #: the L{xmppjson.cluster.ClusterNode} when C{config.cluster}, else C{None}
        self.cluster: Any = None
        router = None
        if config.cluster:
            # Imported only here: a single node loads nothing of the cluster.
            from xmppjson.cluster import ClusterNode

            self.cluster = ClusterNode(config, self.store, reactor)
            # The core reads the cluster-wide routing table and writes rosters through a
            # store that tells the other nodes.
            router = self.cluster.router
            self.store = self.cluster.store
        self.accounts = Accounts(config, self.store, reactor)
        self.im = IMServer(config, self.store, reactor, router)
        StoreService(self.store).setServiceParent(self)
        if self.cluster is not None:
            from xmppjson.cluster import ClusterService

            self.cluster.attach(self.im)
            # After the store and before the core: it stops after the core (whose sessions'
            # goodbyes it still sends) and before the store.
            ClusterService(self.cluster).setServiceParent(self)
        IMService(self.im).setServiceParent(self)

    log = Logger()

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop the parts one after the other, the last started first, each once the one before
        has finished: the listeners, then the core (which closes every session and writes what
        is pending), then the cluster (which sends the sessions' goodbyes), and the store last.
        L{service.MultiService} would stop them all at once, closing the store under writes
        still in flight.
        """
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stopInOrder())

    async def _stopInOrder(self) -> None:
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:  # noqa: BLE001 - one part failing to stop must not keep the rest running
                self.log.failure("Stopping {name} failed", name=child.name)

    def makeSite(self) -> Any:
        from xmppjson.web import makeSite

        return makeSite(self.config, self.accounts, self.im, self.reactor)

    def makeC2SFactory(self) -> Any:
        from xmppjson.c2s.stream import makeC2SFactory

        return makeC2SFactory(self.config, self.accounts, self.im, self.reactor)


class CollectorService(service.Service):
    """
    Tunes Python's cyclic garbage collector for a long-running server, for as long as the
    service runs (the process-wide setting is restored when it stops).

    domish elements point back at their parent, so a stanza the core builds (presence copies,
    errors, carbons) is freed by the collector (received stanzas are not: the doors hand the
    core trees without parent links, L{xmppjson.xmltext.StanzaParser}), and the archive keeps messages
    queued long enough to reach the older generations.  With the default thresholds (700, 10, 10) the
    collector ran often and walked the whole heap (every session, roster and cache) at each
    full collection: with the archive on, a chat load's p99 latency was 240-270 ms; with
    these thresholds and the startup objects frozen out of the collector's walks it was
    120-140 ms, and 8-25 % more messages per CPU-second (4 of 4 alternating rounds,
    docs/performance.md).  The young generation holds at most C{thresholds[0]} objects more
    before a collection: a few MB.

    C{XMPPJSON_GC=off} in the environment leaves the collector as Python sets it (for
    measuring the difference: C{bench/run.py} passes its environment to the server).
    """

    name = "collector"
    thresholds = (50_000, 50, 1_000)

    def __init__(self, reactor: Any):
        self.reactor = reactor
        self._saved: tuple[int, int, int] | None = None
        self._freeze: Any = None

    def startService(self) -> None:
        super().startService()
        if os.environ.get("XMPPJSON_GC", "").lower() == "off":
            return
        self._saved = gc.get_threshold()
        gc.set_threshold(*self.thresholds)
        # Once the reactor runs, what start-up built (modules, the service tree) is there for
        # good: keep it out of every later collection.
        self._freeze = self.reactor.callLater(0, gc.freeze)

    def stopService(self) -> None:
        super().stopService()
        if self._freeze is not None and self._freeze.active():
            self._freeze.cancel()
        self._freeze = None
        if self._saved is not None:
            gc.unfreeze()
            gc.set_threshold(*self._saved)
            self._saved = None


def makeServer(config: Config, reactor: Any) -> XmppJsonServer:
    """
    Build the server for C{config}: a L{service.MultiService} named C{xmppjson}.
    """
    server = XmppJsonServer(config, reactor)
    web = internet.StreamServerEndpointService(
        endpoints.serverFromString(reactor, config.web), server.makeSite()
    )
    web.setName("web")
    web.setServiceParent(server)
    c2s = internet.StreamServerEndpointService(
        endpoints.serverFromString(reactor, config.c2s), server.makeC2SFactory()
    )
    c2s.setName("c2s")
    c2s.setServiceParent(server)
    return server
