"""
Clustering: several xmppjson nodes behind any TCP/HTTP load balancer, sharing one PostgreSQL
database that is both their shared state and their message bus (C{docs/clustering.md}).

There is no cluster protocol of our own between the nodes: each node holds two connections of
its own to the database, one that C{LISTEN}s and one that writes and C{NOTIFY}s.

 - B{The routing table.}  L{ClusterRouter} is the core's L{Router} plus a replica of every other
   node's sessions, each a L{RemoteSession} whose C{deliver} sends the stanza to the node that
   holds the real session.  The IM core therefore applies RFC 6121 cluster-wide without knowing
   it: bare-JID messages go to the highest priority on any node, presence reaches contacts on
   every node, probes are answered from the replica, subscription and roster pushes reach
   every session, and a message for a user who is on no node is stored offline.
 - B{Sessions.}  Every local session is a row of C{cluster_sessions} (full JID, node, priority,
   presence, flags).  Each change is written and announced on the shared channel in the same
   statement (C{WITH w AS (INSERT/UPDATE/DELETE ... RETURNING) SELECT pg_notify(...) FROM w}),
   so the database orders the changes of one full JID and every node sees them in that order.
   A node starting up C{LISTEN}s first, then reads the table, then applies what it heard
   meanwhile.
 - B{Stanzas.}  A stanza for a remote session is a record on the owning node's channel,
   C{<prefix>.<node>}.  Records are packed into notifications of at most L{PAYLOAD_LIMIT} bytes
   and sent in one statement per reactor turn (one flush in flight at a time, so batches grow
   with the load).  A payload bigger than NOTIFY allows goes through C{cluster_stanzas}, the
   notification carrying its id.  PostgreSQL delivers notifications in commit order, so the
   stanzas from one node to another keep their order.
 - B{Never lost silently.}  A message that would be stored offline (chat or normal, with a body)
   stays in the sender's memory until the receiving node acknowledges it.  If the receiving
   node dies (or restarts) first, the sender routes it again, after the dead node's sessions
   have left the replica: to another session of the user or to offline storage.
 - B{Resource conflicts.}  A new session takes its full JID's row over whatever node held it;
   when the holder sees the takeover it closes its own session with C{conflict}.
 - B{Failure.}  Every node updates its C{cluster_nodes} row every C{clusterHeartbeat} seconds.
   A node whose row is older than C{clusterTimeout} is declared dead by the first survivor to
   delete it (the delete is the election); that survivor announces the death, and whichever
   survivor then deletes the dead node's session rows tells their contacts they are
   unavailable, once.  A node that cannot reach the database for longer than the timeout, or
   finds itself declared dead, closes its sessions (their clients reconnect, through the load
   balancer, to a healthy node) and joins again as a new incarnation.  A restarted node first
   deletes the rows its previous incarnation left and says those sessions are gone.

Nothing here runs unless C{Config.cluster} is set: a single node keeps the plain L{Router}.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ConnectionClosed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from xmppjson.config import Config
from xmppjson.im.stanzas import NS_CLIENT, errorReply, hasBody, parseJID
from xmppjson.router import Router
from xmppjson.session import Session
from xmppjson.storage.pgsql import _DEFAULT_PARAMETERS, _Connection
from xmppjson.xmltext import StanzaParser, serialize

#: The largest NOTIFY payload we send, in bytes: PostgreSQL's limit is 8000, and the JSON array
#: around the records needs a little room.
PAYLOAD_LIMIT = 7800
#: The most queued operations one flush sends, so that one statement stays reasonably sized.
FLUSH_OPS = 2000
#: Seconds between two acknowledgements to a node that sent us messages.
ACK_DELAY = 0.05
#: Messages kept per destination node until acknowledged; beyond that the oldest are routed
#: again at once (a node that does not acknowledge this many is as good as dead).
UNACKED_LIMIT = 100_000
#: Oversized payloads left in cluster_stanzas (for the shared channel, or never read) are
#: deleted after this many seconds.
STANZA_TTL = 300

NODE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
CHANNEL_PREFIX = re.compile(r"^[A-Za-z0-9_]{1,16}$")

# Node states.
IDLE = "idle"
JOINING = "joining"
LIVE = "live"
RESETTING = "resetting"  # lost the database or declared dead: closing everything, then joining
STOPPED = "stopped"

_dumps = json.dumps

# ---------------------------------------------------------------------------------- SQL

_SESSION_COLUMNS = "jid, node, serial, priority, presence, receives, interested"

_TAKEOVER = (
    "INSERT INTO cluster_sessions (jid, node, serial, priority, presence, receives, interested,"
    " updated) VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
    " ON CONFLICT (jid) DO UPDATE SET node = EXCLUDED.node, serial = EXCLUDED.serial,"
    " priority = EXCLUDED.priority, presence = EXCLUDED.presence, receives = EXCLUDED.receives,"
    " interested = EXCLUDED.interested, updated = now()"
    " RETURNING 1"
)
# An update or a delete applies only while the row is still this session's: once another node
# took the full JID over, the stale session's changes must not reach anyone.
_UPDATE = (
    "UPDATE cluster_sessions SET priority = %s, presence = %s, receives = %s, interested = %s,"
    " updated = now() WHERE jid = %s AND node = %s AND serial = %s RETURNING 1"
)
_DELETE = "DELETE FROM cluster_sessions WHERE jid = %s AND node = %s AND serial = %s RETURNING 1"

_REGISTER = (
    "INSERT INTO cluster_nodes (node, epoch, started, last_seen) VALUES (%s, %s, now(), now())"
    " ON CONFLICT (node) DO UPDATE SET epoch = EXCLUDED.epoch, started = now(), last_seen = now()"
    " RETURNING 1"
)
_SNAPSHOT = (
    "SELECT 'n', node, epoch, NULL::bigint, NULL::integer, NULL::text, NULL::boolean,"
    " NULL::boolean FROM cluster_nodes"
    " UNION ALL SELECT 's', jid, node, serial, priority, presence, receives, interested"
    " FROM cluster_sessions"
)
_HEARTBEAT = (
    "UPDATE cluster_nodes SET last_seen = now() WHERE node = %s AND epoch = %s RETURNING 1"
)
# Deleting the row is the election: exactly one survivor gets it back, and announces the death.
_CLAIM_DEAD = (
    "WITH dead AS (DELETE FROM cluster_nodes WHERE node <> %s"
    " AND last_seen < now() - %s * interval '1 second' RETURNING node, epoch)"
    " SELECT node, epoch, pg_notify(%s, json_build_array(%s::text, %s::text,"
    " json_build_array('X', node, epoch))::text) FROM dead"
)
# Sessions whose node is gone (declared dead, or a node that wrote after being declared dead):
# whoever deletes them tells their contacts.
_CLAIM_ORPHANS = (
    f"WITH gone AS (DELETE FROM cluster_sessions WHERE node NOT IN (SELECT node FROM cluster_nodes)"
    f" RETURNING {_SESSION_COLUMNS}) SELECT {_SESSION_COLUMNS},"
    " pg_notify(%s, json_build_array(%s::text, %s::text,"
    " json_build_array('D', node, serial, jid))::text) FROM gone"
)
_OWN_LEFTOVERS = f"DELETE FROM cluster_sessions WHERE node = %s RETURNING {_SESSION_COLUMNS}"
_LEAVE = "DELETE FROM cluster_nodes WHERE node = %s AND epoch = %s RETURNING 1"
_COLLECT = "DELETE FROM cluster_stanzas WHERE created < now() - %s * interval '1 second'"


def _notifyAfter(cte: str, channel: str, payload: str) -> tuple[str, list[Any]]:
    """
    One statement that runs C{cte} (a data-modifying statement ending in C{RETURNING}) and, if
    it changed a row, notifies C{payload} on C{channel}: the change and its announcement commit
    together or not at all.
    """
    if len(payload.encode("utf-8")) <= PAYLOAD_LIMIT:
        return f"WITH w AS ({cte}) SELECT pg_notify(%s, %s) FROM w", [channel, payload]
    return (
        (
            f"WITH w AS ({cte}), s AS (INSERT INTO cluster_stanzas (channel, created, payload)"
            " SELECT %s, now(), %s FROM w LIMIT 1 RETURNING id)"
            " SELECT pg_notify(%s, '#' || id) FROM s"
        ),
        [channel, payload, channel],
    )


def defaultNodeName() -> str:
    """The host name, reduced to the characters a node name may hold."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40].strip("-")
    return name or "node"


# ---------------------------------------------------------------------------------- sessions


class RemoteSession(Session):
    """
    A session held by another node, as this node's router sees it: the core reads its presence,
    priority and flags (kept current by that node's announcements) and calls L{deliver} and
    L{close}, which travel to that node.

    @ivar node: the name of the node holding the session.
    @ivar serial: that node's number for the session (a later session with the same full JID
        on the same node has another).
    """

    door = "remote"

    def __init__(self, jid: JID, node: str, serial: int, cluster: ClusterNode):
        super().__init__(jid)
        self.node = node
        self.serial = serial
        self.cluster = cluster
        self.channel = cluster.channelOf(node)

    def deliver(self, element: domish.Element) -> None:
        if not self.active:
            # Gone from the replica since the core looked it up: as a door does with a closed
            # session, hand the stanza back (a message is routed again).
            im = self.cluster.im
            if im is not None:
                im.undeliverable(self, element)
            return
        self.cluster.forward(self, element)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        self.cluster.closeRemote(self, condition, text)

    def __repr__(self) -> str:
        return f"<RemoteSession {self.full} on {self.node}>"


class ClusterRouter(Router):
    """
    The routing table of one node of a cluster: this node's sessions and a replica of the other
    nodes' (L{RemoteSession}s) in the same table, so that every lookup of L{Router} answers for
    the whole cluster at the cost of a single node's lookup.

    Differences from L{Router} (see its module docstring): L{hasSessions}, iteration and
    C{len()} count this node's sessions only; adding, removing and L{changed} announce the local
    session's state to the other nodes; L{ready} is false until the node has joined.

    @ivar local: this node's sessions by full JID.
    @ivar remote: the replica, by full JID.
    """

    replicated = True

    def __init__(self, cluster: ClusterNode):
        super().__init__()
        self.cluster = cluster
        self.local: dict[str, Session] = {}
        self.remote: dict[str, RemoteSession] = {}
        self._localBare: dict[str, int] = {}

    @property
    def ready(self) -> bool:  # type: ignore[override]
        return self.cluster.state == LIVE

    # local sessions -------------------------------------------------------------

    def add(self, session: Session) -> Session | None:
        previous = self._put(session)
        full = session.full
        if previous is not None and not isinstance(previous, RemoteSession):
            self.cluster.forget(previous)
        else:
            self._localBare[session.bare] = self._localBare.get(session.bare, 0) + 1
        if isinstance(previous, RemoteSession):
            del self.remote[full]
            previous.active = False
            # The node that holds it says it is unavailable when it closes it (on our
            # takeover): the core must not say so a second time from here.
            previous.presence = None
            previous.directedTo.clear()
        self.local[full] = session
        self.cluster.sessionAdded(session)
        return previous

    def remove(self, session: Session) -> bool:
        if isinstance(session, RemoteSession) or self.local.get(session.full) is not session:
            return False
        super().remove(session)
        del self.local[session.full]
        self._dropLocalBare(session.bare)
        self.cluster.sessionRemoved(session)
        return True

    def changed(self, session: Session) -> None:
        self.cluster.sessionChanged(session)

    def hasSessions(self, bare: str) -> bool:
        return bare in self._localBare

    def __iter__(self) -> Iterator[Session]:
        yield from list(self.local.values())

    def __len__(self) -> int:
        return len(self.local)

    # the replica ------------------------------------------------------------------

    def putRemote(self, proxy: RemoteSession) -> None:
        """Add or replace the replica of a remote session (never over a local session)."""
        previous = self._put(proxy)
        if isinstance(previous, RemoteSession):
            previous.active = False
        self.remote[proxy.full] = proxy

    def dropRemote(self, proxy: RemoteSession) -> None:
        """Remove a remote session from the replica, if it is still there."""
        if self.remote.get(proxy.full) is proxy:
            del self.remote[proxy.full]
            Router.remove(self, proxy)
        proxy.active = False

    def _put(self, session: Session) -> Session | None:
        resources = self._byBare.setdefault(session.bare, {})
        previous = resources.get(session.resource)
        resources[session.resource] = session
        return previous if previous is not session else None

    def _dropLocalBare(self, bare: str) -> None:
        count = self._localBare.get(bare, 0) - 1
        if count > 0:
            self._localBare[bare] = count
        else:
            self._localBare.pop(bare, None)


# ---------------------------------------------------------------------------------- plumbing


class _StanzaReader:
    """
    Parses serialised stanzas with one long-lived expat parser (a fresh parser per stanza would
    cost more than the rest of receiving it).
    """

    log = Logger()

    def __init__(self) -> None:
        self._got: list[domish.Element] = []
        self._open()

    def _open(self) -> None:
        stream = StanzaParser()
        stream.DocumentStartEvent = lambda root: None
        stream.ElementEvent = self._got.append
        stream.DocumentEndEvent = lambda: None
        stream.parse(f"<s xmlns='{NS_CLIENT}'>".encode())
        self._stream = stream

    def parse(self, texts: list[str]) -> list[domish.Element]:
        """The stanzas serialised in C{texts}, in order, one element per text."""
        try:
            self._stream.parse("".join(texts).encode("utf-8"))
        except Exception:
            del self._got[:]
            self._open()
            raise
        got = self._got[:]
        del self._got[:]
        if len(got) != len(texts):
            raise ValueError(f"expected {len(texts)} stanzas, parsed {len(got)}")
        return got


class _BusConnection(_Connection):
    """
    A txpostgres connection that hands NOTIFY events to C{onNotify} synchronously and in order
    (txpostgres dispatches them through the global cooperator, one per iteration).
    """

    onNotify: Callable[[str, str], None] | None = None

    def checkForNotifies(self) -> None:
        connection = self._connection
        if connection is None or not connection.notifies:
            return
        notifies = connection.notifies[:]
        del connection.notifies[:]
        callback = self.onNotify
        if callback is None:
            return
        for notify in notifies:
            callback(notify.channel, notify.payload)


class ClusterStore:
    """
    The store as the core of a cluster node sees it: every method is the real store's, and
    each roster write is announced, so that the nodes that cache that roster (because the user
    has sessions there) read it again.  Everything else passes through untouched.
    """

    def __init__(self, store: Any, cluster: ClusterNode):
        self._store = store
        self._cluster = cluster

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def setRosterItem(self, localpart: str, item: Any) -> defer.Deferred[Any]:
        d = self._store.setRosterItem(localpart, item)
        d.addCallback(self._written, localpart)
        return d

    def removeRosterItem(self, localpart: str, contact: str) -> defer.Deferred[Any]:
        d = self._store.removeRosterItem(localpart, contact)
        d.addCallback(self._written, localpart)
        return d

    def _written(self, result: Any, localpart: str) -> Any:
        self._cluster.rosterChanged(localpart)
        return result


# ---------------------------------------------------------------------------------- the node


class ClusterNode:
    """
    One node's membership of the cluster: its router, its two database connections, the
    announcements of its sessions, the delivery of stanzas to and from the other nodes, the
    heartbeat, and the clean-up after dead nodes.  See the module docstring.

    @ivar name: this node's name (C{Config.nodeName}).
    @ivar epoch: this incarnation's random id; a node that restarts gets a new one.
    @ivar state: L{IDLE}, L{JOINING}, L{LIVE}, L{RESETTING} or L{STOPPED}.
    @ivar router: the L{ClusterRouter} to give the core.
    @ivar store: the store to give the core (L{ClusterStore}).
    @ivar im: the L{xmppjson.im.server.IMServer}, once L{attach}ed.
    @ivar nodes: the other live nodes this node knows, name -> epoch.
    """

    log = Logger()

    def __init__(self, config: Config, store: Any, reactor: Any):
        if not config.db.startswith(("postgresql://", "postgres://")):
            raise ValueError("a cluster needs a postgresql:// database shared by its nodes")
        name = config.nodeName or defaultNodeName()
        if not NODE_NAME.match(name):
            raise ValueError(f"node name {name!r}: 1 to 40 letters, digits, '-' or '_'")
        if not CHANNEL_PREFIX.match(config.clusterChannel):
            raise ValueError(f"cluster channel {config.clusterChannel!r}: 1 to 16 letters, digits or '_'")
        if not 0 < config.clusterHeartbeat < config.clusterTimeout:
            raise ValueError("the cluster heartbeat must be positive and shorter than the timeout")
        self.config = config
        self.reactor = reactor
        self.name = name
        self.heartbeat = config.clusterHeartbeat
        self.timeout = config.clusterTimeout
        self.shared = config.clusterChannel
        self.mine = self.channelOf(name)
        self.epoch = ""
        self.state = IDLE
        self.realStore = store
        self.store = ClusterStore(store, self)
        self.router = ClusterRouter(self)
        self.im: Any = None
        self.nodes: dict[str, str] = {}
        self._parameters = {**_DEFAULT_PARAMETERS, **psycopg2.extensions.parse_dsn(config.db)}
        self._reader = _StanzaReader()
        self._listener: _BusConnection | None = None
        self._publisher: _BusConnection | None = None
        # outbound: ("n", channel, record) packed into notifications, ("q", sql, params)
        self._outbox: list[tuple[str, str, Any]] = []
        self._flushing = False
        self._flushCall: Any = None
        self._idle: list[defer.Deferred[None]] = []
        # inbound: (channel, payload) in arrival order, handled one at a time; "holds" pause
        # it while something it needs is read from the database
        self._inbox: deque[tuple[str, str]] = deque()
        self._holds = 0
        self._draining = False
        # deliveries
        self._seqTo: dict[str, int] = {}
        self._unacked: dict[str, deque[tuple[int, str, domish.Element]]] = {}
        self._seen: dict[str, tuple[str, int]] = {}
        self._ackDue: set[str] = set()
        self._ackCall: Any = None
        # local sessions: session -> [serial, presence, priority, receives, interested, confirmed]
        self._serial = 0
        self._announced: dict[Session, list[Any]] = {}
        # heartbeat
        self._tickCall: Any = None
        self._beating = False
        self._lastBeat = 0.0
        self._ticks = 0
        self._joinCall: Any = None
        self._liveWaiters: list[defer.Deferred[None]] = []
        self.stats = {"sent": 0, "received": 0, "notifies": 0, "flushes": 0, "rerouted": 0}

    def channelOf(self, node: str) -> str:
        """The NOTIFY channel of a node."""
        return f"{self.config.clusterChannel}.{node}"

    def attach(self, im: Any) -> None:
        """Give the node the core it serves (built with L{router} and L{store})."""
        self.im = im

    def whenLive(self) -> defer.Deferred[None]:
        """Fires once the node is live (at once if it is)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.state == LIVE:
            d.callback(None)
        else:
            self._liveWaiters.append(d)
        return d

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Join the cluster (in the background, retrying until the database answers)."""
        if self.state != IDLE:
            return
        self.state = JOINING
        self._tickCall = self.reactor.callLater(self.heartbeat, self._tick)
        self._attemptJoin()

    def _attemptJoin(self) -> None:
        self._joinCall = None
        d = defer.Deferred.fromCoroutine(self._join())
        d.addErrback(self._joinFailed)

    def _joinFailed(self, failure: Failure) -> None:
        self._closeConnections()
        if self.state != JOINING:
            return
        self.log.warn(  # noqa: G010 -- twisted.logger's name for it
            "Node {node} could not join the cluster ({why}); retrying",
            node=self.name, why=failure.getErrorMessage(),
        )
        if not failure.check(psycopg2.Error, ConnectionError, OSError):
            self.log.failure("Joining failed", failure)
        self._joinCall = self.reactor.callLater(self.heartbeat, self._attemptJoin)

    async def _join(self) -> None:
        await self.realStore.start()  # the schema, with the cluster tables, is current
        if self.state != JOINING:
            return
        self.epoch = os.urandom(6).hex()
        self._holds += 1  # hold what we hear until the snapshot is applied
        try:
            self._listener = await self._connect(self._onNotify)
            self._publisher = await self._connect(None)
            await self._listener.runOperation(f'LISTEN "{self.shared}"; LISTEN "{self.mine}"')
            leftovers = await self._publisher.runQuery(_OWN_LEFTOVERS, (self.name,))
            sql, params = _notifyAfter(_REGISTER, self.shared, self._payload(["N", self.name, self.epoch]))
            await self._publisher.runQuery(sql, [self.name, self.epoch, *params])
            rows = await self._publisher.runQuery(_SNAPSHOT)
            if self.state != JOINING:
                return
            self._loadSnapshot(rows)
        except BaseException:
            self._holds -= 1
            self._inbox.clear()
            raise
        self._lastBeat = self.reactor.seconds()
        self.state = LIVE
        self._holds -= 1
        self._drain()
        self.log.info(
            "Node {node} joined the cluster (epoch {epoch}; {n} other nodes, {s} remote sessions)",
            node=self.name, epoch=self.epoch, n=len(self.nodes), s=len(self.router.remote),
        )
        waiters, self._liveWaiters = self._liveWaiters, []
        for waiter in waiters:
            waiter.callback(None)
        if leftovers:
            # Our previous incarnation's sessions: their clients are gone with it.
            await self._sessionsEnded(leftovers)

    async def _connect(self, onNotify: Callable[[str, str], None] | None) -> _BusConnection:
        connection = _BusConnection(self.reactor)
        connection.onNotify = onNotify
        connection.onLost = self._connectionLost
        timer = self.reactor.callLater(10.0, connection.close)
        try:
            await connection.connect(**self._parameters)
        finally:
            if timer.active():
                timer.cancel()
        return connection

    def _loadSnapshot(self, rows: list[tuple[Any, ...]]) -> None:
        self.nodes = {row[1]: row[2] for row in rows if row[0] == "n" and row[1] != self.name}
        for row in rows:
            if row[0] == "s" and row[2] in self.nodes:
                self._applySession(row[2], row[3], row[4], row[5], row[6], row[7], full=row[1])

    def stop(self) -> defer.Deferred[None]:
        """Leave the cluster cleanly: send what is queued, then delete this node's rows."""
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        wasLive = self.state == LIVE
        if wasLive:
            # Acknowledge what we received, or the senders would route it again once we left.
            self._sendAcks()
        self.state = STOPPED
        self._cancelTimers()
        if wasLive and self._publisher is not None:
            try:
                await self._whenFlushed(5.0)
                await self._publisher.runQuery(_OWN_LEFTOVERS, (self.name,))
                sql, params = _notifyAfter(_LEAVE, self.shared, self._payload(["X", self.name, self.epoch]))
                await self._publisher.runQuery(sql, [self.name, self.epoch, *params])
            except Exception:  # noqa: BLE001 - logged; the cluster carries on
                self.log.failure("Node {node} could not leave the cluster cleanly", node=self.name)
        self._closeConnections()

    def crash(self) -> None:
        """
        Stop at once, as a killed process would: no goodbye, no clean-up, nothing more sent.
        For tests and drills: the other nodes must notice by the missing heartbeat.
        """
        self.state = STOPPED
        self._cancelTimers()
        self._outbox.clear()
        self._closeConnections()

    def _cancelTimers(self) -> None:
        for call in (self._tickCall, self._flushCall, self._ackCall, self._joinCall):
            if call is not None and call.active():
                call.cancel()
        self._tickCall = self._flushCall = self._ackCall = self._joinCall = None

    def _closeConnections(self) -> None:
        for connection in (self._listener, self._publisher):
            if connection is None:
                continue
            connection.onLost = None
            connection.onNotify = None
            if connection.pollable() is not None and not connection.pollable().closed:
                try:
                    connection.close()
                except psycopg2.Error:
                    pass  # already broken: closing is all we wanted
        self._listener = self._publisher = None
        self._flushing = False

    def _connectionLost(self, why: str) -> None:
        if self.state == LIVE:
            self._reset(f"lost the database ({why})")

    def _reset(self, why: str) -> None:
        """
        This node can no longer tell what the others see (its connections broke, or they
        declared it dead): close every local session, forget the replica, route again what was
        not acknowledged, and join again as a new incarnation.
        """
        if self.state != LIVE:
            return
        self.log.warn(  # noqa: G010 -- twisted.logger's name for it
            "Node {node} resets its cluster membership: {why}", node=self.name, why=why
        )
        self.state = RESETTING
        self._closeConnections()
        self._outbox.clear()
        self._inbox.clear()
        im = self.im
        for session in list(self.router.local.values()):
            self._announced.pop(session, None)
            if im is not None:
                im.closeSession(session)
            try:
                session.close("system-shutdown", "this server lost its cluster; please reconnect")
            except Exception:  # noqa: BLE001 - logged; the cluster carries on
                self.log.failure("Closing {s} failed", s=session)
        for node in list(self.nodes):
            self._nodeGone(node, self.nodes[node])
        for proxy in list(self.router.remote.values()):
            self.router.dropRemote(proxy)
        self._seen.clear()
        self._ackDue.clear()
        self.state = JOINING
        self._joinCall = self.reactor.callLater(self.heartbeat, self._attemptJoin)

    # ---------------------------------------------------------------- heartbeat

    def _tick(self) -> None:
        self._tickCall = self.reactor.callLater(self.heartbeat, self._tick)
        if self.state != LIVE:
            return
        if self.reactor.seconds() - self._lastBeat > self.timeout:
            self._reset(f"no heartbeat reached the database for {self.timeout:g} seconds")
            return
        if self._beating:
            return
        self._beating = True
        d = defer.Deferred.fromCoroutine(self._beat())
        d.addErrback(self._beatFailed)
        d.addBoth(self._beaten)

    def _beaten(self, _: object) -> None:
        self._beating = False

    def _beatFailed(self, failure: Failure) -> None:
        if self.state == LIVE:
            self.log.warn(  # noqa: G010 -- twisted.logger's name for it
                "Node {node}: heartbeat failed: {why}", node=self.name, why=failure.getErrorMessage()
            )

    async def _beat(self) -> None:
        publisher, epoch = self._publisher, self.epoch
        if publisher is None:
            return
        if not await publisher.runQuery(_HEARTBEAT, (self.name, epoch)):
            if self.state == LIVE and epoch == self.epoch:
                self._reset("the other nodes declared this node dead")
            return
        self._lastBeat = self.reactor.seconds()
        dead = await publisher.runQuery(
            _CLAIM_DEAD, (self.name, self.timeout, self.shared, self.name, epoch)
        )
        for node, nodeEpoch, _ in dead:
            self.log.warn(  # noqa: G010 -- twisted.logger's name for it
                "Node {node} declares node {dead} dead (no heartbeat for {t:g} s)",
                node=self.name, dead=node, t=self.timeout,
            )
            self._nodeGone(node, nodeEpoch)
        orphans = await publisher.runQuery(_CLAIM_ORPHANS, (self.shared, self.name, epoch))
        if orphans and self.state == LIVE:
            await self._sessionsEnded([row[:7] for row in orphans])
        self._ticks += 1
        if self._ticks % 30 == 0:
            await publisher.runOperation(_COLLECT, (STANZA_TTL,))

    # ---------------------------------------------------------------- local sessions

    def sessionAdded(self, session: Session) -> None:
        """A local session took its full JID (over any node that held it)."""
        self._serial += 1
        entry = [self._serial, session.presence, session.priority, session.receivesMessages,
                 session.interested, False]
        self._announced[session] = entry
        self._announce(_TAKEOVER, session, entry, takeover=True)

    def sessionChanged(self, session: Session) -> None:
        entry = self._announced.get(session)
        if entry is None:
            return
        if (
            entry[1] is session.presence
            and entry[2] == session.priority
            and entry[3] == session.receivesMessages
            and entry[4] == session.interested
        ):
            return
        entry[1:5] = [session.presence, session.priority, session.receivesMessages, session.interested]
        self._announce(_UPDATE, session, entry)

    def sessionRemoved(self, session: Session) -> None:
        entry = self._announced.pop(session, None)
        if entry is None:
            return
        record = ["D", self.name, entry[0], session.full]
        sql, params = _notifyAfter(_DELETE, self.shared, self._payload(record))
        self._queue("q", sql, [session.full, self.name, entry[0], *params])

    def forget(self, session: Session) -> None:
        """A local session replaced by another local one: the newer one's row replaced its row."""
        self._announced.pop(session, None)

    def _announce(self, cte: str, session: Session, entry: list[Any], takeover: bool = False) -> None:
        serial, presence, priority, receives, interested = entry[:5]
        xml = serialize(presence) if presence is not None else None
        record = ["S", serial, session.full, priority, xml, receives, interested]
        sql, params = _notifyAfter(cte, self.shared, self._payload(record))
        if takeover:
            head = [session.full, self.name, serial, priority, xml, receives, interested]
        else:
            head = [priority, xml, receives, interested, session.full, self.name, serial]
        self._queue("q", sql, head + params)

    def rosterChanged(self, localpart: str) -> None:
        """This node wrote a roster: the nodes caching it read it again."""
        if self.state == LIVE:
            self._queue("n", self.shared, _dumps(["R", localpart]))

    # ---------------------------------------------------------------- stanzas out

    def forward(self, proxy: RemoteSession, element: domish.Element) -> None:
        """Send a stanza to the node holding C{proxy}'s real session."""
        if self.state != LIVE:
            # Stopping, crashed or resetting: the reset drops the replica and closes the local
            # sessions, so nothing here can still be waited for.
            return
        node = proxy.node
        seq = self._seqTo.get(node, 0) + 1
        self._seqTo[node] = seq
        if element.name == "message" and element.getAttribute("type", "normal") in ("chat", "normal") and hasBody(element):
            pending = self._unacked.get(node)
            if pending is None:
                pending = self._unacked[node] = deque()
            pending.append((seq, proxy.full, element))
            if len(pending) > UNACKED_LIMIT:
                self._reroute([pending.popleft()])
        self.stats["sent"] += 1
        self._queue("n", proxy.channel, f'["M",{seq},{_dumps(proxy.full)},{_dumps(serialize(element))}]')

    def closeRemote(self, proxy: RemoteSession, condition: str | None, text: str | None) -> None:
        """Ask the node holding C{proxy}'s session to close it."""
        if self.state == LIVE:
            self._queue("n", proxy.channel, _dumps(["K", proxy.full, proxy.serial, condition, text]))

    def _payload(self, record: list[Any]) -> str:
        return _dumps([self.name, self.epoch, record])

    def _queue(self, kind: str, a: str, b: Any) -> None:
        if self.state != LIVE:
            return
        self._outbox.append((kind, a, b))
        if self._flushCall is None and not self._flushing:
            self._flushCall = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flushCall = None
        publisher = self._publisher
        if self._flushing or not self._outbox or publisher is None or self.state not in (LIVE, STOPPED):
            self._wakeIdle()
            return
        ops = self._outbox[:FLUSH_OPS]
        del self._outbox[:FLUSH_OPS]
        statements, params, notifies = self._compile(ops)
        self._flushing = True
        self.stats["flushes"] += 1
        self.stats["notifies"] += notifies
        d = publisher.runOperation("; ".join(statements), params)
        d.addCallbacks(self._flushed, self._flushFailed)

    def _compile(self, ops: list[tuple[str, str, Any]]) -> tuple[list[str], list[Any], int]:
        """
        One multi-statement string (one implicit transaction, one round trip) for C{ops}, in
        their order.  Consecutive records are packed per channel; a packed notification is
        closed before any statement so that no receiver sees a record before an announcement
        queued ahead of it.
        """
        statements: list[str] = []
        params: list[Any] = []
        notifies: list[str] = []
        packs: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        head = f'["{self.name}","{self.epoch}",'
        base = len(head) + 1
        count = 0

        def emitNotifies() -> None:
            if notifies:
                statements.append("SELECT " + ", ".join(["pg_notify(%s, %s)"] * (len(notifies) // 2)))
                params.extend(notifies)
                del notifies[:]

        def closePacks() -> None:
            nonlocal count
            for channel, records in packs.items():
                payload = head + ",".join(records) + "]"
                count += 1
                if sizes[channel] > PAYLOAD_LIMIT:
                    emitNotifies()
                    statements.append(
                        "WITH s AS (INSERT INTO cluster_stanzas (channel, created, payload)"
                        " VALUES (%s, now(), %s) RETURNING id) SELECT pg_notify(%s, '#' || id) FROM s"
                    )
                    params.extend((channel, payload, channel))
                else:
                    notifies.extend((channel, payload))
            packs.clear()
            sizes.clear()

        for kind, a, b in ops:
            if kind == "n":
                size = len(b.encode("utf-8")) + 1
                current = sizes.get(a)
                if current is not None and current + size > PAYLOAD_LIMIT:
                    closePacks()
                    current = None
                if current is None:
                    packs[a] = [b]
                    sizes[a] = base + size
                else:
                    packs[a].append(b)
                    sizes[a] = current + size
            else:
                closePacks()
                emitNotifies()
                statements.append(a)
                params.extend(b)
                count += 1
        closePacks()
        emitNotifies()
        return statements, params, count

    def _flushed(self, _: object) -> None:
        self._flushing = False
        if self._outbox:
            if self._flushCall is None:
                self._flushCall = self.reactor.callLater(0, self._flush)
        else:
            self._wakeIdle()

    def _flushFailed(self, failure: Failure) -> None:
        self._flushing = False
        self._failed(failure, "a cluster flush failed")
        self._flushed(None)

    def _failed(self, failure: Failure, what: str) -> None:
        """
        A query of this node failed: its connection is gone (psycopg2's errors for that, or
        Twisted's when txpostgres fails a query in flight as the connection closes, a crash
        included), and _connectionLost resets the node, whose sessions are closed and whose
        unacknowledged messages are routed again; or it is a bug, logged.
        """
        if failure.check(psycopg2.OperationalError, psycopg2.InterfaceError, ConnectionError,
                         ConnectionClosed):
            self._connectionLost(failure.getErrorMessage())
        else:
            self.log.failure("Node {node}: {what}", failure, node=self.name, what=what)

    def _wakeIdle(self) -> None:
        if not self._outbox and not self._flushing:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    async def _whenFlushed(self, timeout: float) -> None:
        if not self._outbox and not self._flushing:
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        if self._flushCall is None and not self._flushing:
            self._flushCall = self.reactor.callLater(0, self._flush)
        d.addTimeout(timeout, self.reactor)
        try:
            await d
        except defer.TimeoutError:
            self.log.warn("Node {node}: unsent cluster traffic dropped at shutdown", node=self.name)  # noqa: G010

    # ---------------------------------------------------------------- stanzas in

    def _onNotify(self, channel: str, payload: str) -> None:
        self._inbox.append((channel, payload))
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            inbox = self._inbox
            while inbox and not self._holds:
                channel, payload = inbox.popleft()
                try:
                    if payload.startswith("#"):
                        self._hold(self._fetchBig(channel, int(payload[1:])))
                    else:
                        self._handle(payload)
                except Exception:  # noqa: BLE001 - logged; the cluster carries on
                    self.log.failure("Node {node}: cannot handle a notification", node=self.name)
        finally:
            self._draining = False

    def _hold(self, work: Any) -> None:
        """Pause the inbox until C{work} (a coroutine) is done: what follows may depend on it."""
        self._holds += 1
        d = defer.Deferred.fromCoroutine(work)
        d.addErrback(self._failed, "inbound work failed")
        d.addBoth(self._release)

    def _release(self, _: object) -> None:
        self._holds -= 1
        if not self._holds:
            self._drain()

    async def _fetchBig(self, channel: str, ident: int) -> None:
        listener = self._listener
        if listener is None:
            return
        if channel == self.mine:
            rows = await listener.runQuery(
                "DELETE FROM cluster_stanzas WHERE id = %s RETURNING payload", (ident,)
            )
        else:
            rows = await listener.runQuery("SELECT payload FROM cluster_stanzas WHERE id = %s", (ident,))
        if rows and self.state == LIVE:
            self._handle(rows[0][0])

    def _handle(self, payload: str) -> None:
        data = json.loads(payload)
        sender, epoch = data[0], data[1]
        if sender == self.name:
            if epoch == self.epoch:
                for record in data[2:]:
                    if record[0] == "S":
                        self._confirmed(record[1], record[2])
            return
        messages: list[list[Any]] = []
        records = data[2:]
        for index, record in enumerate(records):
            kind = record[0]
            if kind == "M":
                messages.append(record)
                continue
            if messages:
                self._deliverHere(sender, epoch, messages)
                messages = []
            if kind == "S":
                if self.nodes.get(sender) == epoch:
                    self._applySession(sender, record[1], record[3], record[4], record[5], record[6],
                                       full=record[2])
            elif kind == "D":
                self._applyGone(record[1], record[2], record[3])
            elif kind == "A":
                if record[1] == self.epoch:
                    self._acked(sender, record[2])
            elif kind == "K":
                self._closeRequested(record[1], record[2], record[3], record[4])
            elif kind == "R":
                if self.im is not None and self.im.rosters.cached(record[1]) is not None:
                    self._hold(self._refreshRoster(record[1]))
                    # what follows in this payload waits too
                    rest = records[index + 1:]
                    if rest:
                        self._inbox.appendleft(("", _dumps([sender, epoch, *rest])))
                    return
            elif kind == "N":
                self._nodeUp(record[1], record[2])
            elif kind == "X":
                if record[1] == self.name and record[2] == self.epoch:
                    self._reset("the other nodes declared this node dead")
                elif self.nodes.get(record[1]) == record[2]:
                    self._nodeGone(record[1], record[2])
        if messages:
            self._deliverHere(sender, epoch, messages)

    def _deliverHere(self, sender: str, epoch: str, records: list[list[Any]]) -> None:
        try:
            elements = self._reader.parse([record[3] for record in records])
        except Exception:  # noqa: BLE001 - logged; the cluster carries on
            self.log.failure("Node {node}: unreadable stanzas from {sender}", node=self.name, sender=sender)
            return
        local = self.router.local
        for record, element in zip(records, elements):
            full = record[2]
            session = local.get(full)
            try:
                if session is not None and session.active:
                    session.deliver(element)
                else:
                    self._undeliverableHere(full, element)
            except Exception:  # noqa: BLE001 - logged; the cluster carries on
                self.log.failure("Node {node}: delivering to {jid} failed", node=self.name, jid=full)
        self.stats["received"] += len(records)
        self._seen[sender] = (epoch, records[-1][1])
        self._ackDue.add(sender)
        # A notification can still arrive after stop() or crash(): nothing is scheduled then.
        if self._ackCall is None and self.state != STOPPED:
            self._ackCall = self.reactor.callLater(ACK_DELAY, self._sendAcks)

    def _undeliverableHere(self, full: str, element: domish.Element) -> None:
        """A stanza for a session of ours that is gone: what the core does for a closed door."""
        im = self.im
        if im is None:
            return
        if element.name == "message":
            if element.getAttribute("type", "normal") not in ("error", "headline", "groupchat"):
                # Already stamped and archived when it was first routed.
                im.messages.route(element, parseJID(full).userhostJID(), redelivery=True)
        elif element.name == "iq" and element.getAttribute("type") in ("get", "set"):
            reply = errorReply(element, "service-unavailable", sender=im.domain)
            sender = parseJID(reply["to"]) if reply.getAttribute("to") else None
            if sender is not None and sender.resource:
                target = self.router.session(sender.userhost(), sender.resource)
                if target is not None:
                    target.deliver(reply)

    def _sendAcks(self) -> None:
        # Also called directly (by stop()): the scheduled call must not outlive it.
        call, self._ackCall = self._ackCall, None
        if call is not None and call.active():
            call.cancel()
        if self.state != LIVE:
            return
        for node in self._ackDue:
            seen = self._seen.get(node)
            if seen is not None and node in self.nodes:
                self._queue("n", self.channelOf(node), _dumps(["A", seen[0], seen[1]]))
        self._ackDue.clear()

    def _acked(self, node: str, seq: int) -> None:
        pending = self._unacked.get(node)
        while pending and pending[0][0] <= seq:
            pending.popleft()

    def _reroute(self, entries: Any) -> None:
        """Route again messages a node will never acknowledge: other sessions, or offline."""
        im = self.im
        if im is None:
            return
        for _, full, element in entries:
            self.stats["rerouted"] += 1
            try:
                im.messages.route(element, parseJID(full).userhostJID(), redelivery=True)
            except Exception:  # noqa: BLE001 - logged; the cluster carries on
                self.log.failure("Node {node}: routing a message again failed", node=self.name)

    def _closeRequested(self, full: str, serial: int, condition: str | None, text: str | None) -> None:
        session = self.router.local.get(full)
        entry = self._announced.get(session) if session is not None else None
        if session is not None and entry is not None and entry[0] == serial:
            self._closeLocal(session, condition, text)

    def _closeLocal(self, session: Session, condition: str | None, text: str | None) -> None:
        if self.im is not None:
            self.im.closeSession(session)
        try:
            session.close(condition, text)
        except Exception:  # noqa: BLE001 - logged; the cluster carries on
            self.log.failure("Closing {s} failed", s=session)

    # ---------------------------------------------------------------- the replica

    def _confirmed(self, serial: int, full: str) -> None:
        session = self.router.local.get(full)
        if session is not None:
            entry = self._announced.get(session)
            if entry is not None and entry[0] == serial:
                entry[5] = True

    def _applySession(self, node: str, serial: int, priority: int, presence: str | None,
                      receives: bool, interested: bool, full: str) -> None:
        local = self.router.local.get(full)
        if local is not None:
            entry = self._announced.get(local)
            if entry is not None and not entry[5]:
                # Our own takeover of this JID has not come back yet, so it committed after
                # this one (notifications arrive in commit order): ours wins, theirs closes.
                return
            # Another node took the full JID over: ours ends with a conflict (RFC 6120 7.7.2.2).
            self._closeLocal(local, "conflict", "replaced by a new session with the same resource")
        proxy = self.router.remote.get(full)
        if proxy is None or proxy.node != node or proxy.serial != serial:
            proxy = RemoteSession(JID(full), node, serial, self)
            self.router.putRemote(proxy)
        proxy.priority = priority
        proxy.receivesMessages = bool(receives)
        proxy.interested = bool(interested)
        if presence is None:
            proxy.presence = None
        else:
            try:
                proxy.presence = self._reader.parse([presence])[0]
            except Exception:  # noqa: BLE001 - logged; the cluster carries on
                self.log.failure("Node {node}: unreadable presence of {jid}", node=self.name, jid=full)

    def _applyGone(self, node: str, serial: int, full: str) -> RemoteSession | None:
        proxy = self.router.remote.get(full)
        if proxy is not None and proxy.node == node and proxy.serial == serial:
            self.router.dropRemote(proxy)
            return proxy
        return None

    def _nodeUp(self, node: str, epoch: str) -> None:
        known = self.nodes.get(node)
        if known is not None and known != epoch:
            self._nodeGone(node, known)  # it restarted: its former sessions are gone
        self.nodes[node] = epoch

    def _nodeGone(self, node: str, epoch: str) -> None:
        """A node died, left or restarted: forget its sessions, route again what it owed us."""
        if self.nodes.get(node) == epoch:
            del self.nodes[node]
        for proxy in [p for p in self.router.remote.values() if p.node == node]:
            self.router.dropRemote(proxy)
        self._seen.pop(node, None)
        self._seqTo.pop(node, None)
        pending = self._unacked.pop(node, None)
        if pending:
            self.log.info(
                "Node {node}: routing again {n} messages node {dead} did not acknowledge",
                node=self.name, n=len(pending), dead=node,
            )
            self._reroute(pending)

    async def _sessionsEnded(self, rows: list[tuple[Any, ...]]) -> None:
        """
        Sessions of a dead node (or of this node's previous incarnation) were deleted by this
        node: their contacts, on every node, are told they are unavailable, once.
        """
        im = self.im
        if im is None:
            return
        for full, node, serial, priority, presence, receives, interested in rows:
            proxy = self._applyGone(node, serial, full) or RemoteSession(JID(full), node, serial, self)
            proxy.active = False
            if presence is None:
                continue
            try:
                proxy.presence = self._reader.parse([presence])[0]
            except Exception:  # noqa: BLE001 - one unreadable row must not stop the others
                self.log.failure("Node {node}: unreadable presence of {jid}", node=self.name, jid=full)
                continue
            proxy.priority = priority
            try:
                await im.rosters.load(proxy.localpart)
                im.presence.unavailable(proxy)
            except Exception:  # noqa: BLE001 - logged; the cluster carries on
                self.log.failure("Node {node}: telling {jid}'s contacts failed", node=self.name, jid=full)
            finally:
                if not self.router.hasSessions(proxy.bare):
                    im.rosters.release(proxy.localpart)

    async def _refreshRoster(self, localpart: str) -> None:
        """Another node changed a roster cached here: read it again, in place."""
        rosters = self.im.rosters
        async with rosters.lock(localpart):
            items = await self.realStore.getRoster(localpart)
            roster = rosters.cached(localpart)
            if roster is not None:
                roster.clear()
                roster.update({item.jid: item for item in items})


class ClusterService(service.Service):
    """
    Joins the cluster when the server starts and leaves it when it stops.  It must stop after
    the core (whose sessions' goodbyes it sends) and before the store.
    """

    name = "cluster"  # type: ignore[assignment]

    def __init__(self, node: ClusterNode):
        self.node = node

    def startService(self) -> None:
        super().startService()
        self.node.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.node.stop()
