#!/usr/bin/env python3
"""
bench/archive_pg.py: what the archive writer costs PostgreSQL, per way of storing a bucket's
records (the column's TOAST compression).

The server's own store (L{xmppjson.storage.pgsql.PostgreSQLStore}, from this checkout or
C{--code}) writes MESSAGES chat messages between PAIRS fixed pairs of users, in batches of BATCH
as the archive writer does, on a database emptied for each run.  Before writing, the bucket
column is set to each candidate: C{pglz} (PostgreSQL's default, schema version 6), C{lz4}
(version 7), C{external} (no compression).  It prints, per message, the CPU of the database's
processes (the postmaster and its children, from C{/proc}: run it on the same machine as the
database) and of this process (the store's Python, psycopg2 quoting the batch), best of
ROUNDS, candidates interleaved round by round; and the table's size on disk.

  eval "$(bash .ci/postgres.sh)"
  python3 bench/archive_pg.py --url "$XMPPJSON_TEST_PG" --pidfile /tmp/xmppjson-ci-postgres/data/postmaster.pid
  python3 bench/archive_pg.py ... --pairs 500 --messages 100000

The database's tables are dropped: give it a database you can wipe.
"""
from __future__ import annotations

import argparse
import glob
import os
import random
import resource
import sys
import time

CANDIDATES = {
    "pglz": "ALTER TABLE archive_buckets ALTER COLUMN data SET COMPRESSION pglz,"
            " ALTER COLUMN data SET STORAGE EXTENDED",
    "lz4": "ALTER TABLE archive_buckets ALTER COLUMN data SET COMPRESSION lz4,"
           " ALTER COLUMN data SET STORAGE EXTENDED",
    "external": "ALTER TABLE archive_buckets ALTER COLUMN data SET STORAGE EXTERNAL",
}

# What the c2s door writes for a chat message (about 250 characters), varied per message.
XML = ("<message xmlns='jabber:client' to='user{r}@bench.local/bench' type='chat'"
       " from='user{s}@bench.local/bench' id='{n:08x}'><body>A chat message of a typical length,"
       " number {n}, some sixty characters.</body><active xmlns='http://jabber.org/protocol/"
       "chatstates'/><stanza-id xmlns='urn:xmpp:sid:0' by='user{r}@bench.local' id='{sid}'/>"
       "</message>")

TCK = os.sysconf("SC_CLK_TCK")


def databaseCPU(postmaster: int) -> float:
    """CPU seconds of the postmaster and its children (the backends, the WAL writer, ...)."""
    total = 0.0
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(path.split("/")[2])
        if pid == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / TCK
    return total


def ownCPU() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace, reactor) -> None:
    from twisted.internet import defer

    from xmppjson.im.stanzas import newStanzaId
    from xmppjson.storage import ArchiveMessage, Credentials
    from xmppjson.storage.pgsql import PostgreSQLStore

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tests import pgtest

    postmaster = args.postmaster
    rng = random.Random(7)
    pairs = [(2 * i, 2 * i + 1) for i in range(args.pairs)]
    names = [c for c in args.only.split(",") if c] or list(CANDIDATES)
    best: dict[str, tuple[float, float, int]] = {}
    for round_ in range(args.rounds):
        for name in names:
            pgtest.resetDatabase(args.url)
            store = PostgreSQLStore(args.url, reactor)
            await store.start()
            try:
                await store._execute(CANDIDATES[name], ())
                for user in range(2 * args.pairs):
                    await store.createUser(f"user{user}", Credentials({}))
                batches = []
                n = 0
                while n < args.messages:
                    batch = []
                    for _ in range(min(args.batch, args.messages - n)):
                        s, r = rng.choice(pairs)
                        if rng.random() < 0.5:
                            s, r = r, s
                        sid = newStanzaId()
                        batch.append(ArchiveMessage(
                            sid, time.time_ns() // 1000, f"user{r}", f"user{s}", f"user{s}@bench.local",
                            "bench", f"user{r}@bench.local", "bench",
                            XML.format(r=r, s=s, n=n, sid=sid)))
                        n += 1
                    batches.append(batch)
                # Let the database finish what the set-up started (autovacuum of users, ...).
                await defer.Deferred.fromCoroutine(sleep(reactor, 0.5))
                db0, own0 = databaseCPU(postmaster), ownCPU()
                for batch in batches:
                    await store.archiveMessages(batch)
                await defer.Deferred.fromCoroutine(sleep(reactor, 0.3))  # the WAL writer's share
                db, own = databaseCPU(postmaster) - db0, ownCPU() - own0
                rows = await store._runFetch(
                    "SELECT pg_total_relation_size('archive_buckets')", ())
                size = int(rows[0][0])
            finally:
                await store.close()
            per = (db / n * 1e6, own / n * 1e6, size)
            print(f"round {round_} {name:9} database {per[0]:6.2f} µs/msg, this process "
                  f"{per[1]:6.2f} µs/msg, table {size / n:6.1f} bytes/msg", flush=True)
            if name not in best or per[0] + per[1] < best[name][0] + best[name][1]:
                best[name] = per
    print(f"\n{args.messages} messages, {args.pairs} pairs, batches of {args.batch}; best of "
          f"{args.rounds} (CPU µs per message)\n")
    print("| compression | database | store (Python) | total | table bytes/msg |")
    print("|---|---|---|---|---|")
    for name in names:
        db, own, size = best[name]
        print(f"| {name} | {db:.2f} | {own:.2f} | {db + own:.2f} | {size / args.messages:.0f} |")


async def sleep(reactor, seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("XMPPJSON_TEST_PG"),
                        help="postgresql:// URL of a database that may be wiped")
    parser.add_argument("--pidfile", required=True, help="the database's postmaster.pid")
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated candidates: "
                        + ", ".join(CANDIDATES))
    parser.add_argument("--code", default=None, help="the xmppjson checkout to take the store from")
    args = parser.parse_args()
    if not args.url:
        raise SystemExit("--url or XMPPJSON_TEST_PG is needed")
    with open(args.pidfile) as f:
        args.postmaster = int(f.readline())
    sys.path.insert(0, args.code or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(run(args, reactor)))


if __name__ == "__main__":
    main()
