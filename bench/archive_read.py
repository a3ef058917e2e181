#!/usr/bin/env python3
"""
bench/archive_read.py: how long archive queries take on a big archive (SQLite, the server's
store): 100,000 messages of one user with two correspondents, written in batches of 2500 as
the archive writer does, then one query of each kind, wall time of each.

  python3 bench/archive_read.py [--messages 100000] [--code DIR]
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2500)
    parser.add_argument("--code", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args()
    sys.path.insert(0, args.code)
    from twisted.internet import defer, task

    from xmppjson.im.stanzas import newStanzaId
    from xmppjson.scram import makeCredentials
    from xmppjson.storage import ArchiveMessage, ArchiveQuery
    from xmppjson.storage.sql import micros
    from xmppjson.storage.sqlite import SQLiteStore

    utc = datetime.UTC

    async def run(reactor: Any) -> None:
        directory = tempfile.mkdtemp(prefix="xj-archive-read-")
        store = SQLiteStore(os.path.join(directory, "archive.sqlite3"), reactor=reactor)
        await store.start()
        for user in ("alice", "bob", "carol"):
            await store.createUser(user, makeCredentials("secret123", 4096))
        when = datetime.datetime(2026, 1, 1, tzinfo=utc)
        sids: list[str] = []
        for start in range(0, args.messages, args.batch):
            batch = []
            for n in range(start, min(start + args.batch, args.messages)):
                when += datetime.timedelta(milliseconds=1)
                sid = newStanzaId()
                sids.append(sid)
                frm, to = (("alice", "bob") if n % 2 else ("bob", "alice")) if n % 5 else ("carol", "alice")
                batch.append(ArchiveMessage(sid, micros(when), to, frm, f"{frm}@localhost", "pc",
                                            f"{to}@localhost", "pc",
                                            f"<message type='chat'><body>message {n}</body></message>"))
            await store.archiveMessages(batch)
        t0 = datetime.datetime(2026, 1, 1, tzinfo=utc)
        queries = [
            ("latest page (RSM before='')", ArchiveQuery(max=50, before="")),
            ("first page", ArchiveQuery(max=50)),
            ("page after the middle id", ArchiveQuery(max=50, after=sids[len(sids) // 2])),
            ("one correspondent, latest page", ArchiveQuery(withJID="carol@localhost", max=50, before="")),
            ("count only (max=0)", ArchiveQuery(max=0)),
            ("start/end, 10 s", ArchiveQuery(start=t0 + datetime.timedelta(seconds=30),
                                              end=t0 + datetime.timedelta(seconds=40), max=50)),
            ("with a resource (decodes all)", ArchiveQuery(withJID="bob@localhost", withResource="pc", max=50)),
        ]
        print(f"{args.messages} messages of alice in batches of {args.batch}; wall ms per query")
        for name, query in queries:
            started = time.perf_counter()
            page = await store.queryArchive("alice", query)
            print(f"  {name:34s} {(time.perf_counter() - started) * 1000:8.1f}"
                  f"   ({len(page.entries)} of {page.count})")
        started = time.perf_counter()
        await store.archiveBounds("alice")
        print(f"  {'bounds (MAM metadata)':34s} {(time.perf_counter() - started) * 1000:8.1f}")
        await store.close()

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
