"""
Tests for L{xmppjson.storage}: one mixin of behaviour tests, L{StoreTestsMixin}, run against
every backend (SQLite in a file, SQLite in memory, PostgreSQL) so that they provably behave alike.

These tests do real I/O (a worker thread for SQLite, sockets for PostgreSQL), so they run on
trial's reactor; time-dependent behaviour (retries) is driven with short delays or a
L{task.Clock}.
"""

from __future__ import annotations

import datetime
import os
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.protocols import portforward
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests import pgtest
from xmppjson.error import StoreUnavailable
from xmppjson.im.stanzas import newStanzaId
from xmppjson.storage import (
    PROFILE_FIELDS,
    ArchiveEntry,
    ArchiveMessage,
    ArchiveQuery,
    Credentials,
    IStore,
    RosterItem,
    ScramKeys,
    UnknownArchiveId,
    UnknownUser,
    UserExists,
    openStore,
    schema,
    sqlite,
)
from xmppjson.storage.buckets import (
    MAX_SPAN,
    BucketRows,
    Raw,
    decode,
    decodeRaw,
    encode,
    sidMicros,
)
from xmppjson.storage.sql import SchemaTooNew, SQLStore, micros
from xmppjson.storage.sqlite import SQLiteStore

UTC = datetime.UTC
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime.datetime(2024, 5, 17, 12, 30, 15, 123456, tzinfo=UTC)
FAST_RETRY = (0.01, 0.05)

# Real I/O (a worker thread, sockets) needs the running reactor.
reactor: Any = _reactor

KEYS1 = ScramKeys(
    salt=b"\x00salt\xff",
    iterations=4096,
    storedKey=b"\x01" * 20,
    serverKey=b"\xfe" * 20,
)
KEYS256 = ScramKeys(
    salt=bytes(range(16)),
    iterations=10000,
    storedKey=b"\x80" * 32,
    serverKey=b"\x00" * 32,
)
CREDS = Credentials({"SCRAM-SHA-1": KEYS1, "SCRAM-SHA-256": KEYS256})


async def waitFor(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the reactor run until C{predicate()} holds (real I/O needs real turns)."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.005, lambda: None)


V3_INSERT = (
    "INSERT INTO archive (owner, sid, stamp, with_jid, with_resource, outgoing, xml)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def messageOf(entry: ArchiveEntry) -> ArchiveMessage:
    """The message that puts C{entry} in its owner's archive, and in nobody else's."""
    me = f"{entry.owner}@localhost"
    if entry.outgoing:
        return ArchiveMessage(entry.id, micros(entry.stamp), None, entry.owner, me, "", entry.withJID,
                              entry.withResource, entry.xml)
    return ArchiveMessage(entry.id, micros(entry.stamp), entry.owner, None, entry.withJID,
                          entry.withResource, me, "", entry.xml)


if TYPE_CHECKING:
    _MixinBase = unittest.TestCase
else:
    _MixinBase = object


class StoreTestsMixin(_MixinBase):
    """
    Behaviour every L{IStore} backend must have.  A test case mixes this in with
    L{unittest.TestCase} and provides:

     - C{makeStore(**kwargs)}: a new, unstarted store on the test database (the same database on
       every call within a test);
     - C{reopenable}: whether a second store on the test database sees the first one's data;
     - C{makeUnreachableStore(**kwargs)} and C{repair()}: a store whose database cannot be
       reached until C{repair()} is called.
    """

    reopenable = True
    store: SQLStore

    def makeStore(self, **kwargs: Any) -> SQLStore:
        raise NotImplementedError()

    def makeUnreachableStore(self, **kwargs: Any) -> SQLStore:
        raise NotImplementedError()

    def repair(self) -> None:
        raise NotImplementedError()

    def emptyDatabase(self) -> None:
        """Make the next L{makeStore} start from an empty database."""

    def setUp(self) -> Any:
        self.store = self.makeStore()
        self.addCleanup(self.store.close)
        return self.store.start()

    async def profileOf(self, localpart: str) -> dict[str, Any]:
        profile = await self.store.getProfile(localpart)
        assert profile is not None
        return profile

    # users

    def test_interface(self) -> None:
        self.assertTrue(IStore.providedBy(self.store))
        self.assertIn(self.store.backendName, ("sqlite", "postgresql"))

    async def test_createUser(self) -> None:
        self.assertFalse(await self.store.userExists("alice"))
        await self.store.createUser("alice", CREDS)
        self.assertTrue(await self.store.userExists("alice"))
        self.assertFalse(await self.store.userExists("bob"))

    async def test_createUserExisting(self) -> None:
        await self.store.createUser("alice", CREDS)
        other = Credentials({"SCRAM-SHA-1": KEYS256})
        await self.assertFailure(self.store.createUser("alice", other), UserExists)
        # the failed attempt changed nothing
        self.assertEqual(await self.store.getCredentials("alice"), CREDS)

    async def test_credentialsRoundTrip(self) -> None:
        await self.store.createUser("alice", CREDS)
        creds = await self.store.getCredentials("alice")
        assert creds is not None
        self.assertEqual(creds, CREDS)
        self.assertIsInstance(creds.keys["SCRAM-SHA-1"].salt, bytes)
        self.assertIsInstance(creds.keys["SCRAM-SHA-256"].storedKey, bytes)

    async def test_credentialsUnknownUser(self) -> None:
        self.assertIsNone(await self.store.getCredentials("nobody"))

    async def test_userWithoutKeys(self) -> None:
        await self.store.createUser("alice", Credentials({}))
        self.assertEqual(await self.store.getCredentials("alice"), Credentials({}))

    async def test_setCredentials(self) -> None:
        await self.store.createUser("alice", CREDS)
        replacement = Credentials({"SCRAM-SHA-256": KEYS1})
        await self.store.setCredentials("alice", replacement)
        # replaced, not merged: the old SCRAM-SHA-1 keys are gone
        self.assertEqual(await self.store.getCredentials("alice"), replacement)

    async def test_setCredentialsUnknownUser(self) -> None:
        await self.assertFailure(
            self.store.setCredentials("nobody", CREDS), UnknownUser
        )
        await self.assertFailure(
            self.store.setCredentials("nobody", Credentials({})), UnknownUser
        )
        self.assertFalse(await self.store.userExists("nobody"))

    # profile and last presence

    async def test_profileDefaults(self) -> None:
        await self.store.createUser("alice", CREDS)
        profile = await self.profileOf("alice")
        self.assertEqual(
            profile,
            dict.fromkeys(PROFILE_FIELDS, None)
            | {"last_seen": None, "presence": "", "status": ""},
        )

    async def test_updateProfile(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        await self.store.updateProfile(
            "alice",
            {"full_name": "Alice Ł. Żółć", "streer_2": "Flat 2", "email": "a@x.org"},
        )
        await self.store.updateProfile("alice", {"email": None, "city": "Kraków"})
        profile = await self.profileOf("alice")
        self.assertEqual(profile["full_name"], "Alice Ł. Żółć")
        self.assertEqual(profile["streer_2"], "Flat 2")
        self.assertIsNone(profile["email"])
        self.assertEqual(profile["city"], "Kraków")
        self.assertIsNone(profile["about"])
        # another user's profile is untouched
        self.assertIsNone((await self.profileOf("bob"))["full_name"])

    async def test_everyProfileField(self) -> None:
        await self.store.createUser("alice", CREDS)
        values: dict[str, str | None] = {
            name: f"value of {name}" for name in PROFILE_FIELDS
        }
        await self.store.updateProfile("alice", values)
        profile = await self.profileOf("alice")
        self.assertEqual({name: profile[name] for name in PROFILE_FIELDS}, values)

    async def test_profileUnknownUser(self) -> None:
        self.assertIsNone(await self.store.getProfile("nobody"))
        await self.assertFailure(
            self.store.updateProfile("nobody", {"full_name": "X"}), UnknownUser
        )
        await self.assertFailure(self.store.updateProfile("nobody", {}), UnknownUser)

    async def test_updateProfileUnknownField(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.assertFailure(
            self.store.updateProfile("alice", {"localpart = 'x', full_name": "X"}),
            ValueError,
        )

    async def test_lastPresence(self) -> None:
        await self.store.createUser("alice", CREDS)
        # given in another zone, returned as the same instant in UTC
        cest = datetime.timezone(datetime.timedelta(hours=2))
        seen = datetime.datetime(2024, 5, 17, 14, 30, 15, 654321, tzinfo=cest)
        self.assertTrue(
            await self.store.setLastPresence("alice", seen, "away", "lunch")
        )
        profile = await self.profileOf("alice")
        self.assertEqual(profile["last_seen"], seen)
        self.assertEqual(profile["last_seen"].utcoffset(), datetime.timedelta(0))
        self.assertEqual((profile["presence"], profile["status"]), ("away", "lunch"))
        self.assertFalse(await self.store.setLastPresence("nobody", seen, "away", ""))

    # tokens

    async def test_tokens(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        hour = datetime.timedelta(hours=1)
        await self.store.addToken("phone", "alice", T0 + hour)
        await self.store.addToken("laptop", "alice", T0 + 2 * hour)
        await self.store.addToken("bobs", "bob", T0 + hour)
        # several live tokens per user
        self.assertEqual(await self.store.lookupToken("phone", T0), "alice")
        self.assertEqual(await self.store.lookupToken("laptop", T0), "alice")
        self.assertEqual(await self.store.lookupToken("bobs", T0), "bob")
        self.assertIsNone(await self.store.lookupToken("unknown", T0))
        # expiry: valid strictly before the expiry instant
        self.assertEqual(
            await self.store.lookupToken(
                "phone", T0 + hour - datetime.timedelta(microseconds=1)
            ),
            "alice",
        )
        self.assertIsNone(await self.store.lookupToken("phone", T0 + hour))
        self.assertEqual(await self.store.lookupToken("laptop", T0 + hour), "alice")

    async def test_revokeToken(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.addToken("phone", "alice", T0)
        await self.store.addToken("laptop", "alice", T0)
        before = T0 - datetime.timedelta(seconds=1)
        self.assertTrue(await self.store.revokeToken("phone"))
        self.assertFalse(await self.store.revokeToken("phone"))
        self.assertIsNone(await self.store.lookupToken("phone", before))
        self.assertEqual(await self.store.lookupToken("laptop", before), "alice")

    async def test_revokeTokens(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        for name in ("a1", "a2", "a3"):
            await self.store.addToken(name, "alice", T0)
        await self.store.addToken("b1", "bob", T0)
        self.assertEqual(await self.store.revokeTokens("alice"), 3)
        self.assertEqual(await self.store.revokeTokens("alice"), 0)
        before = T0 - datetime.timedelta(seconds=1)
        self.assertIsNone(await self.store.lookupToken("a2", before))
        self.assertEqual(await self.store.lookupToken("b1", before), "bob")

    async def test_purgeExpiredTokens(self) -> None:
        await self.store.createUser("alice", CREDS)
        minute = datetime.timedelta(minutes=1)
        await self.store.addToken("old", "alice", T0 - minute)
        await self.store.addToken("now", "alice", T0)
        await self.store.addToken("new", "alice", T0 + minute)
        self.assertEqual(await self.store.purgeExpiredTokens(T0), 2)
        self.assertEqual(await self.store.purgeExpiredTokens(T0), 0)
        self.assertEqual(await self.store.lookupToken("new", T0), "alice")
        self.assertFalse(await self.store.revokeToken("old"))

    async def test_addTokenUnknownUser(self) -> None:
        await self.assertFailure(self.store.addToken("h", "nobody", T0), UnknownUser)

    # roster

    async def test_roster(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        self.assertEqual(await self.store.getRoster("alice"), [])
        carol = RosterItem(
            "carol@example.org", name="Carol", groups=["Friends", "Work"]
        )
        bob = RosterItem(
            "bob@localhost", subscription="both", askOut=True, approved=True, groups=[]
        )
        pending = RosterItem("dave@example.org", inRoster=False, pendingIn=True)
        for item in (carol, bob, pending):
            await self.store.setRosterItem("alice", item)
        self.assertEqual(await self.store.getRoster("alice"), [bob, carol, pending])
        self.assertEqual(await self.store.getRoster("bob"), [])

    async def test_rosterUpsert(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.setRosterItem(
            "alice", RosterItem("carol@x", name="C", askOut=True, groups=["A"])
        )
        updated = RosterItem(
            "carol@x",
            name=None,
            subscription="to",
            pendingIn=True,
            groups=["B", "Ünïcode"],
        )
        await self.store.setRosterItem("alice", updated)
        self.assertEqual(await self.store.getRoster("alice"), [updated])

    async def test_removeRosterItem(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.setRosterItem("alice", RosterItem("carol@x"))
        await self.store.setRosterItem("alice", RosterItem("dave@x"))
        self.assertTrue(await self.store.removeRosterItem("alice", "carol@x"))
        self.assertFalse(await self.store.removeRosterItem("alice", "carol@x"))
        self.assertEqual(
            [i.jid for i in await self.store.getRoster("alice")], ["dave@x"]
        )

    async def test_rosterUnknownUser(self) -> None:
        await self.assertFailure(
            self.store.setRosterItem("nobody", RosterItem("carol@x")), UnknownUser
        )

    # offline messages

    async def test_offline(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        # stored order is delivery order, whatever the stamps say
        stamps = [
            T0,
            T0 - datetime.timedelta(seconds=5),
            T0 + datetime.timedelta(days=1),
        ]
        ids = []
        for n, stamp in enumerate(stamps):
            ids.append(
                await self.store.storeOffline("alice", stamp, f"<message id='m{n}'/>")
            )
        bobsId = await self.store.storeOffline("bob", T0, "<message id='b'/>")
        messages = await self.store.getOffline("alice")
        self.assertEqual([m.id for m in messages], ids)
        self.assertEqual([m.stamp for m in messages], stamps)
        self.assertEqual(
            [m.xml for m in messages], [f"<message id='m{n}'/>" for n in range(3)]
        )
        self.assertEqual(messages[0].stamp.utcoffset(), datetime.timedelta(0))
        self.assertEqual(len(set(ids + [bobsId])), 4)

    async def test_deleteOffline(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        a1 = await self.store.storeOffline("alice", T0, "<message id='1'/>")
        a2 = await self.store.storeOffline("alice", T0, "<message id='2'/>")
        b1 = await self.store.storeOffline("bob", T0, "<message id='b'/>")
        # another user's id is not deleted, an unknown id is ignored
        self.assertEqual(await self.store.deleteOffline("alice", [a1, b1, 999999]), 1)
        self.assertEqual(await self.store.deleteOffline("alice", []), 0)
        self.assertEqual([m.id for m in await self.store.getOffline("alice")], [a2])
        self.assertEqual([m.id for m in await self.store.getOffline("bob")], [b1])

    async def test_deleteManyOffline(self) -> None:
        await self.store.createUser("alice", CREDS)
        ids = [
            await self.store.storeOffline("alice", T0, "<message/>") for _ in range(5)
        ]
        # more ids than one statement carries
        self.assertEqual(
            await self.store.deleteOffline(
                "alice", ids + list(range(10**6, 10**6 + 1200))
            ),
            5,
        )
        self.assertEqual(await self.store.getOffline("alice"), [])

    async def test_offlineUnknownUser(self) -> None:
        await self.assertFailure(
            self.store.storeOffline("nobody", T0, "<message/>"), UnknownUser
        )
        self.assertEqual(await self.store.getOffline("nobody"), [])

    async def test_concurrentCalls(self) -> None:
        await self.store.createUser("alice", CREDS)
        ids = await defer.gatherResults(
            [
                self.store.storeOffline("alice", T0, f"<message id='{n}'/>")
                for n in range(40)
            ]
        )
        self.assertEqual(len(set(ids)), 40)
        self.assertEqual(len(await self.store.getOffline("alice")), 40)

    # account deletion

    async def test_deleteUserCascades(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        await self.store.updateProfile("alice", {"full_name": "Alice"})
        await self.store.addToken("tok", "alice", T0)
        await self.store.setRosterItem("alice", RosterItem("bob@localhost"))
        await self.store.setRosterItem("bob", RosterItem("alice@localhost"))
        await self.store.storeOffline("alice", T0, "<message/>")
        self.assertTrue(await self.store.deleteUser("alice"))
        self.assertFalse(await self.store.deleteUser("alice"))
        self.assertFalse(await self.store.userExists("alice"))
        self.assertIsNone(await self.store.getProfile("alice"))
        # a new account of the same name inherits nothing
        await self.store.createUser("alice", Credentials({}))
        self.assertEqual(await self.store.getCredentials("alice"), Credentials({}))
        self.assertIsNone((await self.profileOf("alice"))["full_name"])
        self.assertIsNone(
            await self.store.lookupToken("tok", T0 - datetime.timedelta(days=1))
        )
        self.assertEqual(await self.store.getRoster("alice"), [])
        self.assertEqual(await self.store.getOffline("alice"), [])
        # other users' data is theirs: bob's roster still names alice
        self.assertEqual(
            [i.jid for i in await self.store.getRoster("bob")], ["alice@localhost"]
        )

    # schema and lifecycle

    async def test_schemaVersion(self) -> None:
        self.assertEqual(await self.store.getSchemaVersion(), schema.CURRENT_VERSION)
        self.assertEqual(
            self.store.migrationsApplied, [v for v, _ in schema.MIGRATIONS]
        )
        self.assertTrue(await self.store.ping())

    async def test_startTwice(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.start()
        self.assertTrue(await self.store.userExists("alice"))
        self.assertEqual(await self.store.getSchemaVersion(), schema.CURRENT_VERSION)

    async def test_reopen(self) -> None:
        if not self.reopenable:
            raise unittest.SkipTest("the database does not outlive its store")
        await self.store.createUser("alice", CREDS)
        await self.store.close()
        again = self.makeStore()
        self.addCleanup(again.close)
        await again.start()
        self.assertEqual(again.migrationsApplied, [])
        self.assertEqual(await again.getSchemaVersion(), schema.CURRENT_VERSION)
        self.assertEqual(await again.getCredentials("alice"), CREDS)

    async def test_missingMigrationBelowTheNewest(self) -> None:
        """
        A database made by code that knew a later version but not an earlier one (features
        land in any order) gets the earlier one at the next start.
        """
        if not self.reopenable:
            raise unittest.SkipTest("the database does not outlive its store")
        await self.store.createUser("alice", CREDS)
        await self.store._batch([
            ("DROP TABLE blocklist", ()),
            ("DELETE FROM schema_version WHERE version = %s", (2,)),
        ])
        await self.store.close()
        again = self.makeStore()
        self.addCleanup(again.close)
        await again.start()
        self.assertEqual(again.migrationsApplied, [2])
        self.assertEqual(await again.getSchemaVersion(), schema.CURRENT_VERSION)
        self.assertEqual(await again.addToBlocklist("alice", ["bob@localhost"]),
                         ["bob@localhost"])

    async def test_schemaTooNew(self) -> None:
        if not self.reopenable:
            raise unittest.SkipTest("the database does not outlive its store")
        await self.store._execute(
            "INSERT INTO schema_version (version, applied) VALUES (%s, %s)",
            (schema.CURRENT_VERSION + 1, self.store._ts(T0)),
        )
        await self.store.close()
        again = self.makeStore()
        self.addCleanup(again.close)
        await self.assertFailure(again.start(), SchemaTooNew)
        self.flushLoggedErrors(SchemaTooNew)
        await self.assertFailure(again.userExists("alice"), StoreUnavailable)

    # availability

    async def test_notStarted(self) -> None:
        store = self.makeStore()
        self.addCleanup(store.close)
        calls: list[defer.Deferred[Any]] = [
            store.ping(),
            store.userExists("alice"),
            store.createUser("alice", CREDS),
            store.getOffline("alice"),
        ]
        for d in calls:
            await self.assertFailure(d, StoreUnavailable)

    async def test_closed(self) -> None:
        await self.store.close()
        await self.assertFailure(self.store.userExists("alice"), StoreUnavailable)
        await self.assertFailure(self.store.start(), StoreUnavailable)
        await self.store.close()

    async def test_unreachableThenRecovers(self) -> None:
        store = self.makeUnreachableStore(retryDelay=FAST_RETRY)
        self.addCleanup(store.close)
        started = store.start()
        self.assertFalse(started.called)
        await self.assertFailure(store.userExists("alice"), StoreUnavailable)
        await self.assertFailure(store.ping(), StoreUnavailable)
        # keeps trying for a while, then the database comes back
        await task.deferLater(reactor, 0.15, lambda: None)
        self.assertFalse(started.called)
        self.repair()
        await started
        self.assertTrue(await store.ping())
        await store.createUser("alice", CREDS)
        self.assertTrue(await store.userExists("alice"))

    async def test_retryBackoffAndClose(self) -> None:
        clock = task.Clock()
        store = self.makeUnreachableStore(clock=clock, retryDelay=(1.0, 5.0))
        self.addCleanup(store.close)
        started = store.start()
        delays = []
        for _ in range(5):
            await waitFor(lambda: bool(clock.getDelayedCalls()))
            call: Any
            [call] = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0, 4.0, 5.0, 5.0])
        await waitFor(lambda: bool(clock.getDelayedCalls()))
        await store.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        await self.assertFailure(started, StoreUnavailable)

    # ---- message archive ----------------------------------------------------------------

    async def archiveSome(self, owner: str = "alice", n: int = 7) -> list[ArchiveEntry]:
        """C{n} archived messages of C{owner}, a second apart, alternating two contacts."""
        entries = [
            ArchiveEntry(
                owner=owner,
                id=f"{owner}-{i}",
                stamp=T0 + datetime.timedelta(seconds=i),
                withJID="bob@localhost" if i % 2 else "carol@localhost",
                withResource="phone" if i % 4 == 1 else "",
                outgoing=i % 3 == 0,
                xml=f"<message id='m{i}'><body>Zażółć {i}</body></message>",
            )
            for i in range(n)
        ]
        self.assertEqual(await self.store.archiveMessages([messageOf(e) for e in entries]), n)
        return entries

    async def test_archiveRoundTrip(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        entries = await self.archiveSome()
        bobs = await self.archiveSome("bob", 2)
        page = await self.store.queryArchive("alice", ArchiveQuery(max=50))
        self.assertEqual(page.entries, entries)
        self.assertTrue(page.complete)
        self.assertEqual((page.count, page.index), (7, 0))
        self.assertEqual(page.entries[0].stamp.utcoffset(), datetime.timedelta(0))
        self.assertIs(page.entries[0].outgoing, True)
        self.assertEqual((await self.store.queryArchive("bob", ArchiveQuery())).entries, bobs)

    async def test_archiveKeepsOrderOfLargeBatch(self) -> None:
        """
        More rows than one INSERT statement holds (1401: statements of every size SQLite's
        store cuts a batch into), all stamped alike: all written, order kept.
        """
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        entries = [
            ArchiveEntry(owner, f"x{i:04d}-{owner}"[::-1], T0, "carol@localhost", "", False,
                         f"<message id='{i}'/>")
            for i in range(701)
            for owner in ("alice", "bob")
        ][:-1]
        self.assertEqual(await self.store.archiveMessages([messageOf(e) for e in entries]), 1401)
        page = await self.store.queryArchive("alice", ArchiveQuery(max=800))
        self.assertEqual([e.id for e in page.entries],
                         [e.id for e in entries if e.owner == "alice"])

    async def test_archiveSkipsDuplicatesAndUnknownOwners(self) -> None:
        await self.store.createUser("alice", CREDS)
        first = ArchiveEntry("alice", "same", T0, "bob@localhost", "", True, "<message/>")
        again = ArchiveEntry("alice", "same", T0, "bob@localhost", "", True, "<message id='2'/>")
        ghost = ArchiveEntry("ghost", "g", T0, "bob@localhost", "", False, "<message/>")
        other = ArchiveEntry("alice", "other", T0, "ghost@localhost", "", False, "<message/>")
        self.assertEqual(await self.store.archiveMessages([messageOf(first)]), 1)
        # one transaction: the unknown owner's copy is dropped, the others are kept
        self.assertEqual(
            await self.store.archiveMessages([messageOf(e) for e in (again, ghost, other)]), 1)
        self.assertEqual(await self.store.archiveMessages([]), 0)
        page = await self.store.queryArchive("alice", ArchiveQuery())
        self.assertEqual(page.entries, [first, other])

    async def test_archivePagingForwards(self) -> None:
        await self.store.createUser("alice", CREDS)
        entries = await self.archiveSome()
        ids = [e.id for e in entries]
        page = await self.store.queryArchive("alice", ArchiveQuery(max=3))
        self.assertEqual([e.id for e in page.entries], ids[0:3])
        self.assertEqual((page.complete, page.count, page.index), (False, 7, 0))
        page = await self.store.queryArchive("alice", ArchiveQuery(max=3, after=ids[2]))
        self.assertEqual([e.id for e in page.entries], ids[3:6])
        self.assertEqual((page.complete, page.index), (False, 3))
        page = await self.store.queryArchive("alice", ArchiveQuery(max=3, after=ids[5]))
        self.assertEqual([e.id for e in page.entries], ids[6:])
        self.assertEqual((page.complete, page.index), (True, 6))
        # exactly filling the last page is complete too
        page = await self.store.queryArchive("alice", ArchiveQuery(max=4, after=ids[2]))
        self.assertEqual((len(page.entries), page.complete), (4, True))
        page = await self.store.queryArchive("alice", ArchiveQuery(max=3, after=ids[6]))
        self.assertEqual((page.entries, page.complete, page.count, page.index),
                         ([], True, 7, None))

    async def test_archivePagingBackwards(self) -> None:
        await self.store.createUser("alice", CREDS)
        ids = [e.id for e in await self.archiveSome()]
        # an empty "before" is the last page, still oldest first
        page = await self.store.queryArchive("alice", ArchiveQuery(max=3, before=""))
        self.assertEqual([e.id for e in page.entries], ids[4:7])
        self.assertEqual((page.complete, page.count, page.index), (False, 7, 4))
        page = await self.store.queryArchive("alice", ArchiveQuery(max=3, before=ids[4]))
        self.assertEqual([e.id for e in page.entries], ids[1:4])
        self.assertFalse(page.complete)
        page = await self.store.queryArchive("alice", ArchiveQuery(max=3, before=ids[1]))
        self.assertEqual([e.id for e in page.entries], ids[0:1])
        self.assertEqual((page.complete, page.index), (True, 0))
        # after and before together: a window, paged forwards
        page = await self.store.queryArchive(
            "alice", ArchiveQuery(max=10, after=ids[1], before=ids[5]))
        self.assertEqual([e.id for e in page.entries], ids[2:5])
        self.assertTrue(page.complete)

    async def test_archiveFilters(self) -> None:
        await self.store.createUser("alice", CREDS)
        ids = [e.id for e in await self.archiveSome()]

        async def ids_of(**kw: Any) -> list[str]:
            page = await self.store.queryArchive("alice", ArchiveQuery(**kw))
            self.assertEqual(page.count, len(page.entries))
            return [e.id for e in page.entries]

        self.assertEqual(await ids_of(withJID="bob@localhost"), ids[1::2])
        self.assertEqual(await ids_of(withJID="bob@localhost", withResource="phone"),
                         [ids[1], ids[5]])
        self.assertEqual(await ids_of(withJID="bob@localhost", withResource=""), [ids[3]])
        self.assertEqual(await ids_of(withJID="dave@localhost"), [])
        # start and end are inclusive, and compare instants (here given in another zone)
        cest = datetime.timezone(datetime.timedelta(hours=2))
        self.assertEqual(await ids_of(start=(T0 + datetime.timedelta(seconds=2)).astimezone(cest),
                                      end=T0 + datetime.timedelta(seconds=4)), ids[2:5])
        self.assertEqual(await ids_of(afterId=ids[1], beforeId=ids[4]), ids[2:4])
        self.assertEqual(await ids_of(ids=(ids[5], ids[0], "nope")), [ids[0], ids[5]])
        self.assertEqual(await ids_of(ids=()), [])
        self.assertEqual(await ids_of(withJID="carol@localhost", afterId=ids[0]),
                         [ids[2], ids[4], ids[6]])
        # the count is of the filtered messages, the index within them
        page = await self.store.queryArchive(
            "alice", ArchiveQuery(withJID="carol@localhost", max=1, after=ids[2]))
        self.assertEqual(([e.id for e in page.entries], page.count, page.index, page.complete),
                         ([ids[4]], 4, 2, False))

    async def test_archiveCountOnly(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.archiveSome()
        page = await self.store.queryArchive("alice", ArchiveQuery(max=0))
        self.assertEqual((page.entries, page.count, page.index, page.complete),
                         ([], 7, None, False))
        empty = await self.store.queryArchive("nobody", ArchiveQuery(max=0))
        self.assertEqual((empty.count, empty.complete), (0, True))

    async def test_archiveUnknownId(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        await self.archiveSome()
        bobs = await self.archiveSome("bob", 1)
        for query in (ArchiveQuery(after="nope"), ArchiveQuery(before="nope"),
                      ArchiveQuery(afterId="nope"), ArchiveQuery(beforeId=bobs[0].id)):
            await self.assertFailure(self.store.queryArchive("alice", query), UnknownArchiveId)

    async def test_archiveBounds(self) -> None:
        await self.store.createUser("alice", CREDS)
        self.assertEqual(await self.store.archiveBounds("alice"), (None, None))
        entries = await self.archiveSome()
        self.assertEqual(await self.store.archiveBounds("alice"), (entries[0], entries[-1]))

    async def test_purgeArchive(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        alices = [ArchiveEntry("alice", f"a{i}", T0 + datetime.timedelta(seconds=i),
                               "bob@localhost", "", False, "<message/>") for i in range(7)]
        bobs = [ArchiveEntry("bob", f"b{i}", T0 + datetime.timedelta(seconds=i),
                             "alice@localhost", "", True, "<message/>") for i in range(3)]
        # as the server routes them: in time order
        inOrder = sorted(alices + bobs, key=lambda e: e.stamp)
        self.assertEqual(await self.store.archiveMessages([messageOf(e) for e in inOrder]), 10)
        ids = [e.id for e in alices]
        cut = T0 + datetime.timedelta(seconds=2)
        # strictly before the cut, in every archive, at most "limit" at a time
        self.assertEqual(await self.store.purgeArchive(cut, limit=3), 3)
        self.assertEqual(await self.store.purgeArchive(cut, limit=3), 1)
        self.assertEqual(await self.store.purgeArchive(cut), 0)
        page = await self.store.queryArchive("alice", ArchiveQuery())
        self.assertEqual([e.id for e in page.entries], ids[2:])
        self.assertEqual(len((await self.store.queryArchive("bob", ArchiveQuery())).entries), 1)

    async def test_deleteUserDeletesArchive(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.archiveSome()
        await self.store.deleteUser("alice")
        await self.store.createUser("alice", CREDS)
        page = await self.store.queryArchive("alice", ArchiveQuery())
        self.assertEqual((page.entries, page.count), ([], 0))

    async def test_archiveOneMessageForBothParties(self) -> None:
        """A message between two users is written once and is in both archives."""
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        xml = "<message id='m'><body>hej</body></message>"
        message = ArchiveMessage("both", micros(T0), "bob", "alice", "alice@localhost", "laptop",
                                 "bob@localhost", "phone", xml)
        self.assertEqual(await self.store.archiveMessages([message]), 1)
        self.assertEqual(await self.store.archiveMessages([message]), 0)  # already there
        alices = await self.store.queryArchive("alice", ArchiveQuery())
        bobs = await self.store.queryArchive("bob", ArchiveQuery())
        self.assertEqual(alices.entries, [
            ArchiveEntry("alice", "both", T0, "bob@localhost", "phone", True, xml)])
        self.assertEqual(bobs.entries, [
            ArchiveEntry("bob", "both", T0, "alice@localhost", "laptop", False, xml)])
        self.assertEqual(await self.store.archiveBounds("bob"), (bobs.entries[0],) * 2)
        # either party may page from the id
        page = await self.store.queryArchive("alice", ArchiveQuery(after="both"))
        self.assertEqual((page.entries, page.count), ([], 1))

    async def test_archiveInterleavedParties(self) -> None:
        """Each archive is in order, whichever side of its messages its owner was on."""
        for user in ("alice", "bob", "carol"):
            await self.store.createUser(user, CREDS)
        pairs = [("alice", "bob"), ("bob", "alice"), ("carol", "alice"), ("alice", "carol"),
                 ("bob", "carol"), ("alice", "alice")]
        messages = [
            ArchiveMessage(f"m{n}", micros(T0 + datetime.timedelta(seconds=n // 2)), to, frm,
                           f"{frm}@localhost", "", f"{to}@localhost", "", f"<message id='{n}'/>")
            for n, (frm, to) in enumerate(pairs)
        ]
        self.assertEqual(await self.store.archiveMessages(messages), 6)
        page = await self.store.queryArchive("alice", ArchiveQuery())
        self.assertEqual([(e.id, e.withJID, e.outgoing) for e in page.entries], [
            ("m0", "bob@localhost", True), ("m1", "bob@localhost", False),
            ("m2", "carol@localhost", False), ("m3", "carol@localhost", True),
            ("m5", "alice@localhost", False),  # to oneself: once, as received
        ])
        page = await self.store.queryArchive("alice", ArchiveQuery(max=2, before=""))
        self.assertEqual(([e.id for e in page.entries], page.count, page.complete),
                         (["m3", "m5"], 5, False))
        page = await self.store.queryArchive("alice", ArchiveQuery(max=2, after="m1"))
        self.assertEqual(([e.id for e in page.entries], page.index, page.complete),
                         (["m2", "m3"], 2, False))
        page = await self.store.queryArchive(
            "alice", ArchiveQuery(withJID="carol@localhost", max=1))
        self.assertEqual(([e.id for e in page.entries], page.count), (["m2"], 2))
        page = await self.store.queryArchive("bob", ArchiveQuery(max=0))
        self.assertEqual(page.count, 3)
        # an id of another archive is not this one's
        await self.assertFailure(
            self.store.queryArchive("carol", ArchiveQuery(after="m0")), UnknownArchiveId)

    async def test_archivePartyDeleted(self) -> None:
        """
        A message whose party was deleted before it was written stays in the other party's
        archive; deleting a user keeps the other party's archive whole.
        """
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        sent = ArchiveMessage("to-ghost", micros(T0), "ghost", "alice", "alice@localhost", "",
                              "ghost@localhost", "", "<message/>")
        onlyGhost = ArchiveMessage("ghostly", micros(T0), "ghost", None, "bob@localhost", "",
                                   "ghost@localhost", "", "<message/>")
        shared = ArchiveMessage("shared", micros(T0), "bob", "alice", "alice@localhost", "",
                                "bob@localhost", "", "<message/>")
        self.assertEqual(await self.store.archiveMessages([sent, onlyGhost, shared]), 2)
        self.assertEqual([e.id for e in (await self.store.queryArchive(
            "alice", ArchiveQuery())).entries], ["to-ghost", "shared"])
        await self.store.deleteUser("alice")
        self.assertEqual([e.id for e in (await self.store.queryArchive(
            "bob", ArchiveQuery())).entries], ["shared"])
        await self.store.createUser("alice", CREDS)
        self.assertEqual((await self.store.queryArchive("alice", ArchiveQuery())).count, 0)
        await self.store.deleteUser("bob")
        # nobody keeps anything: no row is left behind
        rows = await self.store._fetch("SELECT COUNT(*) FROM archive_buckets")
        self.assertEqual(rows, [(0,)])

    async def test_archiveIdsFollowTime(self) -> None:
        """
        A stanza-id that does not carry its time gets an archive id in order and never below
        the message's time, also from a second store on the same database (a cluster node)
        whose idea of the last id is stale: equal ids are ordered by stanza-id.
        """
        if not self.reopenable:
            raise unittest.SkipTest("one store per database")
        await self.store.createUser("alice", CREDS)
        other = self.makeStore()
        self.addCleanup(other.close)
        await other.start()

        def message(sid: str, when: datetime.datetime) -> ArchiveMessage:
            return ArchiveMessage(sid, micros(when), "alice", None, "bob@localhost", "",
                                  "alice@localhost", "", "<message/>")

        early = T0 - datetime.timedelta(seconds=10)
        self.assertEqual(await other.archiveMessages([message("b0", early)]), 1)
        self.assertEqual(await self.store.archiveMessages([message("a1", T0)]), 1)
        self.assertEqual(await self.store.archiveMessages([message("a2", early)]), 1)
        self.assertEqual(await other.archiveMessages([message("b1", T0)]), 1)
        rows = await self.store._fetch("SELECT sid, id FROM archive_sids ORDER BY id, sid")
        t0 = micros(T0)
        self.assertEqual([(sid, int(i)) for sid, i in rows], [
            ("b0", t0 - 10_000_000), ("a1", t0), ("b1", t0), ("a2", t0 + 1)])
        page = await self.store.queryArchive("alice", ArchiveQuery())
        self.assertEqual([(e.id, e.stamp) for e in page.entries],
                         [("b0", early), ("a1", T0), ("b1", T0), ("a2", early)])
        page = await self.store.queryArchive("alice", ArchiveQuery(after="a1"))
        self.assertEqual([e.id for e in page.entries], ["b1", "a2"])

    async def test_archiveServerIdsCarryTheirTime(self) -> None:
        """
        The server's stanza-ids give their archive id themselves (nothing in archive_sids),
        and a batch is one bucket per conversation, whichever way its messages went.
        """
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        sids = [newStanzaId() for _ in range(5)]
        messages = [
            ArchiveMessage(sid, micros(T0), "bob", "alice", "alice@localhost", "pc", "bob@localhost",
                           "", f"<message id='{n}'/>") if n % 2 else
            ArchiveMessage(sid, micros(T0), "alice", "bob", "bob@localhost", "", "alice@localhost",
                           "pc", f"<message id='{n}'/>")
            for n, sid in enumerate(sids[:4])
        ] + [ArchiveMessage(sids[4], micros(T0), None, "alice", "alice@localhost", "", "carol@other",
                            "", "<message id='4'/>")]
        self.assertEqual(await self.store.archiveMessages(messages), 5)
        self.assertEqual(await self.store._fetch("SELECT COUNT(*) FROM archive_sids"), [(0,)])
        rows = await self.store._fetch(
            "SELECT party_a, party_b, jid_a, jid_b, first_id, last_id, messages"
            " FROM archive_buckets ORDER BY jid_b")
        times = [sidMicros(sid) for sid in sids]
        self.assertEqual([(*row[:4], int(row[4]), int(row[5]), int(row[6])) for row in rows], [
            ("alice", "bob", "alice@localhost", "bob@localhost", times[0], times[3], 4),
            ("alice", None, "alice@localhost", "carol@other", times[4], times[4], 1),
        ])
        page = await self.store.queryArchive("alice", ArchiveQuery(after=sids[1]))
        self.assertEqual([e.id for e in page.entries], sids[2:])
        self.assertEqual((page.count, page.index), (5, 2))
        page = await self.store.queryArchive("bob", ArchiveQuery())
        self.assertEqual([(e.id, e.withJID, e.withResource, e.outgoing) for e in page.entries], [
            (sids[0], "alice@localhost", "pc", True), (sids[1], "alice@localhost", "pc", False),
            (sids[2], "alice@localhost", "pc", True), (sids[3], "alice@localhost", "pc", False),
        ])
        # written again (a batch whose commit was not known to have happened): skipped
        self.assertEqual(await self.store.archiveMessages(messages), 0)
        self.assertEqual(await self.store.archiveMessages(messages[1:] + messages[:1]), 0)
        page = await self.store.queryArchive("alice", ArchiveQuery())
        self.assertEqual([e.id for e in page.entries], sids)

    async def test_archiveManyBuckets(self) -> None:
        """
        Pages, counts and positions across many buckets that overlap (one batch, several
        correspondents), forwards and backwards, are those of the archive as one list.
        """
        await self.store.createUser("alice", CREDS)
        everything: list[ArchiveEntry] = []
        n = 0
        for batch in range(6):
            entries = []
            for _ in range(batch * 3 + 1):
                contact = ("bob", "carol", "dave")[n % 3 if batch % 2 else n % 2]
                entries.append(ArchiveEntry(
                    "alice", newStanzaId(), T0 + datetime.timedelta(seconds=n),
                    f"{contact}@localhost", "pc" if n % 5 == 0 else "", n % 4 == 0,
                    f"<message id='{n}'><body>{n}</body></message>"))
                n += 1
            self.assertEqual(
                await self.store.archiveMessages([messageOf(e) for e in entries]), len(entries))
            everything += entries
        self.store._BUCKETS_PER_READ = 2  # type: ignore[misc]
        ids = [e.id for e in everything]
        for query, expected in [
            (ArchiveQuery(max=4), everything),
            (ArchiveQuery(max=5, before=""), everything),
            (ArchiveQuery(withJID="carol@localhost", max=3),
             [e for e in everything if e.withJID == "carol@localhost"]),
            (ArchiveQuery(withJID="bob@localhost", withResource="pc", max=2),
             [e for e in everything if e.withJID == "bob@localhost" and e.withResource == "pc"]),
            (ArchiveQuery(start=T0 + datetime.timedelta(seconds=7),
                          end=T0 + datetime.timedelta(seconds=30), max=6),
             everything[7:31]),
            (ArchiveQuery(afterId=ids[3], beforeId=ids[40], max=7), everything[4:40]),
            (ArchiveQuery(ids=tuple(ids[::9]), max=2), everything[::9]),
        ]:
            backward = query.before is not None
            pages: list[ArchiveEntry] = []
            page = await self.store.queryArchive("alice", query)
            while True:
                self.assertEqual(page.count, len(expected))
                if page.entries:
                    self.assertEqual(page.index, expected.index(page.entries[0]))
                pages = page.entries + pages if backward else pages + page.entries
                if page.complete:
                    break
                edge = page.entries[0].id if backward else page.entries[-1].id
                page = await self.store.queryArchive("alice", replace(
                    query, **({"before": edge} if backward else {"after": edge})))
            self.assertEqual(pages, expected)
        self.assertEqual(await self.store.archiveBounds("alice"),
                         (everything[0], everything[-1]))

    async def storeAtVersion(self, version: int) -> SQLStore:
        """The test's store, started afresh on an empty database of schema C{version}."""
        saved = schema.MIGRATIONS, schema.CURRENT_VERSION
        await self.store.close()
        self.emptyDatabase()
        self.store = self.makeStore()
        self.addCleanup(self.store.close)
        schema.MIGRATIONS = [m for m in saved[0] if m[0] <= version]
        schema.CURRENT_VERSION = version
        try:
            await self.store.start()
        finally:
            schema.MIGRATIONS, schema.CURRENT_VERSION = saved
        return self.store

    async def test_archiveFromVersion3(self) -> None:
        """Version 5 takes version 3's two rows per message into one, keeping every archive."""
        store = await self.storeAtVersion(4)
        for user in ("alice", "bob"):
            await store.createUser(user, CREDS)
        v3 = [
            # received by bob from alice, and alice's sent copy
            ("bob", "m1", T0, "alice@localhost", "pc", False, "<message id='1'/>"),
            ("alice", "m1", T0, "bob@localhost", "", True, "<message id='1'/>"),
            # alice's own note to herself
            ("alice", "m2", T0 + datetime.timedelta(microseconds=1), "alice@localhost", "pc",
             False, "<message id='2'/>"),
            # sent by bob to a user deleted since: only the sent copy
            ("bob", "m3", T0 + datetime.timedelta(seconds=1), "gone@localhost", "x", True,
             "<message id='3'/>"),
            # from the server to alice: only the received copy
            ("alice", "m4", T0 + datetime.timedelta(seconds=2), "localhost", "", False,
             "<message id='4'/>"),
        ]
        await store._batch([
            (V3_INSERT, (o, i, store._ts(t), w, r, out, x))
            for o, i, t, w, r, out, x in v3
        ])
        await store._upgrade()
        self.assertEqual(store.migrationsApplied, [5, 6, 7])
        self.assertEqual(await store.getSchemaVersion(), schema.CURRENT_VERSION)
        expected = {
            "alice": [ArchiveEntry("alice", i, t, w, r, out, x)
                      for o, i, t, w, r, out, x in v3 if o == "alice"],
            "bob": [ArchiveEntry("bob", i, t, w, r, out, x)
                    for o, i, t, w, r, out, x in v3 if o == "bob"],
        }
        for owner, entries in expected.items():
            page = await store.queryArchive(owner, ArchiveQuery())
            self.assertEqual(page.entries, entries)
        # and new messages go after them
        await store.archiveMessages([ArchiveMessage(
            "m5", micros(T0), "bob", "alice", "alice@localhost", "", "bob@localhost", "", "<message/>")])
        page = await store.queryArchive("alice", ArchiveQuery(max=1, before=""))
        self.assertEqual([e.id for e in page.entries], ["m5"])
        self.assertEqual(await store.purgeArchive(T0 + datetime.timedelta(seconds=1)), 3)
        page = await store.queryArchive("alice", ArchiveQuery())
        self.assertEqual([e.id for e in page.entries], ["m4"])

    async def test_archiveFromVersion5(self) -> None:
        """
        Version 6 takes version 5's rows into buckets, each party's archive whole, its
        stanza-ids still found; new messages go after them.
        """
        store = await self.storeAtVersion(5)
        for user in ("alice", "bob"):
            await store.createUser(user, CREDS)
        t0 = micros(T0)
        xml = "<message id='1'><body>Zażółć gęślą jaźń</body></message>"
        v5 = [
            # id, sid, stamp, owner_in, owner_out, sender, resource, recipient, resource, xml
            (t0, "m1", t0, "bob", "alice", "alice@localhost", "pc", "bob@localhost", "", xml),
            (t0 + 1, newStanzaId(), t0, "alice", None, "localhost", "", "alice@localhost",
             "x", "<message id='2'/>"),
            (t0 + 5, "m3", t0 + 5, None, "bob", "bob@localhost", "", "carol@other", "r",
             "<message id='3'/>"),
        ]
        await store._batch([
            (("INSERT INTO archive_messages (id, sid, stamp, owner_in, owner_out, sender_jid,"
              " sender_resource, recipient_jid, recipient_resource, xml)"
              " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"), row)
            for row in v5
        ])
        await store._upgrade()
        self.assertEqual(store.migrationsApplied, [6, 7])
        when = [EPOCH + datetime.timedelta(microseconds=row[2]) for row in v5]
        alices = [
            ArchiveEntry("alice", "m1", when[0], "bob@localhost", "", True, xml),
            ArchiveEntry("alice", v5[1][1], when[1], "localhost", "", False, "<message id='2'/>"),
        ]
        bobs = [
            ArchiveEntry("bob", "m1", when[0], "alice@localhost", "pc", False, xml),
            ArchiveEntry("bob", "m3", when[2], "carol@other", "r", True, "<message id='3'/>"),
        ]
        self.assertEqual((await store.queryArchive("alice", ArchiveQuery())).entries, alices)
        self.assertEqual((await store.queryArchive("bob", ArchiveQuery())).entries, bobs)
        page = await store.queryArchive("alice", ArchiveQuery(after="m1"))
        self.assertEqual((page.entries, page.index), (alices[1:], 1))
        page = await store.queryArchive("bob", ArchiveQuery(beforeId="m3"))
        self.assertEqual(page.entries, bobs[:1])
        fresh = newStanzaId()
        await store.archiveMessages([ArchiveMessage(
            fresh, micros(T0), "bob", "alice", "alice@localhost", "", "bob@localhost", "", "<message/>")])
        page = await store.queryArchive("alice", ArchiveQuery(max=1, before=""))
        self.assertEqual([e.id for e in page.entries], [fresh])
        self.assertEqual(await store.purgeArchive(T0 + datetime.timedelta(microseconds=5)), 3)
        page = await store.queryArchive("bob", ArchiveQuery())
        self.assertEqual([e.id for e in page.entries], ["m3"])

    # ---- blocklist (XEP-0191) ------------------------------------------------------------

    async def test_sessionState(self) -> None:
        """One read gives what the three getters give, for a user with and without data."""
        from xmppjson.storage import SessionState

        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        await self.store.setRosterItem("alice", RosterItem("bob@localhost", name="Bob",
                                                           subscription="both", groups=["g"]))
        # every kind of value a roster item holds, and items and blocks out of order
        await self.store.setRosterItem("alice", RosterItem(
            "aga@localhost", subscription="none", askOut=True, pendingIn=True, approved=True,
            inRoster=False, groups=["x", "ż"]))
        await self.store.addToBlocklist("alice", ["zed@localhost", "abe@localhost"])
        await self.store.updateProfile("alice", {"city": "Kraków"})
        await self.store.setLastPresence("alice", datetime.datetime(2026, 11, 28, 3, 4, 5,
                                                                    tzinfo=UTC), "away", "zz")
        for user in ("alice", "bob"):
            state = await self.store.getSessionState(user)
            self.assertIsInstance(state, SessionState)
            self.assertEqual(state, SessionState(await self.store.getRoster(user),
                                                 await self.store.getBlocklist(user),
                                                 await self.store.getProfile(user),
                                                 offline=False))
        state = await self.store.getSessionState("alice")
        self.assertEqual([i.jid for i in state.roster], ["aga@localhost", "bob@localhost"])
        self.assertEqual(state.roster[0].groups, ["x", "ż"])
        self.assertTrue(state.roster[0].pendingIn and not state.roster[0].inRoster)
        self.assertEqual(state.blocklist, ["abe@localhost", "zed@localhost"])
        self.assertEqual(state.profile["city"], "Kraków")
        self.assertEqual((state.profile["presence"], state.profile["status"]), ("away", "zz"))
        self.assertEqual(state.profile["last_seen"],
                         datetime.datetime(2026, 11, 28, 3, 4, 5, tzinfo=UTC))
        self.assertEqual(await self.store.getSessionState("nobody"),
                         SessionState([], [], None, offline=False))
        # whether any offline message waits, as getOffline would tell
        await self.store.storeOffline("bob", datetime.datetime(2026, 11, 28, tzinfo=UTC),
                                      "<message xmlns='jabber:client'><body>x</body></message>")
        self.assertTrue((await self.store.getSessionState("bob")).offline)
        self.assertFalse((await self.store.getSessionState("alice")).offline)
        [stored] = await self.store.getOffline("bob")
        await self.store.deleteOffline("bob", [stored.id])
        self.assertFalse((await self.store.getSessionState("bob")).offline)

    async def test_blocklist(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.createUser("bob", CREDS)
        self.assertEqual(await self.store.getBlocklist("alice"), [])
        added = await self.store.addToBlocklist(
            "alice", ["zed@localhost", "bob@localhost/phone", "example.org", "zed@localhost"]
        )
        # new ones only, once each, in the order given
        self.assertEqual(added, ["zed@localhost", "bob@localhost/phone", "example.org"])
        self.assertEqual(
            await self.store.addToBlocklist("alice", ["example.org", "bob@localhost"]),
            ["bob@localhost"],
        )
        self.assertEqual(
            await self.store.getBlocklist("alice"),
            ["bob@localhost", "bob@localhost/phone", "example.org", "zed@localhost"],
        )
        # one user's list is theirs alone
        self.assertEqual(await self.store.getBlocklist("bob"), [])
        await self.store.addToBlocklist("bob", ["alice@localhost"])
        self.assertEqual(
            await self.store.removeFromBlocklist("alice", ["zed@localhost", "nobody@x", "bob@localhost"]),
            ["bob@localhost", "zed@localhost"],
        )
        self.assertEqual(await self.store.removeFromBlocklist("alice", []), [])
        self.assertEqual(
            await self.store.removeFromBlocklist("alice", None),
            ["bob@localhost/phone", "example.org"],
        )
        self.assertEqual(await self.store.getBlocklist("alice"), [])
        self.assertEqual(await self.store.getBlocklist("bob"), ["alice@localhost"])

    async def test_blocklistManyAtOnce(self) -> None:
        """More JIDs than one statement holds, added and removed in one call."""
        await self.store.createUser("alice", CREDS)
        jids = [f"u{i:04d}@example.org" for i in range(600)]
        self.assertEqual(await self.store.addToBlocklist("alice", jids), jids)
        self.assertEqual(await self.store.getBlocklist("alice"), jids)
        self.assertEqual(await self.store.removeFromBlocklist("alice", jids[::2]), jids[::2])
        self.assertEqual(await self.store.getBlocklist("alice"), jids[1::2])

    async def test_blocklistUnknownUser(self) -> None:
        self.assertEqual(await self.store.getBlocklist("nobody"), [])
        await self.assertFailure(
            self.store.addToBlocklist("nobody", ["bob@localhost"]), UnknownUser
        )
        await self.assertFailure(self.store.addToBlocklist("nobody", []), UnknownUser)
        self.assertEqual(await self.store.removeFromBlocklist("nobody", None), [])

    async def test_deleteUserDeletesBlocklist(self) -> None:
        await self.store.createUser("alice", CREDS)
        await self.store.addToBlocklist("alice", ["bob@localhost"])
        await self.store.deleteUser("alice")
        await self.store.createUser("alice", CREDS)
        self.assertEqual(await self.store.getBlocklist("alice"), [])


class SQLiteFileTests(StoreTestsMixin, unittest.TestCase):
    """The mixin against an SQLite file in the test's temporary directory."""

    def setUp(self) -> Any:
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        return super().setUp()

    def makeStore(self, **kwargs: Any) -> SQLStore:
        return SQLiteStore(
            os.path.join(self.directory, "xmppjson.sqlite3"), reactor, **kwargs
        )

    def emptyDatabase(self) -> None:
        self.directory = self.mktemp()
        os.mkdir(self.directory)

    def makeUnreachableStore(self, **kwargs: Any) -> SQLStore:
        self.missing = os.path.join(self.directory, "not-yet")
        return SQLiteStore(os.path.join(self.missing, "db.sqlite3"), reactor, **kwargs)

    def repair(self) -> None:
        os.mkdir(self.missing)

    async def test_walMode(self) -> None:
        rows = await self.store._fetch("PRAGMA journal_mode")
        self.assertEqual(rows, [("wal",)])
        self.assertEqual(await self.store._fetch("PRAGMA foreign_keys"), [(1,)])

    async def test_pageSize(self) -> None:
        """
        A new database has pages of 16 KiB; one made before keeps its own, and both checkpoint
        after about 40 MB of WAL.
        """
        self.assertEqual(await self.store._fetch("PRAGMA page_size"), [(16384,)])
        self.assertEqual(await self.store._fetch("PRAGMA wal_autocheckpoint"), [(2500,)])
        await self.store.close()
        self.emptyDatabase()
        old = sqlite3.connect(os.path.join(self.directory, "xmppjson.sqlite3"))
        old.execute("PRAGMA page_size=4096")
        old.execute("CREATE TABLE made_before (x)")
        old.commit()
        old.close()
        self.store = self.makeStore()
        await self.store.start()
        self.assertEqual(await self.store._fetch("PRAGMA page_size"), [(4096,)])
        self.assertEqual(await self.store._fetch("PRAGMA wal_autocheckpoint"), [(10000,)])

    async def test_relativePath(self) -> None:
        """C{sqlite:NAME} is relative to the working directory."""
        here = os.getcwd()
        self.directory = os.path.abspath(self.directory)
        os.chdir(self.directory)
        self.addCleanup(os.chdir, here)
        store = openStore("sqlite:relative.sqlite3", reactor)
        self.addCleanup(store.close)
        await store.start()
        self.assertTrue(
            os.path.exists(os.path.join(self.directory, "relative.sqlite3"))
        )


class SQLiteMemoryTests(StoreTestsMixin, unittest.TestCase):
    """The mixin against C{sqlite::memory:}, as other modules' tests use it."""

    reopenable = False

    def makeStore(self, **kwargs: Any) -> SQLStore:
        if kwargs:
            return SQLiteStore(":memory:", reactor, **kwargs)
        store = openStore("sqlite::memory:", reactor)
        return store

    def makeUnreachableStore(self, **kwargs: Any) -> SQLStore:
        self.missing = self.mktemp()
        return SQLiteStore(os.path.join(self.missing, "db.sqlite3"), reactor, **kwargs)

    def repair(self) -> None:
        os.makedirs(self.missing)

    async def test_memoryPersistsAcrossCalls(self) -> None:
        await self.store.createUser("alice", CREDS)
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(await self.store.userExists("alice"))


class DollarQuotedTests(unittest.TestCase):
    """L{xmppjson.storage.pgsql._dollarQuoted}: the quotes' tag never occurs in a value."""

    def test_tagNotInAnyValue(self) -> None:
        from xmppjson.storage import pgsql

        tags = iter(["aaaa", "bbbb", "cccc"])
        self.patch(pgsql.secrets, "token_hex", lambda n: next(tags))
        quoted = pgsql._dollarQuoted(["one $xaaaa$ two", "x$xbbbb$"])
        self.assertEqual(quoted.getquoted(),
                         b"ARRAY[$xcccc$one $xaaaa$ two$xcccc$,$xcccc$x$xbbbb$$xcccc$]")

    def test_nulAndNullLeftToPsycopg(self) -> None:
        from xmppjson.storage import pgsql

        values = ["a", "b\x00c"]
        self.assertIs(pgsql._dollarQuoted(values), values)
        withNull = ["a", None]
        self.assertIs(pgsql._dollarQuoted(withNull), withNull)


class MigrationRenderingTests(unittest.TestCase):
    """A migration's statements as each backend runs them."""

    def test_statementsOfOneDialect(self) -> None:
        """A statement given per dialect runs on the dialects it names, skipped elsewhere."""
        saved = schema.MIGRATIONS
        self.addCleanup(setattr, schema, "MIGRATIONS", saved)
        schema.MIGRATIONS = [(1, [
            "CREATE TABLE t (id {serial})",
            {"postgresql": "ALTER TABLE t ALTER COLUMN id SET STATISTICS 100"},
            {"sqlite": "SELECT {false}", "postgresql": "SELECT {false}"},
        ])]
        self.assertEqual(schema.migrationsAfter(0, "sqlite"), [
            (1, ["CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)", "SELECT 0"])])
        self.assertEqual(schema.migrationsMissing([], "postgresql"), [
            (1, ["CREATE TABLE t (id BIGSERIAL PRIMARY KEY)",
                 "ALTER TABLE t ALTER COLUMN id SET STATISTICS 100", "SELECT FALSE"])])


class InsertManyTests(unittest.TestCase):
    """SQLite's multi-row statements (L{SQLiteStore._insertMany}), without a database."""

    def test_fewStatementsUnderTheParameterLimit(self) -> None:
        """
        Rows go in as few statements as SQLite's parameter limit allows, padded to a few
        sizes; the padding inserts nothing, and an upsert tail works after the statements'
        C{SELECT}.
        """
        store = SQLiteStore(":memory:")
        for width, count, expected in ((10, 1401, 1), (40, 1000, 2), (3, 1, 1), (3, 17, 1)):
            columns = ", ".join(f"c{c}" for c in range(width))
            db = sqlite3.connect(":memory:")
            db.execute(f"CREATE TABLE t ({columns}, UNIQUE (c0))")
            rows = [tuple(f"{r}-{c}" for c in range(width)) for r in range(count)]
            head = f"INSERT INTO t ({columns})"
            statements = store._insertMany(head, ("text",) * width, rows, "")
            self.assertEqual(len(statements), expected)
            for sql, params in statements:
                self.assertLessEqual(len(params), sqlite._MAX_PARAMETERS)
                self.assertEqual(sql.count("%s"), len(params))
                db.execute(sqlite._qmark(sql), params)
            self.assertEqual(db.execute("SELECT * FROM t ORDER BY rowid").fetchall(), rows)
            again = store._insertMany(head, ("text",) * width, rows[:1] + [("new",) * width],
                                      "ON CONFLICT DO NOTHING")
            for sql, params in again:
                db.execute(sqlite._qmark(sql), params)
            self.assertEqual(db.execute("SELECT COUNT(*) FROM t").fetchone(), (count + 1,))
            db.close()
        texts = {sql for n in (*range(1, 70), 127, 128, 129, 500, 1000, 2047, 2048, 2049, 3000)
                 for sql, _ in store._insertMany("INSERT INTO t (...)", ("text",) * 11,
                                                 [("x",) * 11] * n, "")}
        self.assertLessEqual(len(texts), 8)


class OpenStoreTests(unittest.TestCase):
    """L{openStore} picks the backend from the URL."""

    def test_sqlite(self) -> None:
        store = openStore("sqlite:some/file.db", reactor)
        self.assertIsInstance(store, SQLiteStore)
        self.assertEqual(store.path, "some/file.db")
        self.assertEqual(openStore("sqlite::memory:", reactor).path, ":memory:")

    def test_unknown(self) -> None:
        self.assertRaises(ValueError, openStore, "mysql://x/y", reactor)


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _RelayServer(portforward.ProxyServer):
    factory: _Relay

    def connectionMade(self) -> None:
        self.factory.relays.add(self)
        super().connectionMade()

    def connectionLost(
        self, reason: Failure = portforward.protocol.connectionDone
    ) -> None:
        self.factory.relays.discard(self)
        super().connectionLost(reason)


class _Relay(portforward.ProxyFactory):
    """
    A TCP relay in front of the test database, standing in for the network: it can refuse
    connections (database down), and cut every established one (server restart).
    """

    protocol = _RelayServer
    noisy = False

    def __init__(self, host: str, port: int):
        super().__init__(host, port)
        self.relays: set[_RelayServer] = set()
        # (self.port is the database's port: ProxyFactory connects there)
        self.listenPort = _freePort()
        self.listening: Any = None

    def listen(self) -> None:
        self.listening = reactor.listenTCP(self.listenPort, self, interface="127.0.0.1")

    async def cut(self) -> None:
        """Stop listening and drop every connection, both ways."""
        if self.listening is not None:
            await self.listening.stopListening()
            self.listening = None
        for relay in list(self.relays):
            for side in (relay, relay.peer):
                transport: Any = side.transport if side is not None else None
                if transport is not None:
                    transport.abortConnection()
        await waitFor(lambda: not self.relays)
        # let the reactor finish closing the database side too
        await task.deferLater(reactor, 0.01, lambda: None)


class PostgreSQLTests(StoreTestsMixin, unittest.TestCase):
    """
    The mixin against PostgreSQL, on the database named by C{XMPPJSON_TEST_PG} (see
    L{tests.pgtest}), emptied before each test.
    """

    def setUp(self) -> Any:
        self.dsn = pgtest.postgresDSN()
        pgtest.resetDatabase(self.dsn)
        self.relay: _Relay | None = None
        return super().setUp()

    def makeStore(self, **kwargs: Any) -> SQLStore:
        from xmppjson.storage.pgsql import PostgreSQLStore

        return PostgreSQLStore(self.dsn, reactor, **kwargs)

    def emptyDatabase(self) -> None:
        pgtest.resetDatabase(self.dsn)

    def makeUnreachableStore(self, **kwargs: Any) -> SQLStore:
        """A store that reaches the database through a relay that is not listening yet."""
        from psycopg2.extensions import make_dsn, parse_dsn

        from xmppjson.storage.pgsql import PostgreSQLStore

        parameters = parse_dsn(self.dsn)
        host = parameters.get("host", "127.0.0.1")
        if host.startswith("/"):
            raise unittest.SkipTest(
                "the test database is on a Unix socket; the relay needs TCP"
            )
        self.relay = _Relay(host, int(parameters.get("port", 5432)))
        self.addCleanup(self.relay.cut)
        parameters.update(host="127.0.0.1", port=str(self.relay.listenPort))
        return PostgreSQLStore(make_dsn(**parameters), reactor, **kwargs)

    def repair(self) -> None:
        assert self.relay is not None
        self.relay.listen()

    def test_openStore(self) -> None:
        from xmppjson.storage.pgsql import PostgreSQLStore

        self.assertIsInstance(openStore(self.dsn, reactor), PostgreSQLStore)

    async def test_connectionLostAndRecovers(self) -> None:
        """
        When the server goes away under a running store, calls fail with StoreUnavailable at
        once, and the store reconnects by itself when the server is back.
        """
        store = self.makeUnreachableStore(retryDelay=FAST_RETRY)
        self.addCleanup(store.close)
        self.repair()
        await store.start()
        await store.createUser("alice", CREDS)
        assert self.relay is not None
        await self.relay.cut()
        await waitFor(lambda: not store.isReady)
        await self.assertFailure(store.userExists("alice"), StoreUnavailable)
        await self.assertFailure(store.ping(), StoreUnavailable)
        self.relay.listen()
        await store.start()
        self.assertTrue(await store.userExists("alice"))
        self.assertEqual(await store.getCredentials("alice"), CREDS)

    async def test_bucketsCompressedWithLZ4(self) -> None:
        """
        Version 7: the archive's records are compressed with lz4 where the server has it, and
        they read back the same.
        """
        rows = await self.store._runFetch(
            "SELECT 'lz4' = ANY (enumvals) FROM pg_settings"
            " WHERE name = 'default_toast_compression'", ())
        if not rows or not rows[0][0]:
            raise unittest.SkipTest("this PostgreSQL has no lz4")
        rows = await self.store._runFetch(
            "SELECT attcompression FROM pg_attribute"
            " WHERE attrelid = 'archive_buckets'::regclass AND attname = 'data'", ())
        self.assertEqual(rows, [("l",)])
        for user in ("alice", "bob"):
            await self.store.createUser(user, CREDS)
        # Enough text for PostgreSQL to compress it: one bucket, ~40 KB.
        xml = "<message><body>" + "lorem ipsum dolor " * 2000 + "</body></message>"
        sids = [newStanzaId() for _ in range(3)]
        await self.store.archiveMessages([
            ArchiveMessage(sid, micros(T0) + i, "bob", "alice", "alice@localhost", "pc",
                           "bob@localhost", "", xml)
            for i, sid in enumerate(sids)])
        rows = await self.store._runFetch(
            "SELECT pg_column_compression(data), pg_column_size(data) < length(data)"
            " FROM archive_buckets", ())
        self.assertEqual(rows, [("lz4", True)])
        page = await self.store.queryArchive("bob", ArchiveQuery())
        self.assertEqual([(e.id, e.xml) for e in page.entries], [(sid, xml) for sid in sids])

    async def test_clientEncodingIsUTF8(self) -> None:
        """
        Whatever the URL asks, the store's text travels as UTF-8, so that the records sent in
        dollar quotes (already UTF-8) come back as they were.
        """
        from psycopg2.extensions import make_dsn, parse_dsn

        from xmppjson.storage.pgsql import PostgreSQLStore

        store = PostgreSQLStore(make_dsn(**{**parse_dsn(self.dsn), "client_encoding": "LATIN1"}),
                                reactor)
        self.addCleanup(store.close)
        await store.start()
        self.assertEqual(await store._runFetch("SHOW client_encoding", ()), [("UTF8",)])
        for user in ("alice", "bob"):
            await store.createUser(user, CREDS)
        xml = "<message><body>" + "zażółć 🦊 " * 10000 + "</body></message>"
        await store.archiveMessages([ArchiveMessage(
            newStanzaId(), micros(T0), "bob", "alice", "alice@localhost", "", "bob@localhost",
            "", xml)])
        page = await store.queryArchive("bob", ArchiveQuery())
        self.assertEqual([e.xml for e in page.entries], [xml])

    async def test_bigRecordsInDollarQuotes(self) -> None:
        """
        A batch whose records add up to more than 64 KiB goes in dollar quotes, and every
        character comes back as it was: quotes, backslashes, dollars (a tag's own shape too),
        the records' separator, any Unicode.
        """
        from xmppjson.storage import pgsql

        for user in ("alice", "bob"):
            await self.store.createUser(user, CREDS)
        tricky = "'\\'' \\x00 $$ $x$ $x0$ $tag$ ż 🦊 %s %(x)s E'\\n' \n\t"
        xml = f"<message><body>{tricky * 700}</body></message>"
        self.assertGreater(len(xml) * 3, pgsql._DOLLAR_QUOTED_FROM)
        sids = [newStanzaId() for _ in range(3)]
        await self.store.archiveMessages([
            ArchiveMessage(sid, micros(T0) + i, "bob", "alice", "alice@localhost", "pc",
                           "bob@localhost", "", xml)
            for i, sid in enumerate(sids)])
        page = await self.store.queryArchive("bob", ArchiveQuery())
        self.assertEqual([(e.id, e.xml) for e in page.entries], [(sid, xml) for sid in sids])

    async def test_queryOnDeadConnection(self) -> None:
        """A query sent just as the connection dies fails with StoreUnavailable, not psycopg2's error."""
        store = self.makeUnreachableStore(retryDelay=FAST_RETRY)
        self.addCleanup(store.close)
        self.repair()
        await store.start()
        assert self.relay is not None
        cut = Deferred.fromCoroutine(self.relay.cut())
        await self.assertFailure(store.createUser("alice", CREDS), StoreUnavailable)
        await cut
        # txpostgres logs that it could not roll back on the dead connection, which is true
        import psycopg2

        self.flushLoggedErrors(psycopg2.InterfaceError)
        self.relay.listen()
        await store.start()
        self.assertFalse(await store.userExists("alice"))


class BucketRecordTests(unittest.TestCase):
    """The archive's storage form (L{xmppjson.storage.buckets}), without a database."""

    def test_roundTrip(self) -> None:
        """Records read back as written, whatever their XML holds; each side's view."""
        raws = [Raw(1, "s1", 10, "pc", "", "a", "<m>\x1f12\x1fodd</m>"),
                Raw(2, "s2", 11, "", "phone", "b", "<message/>")]
        data = "".join(encode(raw) for raw in raws)
        self.assertEqual(decodeRaw(data), raws)
        self.assertEqual([(r.resource, r.outgoing) for r in decode(data, "a")],
                         [("", True), ("phone", False)])
        self.assertEqual([(r.resource, r.outgoing) for r in decode(data, "b")],
                         [("pc", False), ("", True)])
        for cut in (data[:-1], data[:5]):
            self.assertRaises(ValueError, decodeRaw, cut)

    def test_sidMicros(self) -> None:
        sid = newStanzaId()
        self.assertEqual(sidMicros(sid), int(sid[:13], 16))
        for other in ("m1", "x" * 25, "", sid[:-1]):
            self.assertIsNone(sidMicros(other))

    def test_rows(self) -> None:
        """
        One row per conversation in archive order (sorted when given out of order), and a
        new row once a bucket would span more than MAX_SPAN of ids.
        """
        rows = BucketRows()
        key = ("alice", "bob", "alice@localhost", "bob@localhost")
        for ident, sid in ((5, "e"), (3, "c"), (MAX_SPAN + 10, "z")):
            rows.add(key, ident, sid, ident * 10, f"<{sid}>")
        rows.add(("alice", None, "alice@localhost", "x@elsewhere"), 4, "d", 40, "<d>")
        self.assertEqual(rows.rows(), [
            (*key, 3, "c", 5, 30, 50, 2, "<c><e>"),
            (*key, MAX_SPAN + 10, "z", MAX_SPAN + 10, (MAX_SPAN + 10) * 10,
             (MAX_SPAN + 10) * 10, 1, "<z>"),
            ("alice", None, "alice@localhost", "x@elsewhere", 4, "d", 4, 40, 40, 1, "<d>"),
        ])
