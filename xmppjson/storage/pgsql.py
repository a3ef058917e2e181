"""
The PostgreSQL backend: a small pool of txpostgres connections (asynchronous psycopg2, no
threads).

Recovery works by rebuilding the pool rather than by txpostgres's
C{DeadConnectionDetector}: one mechanism then covers both "the server was down when we started"
and "the server went away while we were serving", and a half-dead pool is never used.

 - Every connection is a reader in the reactor, so a server that restarts or terminates an idle
   connection is noticed at once (L{_Connection}); a query that fails because its connection is
   gone is noticed too (L{PostgreSQLStore._connectionBroken}).
 - Either way the store stops serving (calls fail fast with L{StoreUnavailable}), closes every
   connection of the pool, and starts the same retry loop as L{SQLStore.start}: a new pool is
   opened immediately and then with a capped exponential backoff until the server answers.
 - A query failing for a reason that does not break its connection (a lock timeout, a deadlock)
   fails alone with L{StoreUnavailable} and the pool is kept.

Connections use TCP keepalives and C{tcp_user_timeout}, so that a server that vanishes without
closing its sockets (a network partition) is detected in about half a minute rather than
TCP's default quarter of an hour, and the connection attempt has its own timeout because libpq
ignores C{connect_timeout} for asynchronous connections.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import AsIs
from twisted.internet.defer import Deferred, FirstError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from txpostgres import txpostgres
from zope.interface import implementer

from xmppjson.error import StoreUnavailable
from xmppjson.storage import IStore, SessionState
from xmppjson.storage.sql import (
    INTEGRITY,
    UNAVAILABLE,
    UTC,
    Params,
    Rows,
    SQLStore,
    Statement,
    _deferred,
)

# Connection parameters the URL may override.
_DEFAULT_PARAMETERS: dict[str, Any] = {
    "application_name": "xmppjson",
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,  # milliseconds
}


# A text column of a multi-row insert whose values add up to more characters than this is
# sent in dollar quotes (L{_dollarQuoted}): the archive's records.
_DOLLAR_QUOTED_FROM = 65536


def _dollarQuoted(values: list[str | None]) -> Any:
    """
    C{values} as a PostgreSQL C{ARRAY} of dollar-quoted strings (C{$tag$...$tag$}), which
    PostgreSQL takes as they are, without escapes; psycopg2 quotes a string by escaping it
    character by character, which cost 7.5 ms for a batch's 2 MB of archive records
    (docs/performance.md item 19).  The tag is random, and it is checked not to occur in any
    value (a value could otherwise end its own quotes).  Values with a NUL character (which
    PostgreSQL's text cannot hold, and psycopg2 refuses), or a NULL, are left to psycopg2.
    """
    if any(value is None or "\x00" in value for value in values):
        return values
    while True:
        tag = f"$x{secrets.token_hex(6)}$"
        if not any(tag in value for value in values):
            break
    return AsIs("ARRAY[" + ",".join([tag + value + tag for value in values]) + "]")


class ConnectTimeout(Exception):
    """The server did not complete the connection handshake in time."""


class _Connection(txpostgres.Connection):
    """
    A txpostgres connection that reports its death while idle to C{onLost} instead of letting
    the reactor log it as an unhandled error.
    """

    onLost: Callable[[str], None] | None = None

    def continuePolling(self, swallowErrors: bool = False) -> None:
        try:
            super().continuePolling(swallowErrors)
        except psycopg2.Error as e:
            # txpostgres raises here only when no query is waiting on the connection: the
            # server closed it while idle (restart, pg_terminate_backend, network).
            self._closeIfBroken()
            self._reportLost(str(e).strip())

    def cursorFinished(self, cursor: Any) -> None:
        # A query that failed because the connection broke: txpostgres would watch the dead
        # socket again (fd -1) and fail the query with a ValueError instead of the real error.
        self._closeIfBroken()
        super().cursorFinished(cursor)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._reportLost(reason.getErrorMessage())

    def _closeIfBroken(self) -> None:
        """
        Mark a connection whose socket libpq has given up as closed.  psycopg2 leaves C{closed}
        false while C{fileno()} is already -1, and txpostgres only checks C{closed}.
        """
        connection = self.pollable()
        if connection is None or connection.closed:
            return
        try:
            broken = connection.fileno() < 0
        except psycopg2.Error:
            broken = True
        if broken:
            connection.close()

    def _reportLost(self, why: str) -> None:
        if self.onLost is not None:
            self.onLost(why)


class _Pool(txpostgres.ConnectionPool):
    """
    A txpostgres pool on an injected reactor, made of L{_Connection}s, that remembers every
    connection it made: txpostgres's own C{close()} only reaches the idle ones.
    """

    def __init__(
        self,
        reactor: Any,
        size: int,
        onLost: Callable[[str], None],
        parameters: dict[str, Any],
    ):
        # txpostgres reads these class attributes in its constructor
        self.reactor = reactor
        self.min = size
        self._onLost = onLost
        super().__init__(None, **parameters)
        self.allConnections: list[_Connection] = list(self.connections)

    def connectionFactory(self, reactor: Any, cooperator: Any) -> _Connection:
        connection = _Connection(reactor, cooperator)
        connection.onLost = self._onLost
        return connection

    def closeAll(self) -> None:
        for connection in self.allConnections:
            connection.onLost = None
            if connection.pollable() is None:
                continue  # never got as far as a socket
            try:
                connection.close()
            except psycopg2.Error:
                pass  # already broken: closing is all we wanted

    def broken(self) -> bool:
        """Whether any connection of the pool has been closed by the server or the network."""
        return any(
            c.pollable() is None or c.pollable().closed for c in self.allConnections
        )


def _batchInteraction(cursor: Any, statements: list[Statement]) -> Deferred[list[Rows]]:
    async def run() -> list[Rows]:
        results: list[Rows] = []
        for sql, params in statements:
            await cursor.execute(sql, tuple(params))
            results.append(
                list(cursor.fetchall()) if cursor.description is not None else []
            )
        return results

    return Deferred.fromCoroutine(run())


def _countedInteraction(cursor: Any, statements: list[Statement]) -> Deferred[list[int]]:
    async def run() -> list[int]:
        counts: list[int] = []
        for sql, params in statements:
            await cursor.execute(sql, tuple(params))
            counts.append(cursor.rowcount)
        return counts

    return Deferred.fromCoroutine(run())


@implementer(IStore)
class PostgreSQLStore(SQLStore):
    """
    L{IStore} in a PostgreSQL database (see the module docstring for how it recovers).

    @ivar poolSize: how many connections the pool holds.
    @ivar connectTimeout: seconds allowed to open the pool.
    """

    backendName = "postgresql"
    dialect = "postgresql"
    poolSize = 3
    connectTimeout = 10.0

    # What a session needs when it opens (see SQLStore.getSessionState), in one statement: the
    # user's row (NULLs for an unknown user), the roster and the blocklist as JSON arrays,
    # which psycopg2 decodes, and whether any offline message waits.  One round trip and one
    # statement for the database to parse and plan instead of three, at every login
    # (docs/performance.md, item 23), and none for the offline messages when there are none
    # (item 27).
    _SESSION_STATE_SELECT = (
        "SELECT u.localpart IS NOT NULL, "
        + ", ".join(f"u.{column}" for column in SQLStore._PROFILE_COLUMNS)
        + ", (SELECT COALESCE(json_agg(json_build_array("
        + ", ".join(SQLStore._ROSTER_COLUMNS)
        + ") ORDER BY contact), '[]') FROM roster WHERE localpart = %s),"
        " (SELECT COALESCE(json_agg(jid ORDER BY jid), '[]') FROM blocklist WHERE localpart = %s),"
        " EXISTS (SELECT 1 FROM offline WHERE localpart = %s)"
        " FROM (SELECT %s::text AS localpart) AS wanted"
        " LEFT JOIN users u ON u.localpart = wanted.localpart"
    )

    @_deferred
    async def getSessionState(self, localpart: str) -> SessionState:
        """What a session needs when it opens, in one statement (see L{IStore})."""
        [row] = await self._guarded(self._runFetch, self._SESSION_STATE_SELECT,
                                    (localpart, localpart, localpart, localpart))
        exists, *profile, roster, blocklist, offline = row
        return SessionState(self._rosterItems(roster), list(blocklist),
                            self._profile([tuple(profile)]) if exists else None, bool(offline))

    def _insertMany(self, head: str, types: tuple[str, ...], rows: list[tuple[Any, ...]],
                    tail: str) -> list[Statement]:
        """
        All the rows in one statement: one array parameter per column, zipped back into rows
        by C{unnest}.  PostgreSQL parses and plans a short statement once per batch instead of
        a 1000-parameter C{VALUES} list per 100 rows, and the batch is one round trip.
        """
        columns: list[Any] = ([list(column) for column in zip(*rows)] if rows
                              else [[] for _ in types])
        for index, kind in enumerate(types):
            if kind == "text" and sum(map(len, filter(None, columns[index]))) > _DOLLAR_QUOTED_FROM:
                columns[index] = _dollarQuoted(columns[index])
        arrays = ", ".join(f"%s::{t}[]" for t in types)
        return [(f"{head} SELECT * FROM unnest({arrays}) {tail}", columns)]

    def __init__(
        self,
        url: str,
        reactor: Any = None,
        clock: Any = None,
        retryDelay: tuple[float, float] = (0.5, 30.0),
    ):
        """
        @param url: C{postgresql://user:password@host:port/dbname}, optionally with libpq
            parameters as a query string.
        @param reactor: see L{SQLStore.__init__}.
        """
        super().__init__(reactor=reactor, clock=clock, retryDelay=retryDelay)
        # parse now, so that a malformed URL is a configuration error at once
        self._parameters = {
            **_DEFAULT_PARAMETERS,
            **psycopg2.extensions.parse_dsn(url),
            # Text travels as UTF-8 whatever the database's encoding or the URL say (the server
            # converts): the archive's records go as SQL text already encoded so
            # (L{_dollarQuoted}), where psycopg2 would encode them for the connection.
            "client_encoding": "UTF8",
        }
        self._pool: _Pool | None = None

    def __repr__(self) -> str:
        where = f"{self._parameters.get('host', '')}:{self._parameters.get('port', '')}"
        return f"<PostgreSQLStore {where}/{self._parameters.get('dbname', '')}>"

    def _openConnection(self) -> Deferred[Any]:
        generation = self._generation
        pool = self._pool = _Pool(
            self._reactor,
            self.poolSize,
            lambda why: self._connectionLost(generation, why),
            self._parameters,
        )
        timedOut = []

        def timeout() -> None:
            timedOut.append(True)
            pool.closeAll()  # makes the pending connection attempts fail

        timer = self._reactor.callLater(self.connectTimeout, timeout)

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if timedOut:
                raise ConnectTimeout(
                    f"no connection after {self.connectTimeout} seconds"
                )
            if isinstance(result, Failure) and result.check(FirstError):
                # the pool reports the first connection that failed; that failure says why
                return result.value.subFailure
            return result

        return pool.start().addBoth(finished)

    def _closeConnection(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.closeAll()

    def _runFetch(self, sql: str, params: Params) -> Deferred[Rows]:
        if self._pool is None:
            raise StoreUnavailable()
        return self._pool.runQuery(sql, tuple(params))

    def _runExecute(self, sql: str, params: Params) -> Deferred[None]:
        if self._pool is None:
            raise StoreUnavailable()
        return self._pool.runOperation(sql, tuple(params))

    def _runBatch(self, statements: list[Statement]) -> Deferred[list[Rows]]:
        if self._pool is None:
            raise StoreUnavailable()
        return self._pool.runInteraction(_batchInteraction, statements)

    def _runCounted(self, statements: list[Statement]) -> Deferred[list[int]]:
        if self._pool is None:
            raise StoreUnavailable()
        return self._pool.runInteraction(_countedInteraction, statements)

    def _classify(self, failure: Failure) -> str | None:
        if failure.check(psycopg2.IntegrityError):
            return INTEGRITY
        if failure.check(
            psycopg2.OperationalError,
            psycopg2.InterfaceError,
            txpostgres.RollbackFailed,
            ConnectionDone,
            ConnectionLost,
            ConnectTimeout,
        ):
            return UNAVAILABLE
        # libpq reports some broken connections with no more specific class
        if type(failure.value) is psycopg2.DatabaseError:
            return UNAVAILABLE
        return None

    def _connectionBroken(self, failure: Failure) -> bool:
        if failure.check(
            psycopg2.InterfaceError,
            txpostgres.RollbackFailed,
            ConnectionDone,
            ConnectionLost,
        ):
            return True
        # txpostgres has put the failed connection back in the pool by now; if it is closed,
        # the failure was the connection's, not the statement's.
        return self._pool is None or self._pool.broken()

    def _timestampToDB(self, when: datetime.datetime) -> datetime.datetime:
        return when

    def _timestampFromDB(self, value: Any) -> datetime.datetime:
        # psycopg2 returns TIMESTAMPTZ in the session's time zone, whatever the server's setting
        return value.astimezone(UTC)
