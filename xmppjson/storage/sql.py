"""
The SQL store: every L{IStore} method, written once for all SQL backends.

A backend (L{xmppjson.storage.sqlite}, L{xmppjson.storage.pgsql}) subclasses L{SQLStore} and
provides only the primitives that differ between drivers:

 - C{_openConnection} / C{_closeConnection}: build and tear down its connection pool;
 - C{_runFetch(sql, params)}: run one statement that returns rows (C{SELECT}, C{... RETURNING});
 - C{_runExecute(sql, params)}: run one statement whose result is not needed;
 - C{_runBatch(statements)}: run several statements atomically, in one transaction, and fire
   with the rows of each (C{[]} for a statement without a result set);
 - C{_runCounted(statements)}: the same for writes, firing with the number of rows each
   changed;
 - C{_insertMany(head, types, rows, tail)}: the statement(s) inserting many rows at once;
 - C{_classify(failure)}: say whether a driver failure means "unavailable", "integrity" or is a
   bug;
 - C{_timestampToDB} / C{_timestampFromDB}: the storage form of a UTC instant.

Single statements plus one atomic batch are enough because the logic never needs to read in the
middle of a transaction: every write that must be all-or-nothing is a fixed list of statements,
and constraints (primary keys, foreign keys) rather than prior reads decide whether it may happen.
This keeps the logic free of the difference between adbapi (an interaction runs synchronously in
a thread) and txpostgres (every C{execute} returns a Deferred).

SQL is written once, with C{%s} placeholders (the SQLite backend rewrites them to C{?}), in the
common subset of SQLite 3.35+ and PostgreSQL 10+ (C{ON CONFLICT}, C{RETURNING}).

Availability: L{SQLStore.start} keeps retrying in the background, with a capped exponential
backoff, until the database can be reached and its schema is current.  Until then, and whenever
the backend reports its connection lost, every method fails at once with L{StoreUnavailable}.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from functools import wraps
from typing import Any, NamedTuple, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from xmppjson.error import Conflict, StoreUnavailable
from xmppjson.storage import (
    PROFILE_FIELDS,
    ArchiveEntry,
    ArchiveMessage,
    ArchivePage,
    ArchiveQuery,
    Credentials,
    OfflineMessage,
    RosterItem,
    ScramKeys,
    SessionState,
    UnknownArchiveId,
    UnknownUser,
    UserExists,
    schema,
)
from xmppjson.storage.buckets import (
    MAX_SPAN,
    SEP,
    BucketRows,
    Record,
    decode,
    decodeRaw,
    encode,
    recordText,
    sidMicros,
)

UTC = datetime.UTC
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = datetime.timedelta(microseconds=1)

Params = Sequence[Any]
Statement = tuple[str, Params]
Rows = list[tuple[Any, ...]]

# What a backend's _classify may answer.
UNAVAILABLE = "unavailable"
INTEGRITY = "integrity"

# Store states.
_IDLE = "idle"  # built, start() never called
_CONNECTING = "connecting"  # an attempt is running or a retry is scheduled
_READY = "ready"
_FAILED = "failed"  # start() hit an error that retrying cannot fix (see log)
_CLOSED = "closed"

# How many offline message ids one DELETE names: well under SQLite's parameter limit.
_DELETE_CHUNK = 500

_P = ParamSpec("_P")
_T = TypeVar("_T")


def micros(when: datetime.datetime) -> int:
    """An instant as whole microseconds since the epoch (naive datetimes are UTC)."""
    return (utc(when) - EPOCH) // MICROSECOND


class IntegrityViolation(Exception):
    """
    A constraint (primary key, foreign key, unique) refused a write.  Internal to the storage
    layer: each method turns it into the domain error it means (L{UserExists}, L{UnknownUser}).
    """


class SchemaTooNew(Exception):
    """The database was upgraded by a newer xmppjson; this one must not touch it."""


def _deferred(f: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, Deferred[_T]]:
    """
    Make an C{async def} method return a L{Deferred}, as L{IStore} promises, so that callers may
    use either C{await} or C{addCallback}.
    """

    @wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper


def utc(when: datetime.datetime) -> datetime.datetime:
    """
    Normalise a datetime to aware UTC.  A naive datetime is taken to be UTC already (the server
    never deals in local time).
    """
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _conditions(comparisons: Sequence[tuple[str, str, Any]], where: list[str],
                params: list[Any]) -> None:
    """Add C{column op value} to C{where} and C{params} for each value that is not C{None}."""
    for column, op, value in comparisons:
        if value is not None:
            where.append(f"{column} {op} %s")
            params.append(value)


class _Head(NamedTuple):
    """A bucket without its records, as an owner's archive sees it."""

    first: int
    firstSid: str
    last: int
    messages: int
    withJID: str
    side: str


def _recordKey(item: tuple[Record, str]) -> tuple[int, str]:
    return item[0].id, item[0].sid


@dataclass(frozen=True)
class _Span:
    """
    Which records of one archive a read takes: a query's filters, and a page's edges.  Ids and
    stamps are microseconds; C{low} and C{high} are C{(id, sid)} keys, excluded; C{start} and
    C{end} are included.  The correspondent's bare JID is a bucket's; the rest is each
    record's.
    """

    withJID: str | None = None
    withResource: str | None = None
    start: int | None = None
    end: int | None = None
    low: tuple[int, str] | None = None
    high: tuple[int, str] | None = None
    sids: frozenset[str] | None = None
    idRange: tuple[int, int] | None = None

    @property
    def exact(self) -> bool:
        """Whether a bucket all of whose records are inside the span's edges is all in it."""
        return self.withResource is None and self.sids is None

    def within(self, low: tuple[int, str] | None, high: tuple[int, str] | None) -> _Span:
        """This span, cut to the page after C{low} and before C{high} (C{None}: no edge)."""
        if low is not None and self.low is not None:
            low = max(low, self.low)
        if high is not None and self.high is not None:
            high = min(high, self.high)
        return replace(self, low=self.low if low is None else low,
                       high=self.high if high is None else high)

    def bucketCondition(self, owner: str, side: tuple[str, str, str]) -> tuple[str, list[Any]]:
        """
        The condition on the buckets that name C{owner} on C{side} (see
        L{SQLStore._ARCHIVE_SIDES}) and may hold records in the span.
        """
        ownerColumn, withColumn, _ = side
        where = [f"{ownerColumn} = %s"]
        params: list[Any] = [owner]
        if self.withJID is not None:
            where.append(f"{withColumn} = %s")
            params.append(self.withJID)
        # A bucket ending at or after an id begins at most MAX_SPAN before it: the index on
        # first ids finds it.
        lowest = max([edge for edge in (self.low and self.low[0],
                                        self.idRange and self.idRange[0]) if edge is not None],
                     default=None)
        _conditions((
            ("first_id", ">=", None if lowest is None else lowest - MAX_SPAN),
            ("last_id", ">=", lowest),
            ("first_id", "<=", self.high and self.high[0]),
            ("first_id", "<=", self.idRange and self.idRange[1]),
            ("last_stamp", ">=", self.start),
            ("first_stamp", "<=", self.end),
        ), where, params)
        return " AND ".join(where), params

    def insideCondition(self) -> tuple[str, list[Any]]:
        """The condition on buckets whose records are all inside the span's edges."""
        where: list[str] = []
        params: list[Any] = []
        _conditions((
            ("first_id", ">", self.low and self.low[0]),
            ("last_id", "<", self.high and self.high[0]),
            ("first_stamp", ">=", self.start),
            ("last_stamp", "<=", self.end),
        ), where, params)
        return " AND ".join(where) or "1 = 1", params

    def holds(self, record: Record) -> bool:
        """Whether a record of a bucket this span reads is in the span."""
        if self.low is not None and (record.id, record.sid) <= self.low:
            return False
        if self.high is not None and (record.id, record.sid) >= self.high:
            return False
        if self.start is not None and record.stamp < self.start:
            return False
        if self.end is not None and record.stamp > self.end:
            return False
        if self.withResource is not None and record.resource != self.withResource:
            return False
        return self.sids is None or record.sid in self.sids


class SQLStore:
    """
    The logic of L{IStore} over the primitives of a SQL backend (see the module docstring).

    @ivar migrationsApplied: the schema versions the last successful L{start} applied (empty when
        the database was already current).
    @ivar dialect: the key of L{schema.DIALECTS} for this backend.
    """

    log = Logger()
    backendName = "sql"
    dialect = ""

    def __init__(
        self,
        reactor: Any = None,
        clock: Any = None,
        retryDelay: tuple[float, float] = (0.5, 30.0),
    ):
        """
        @param reactor: the reactor the backend does its I/O with; C{None} for the global one.
        @param clock: the L{IReactorTime} that schedules reconnection attempts; defaults to
            C{reactor} (tests pass a L{twisted.internet.task.Clock}).
        @param retryDelay: the first and the largest delay between two attempts to reach the
            database, in seconds; the delay doubles after each failed attempt.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._retryInitial, self._retryMax = retryDelay
        self._state = _IDLE
        self._waiting: list[Deferred[None]] = []
        self._retryCall: Any = None  # an IDelayedCall while a retry is scheduled
        self._failedAttempts = 0
        # Bumped whenever the connection is dropped, so that late failures and "connection lost"
        # notices from an old connection cannot tear down its replacement.
        self._generation = 0
        self.migrationsApplied: list[int] = []

    # ---------------------------------------------------------------- backend primitives

    def _openConnection(self) -> Deferred[Any]:
        """Open the connection (pool); fire when a query can run."""
        raise NotImplementedError()

    def _closeConnection(self) -> Any:
        """Close the connection (pool), if open.  Must not fail."""
        raise NotImplementedError()

    def _runFetch(self, sql: str, params: Params) -> Deferred[Rows]:
        raise NotImplementedError()

    def _runExecute(self, sql: str, params: Params) -> Deferred[None]:
        raise NotImplementedError()

    def _runBatch(self, statements: list[Statement]) -> Deferred[list[Rows]]:
        raise NotImplementedError()

    def _runCounted(self, statements: list[Statement]) -> Deferred[list[int]]:
        """
        Run write statements atomically, in one transaction; fire with the number of rows
        each changed.
        """
        raise NotImplementedError()

    def _classify(self, failure: Failure) -> str | None:
        """L{UNAVAILABLE}, L{INTEGRITY}, or C{None} for any other failure (a bug)."""
        raise NotImplementedError()

    def _connectionBroken(self, failure: Failure) -> bool:
        """
        Whether an "unavailable" failure means the connection must be rebuilt (as opposed to a
        failure of one statement, such as a lock timeout).
        """
        return False

    def _timestampToDB(self, when: datetime.datetime) -> Any:
        raise NotImplementedError()

    def _timestampFromDB(self, value: Any) -> datetime.datetime:
        raise NotImplementedError()

    # ---------------------------------------------------------------- lifecycle

    @property
    def isReady(self) -> bool:
        """Whether the store can serve right now."""
        return self._state == _READY

    def start(self) -> Deferred[None]:
        """
        Connect and upgrade the schema.  Fires once the store can serve, which may be long after
        the call if the database is unreachable: attempts are repeated in the background with a
        capped exponential backoff.  Fails if the store is closed before that, or for an error
        that retrying cannot fix (such as a schema newer than this server).

        Calling it again while the store is ready fires at once; while it is (re)connecting, the
        returned Deferred fires when it is ready.
        """
        if self._state == _READY:
            return succeed(None)
        if self._state == _CLOSED:
            return fail(StoreUnavailable("the store is closed"))
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        if self._state in (_IDLE, _FAILED):
            self._state = _CONNECTING
            self._failedAttempts = 0
            self._attempt()
        return d

    def close(self) -> Deferred[None]:
        """
        Stop retrying, close the connections, and fail any L{start} still waiting.
        """
        if self._state == _CLOSED:
            return succeed(None)
        self._state = _CLOSED
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        d = maybeDeferred(self._dropConnection)
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            w.errback(
                StoreUnavailable("the store was closed before the database was reached")
            )
        return d.addCallback(lambda _: None)

    def _dropConnection(self) -> Any:
        self._generation += 1
        return self._closeConnection()

    def _attempt(self) -> None:
        self._retryCall = None
        d = Deferred.fromCoroutine(self._connectAndUpgrade())
        d.addCallbacks(self._attemptSucceeded, self._attemptFailed)

    async def _connectAndUpgrade(self) -> None:
        await self._mapped(self._openConnection())
        await self._upgrade()

    def _attemptSucceeded(self, _: object) -> None:
        if self._state != _CONNECTING:
            # closed while the attempt was running; close() already dropped the connection
            return
        self._state = _READY
        self._failedAttempts = 0
        self.log.info("{backend} store ready", backend=self.backendName)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _attemptFailed(self, reason: Failure) -> None:
        if self._state != _CONNECTING:
            return
        self._dropConnection()
        if not reason.check(StoreUnavailable):
            self._state = _FAILED
            self.log.failure(
                "The {backend} store cannot start", reason, backend=self.backendName
            )
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.errback(reason)
            return
        delay = min(
            self._retryInitial * 2 ** min(self._failedAttempts, 30), self._retryMax
        )
        self._failedAttempts += 1
        cause = reason.value.__cause__
        self.log.warn(  # noqa: G010 -- twisted.logger has no warning()
            "{backend} database unavailable ({cause}); retrying in {delay:.1f}s",
            backend=self.backendName,
            cause=str(cause or reason.value).strip(),
            delay=delay,
        )
        self._retryCall = self._clock.callLater(delay, self._attempt)

    def _connectionLost(self, generation: int, why: str) -> None:
        """
        The backend's connection broke while the store was serving: fail fast from now on and
        reconnect in the background.  Notices about a connection already replaced are ignored.
        """
        if generation != self._generation or self._state != _READY:
            return
        self.log.warn(  # noqa: G010 -- twisted.logger has no warning()
            "Lost the {backend} database ({why}); reconnecting",
            backend=self.backendName,
            why=why,
        )
        self._state = _CONNECTING
        self._failedAttempts = 0
        self._dropConnection()
        self._retryCall = self._clock.callLater(0, self._attempt)

    # ---------------------------------------------------------------- schema

    async def _upgrade(self) -> None:
        """Create the version table if needed and apply every missing migration."""
        self.migrationsApplied = []
        await self._mapped(
            self._runExecute(schema.render(schema.VERSION_TABLE, self.dialect), ())
        )
        while True:
            applied = await self._appliedVersions()
            current = max(applied, default=0)
            if current > schema.CURRENT_VERSION:
                raise SchemaTooNew(
                    f"the database schema is at version {current}, newer than the "
                    f"{schema.CURRENT_VERSION} this server knows; upgrade xmppjson"
                )
            # Every migration not applied yet, not only those above the highest applied: the
            # features that own the versions land in any order, so a database may have been
            # created by code that knew 1 and 4 but not yet 2 and 3.
            pending = schema.migrationsMissing(applied, self.dialect)
            if not pending:
                return
            for version, statements in pending:
                # The version row goes first: if another server is applying the same migration
                # at the same moment, its primary key makes one of the two transactions fail as
                # a whole, and the loser re-reads the version instead of failing to start.
                batch: list[Statement] = [
                    (
                        "INSERT INTO schema_version (version, applied) VALUES (%s, %s)",
                        (version, self._timestampToDB(self._now())),
                    )
                ]
                batch.extend((statement, ()) for statement in statements)
                try:
                    await self._mapped(self._runBatch(batch))
                except IntegrityViolation:
                    break
                self.log.info(
                    "{backend} schema upgraded to version {version}",
                    backend=self.backendName,
                    version=version,
                )
                self.migrationsApplied.append(version)

    async def _appliedVersions(self) -> set[int]:
        rows = await self._mapped(self._runFetch("SELECT version FROM schema_version", ()))
        return {int(row[0]) for row in rows}

    async def _schemaVersion(self) -> int:
        rows = await self._mapped(
            self._runFetch("SELECT COALESCE(MAX(version), 0) FROM schema_version", ())
        )
        return int(rows[0][0])

    @_deferred
    async def getSchemaVersion(self) -> int:
        """
        Fire with the highest schema version recorded in the database (for tools and tests).
        """
        rows = await self._fetch("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(rows[0][0])

    # ---------------------------------------------------------------- guarded primitives

    def _mapped(self, d: Deferred[_T], generation: int | None = None) -> Deferred[_T]:
        return d.addErrback(self._translate, generation)

    def _translate(self, reason: Failure, generation: int | None) -> Failure:
        """
        Turn a driver failure into L{StoreUnavailable} or L{IntegrityViolation}; let anything
        else (a bug) through untouched so it is logged with its traceback.
        """
        kind = self._classify(reason)
        if kind == INTEGRITY:
            raise IntegrityViolation(str(reason.value)) from reason.value
        if kind == UNAVAILABLE:
            if generation is not None and self._connectionBroken(reason):
                self._connectionLost(
                    generation, str(reason.value).strip() or repr(reason.value)
                )
            elif generation is not None:
                self.log.warn(  # noqa: G010 -- twisted.logger has no warning()
                    "{backend} query failed: {error}",
                    backend=self.backendName,
                    error=str(reason.value).strip(),
                )
            raise StoreUnavailable() from reason.value
        return reason

    def _guarded(self, run: Callable[..., Deferred[_T]], *args: Any) -> Deferred[_T]:
        if self._state != _READY:
            # fail fast: nothing waits for a database that is not there
            return fail(StoreUnavailable())
        generation = self._generation
        try:
            d = run(*args)
        except Exception:  # noqa: BLE001 -- a driver may raise before it has a Deferred
            d = fail()
        return self._mapped(d, generation)

    def _fetch(self, sql: str, params: Params = ()) -> Deferred[Rows]:
        return self._guarded(self._runFetch, sql, params)

    def _execute(self, sql: str, params: Params = ()) -> Deferred[None]:
        return self._guarded(self._runExecute, sql, params)

    def _batch(self, statements: list[Statement]) -> Deferred[list[Rows]]:
        return self._guarded(self._runBatch, statements)

    def _counted(self, statements: list[Statement]) -> Deferred[list[int]]:
        return self._guarded(self._runCounted, statements)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._reactor.seconds(), UTC)

    def _ts(self, when: datetime.datetime) -> Any:
        return self._timestampToDB(utc(when))

    def _tsOrNone(self, value: Any) -> datetime.datetime | None:
        return None if value is None else self._timestampFromDB(value)

    # ---------------------------------------------------------------- IStore

    @_deferred
    async def ping(self) -> bool:
        """Fire with C{True} when a trivial query succeeds."""
        await self._fetch("SELECT 1")
        return True

    # users

    def _keyInserts(self, localpart: str, credentials: Credentials) -> list[Statement]:
        return [
            (
                (
                    "INSERT INTO scram_keys"
                    " (localpart, mechanism, salt, iterations, stored_key, server_key)"
                    " VALUES (%s, %s, %s, %s, %s, %s)"
                ),
                (
                    localpart,
                    mechanism,
                    bytes(keys.salt),
                    int(keys.iterations),
                    bytes(keys.storedKey),
                    bytes(keys.serverKey),
                ),
            )
            for mechanism, keys in sorted(credentials.keys.items())
        ]

    @_deferred
    async def createUser(self, localpart: str, credentials: Credentials) -> None:
        """Create an account with its password keys; fails with L{UserExists}."""
        statements: list[Statement] = [
            (
                "INSERT INTO users (localpart, created) VALUES (%s, %s)",
                (localpart, self._ts(self._now())),
            )
        ]
        statements.extend(self._keyInserts(localpart, credentials))
        try:
            await self._batch(statements)
        except IntegrityViolation:
            raise UserExists(localpart) from None

    @_deferred
    async def userExists(self, localpart: str) -> bool:
        """Fire with whether the account exists."""
        rows = await self._fetch(
            "SELECT 1 FROM users WHERE localpart = %s", (localpart,)
        )
        return bool(rows)

    @_deferred
    async def getCredentials(self, localpart: str) -> Credentials | None:
        """Fire with the user's L{Credentials}, or C{None} for an unknown user."""
        rows = await self._fetch(
            "SELECT k.mechanism, k.salt, k.iterations, k.stored_key, k.server_key"
            " FROM users u LEFT JOIN scram_keys k ON k.localpart = u.localpart"
            " WHERE u.localpart = %s",
            (localpart,),
        )
        if not rows:
            return None
        keys = {
            mechanism: ScramKeys(
                bytes(salt), int(iterations), bytes(stored), bytes(server)
            )
            for mechanism, salt, iterations, stored, server in rows
            if mechanism is not None
        }
        return Credentials(keys)

    @_deferred
    async def setCredentials(self, localpart: str, credentials: Credentials) -> None:
        """Replace the user's password keys; fails with L{UnknownUser}."""
        # Without keys no insert would trip the foreign key, so check the user explicitly.
        if not credentials.keys and not await self.userExists(localpart):
            raise UnknownUser(f"no user {localpart!r}")
        statements: list[Statement] = [
            ("DELETE FROM scram_keys WHERE localpart = %s", (localpart,))
        ]
        statements.extend(self._keyInserts(localpart, credentials))
        try:
            await self._batch(statements)
        except IntegrityViolation:
            raise UnknownUser(f"no user {localpart!r}") from None

    @_deferred
    async def deleteUser(self, localpart: str) -> bool:
        """
        Delete the user and, by cascade, their keys, tokens, roster, offline messages and archive
        (messages archived for the other party too stay in that party's archive).
        Fires with whether the user existed.
        """
        results = await self._batch([
            # The user's archived conversations that nobody else's archive holds; in the
            # others' the foreign keys forget the user (SET NULL).
            ("DELETE FROM archive_buckets WHERE party_a = %s AND party_b IS NULL",
             (localpart,)),
            ("DELETE FROM archive_buckets WHERE party_b = %s AND party_a IS NULL",
             (localpart,)),
            ("DELETE FROM users WHERE localpart = %s RETURNING localpart", (localpart,)),
        ])
        return bool(results[-1])

    # profile and last presence

    @_deferred
    async def getProfile(self, localpart: str) -> dict[str, Any] | None:
        """
        Fire with every key of L{PROFILE_FIELDS} (C{None} where unset) plus C{last_seen} (aware
        UTC datetime or C{None}), C{presence} and C{status} (C{""} when unset); or C{None} for an
        unknown user.
        """
        return self._profile(await self._fetch(self._PROFILE_SELECT, (localpart,)))

    #: A user's profile row as L{_profile} reads it (PostgreSQL's session state too).
    _PROFILE_COLUMNS = (*PROFILE_FIELDS, "last_seen", "presence", "status")
    _PROFILE_SELECT = f"SELECT {', '.join(_PROFILE_COLUMNS)} FROM users WHERE localpart = %s"

    def _profile(self, rows: Rows) -> dict[str, Any] | None:
        if not rows:
            return None
        row = rows[0]
        profile: dict[str, Any] = dict(zip(PROFILE_FIELDS, row))
        lastSeen, presence, status = row[len(PROFILE_FIELDS) :]
        profile["last_seen"] = self._tsOrNone(lastSeen)
        profile["presence"] = presence or ""
        profile["status"] = status or ""
        return profile

    @_deferred
    async def updateProfile(
        self, localpart: str, fields: dict[str, str | None]
    ) -> None:
        """
        Set the given profile fields; fails with L{UnknownUser}.

        @raise ValueError: for a key that is not in L{PROFILE_FIELDS}.
        """
        unknown = set(fields) - set(PROFILE_FIELDS)
        if unknown:
            # Column names are spliced into the SQL, so only known names may get there.
            raise ValueError(f"unknown profile fields: {', '.join(sorted(unknown))}")
        if not fields:
            if not await self.userExists(localpart):
                raise UnknownUser(f"no user {localpart!r}")
            return
        names = sorted(fields)
        assignments = ", ".join(f"{name} = %s" for name in names)
        rows = await self._fetch(
            f"UPDATE users SET {assignments} WHERE localpart = %s RETURNING localpart",
            tuple(fields[name] for name in names) + (localpart,),
        )
        if not rows:
            raise UnknownUser(f"no user {localpart!r}")

    @_deferred
    async def setLastPresence(
        self, localpart: str, lastSeen: datetime.datetime, presence: str, status: str
    ) -> bool:
        """
        Record the user's live presence (a show value or C{"unavailable"}), status and time.
        Fires with C{False} (and records nothing) for an unknown user: a presence change racing
        an account deletion is not an error.
        """
        rows = await self._fetch(
            "UPDATE users SET last_seen = %s, presence = %s, status = %s"
            " WHERE localpart = %s RETURNING localpart",
            (self._ts(lastSeen), presence, status, localpart),
        )
        return bool(rows)

    # tokens

    @_deferred
    async def addToken(
        self, tokenHash: str, localpart: str, expires: datetime.datetime
    ) -> None:
        """Store a login token by its hash; fails with L{UnknownUser}."""
        try:
            await self._execute(
                "INSERT INTO tokens (hash, localpart, expires) VALUES (%s, %s, %s)",
                (tokenHash, localpart, self._ts(expires)),
            )
        except IntegrityViolation:
            if not await self.userExists(localpart):
                raise UnknownUser(f"no user {localpart!r}") from None
            raise Conflict("token already stored") from None

    @_deferred
    async def lookupToken(self, tokenHash: str, now: datetime.datetime) -> str | None:
        """Fire with the localpart owning the token if it expires after C{now}, else C{None}."""
        rows = await self._fetch(
            "SELECT localpart FROM tokens WHERE hash = %s AND expires > %s",
            (tokenHash, self._ts(now)),
        )
        return rows[0][0] if rows else None

    @_deferred
    async def revokeToken(self, tokenHash: str) -> bool:
        """Delete one token; fires with whether it existed."""
        rows = await self._fetch(
            "DELETE FROM tokens WHERE hash = %s RETURNING hash", (tokenHash,)
        )
        return bool(rows)

    @_deferred
    async def revokeTokens(self, localpart: str) -> int:
        """Delete every token of a user; fires with how many."""
        rows = await self._fetch(
            "DELETE FROM tokens WHERE localpart = %s RETURNING hash", (localpart,)
        )
        return len(rows)

    @_deferred
    async def purgeExpiredTokens(self, now: datetime.datetime) -> int:
        """Delete the tokens that expire at or before C{now}; fires with how many."""
        rows = await self._fetch(
            "DELETE FROM tokens WHERE expires <= %s RETURNING hash", (self._ts(now),)
        )
        return len(rows)

    # roster

    @_deferred
    async def getRoster(self, localpart: str) -> list[RosterItem]:
        """Fire with the user's roster items (including C{inRoster=False} ones), by JID."""
        return self._rosterItems(await self._fetch(self._ROSTER_SELECT, (localpart,)))

    #: A roster row as L{_rosterItems} reads it (PostgreSQL's session state too).
    _ROSTER_COLUMNS = ("contact", "name", "subscription", "ask_out", "pending_in", "approved",
                       "in_roster", "groups_json")
    _ROSTER_SELECT = (f"SELECT {', '.join(_ROSTER_COLUMNS)} FROM roster WHERE localpart = %s"
                      " ORDER BY contact")

    @staticmethod
    def _rosterItems(rows: Rows) -> list[RosterItem]:
        return [
            RosterItem(
                jid=contact,
                name=name,
                subscription=subscription,
                askOut=bool(askOut),
                pendingIn=bool(pendingIn),
                approved=bool(approved),
                inRoster=bool(inRoster),
                groups=list(json.loads(groups)),
            )
            for contact, name, subscription, askOut, pendingIn, approved, inRoster, groups in rows
        ]

    @_deferred
    async def setRosterItem(self, localpart: str, item: RosterItem) -> None:
        """Insert or replace the item for C{item.jid}; fails with L{UnknownUser}."""
        try:
            await self._execute(
                "INSERT INTO roster (localpart, contact, name, subscription, ask_out,"
                " pending_in, approved, in_roster, groups_json)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (localpart, contact) DO UPDATE SET"
                " name = excluded.name, subscription = excluded.subscription,"
                " ask_out = excluded.ask_out, pending_in = excluded.pending_in,"
                " approved = excluded.approved, in_roster = excluded.in_roster,"
                " groups_json = excluded.groups_json",
                (
                    localpart,
                    item.jid,
                    item.name,
                    item.subscription,
                    bool(item.askOut),
                    bool(item.pendingIn),
                    bool(item.approved),
                    bool(item.inRoster),
                    json.dumps(list(item.groups)),
                ),
            )
        except IntegrityViolation:
            raise UnknownUser(f"no user {localpart!r}") from None

    @_deferred
    async def removeRosterItem(self, localpart: str, contact: str) -> bool:
        """Delete the item; fires with whether it existed."""
        rows = await self._fetch(
            "DELETE FROM roster WHERE localpart = %s AND contact = %s RETURNING contact",
            (localpart, contact),
        )
        return bool(rows)

    # offline messages

    @_deferred
    async def storeOffline(
        self, localpart: str, stamp: datetime.datetime, xml: str
    ) -> int:
        """Store a message for later delivery; fires with its id; fails with L{UnknownUser}."""
        try:
            rows = await self._fetch(
                "INSERT INTO offline (localpart, stamp, xml) VALUES (%s, %s, %s) RETURNING id",
                (localpart, self._ts(stamp), xml),
            )
        except IntegrityViolation:
            raise UnknownUser(f"no user {localpart!r}") from None
        return int(rows[0][0])

    @_deferred
    async def getOffline(self, localpart: str) -> list[OfflineMessage]:
        """Fire with the user's stored messages in the order they were stored."""
        rows = await self._fetch(
            "SELECT id, stamp, xml FROM offline WHERE localpart = %s ORDER BY id",
            (localpart,),
        )
        return [
            OfflineMessage(int(id_), self._timestampFromDB(stamp), xml)
            for id_, stamp, xml in rows
        ]

    @_deferred
    async def deleteOffline(self, localpart: str, ids: list[int]) -> int:
        """Delete delivered messages of this user; fires with how many were deleted."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        statements: list[Statement] = []
        for start in range(0, len(ids), _DELETE_CHUNK):
            chunk = ids[start : start + _DELETE_CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            statements.append(
                (
                    f"DELETE FROM offline WHERE localpart = %s AND id IN ({marks}) RETURNING id",
                    (localpart, *chunk),
                )
            )
        results = await self._batch(statements)
        return sum(len(rows) for rows in results)

    # ---------------------------------------------------------------- message archive

    # Schema version 6 (xmppjson.storage.buckets; docs/history.md, "Storage"): an archive is
    # the buckets naming its owner on one of their two sides.  A "side" is what a query of one
    # archive reads from the buckets that name its owner in one column: the owner column, the
    # column of the other side's address, and the side's letter in the records.
    _ARCHIVE_SIDES = (("party_a", "jid_b", "a"), ("party_b", "jid_a", "b"))
    _BUCKET_INSERT = (
        "INSERT INTO archive_buckets (party_a, party_b, jid_a, jid_b, first_id, first_sid,"
        " last_id, first_stamp, last_stamp, messages, data)"
    )
    _BUCKET_TYPES = ("text",) * 4 + ("bigint", "text", "bigint", "bigint", "bigint", "integer",
                                     "text")
    _SIDS_INSERT = "INSERT INTO archive_sids (sid, id)"
    _SIDS_TYPES = ("text", "bigint")
    #: Buckets one read of an archive fetches (each holds up to one batch of messages).
    _BUCKETS_PER_READ = 8
    # The highest archive id this store has given or seen (None: not read from the database
    # yet), for the ids it gives stanza-ids that do not carry their own (buckets.sidMicros).
    _archiveLastId: int | None = None

    def _insertMany(self, head: str, types: tuple[str, ...], rows: list[tuple[Any, ...]],
                    tail: str) -> list[Statement]:
        """
        The statements that insert C{rows} (one value per column, of the SQL C{types}) in
        their order: C{head} (C{INSERT INTO t (columns)}), the rows, C{tail} (C{ON CONFLICT
        ...}).  Each backend has its cheap way of passing many rows at once (SQLite: a few
        multi-row C{VALUES} statements; PostgreSQL: one array per column).
        """
        raise NotImplementedError()

    async def _archiveSeedId(self) -> None:
        rows = await self._fetch("SELECT COALESCE(MAX(last_id), 0) FROM archive_buckets")
        self._archiveLastId = max(int(rows[0][0]), self._archiveLastId or 0)

    def _archiveBatch(
        self, messages: Sequence[ArchiveMessage]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]], int]:
        """
        The bucket rows of C{messages}, the C{archive_sids} rows of those whose stanza-id does
        not carry its archive id (given here: above the previous one, and never below the
        message's time), and how many messages they hold.
        """
        last = self._archiveLastId or 0
        buckets = BucketRows()
        add = buckets.add
        sids: list[tuple[str, int]] = []
        count = 0
        for (sid, stamp, recipient, sender, senderJID, senderResource, recipientJID,
             recipientResource, xml) in messages:
            if SEP in sid or SEP in senderResource or SEP in recipientResource:
                continue  # cannot happen with valid JIDs and the server's ids: never stored
            ident = sidMicros(sid)
            if ident is None:
                ident = last + 1 if last >= stamp else stamp
                sids.append((sid, ident))
            if ident > last:  # noqa: PLR1730 -- max() costs a call per message here
                last = ident
            # One bucket per conversation whichever way its messages go: side a is the
            # smaller address (the recipient's, for a message to oneself).
            if senderJID < recipientJID:
                add((sender, recipient, senderJID, recipientJID), ident, sid, stamp,
                    recordText(ident, sid, stamp, senderResource, recipientResource, "a", xml))
            else:
                add((recipient, sender, recipientJID, senderJID), ident, sid, stamp,
                    recordText(ident, sid, stamp, recipientResource, senderResource, "b", xml))
            count += 1
        self._archiveLastId = last
        return buckets.rows(), sids, count

    def _archiveWrites(self, rows: list[tuple[Any, ...]], sids: list[tuple[str, int]],
                       tail: str = "") -> list[Statement]:
        statements = (self._insertMany(self._SIDS_INSERT, self._SIDS_TYPES, sids, tail)
                      if sids else [])
        return statements + self._insertMany(self._BUCKET_INSERT, self._BUCKET_TYPES, rows, tail)

    @_deferred
    async def archiveMessages(self, messages: list[ArchiveMessage]) -> int:
        """
        Append messages to their parties' archives in one transaction, in order; skip ids
        already archived and parties that no longer exist.  Fires with how many were written.
        """
        messages = [
            m._replace(sender=None) if m.sender is not None and m.sender == m.recipient else m
            for m in messages
            if m.recipient is not None or m.sender is not None
        ]
        if not messages:
            return 0
        if self._archiveLastId is None:
            await self._archiveSeedId()
        rows, sids, count = self._archiveBatch(messages)
        statements = self._archiveWrites(rows, sids)
        del rows, sids
        try:
            await self._counted(statements)
            return count
        except IntegrityViolation:
            pass
        # A party's account was deleted while its messages waited (its foreign key failed), or
        # a message is archived already (a batch written again after a commit whose outcome
        # was unknown, or the same stanza-id twice): keep everybody else's.
        return await self._archiveCarefully(messages)

    async def _fetchIn(self, sql: str, values: list[Any]) -> Rows:
        """C{sql} with C{{marks}} standing for C{values}, in chunks that SQLite accepts."""
        rows: Rows = []
        for start in range(0, len(values), _DELETE_CHUNK):
            chunk = values[start:start + _DELETE_CHUNK]
            rows += await self._fetch(sql.format(marks=", ".join(["%s"] * len(chunk))), chunk)
        return rows

    async def _archiveCarefully(self, messages: list[ArchiveMessage]) -> int:
        owners = sorted({o for m in messages for o in (m.recipient, m.sender) if o is not None})
        existing = {row[0] for row in await self._fetchIn(
            "SELECT localpart FROM users WHERE localpart IN ({marks})", owners)}
        seen = {row[0] for row in await self._fetchIn(
            "SELECT sid FROM archive_sids WHERE sid IN ({marks})", sorted({m.id for m in messages}))}
        # The stanza-ids of this batch already in a bucket (each owner's, around the ids).
        spans: dict[str, list[int]] = {}
        for m in messages:
            ident = sidMicros(m.id)
            if ident is not None:
                for owner in (m.recipient, m.sender):
                    if owner is not None and owner in existing:
                        span = spans.setdefault(owner, [ident, ident])
                        span[0] = min(span[0], ident)
                        span[1] = max(span[1], ident)
        for owner, (low, high) in spans.items():
            around = _Span(low=(low - 1, ""), high=(high + 1, ""))
            async for records in self._archiveBuckets(owner, around):
                seen.update(record.sid for record, _ in records)
        kept = []
        for m in messages:
            if m.id in seen:
                continue
            seen.add(m.id)
            recipient = m.recipient if m.recipient in existing else None
            sender = m.sender if m.sender in existing else None
            if recipient is not None or sender is not None:
                kept.append(m._replace(recipient=recipient, sender=sender))
        if not kept:
            return 0
        await self._archiveSeedId()
        rows, sids, count = self._archiveBatch(kept)
        await self._counted(self._archiveWrites(rows, sids, "ON CONFLICT DO NOTHING"))
        return count

    async def _archiveIds(self, sids: Sequence[str]) -> dict[str, int]:
        """The archive id of each stanza-id that has one (in C{archive_sids}, else its own)."""
        ids = {sid: int(ident) for sid, ident in await self._fetchIn(
            "SELECT sid, id FROM archive_sids WHERE sid IN ({marks})", list(sids))}
        for sid in sids:
            if sid not in ids:
                ident = sidMicros(sid)
                if ident is not None:
                    ids[sid] = ident
        return ids

    async def _archiveKeys(self, owner: str, sids: list[str]) -> dict[str, tuple[int, str]]:
        """
        The place in the owner's archive (C{(id, sid)}) of each of C{sids}.

        @raise UnknownArchiveId: one is not in that archive.
        """
        ids = await self._archiveIds(sids)
        keys = {}
        for sid in sids:
            ident = ids.get(sid)
            if ident is not None:
                around = _Span(low=(ident - 1, ""), high=(ident + 1, ""), sids=frozenset([sid]))
                async for records in self._archiveBuckets(owner, around):
                    if records:
                        keys[sid] = (ident, sid)
                        break
            if sid not in keys:
                raise UnknownArchiveId(f"no message with id {sid!r} in the archive")
        return keys

    async def _archiveHeads(
        self, owner: str, span: _Span, backward: bool = False, where: str = "",
        params: Params = (),
    ) -> AsyncIterator[list[_Head]]:
        """
        The heads (L{_Head}: everything but the records) of the owner's buckets that may hold
        records in C{span}, in archive order of their first record (C{backward}: the
        reverse), a few at a time; C{where} adds a condition.
        """
        direction = " DESC" if backward else ""
        order = f"first_id{direction}, first_sid{direction}"
        # The bare bound on first_id too: PostgreSQL uses a row comparison as an index bound
        # only on the index's own leading columns.
        after = (f"first_id {'<=' if backward else '>='} %s"
                 f" AND (first_id, first_sid) {'<' if backward else '>'} (%s, %s)")
        limit = self._BUCKETS_PER_READ
        cursor: tuple[Any, ...] = ()
        while True:
            parts = []
            allParams: list[Any] = []
            for side in self._ARCHIVE_SIDES:
                _, withColumn, letter = side
                condition, sideParams = span.bucketCondition(owner, side)
                if where:
                    condition += f" AND {where}"
                    sideParams += params
                if cursor:
                    condition += f" AND {after}"
                    sideParams += [cursor[0], *cursor]
                parts.append(
                    f"SELECT * FROM (SELECT first_id, first_sid, last_id, messages,"
                    f" {withColumn} AS with_jid, '{letter}' AS side FROM archive_buckets"
                    f" WHERE {condition} ORDER BY {order} LIMIT {limit}) AS side_{letter}")
                allParams += sideParams
            rows = await self._fetch(
                f"{' UNION ALL '.join(parts)} ORDER BY {order} LIMIT {limit}", allParams)
            if rows:
                yield [_Head(int(first), firstSid, int(last), int(n), withJID, side)
                       for first, firstSid, last, n, withJID, side in rows]
            if len(rows) < limit:
                return
            cursor = (int(rows[-1][0]), rows[-1][1])

    async def _archiveRecords(self, heads: list[_Head],
                              span: _Span) -> list[tuple[Record, str]]:
        """The records in C{span} of the buckets C{heads}, with their correspondent."""
        if not heads:
            return []
        data: dict[str, str] = dict(await self._fetchIn(
            "SELECT first_sid, data FROM archive_buckets WHERE first_sid IN ({marks})",
            [head.firstSid for head in heads]))
        return [(record, head.withJID)
                for head in heads if head.firstSid in data  # (purged meanwhile)
                for record in decode(data[head.firstSid], head.side) if span.holds(record)]

    async def _archiveBuckets(
        self, owner: str, span: _Span, where: str = "", params: Params = (),
    ) -> AsyncIterator[list[tuple[Record, str]]]:
        """The records in C{span} of the owner's archive, a few buckets at a time."""
        async for heads in self._archiveHeads(owner, span, where=where, params=params):
            yield await self._archiveRecords(heads, span)

    async def _archiveRead(self, owner: str, span: _Span, need: int,
                           backward: bool) -> list[tuple[Record, str]]:
        """
        The first C{need} records of the owner's archive in C{span} with their correspondent,
        in archive order (C{backward}: the last C{need}, newest first).  A bucket's records
        are read only when it can change the page: its head tells how many it holds and
        where it ends.
        """
        found: list[tuple[Record, str]] = []
        pending: list[_Head] = []
        promised = 0  # records the pending buckets hold, at most that many in the span

        def edge() -> int | None:
            """The id beyond which no record changes the page (None: not full yet)."""
            if len(found) < need:
                return None
            found.sort(key=_recordKey, reverse=backward)
            del found[need:]
            return found[-1][0].id

        async for heads in self._archiveHeads(owner, span, backward):
            for head in heads:
                if len(found) + promised >= need:
                    found += await self._archiveRecords(pending, span)
                    pending, promised = [], 0
                limit = edge()
                if limit is not None:
                    # Heads come in the order of their first id, and no bucket is wider
                    # than MAX_SPAN: once one begins after the page's edge (going backwards:
                    # ends, at the latest, before it), none after it changes the page.
                    if (head.first + MAX_SPAN < limit) if backward else (head.first > limit):
                        found += await self._archiveRecords(pending, span)
                        return sorted(found, key=_recordKey, reverse=backward)[:need]
                    if (head.last < limit) if backward else False:
                        continue  # wholly before the page's edge
                pending.append(head)
                promised += head.messages
        found += await self._archiveRecords(pending, span)
        return sorted(found, key=_recordKey, reverse=backward)[:need]

    async def _archiveCount(self, owner: str, span: _Span) -> int:
        """How many records of the owner's archive are in C{span}."""
        if not span.exact:
            return sum([len(records) async for records in self._archiveBuckets(owner, span)])
        inside, insideParams = span.insideCondition()
        count = 0
        for columns in self._ARCHIVE_SIDES:
            condition, params = span.bucketCondition(owner, columns)
            rows = await self._fetch(
                f"SELECT COALESCE(SUM(messages), 0) FROM archive_buckets WHERE {condition}"
                f" AND {inside}", (*params, *insideParams))
            count += int(rows[0][0])
        # The buckets across an edge of the span: count their records one by one.
        async for records in self._archiveBuckets(owner, span, where=f"NOT ({inside})",
                                                  params=insideParams):
            count += len(records)
        return count

    def _archiveEntry(self, owner: str, record: Record, withJID: str) -> ArchiveEntry:
        return ArchiveEntry(owner, record.sid, EPOCH + MICROSECOND * record.stamp, withJID,
                            record.resource, record.outgoing, record.xml)

    @_deferred
    async def queryArchive(self, owner: str, query: ArchiveQuery) -> ArchivePage:
        """
        One page of the owner's archive (see L{ArchiveQuery}); fails with L{UnknownArchiveId}
        when C{afterId}, C{beforeId}, C{after} or C{before} names an id not in the archive.
        """
        named = sorted({i for i in (query.afterId, query.beforeId, query.after, query.before)
                        if i})
        keys = await self._archiveKeys(owner, named) if named else {}
        sids = None
        idRange = None
        if query.ids is not None:
            ids = await self._archiveIds(query.ids)
            if not ids:
                return ArchivePage([], True, 0, None)
            sids = frozenset(ids)
            idRange = (min(ids.values()), max(ids.values()))
        filters = _Span(
            withJID=query.withJID, withResource=query.withResource,
            start=None if query.start is None else micros(query.start),
            end=None if query.end is None else micros(query.end),
            low=keys.get(query.afterId or ""), high=keys.get(query.beforeId or ""),
            sids=sids, idRange=idRange,
        )
        entries: list[ArchiveEntry] = []
        complete = True
        if query.max > 0:
            page = filters.within(keys.get(query.after or ""), keys.get(query.before or ""))
            found = await self._archiveRead(owner, page, query.max + 1, query.backward)
            complete = len(found) <= query.max
            del found[query.max:]
            if query.backward:
                found.reverse()
            entries = [self._archiveEntry(owner, record, withJID) for record, withJID in found]
        count = await self._archiveCount(owner, filters)
        if not entries:
            if query.max == 0:
                complete = count == 0
            return ArchivePage(entries, complete, count, None)
        first = found[0][0]
        index = await self._archiveCount(owner, filters.within(None, (first.id, first.sid)))
        return ArchivePage(entries, complete, count, index)

    @_deferred
    async def archiveBounds(
        self, owner: str
    ) -> tuple[ArchiveEntry | None, ArchiveEntry | None]:
        """Fire with the oldest and the newest entry of the owner's archive (or C{None}s)."""
        bounds = []
        for backward in (False, True):
            found = await self._archiveRead(owner, _Span(), 1, backward)
            bounds.append(self._archiveEntry(owner, *found[0]) if found else None)
        return bounds[0], bounds[1]

    @_deferred
    async def purgeArchive(self, before: datetime.datetime, limit: int = 10000) -> int:
        """
        Delete at most C{limit} archived messages stamped before C{before}, from every archive;
        fires with how many.  Bounded so that one purge never holds the database for long.
        """
        cut = micros(before)
        removed = 0
        while removed < limit:
            rows = await self._fetch(
                "SELECT first_sid, data FROM archive_buckets WHERE first_stamp < %s"
                f" ORDER BY first_stamp LIMIT {self._BUCKETS_PER_READ}", (cut,))
            statements: list[Statement] = []
            for firstSid, data in rows:
                records = decodeRaw(data)
                kept = []
                for record in records:
                    if record.stamp < cut and removed < limit:
                        removed += 1
                    else:
                        kept.append(record)
                if not kept:
                    statements.append(
                        ("DELETE FROM archive_buckets WHERE first_sid = %s", (firstSid,)))
                elif len(kept) < len(records):
                    statements.append((
                        ("UPDATE archive_buckets SET first_id = %s, first_sid = %s,"
                         " last_id = %s, first_stamp = %s, last_stamp = %s, messages = %s,"
                         " data = %s WHERE first_sid = %s"),
                        (kept[0].id, kept[0].sid, kept[-1].id, min(r.stamp for r in kept),
                         max(r.stamp for r in kept), len(kept),
                         "".join([encode(r) for r in kept]), firstSid)))
            if statements:
                await self._counted(statements)
            if len(rows) < self._BUCKETS_PER_READ:
                break
        return removed

    # ---------------------------------------------------------------- blocklist (XEP-0191)

    # JIDs per statement: two parameters each, far below SQLite's parameter limit.
    _BLOCKLIST_CHUNK = 250

    @_deferred
    async def getBlocklist(self, localpart: str) -> list[str]:
        """Fire with the JIDs the user blocks, sorted (C{[]} for an unknown user)."""
        rows = await self._fetch(self._BLOCKLIST_SELECT, (localpart,))
        return [jid for (jid,) in rows]

    _BLOCKLIST_SELECT = "SELECT jid FROM blocklist WHERE localpart = %s ORDER BY jid"

    @_deferred
    async def getSessionState(self, localpart: str) -> SessionState:
        """What a session needs when it opens, in one L{_fetchMany} (see L{IStore})."""
        roster, blocklist, profile, [(offline,)] = await self._guarded(self._runFetchMany, [
            (self._ROSTER_SELECT, (localpart,)),
            (self._BLOCKLIST_SELECT, (localpart,)),
            (self._PROFILE_SELECT, (localpart,)),
            (self._ANY_OFFLINE_SELECT, (localpart,)),
        ])
        return SessionState(self._rosterItems(roster), [jid for (jid,) in blocklist],
                            self._profile(profile), bool(offline))

    _ANY_OFFLINE_SELECT = "SELECT EXISTS (SELECT 1 FROM offline WHERE localpart = %s)"

    def _runFetchMany(self, statements: list[Statement]) -> Deferred[list[Rows]]:
        """
        Run several reads (no transaction needed) in one trip to the database and fire with
        the rows of each (PostgreSQL makes its session state one statement instead).
        """
        raise NotImplementedError()

    @_deferred
    async def addToBlocklist(self, localpart: str, jids: list[str]) -> list[str]:
        """
        Add JIDs to the blocklist in one transaction; fires with the ones that were new, in
        the order given; fails with L{UnknownUser}.
        """
        unique = list(dict.fromkeys(jids))
        if not unique:
            if not await self.userExists(localpart):
                raise UnknownUser(f"no user {localpart!r}")
            return []
        statements: list[Statement] = []
        step = self._BLOCKLIST_CHUNK
        for start in range(0, len(unique), step):
            chunk = unique[start : start + step]
            marks = ", ".join(["(%s, %s)"] * len(chunk))
            params: list[Any] = []
            for jid in chunk:
                params.extend((localpart, jid))
            sql = (
                f"INSERT INTO blocklist (localpart, jid) VALUES {marks}"
                " ON CONFLICT (localpart, jid) DO NOTHING RETURNING jid"
            )
            statements.append((sql, params))
        try:
            results = await self._batch(statements)
        except IntegrityViolation:
            raise UnknownUser(f"no user {localpart!r}") from None
        added = {row[0] for rows in results for row in rows}
        return [jid for jid in unique if jid in added]

    @_deferred
    async def removeFromBlocklist(self, localpart: str, jids: list[str] | None) -> list[str]:
        """
        Remove JIDs from the blocklist (C{None}: all of them); fires with the ones that were
        there, sorted.
        """
        if jids is None:
            rows = await self._fetch(
                "DELETE FROM blocklist WHERE localpart = %s RETURNING jid", (localpart,)
            )
            return sorted(jid for (jid,) in rows)
        unique = sorted(set(jids))
        if not unique:
            return []
        statements: list[Statement] = []
        step = self._BLOCKLIST_CHUNK
        for start in range(0, len(unique), step):
            chunk = unique[start : start + step]
            marks = ", ".join(["%s"] * len(chunk))
            sql = f"DELETE FROM blocklist WHERE localpart = %s AND jid IN ({marks}) RETURNING jid"
            statements.append((sql, (localpart, *chunk)))
        results = await self._batch(statements)
        return sorted(row[0] for rows in results for row in rows)
