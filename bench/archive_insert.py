#!/usr/bin/env python3
"""
bench/archive_insert.py: what one archived chat message costs SQLite, per candidate table
layout and statement shape (the archive writer's batches, without the server around them).

Each candidate gets a fresh database file (WAL, synchronous=NORMAL, foreign keys on: what
xmppjson.storage.sqlite configures) with USERS accounts and writes MESSAGES messages between
random pairs of them, in transactions of BATCH messages, as the archive writer does.  It prints
the process CPU time per message (the insert statements and their parameters, in this one
thread), best of ROUNDS, with the candidates interleaved round by round so that a busy shared
machine hurts them alike.

  python3 bench/archive_insert.py                       # every candidate
  python3 bench/archive_insert.py --messages 40000 --batch 1000 --pairs 50 --only v3,shared-row
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

XML = ("<message xmlns='jabber:client' to='user{r}@localhost/bench' from='user{s}@localhost/bench'"
       " type='chat' id='{n:08x}'><body>Hello there, this is message number {n} of the"
       " benchmark</body></message>")

ORDERED_SIDS = False

USERS_SQL = "CREATE TABLE users (localpart TEXT PRIMARY KEY, created TEXT NOT NULL)"

# name -> (DDL statements, writer)
Writer = Callable[[sqlite3.Connection, list[tuple[Any, ...]], dict[str, int]], None]
CANDIDATES: dict[str, tuple[list[str], Writer]] = {}

V3_DDL = [
    ("CREATE TABLE archive (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " owner TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
    " sid TEXT NOT NULL, stamp TEXT NOT NULL, with_jid TEXT NOT NULL,"
    " with_resource TEXT NOT NULL DEFAULT '', outgoing INTEGER NOT NULL, xml TEXT NOT NULL)"),
    "CREATE UNIQUE INDEX archive_owner_sid ON archive (owner, sid)",
    "CREATE INDEX archive_owner_id ON archive (owner, id)",
    "CREATE INDEX archive_owner_with ON archive (owner, with_jid, id)",
    "CREATE INDEX archive_stamp ON archive (stamp)",
]


def _text(us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(us // 1_000_000)) + f".{us % 1_000_000:06d}"


def _v3Rows(batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    rows = []
    for us, sid, sender, recipient, xml in batch:
        stamp = _text(us)
        rows.append((recipient, sid, stamp, sender + "@localhost", "bench", 0, xml))
        rows.append((sender, sid, stamp, recipient + "@localhost", "bench", 1, xml))
    return rows


def v3(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], _: dict[str, int]) -> None:
    """As shipped: multi-row VALUES of 100 rows, ON CONFLICT DO NOTHING RETURNING id."""
    rows = _v3Rows(batch)
    for start in range(0, len(rows), 100):
        chunk = rows[start:start + 100]
        marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        params = [v for row in chunk for v in row]
        conn.execute("INSERT INTO archive (owner, sid, stamp, with_jid, with_resource, outgoing,"
                     f" xml) VALUES {marks} ON CONFLICT (owner, sid) DO NOTHING RETURNING id",
                     params).fetchall()


def v3NoReturning(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], _: Any) -> None:
    """v3's table, executemany and no RETURNING."""
    conn.executemany("INSERT INTO archive (owner, sid, stamp, with_jid, with_resource, outgoing,"
                     " xml) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, sid) DO NOTHING",
                     _v3Rows(batch))


CANDIDATES["v3"] = (V3_DDL, v3)
CANDIDATES["v3-executemany"] = (V3_DDL, v3NoReturning)


def _perOwnerDDL(withIndex: bool, rowid: bool = False) -> list[str]:
    ddl = [
        "CREATE TABLE archive (owner TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
        " id INTEGER NOT NULL, sid TEXT NOT NULL, stamp INTEGER NOT NULL,"
        " with_jid TEXT NOT NULL, with_resource TEXT NOT NULL, outgoing INTEGER NOT NULL,"
        " xml TEXT NOT NULL, PRIMARY KEY (owner, id))" + ("" if rowid else " WITHOUT ROWID"),
        "CREATE UNIQUE INDEX archive_owner_sid ON archive (owner, sid)",
    ]
    if withIndex:
        ddl.append("CREATE INDEX archive_owner_with ON archive (owner, with_jid, id)")
    return ddl


def _perOwnerRows(batch: list[tuple[Any, ...]], last: dict[str, int]) -> list[tuple[Any, ...]]:
    rows = []
    for us, sid, sender, recipient, xml in batch:
        for owner, other, out in ((recipient, sender, 0), (sender, recipient, 1)):
            ident = max(last.get(owner, 0) + 1, us)
            last[owner] = ident
            rows.append((owner, ident, sid, us, other + "@localhost", "bench", out, xml))
    return rows


_V5_INSERT = ("INSERT INTO archive (owner, id, sid, stamp, with_jid, with_resource, outgoing, xml)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")


def v5(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], last: dict[str, int]) -> None:
    """Clustered on (owner, id), ids from Python, integer stamps, executemany."""
    conn.executemany(_V5_INSERT, _perOwnerRows(batch, last))


def v5Values(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], last: dict[str, int]) -> None:
    """The same table, multi-row VALUES of 100 rows, no RETURNING."""
    rows = _perOwnerRows(batch, last)
    for start in range(0, len(rows), 100):
        chunk = rows[start:start + 100]
        marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        conn.execute("INSERT INTO archive (owner, id, sid, stamp, with_jid, with_resource,"
                     f" outgoing, xml) VALUES {marks} ON CONFLICT DO NOTHING",
                     [v for row in chunk for v in row])


CANDIDATES["per-owner-clustered"] = (_perOwnerDDL(True), v5)
CANDIDATES["per-owner-clustered-values"] = (_perOwnerDDL(True), v5Values)
CANDIDATES["per-owner-clustered-no-with"] = (_perOwnerDDL(False), v5)
CANDIDATES["per-owner-pk-rowid-table"] = (_perOwnerDDL(True, rowid=True), v5)


def v5NoFK(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], last: dict[str, int]) -> None:
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.executemany(_V5_INSERT, _perOwnerRows(batch, last))


CANDIDATES["per-owner-clustered-no-fk"] = (_perOwnerDDL(True), v5NoFK)

# One row per message, shared by both parties; each party's rows found by its own index:
# the shape of schema version 5 ("shared-row").
SHARED_DDL = [
    ("CREATE TABLE messages (id INTEGER PRIMARY KEY, sid TEXT NOT NULL, stamp INTEGER NOT NULL,"
    " sender TEXT REFERENCES users (localpart) ON DELETE SET NULL,"
    " recipient TEXT REFERENCES users (localpart) ON DELETE SET NULL,"
    " sender_jid TEXT NOT NULL, sender_resource TEXT NOT NULL,"
    " recipient_jid TEXT NOT NULL, recipient_resource TEXT NOT NULL, xml TEXT NOT NULL)"),
    "CREATE UNIQUE INDEX messages_sid ON messages (sid)",
    "CREATE INDEX messages_sender ON messages (sender, id)",
    "CREATE INDEX messages_recipient ON messages (recipient, id)",
]


def shared(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], counter: dict[str, int]) -> None:
    rows = []
    n = counter.get("", 0)
    for us, sid, sender, recipient, xml in batch:
        n = max(n + 1, us)
        rows.append((n, sid, us, sender, recipient, sender + "@localhost", "bench",
                     recipient + "@localhost", "bench", xml))
    counter[""] = n
    conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                     " ON CONFLICT DO NOTHING", rows)


CANDIDATES["shared-row"] = (SHARED_DDL, shared)

# Per-owner rows, the XML once in a table of its own.
SPLIT_DDL = _perOwnerDDL(True) + [
    "CREATE TABLE bodies (id INTEGER PRIMARY KEY, xml TEXT NOT NULL)",
]


def split(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], last: dict[str, int]) -> None:
    rows = _perOwnerRows(batch, last)
    bodies = [(row[1], row[7]) for row in rows[::2]]
    conn.executemany("INSERT INTO bodies VALUES (?, ?) ON CONFLICT DO NOTHING", bodies)
    conn.executemany(_V5_INSERT, [row[:7] + ("",) for row in rows])


CANDIDATES["per-owner-clustered-xml-once"] = (SPLIT_DDL, split)

# Per-owner rows in an ordinary table whose rowid is the (global, Python-assigned) id: the big
# rows are appended, the indexes stay small.
ROWID_DDL = [
    ("CREATE TABLE archive (id INTEGER PRIMARY KEY,"
    " owner TEXT NOT NULL REFERENCES users (localpart) ON DELETE CASCADE,"
    " sid TEXT NOT NULL, stamp INTEGER NOT NULL, with_jid TEXT NOT NULL,"
    " with_resource TEXT NOT NULL, outgoing INTEGER NOT NULL, xml TEXT NOT NULL)"),
    "CREATE UNIQUE INDEX archive_owner_sid ON archive (owner, sid)",
    "CREATE INDEX archive_owner ON archive (owner, id)",
    "CREATE INDEX archive_owner_with ON archive (owner, with_jid, id)",
]


def rowidTable(conn: sqlite3.Connection, batch: list[tuple[Any, ...]], counter: dict[str, int]) -> None:
    rows = []
    n = counter.get("", 0)
    for us, sid, sender, recipient, xml in batch:
        for owner, other, out in ((recipient, sender, 0), (sender, recipient, 1)):
            n = max(n + 1, us)
            rows.append((n, owner, sid, us, other + "@localhost", "bench", out, xml))
    counter[""] = n
    conn.executemany("INSERT INTO archive VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     rows)


CANDIDATES["shared-row-covering"] = (SHARED_DDL[:2] + [
    "CREATE INDEX messages_sender ON messages (sender, id, recipient_jid)",
    "CREATE INDEX messages_recipient ON messages (recipient, id, sender_jid)",
], shared)
CANDIDATES["shared-row-no-sid"] = ([SHARED_DDL[0]] + SHARED_DDL[2:], shared)
CANDIDATES["shared-row-table-only"] = ([SHARED_DDL[0]], shared)
CANDIDATES["rowid-per-owner"] = (ROWID_DDL, rowidTable)
CANDIDATES["rowid-per-owner-no-with"] = (ROWID_DDL[:3], rowidTable)
CANDIDATES["shared-row-with"] = (SHARED_DDL + [
    "CREATE INDEX messages_sender_with ON messages (sender, recipient_jid, id)",
    "CREATE INDEX messages_recipient_with ON messages (recipient, sender_jid, id)",
], shared)


def run(name: str, messages: int, batch: int, users: int, directory: str,
        pragmas: list[str], pairs: int = 0) -> float:
    ddl, writer = CANDIDATES[name]
    path = os.path.join(directory, f"{name}.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in pragmas:
        conn.execute(f"PRAGMA {pragma}").fetchall()
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(USERS_SQL)
    conn.executemany("INSERT INTO users VALUES (?, '')", [(f"user{i}",) for i in range(users)])
    for statement in ddl:
        conn.execute(statement)
    rng = random.Random(7)
    us = 1_715_949_015_000_000
    traffic = []
    for n in range(messages):
        if pairs:
            pair = rng.randrange(pairs)
            s, r = (2 * pair, 2 * pair + 1) if n % 2 else (2 * pair + 1, 2 * pair)
        else:
            s, r = rng.sample(range(users), 2)
        us += rng.randrange(0, 60)
        sid = f"{us:013x}{rng.getrandbits(72):018x}" if ORDERED_SIDS else f"{rng.getrandbits(96):024x}"
        traffic.append((us, sid, f"user{s}", f"user{r}",
                        XML.format(s=s, r=r, n=n)))
    state: dict[str, int] = {}
    started = time.process_time()
    for start in range(0, messages, batch):
        conn.execute("BEGIN IMMEDIATE")
        writer(conn, traffic[start:start + batch], state)
        conn.execute("COMMIT")
    spent = time.process_time() - started
    conn.close()
    return spent / messages * 1e6


def runStore(code: str, messages: int, batch: int, pairs: int, directory: str) -> tuple[float, float]:
    """
    The server's own archive writer on SQLite: the store of C{code} (a checkout or a snapshot
    of any version, see bench/benchlib.snapshot) builds its statements for batches of chat
    messages between C{pairs} fixed pairs of users, and they run on a file database with the
    server's connection settings.  Returns CPU µs per message: (Python building the
    statements, as the reactor thread does; SQLite running them, as the writer thread does).
    """
    import datetime
    import importlib
    import sys

    sys.path.insert(0, code)
    try:
        for name in [n for n in sys.modules if n == "xmppjson" or n.startswith("xmppjson.")]:
            del sys.modules[name]
        storage = importlib.import_module("xmppjson.storage")
        schema = importlib.import_module("xmppjson.storage.schema")
        sqliteStore = importlib.import_module("xmppjson.storage.sqlite")
        stanzas = importlib.import_module("xmppjson.im.stanzas")
    finally:
        sys.path.remove(code)
    path = os.path.join(directory, "store.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    sqliteStore._configure(conn)
    for _, statements in schema.migrationsAfter(0, "sqlite"):
        for statement in statements:
            conn.execute(statement)
    users = [f"user{i:04d}" for i in range(2 * pairs)]
    conn.executemany("INSERT INTO users (localpart, created) VALUES (?, '2026-01-01')",
                     [(u,) for u in users])
    store = sqliteStore.SQLiteStore(path)
    # An ArchiveMessage's stamp: a datetime up to schema 6's first version, whole microseconds
    # since (so that one checkout can time the versions before it).
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    stampIsInt = storage.ArchiveMessage.__annotations__["stamp"] == "int"

    def stampOf(when: datetime.datetime) -> Any:
        return (when - epoch) // datetime.timedelta(microseconds=1) if stampIsInt else when

    store._archiveLastId = 0
    rng = random.Random(7)
    when = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
    python = database = 0.0
    for _ in range(messages // batch):
        chunk = []
        for n in range(batch):
            pair = rng.randrange(pairs)
            s, r = (2 * pair, 2 * pair + 1) if n % 2 else (2 * pair + 1, 2 * pair)
            when += datetime.timedelta(microseconds=70)
            chunk.append(storage.ArchiveMessage(
                stanzas.newStanzaId(), stampOf(when), users[r], users[s], f"{users[s]}@localhost",
                "bench", f"{users[r]}@localhost", "bench", XML.format(r=r, s=s, n=n)))
        started = time.process_time()
        if hasattr(store, "_archiveBatch"):  # schema version 6 and later
            rows, sids, _ = store._archiveBatch(chunk)
            statements = store._archiveWrites(rows, sids)
        else:
            statements = store._archiveWrites(chunk)
        built = time.process_time()
        conn.execute("BEGIN")
        for sql, params in statements:
            conn.execute(sqliteStore._qmark(sql), tuple(params))
        conn.execute("COMMIT")
        python += built - started
        database += time.process_time() - built
    conn.close()
    return python / messages * 1e6, database / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=0,
                        help="users talk in this many fixed pairs (0: random pairs)")
    parser.add_argument("--only", default="", help="comma-separated candidates")
    parser.add_argument("--pragma", action="append", default=[],
                        help="extra PRAGMA before the tables are made (page_size=1024, ...)")
    parser.add_argument("--ordered-sids", action="store_true",
                        help="stanza-ids that begin with the time (as xmppjson's do) instead of random ones")
    parser.add_argument("--store", action="append", default=[], metavar="CODE",
                        help="time the server's own archive writer from this checkout or"
                        " snapshot instead of the candidates (repeat to compare versions)")
    args = parser.parse_args()
    if args.store:
        best2: dict[str, tuple[float, float]] = {}
        with tempfile.TemporaryDirectory() as directory:
            for _ in range(args.rounds):
                for code in args.store:
                    python, database = runStore(code, args.messages, args.batch,
                                                args.pairs or 50, directory)
                    old = best2.get(code, (float("inf"), float("inf")))
                    best2[code] = (min(old[0], python), min(old[1], database))
        print(f"{args.messages} messages, {args.pairs or 50} pairs, {args.batch} per"
              f" transaction; CPU µs per message, best of {args.rounds}: Python + SQLite")
        for code in args.store:
            python, database = best2[code]
            print(f"  {code}: {python:.2f} + {database:.2f} = {python + database:.2f}")
        return
    global ORDERED_SIDS
    ORDERED_SIDS = args.ordered_sids
    names = [n for n in args.only.split(",") if n] or list(CANDIDATES)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.rounds):
            for name in names:
                cost = run(name, args.messages, args.batch, args.users, directory, args.pragma,
                           args.pairs)
                best[name] = min(best.get(name, cost), cost)
    print(f"{args.messages} messages, {args.users} users, {args.batch} per transaction;"
          f" CPU µs per message, best of {args.rounds}")
    for name in names:
        print(f"  {name:20s} {best[name]:7.1f}")


if __name__ == "__main__":
    main()
