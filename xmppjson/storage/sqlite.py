"""
The embedded SQLite backend: C{twisted.enterprise.adbapi} over the standard C{sqlite3} module.

One connection in one worker thread (C{cp_min=cp_max=1}): SQLite serialises writers anyway, and
a single connection is what makes C{:memory:} work (a memory database lives exactly as long as
its connection, here the pool's).  The file is opened in WAL mode with C{synchronous=NORMAL}
(durable across application crashes, fast commits) and foreign keys on, which the schema's
C{ON DELETE CASCADE} relies on.

The connection runs in autocommit mode (C{isolation_level=None}) and a batch brackets itself
with C{BEGIN IMMEDIATE}/C{COMMIT}: Python's implicit transactions would leave DDL outside the
transaction, and a migration must be all or nothing.
"""

from __future__ import annotations

import datetime
import sqlite3
from functools import lru_cache
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from xmppjson.storage import IStore
from xmppjson.storage.sql import (
    INTEGRITY,
    UNAVAILABLE,
    UTC,
    Params,
    Rows,
    SQLStore,
    Statement,
)

# Fixed width (always microseconds, never an offset: the value is UTC) so that text order is
# time order and comparisons in SQL are correct.
_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

# The page cache of the one connection (KiB), the WAL size that triggers a checkpoint (KiB),
# and the page size of a new database (bytes).
_CACHE_KIB = 32768
_CHECKPOINT_KIB = 40000
_PAGE_SIZE = 16384

# How long a statement waits for another process's write lock before failing (seconds).
_BUSY_TIMEOUT = 5.0


# Rows per multi-row INSERT statement (L{SQLiteStore._insertMany}): a batch's rows are padded
# to the next power of two, at least L{_VALUES_MIN}, so that a handful of statement texts serve
# every batch (sqlite3 keeps them compiled); at most what SQLite's parameter limit (32766 since
# 3.32) allows for the row width.
_VALUES_MIN = 16
_MAX_PARAMETERS = 32766


@lru_cache(maxsize=64)
def _valuesStatement(head: str, width: int, rows: int, tail: str) -> str:
    """
    C{head SELECT ... FROM (VALUES ...) WHERE column1 IS NOT NULL tail} for C{rows} rows of
    C{width} values, in C{%s} style: each row has a leading mark, C{NULL} in the padding rows,
    which the C{WHERE} leaves out (and which an upsert C{tail} needs after a C{SELECT}).
    """
    row = "(" + ", ".join(["%s"] * (width + 1)) + ")"
    columns = ", ".join(f"column{i}" for i in range(2, width + 2))
    return (f"{head} SELECT {columns} FROM (VALUES {', '.join([row] * rows)})"
            f" WHERE column1 IS NOT NULL {tail}")


@lru_cache(maxsize=512)
def _qmark(sql: str) -> str:
    """Rewrite the shared C{%s} placeholders into sqlite3's C{?}."""
    return sql.replace("%s", "?")


def _configure(connection: sqlite3.Connection) -> None:
    """Per-connection settings, run by adbapi right after connecting."""
    # Pages of 16 KiB for a new database (an existing one keeps its own: in WAL mode only a
    # VACUUM could change it): a batch of the archive writer dirties a page per active user
    # in each of the buckets' party indexes, and larger pages hold more users' entries (SQLite's
    # work per message at 500 conversations 7.4 -> 5.7 µs, docs/performance.md item 19).
    connection.execute(f"PRAGMA page_size={_PAGE_SIZE}")
    connection.execute("PRAGMA journal_mode=WAL").fetchall()
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    # The archive writer's transactions touch a page per active user in each index: with
    # SQLite's default 2 MB cache they spilled dirty pages to the WAL before their commit
    # and read them back (a third of its system calls).  32 MB, and a checkpoint every
    # 40 MB of WAL (10000 pages of 4 KiB) instead of 1000 pages, so that a page rewritten by
    # many transactions is copied into the database once (docs/performance.md, "archive
    # write cost").
    connection.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    pageSize = connection.execute("PRAGMA page_size").fetchone()[0]
    connection.execute(
        f"PRAGMA wal_autocheckpoint={_CHECKPOINT_KIB * 1024 // pageSize}").fetchall()


def _rows(cursor: Any) -> Rows:
    # description is None for a statement without a result set
    return (
        [tuple(row) for row in cursor.fetchall()]
        if cursor.description is not None
        else []
    )


def _fetchInteraction(cursor: Any, sql: str, params: Params) -> Rows:
    cursor.execute(_qmark(sql), tuple(params))
    return _rows(cursor)


def _executeInteraction(cursor: Any, sql: str, params: Params) -> None:
    cursor.execute(_qmark(sql), tuple(params))
    # drain, so that a RETURNING statement runs to completion
    cursor.fetchall()


def _inTransaction(cursor: Any, statements: list[Statement], step: Any) -> list[Any]:
    """
    Run C{step(cursor, sql, params)} for each statement, all in one transaction.  One
    statement is a transaction of its own (the connection is in autocommit mode): no C{BEGIN}
    and C{COMMIT} around it, which would be two more calls that let go of the GIL and must
    take it back from a busy reactor thread (docs/performance.md, item 16).
    """
    if len(statements) == 1:
        [(sql, params)] = statements
        return [step(cursor, _qmark(sql), params)]
    cursor.execute("BEGIN IMMEDIATE")
    try:
        results = [step(cursor, _qmark(sql), params) for sql, params in statements]
        cursor.execute("COMMIT")
    except BaseException:
        try:
            cursor.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite already rolled back on its own (some errors end the transaction)
            pass
        raise
    return results


def _fetchStep(cursor: Any, sql: str, params: Params) -> Rows:
    cursor.execute(sql, tuple(params))
    return _rows(cursor)


def _fetchManyInteraction(cursor: Any, statements: list[Statement]) -> list[Rows]:
    """Several reads in one trip to the connection's thread (no transaction: reads only)."""
    return [_fetchStep(cursor, _qmark(sql), params) for sql, params in statements]


def _countStep(cursor: Any, sql: str, params: Params) -> int:
    cursor.execute(sql, tuple(params))
    return int(cursor.rowcount)


def _batchInteraction(cursor: Any, statements: list[Statement]) -> list[Rows]:
    return _inTransaction(cursor, statements, _fetchStep)


def _countedInteraction(cursor: Any, statements: list[Statement]) -> list[int]:
    return _inTransaction(cursor, statements, _countStep)


@implementer(IStore)
class SQLiteStore(SQLStore):
    """
    L{IStore} in an SQLite file (or in memory).

    Nothing can break a connection to an embedded database, so "unavailable" here means the
    file cannot be opened or written (missing directory, permissions, disk full, locked by
    another process): L{start} retries opening it, and a failing statement fails alone with
    L{StoreUnavailable}.
    """

    backendName = "sqlite"
    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        clock: Any = None,
        retryDelay: tuple[float, float] = (0.5, 30.0),
    ):
        """
        @param path: the database file, relative to the working directory, or C{":memory:"}.
        @param reactor: see L{SQLStore.__init__}.
        """
        super().__init__(reactor=reactor, clock=clock, retryDelay=retryDelay)
        self.path = path
        self._pool: adbapi.ConnectionPool | None = None

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    def _openConnection(self) -> Deferred[Any]:
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
            cp_reactor=self._reactor,
            check_same_thread=False,
            isolation_level=None,
            timeout=_BUSY_TIMEOUT,
        )
        # adbapi connects lazily: run a query so that a file that cannot be opened fails here.
        return self._pool.runInteraction(_fetchInteraction, "SELECT 1", ())

    def _closeConnection(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _runFetch(self, sql: str, params: Params) -> Deferred[Rows]:
        assert self._pool is not None
        return self._pool.runInteraction(_fetchInteraction, sql, params)

    def _runExecute(self, sql: str, params: Params) -> Deferred[None]:
        assert self._pool is not None
        return self._pool.runInteraction(_executeInteraction, sql, params)

    def _runBatch(self, statements: list[Statement]) -> Deferred[list[Rows]]:
        assert self._pool is not None
        return self._pool.runInteraction(_batchInteraction, statements)

    def _runFetchMany(self, statements: list[Statement]) -> Deferred[list[Rows]]:
        # One trip to the connection's thread for all of them: a trip costs about 0.2 ms of
        # CPU (waking the thread, then the reactor), more than a small read.
        assert self._pool is not None
        return self._pool.runInteraction(_fetchManyInteraction, statements)

    def _runCounted(self, statements: list[Statement]) -> Deferred[list[int]]:
        assert self._pool is not None
        return self._pool.runInteraction(_countedInteraction, statements)

    def _insertMany(self, head: str, types: tuple[str, ...], rows: list[tuple[Any, ...]],
                    tail: str) -> list[Statement]:
        """
        The rows in as few multi-row statements as SQLite's parameter limit allows: one for
        every batch of the archive writer but the largest.  Each call into SQLite lets go of
        the GIL, and taking it back while the reactor thread is busy costs the writer thread
        many futile wake-ups (up to the interpreter's 5 ms switch interval): a statement per
        row (C{executemany}) made a batch of 1000 archived messages take 0.4-0.7 s instead of
        7 ms, and five statements plus C{BEGIN} and C{COMMIT} per batch still cost several
        times SQLite's own work (docs/performance.md, items 11 and 16).  (Rows passed as one
        JSON parameter read back with C{json_each} cost half as much CPU again per row: every
        C{json_extract} parses the row's text again.)
        """
        statements: list[Statement] = []
        width = len(types)
        most = _VALUES_MIN
        while most * 2 * (width + 1) <= _MAX_PARAMETERS:
            most *= 2
        padding = (None,) * (width + 1)
        for start in range(0, len(rows), most):
            chunk = rows[start:start + most]
            size = _VALUES_MIN
            while size < len(chunk):
                size *= 2
            params = [value for row in chunk for value in (1, *row)]
            params += padding * (size - len(chunk))
            statements.append((_valuesStatement(head, width, size, tail), params))
        return statements

    def _classify(self, failure: Failure) -> str | None:
        if failure.check(sqlite3.IntegrityError):
            return INTEGRITY
        # OperationalError covers "unable to open", "database is locked", "disk I/O error"; it
        # also covers SQL mistakes, which the tests exist to catch.
        if failure.check(sqlite3.OperationalError):
            return UNAVAILABLE
        return None

    def _timestampToDB(self, when: datetime.datetime) -> str:
        return when.strftime(_TIMESTAMP_FORMAT)

    def _timestampFromDB(self, value: Any) -> datetime.datetime:
        return datetime.datetime.strptime(value, _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
