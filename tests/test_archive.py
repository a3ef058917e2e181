"""
Tests for the message archive (L{xmppjson.im.archive}): what is archived and for whom, the
batched writing off the delivery path, XEP-0313 queries with XEP-0059 paging, retention, and the
REST door's C{GET /me/history}.  The core runs on a real in-memory SQLite store with recording
sessions standing in for doors; time is a L{task.Clock}.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest
from twisted.words.xish import domish

from tests.helpers import RestClient, child
from tests.imhelpers import CoreFixture, RecordingSession, parse, settle, until
from tests.test_c2s import C2SFixture, Wire, waitUntil
from xmppjson import jsonstanza
from xmppjson.error import StoreUnavailable
from xmppjson.im import archive as archiveModule
from xmppjson.im.archive import (
    MAX_PAGE,
    NS_FORWARD,
    NS_MAM,
    NS_RSM,
    archivedMessage,
    forwarded,
    parseMAMQuery,
    resultMessage,
)
from xmppjson.im.stanzas import (
    NS_DELAY,
    NS_SID,
    dropServerMarks,
    firstChild,
    newStanzaId,
    parseStanza,
)
from xmppjson.rest import historyItem, openAPI
from xmppjson.storage import ArchiveEntry, ArchiveMessage, ArchiveQuery, SessionState
from xmppjson.storage.sql import micros
from xmppjson.xmltext import NS_CLIENT, NS_STREAMS, serialize

UTC = datetime.UTC


def _d(f: Any) -> Any:
    """Run an async test method as a Deferred."""

    def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
        return defer.ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    return wrapper


def errorCondition(stanza: domish.Element) -> str | None:
    error = firstChild(stanza, "error")
    if error is None:
        return None
    for child in error.elements():
        if child.uri == "urn:ietf:params:xml:ns:xmpp-stanzas" and child.name != "text":
            return child.name
    return None


def stanzaId(message: domish.Element, by: str) -> str:
    for child in message.elements(NS_SID, "stanza-id"):
        if child["by"] == by:
            return child["id"]
    raise AssertionError(f"no stanza-id by {by} in {message.toXml()}")


async def offline(core: CoreFixture, localpart: str, timeout: float = 5.0) -> list[Any]:
    """The user's offline messages, once there are some (storing them takes store round trips)."""
    for _ in range(int(timeout / 0.01)):
        stored = await core.store.getOffline(localpart)
        if stored:
            return list(stored)
        await settle(1)
    raise AssertionError(f"no offline message for {localpart}")


async def archiveOf(core: CoreFixture, localpart: str, **query: Any) -> list[ArchiveEntry]:
    page = await core.im.archive.query(localpart, ArchiveQuery(max=MAX_PAGE, **query))
    return page.entries


class _Base(unittest.TestCase):
    async def pair(self, **config: Any) -> tuple[CoreFixture, RecordingSession, RecordingSession]:
        """A core with alicja (XMPP, available), szymon (web) online, and ewa registered."""
        core = await CoreFixture(self, **config).start("alicja", "szymon", "ewa")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        return core, a, s


class WhatIsArchivedTests(_Base):
    @_d
    async def test_bothPartiesSameId(self) -> None:
        """A chat message is in both archives, under the stanza-id the recipient saw."""
        core, a, s = await self.pair()
        s.send("<message to='alicja@localhost/dom' id='m1' type='chat'><body>cześć</body>"
               "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
        [got] = a.take("message")
        sid = stanzaId(got, "alicja@localhost")
        [mine] = await archiveOf(core, "alicja")
        [theirs] = await archiveOf(core, "szymon")
        self.assertEqual((mine.id, theirs.id), (sid, sid))
        self.assertEqual((mine.withJID, mine.withResource, mine.outgoing),
                         ("szymon@localhost", "web", False))
        self.assertEqual((theirs.withJID, theirs.withResource, theirs.outgoing),
                         ("alicja@localhost", "dom", True))
        self.assertEqual(mine.stamp, datetime.datetime.fromtimestamp(core.clock.seconds(), UTC))
        stored = parse(mine.xml)
        self.assertEqual((stored["from"], stored["to"], stored["id"], str(stored.body)),
                         ("szymon@localhost/web", "alicja@localhost/dom", "m1", "cześć"))
        # the whole message is kept, except the server's own stanza-id
        self.assertIsNotNone(firstChild(stored, "active"))
        self.assertIsNone(firstChild(stored, "stanza-id", NS_SID))
        self.assertEqual(mine.xml, theirs.xml)

    @_d
    async def test_bareJIDAndNormalType(self) -> None:
        core, a, s = await self.pair()
        s.send("<message to='Alicja@LOCALHOST'><body>no type is normal</body></message>")
        [got] = a.take("message")
        [mine] = await archiveOf(core, "alicja")
        [theirs] = await archiveOf(core, "szymon")
        self.assertEqual(mine.id, stanzaId(got, "alicja@localhost"))
        self.assertEqual((theirs.withJID, theirs.withResource), ("alicja@localhost", ""))

    @_d
    async def test_offlineMessageArchivedOnceWithItsStanzaId(self) -> None:
        """
        A message stored offline is archived at once; delivered later, it carries the same
        stanza-id as its archive copy, which is how a client that also syncs the archive
        avoids showing it twice.
        """
        core = await CoreFixture(self).start("alicja", "szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='alicja@localhost' id='o1' type='chat'><body>later</body></message>")
        await until(lambda: core.im.archive._queue)
        [mine] = await archiveOf(core, "alicja")
        [theirs] = await archiveOf(core, "szymon")
        self.assertEqual(mine.id, theirs.id)
        # the archive copy has no offline delay: the archive has its own stamp
        self.assertIsNone(firstChild(parse(mine.xml), "delay", NS_DELAY))
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        await until(lambda: a.received)
        [got] = a.take("message")
        self.assertEqual(got["id"], "o1")
        self.assertEqual(stanzaId(got, "alicja@localhost"), mine.id)
        self.assertIsNotNone(firstChild(got, "delay", NS_DELAY))
        await settle()
        self.assertEqual(len(await archiveOf(core, "alicja")), 1)

    @_d
    async def test_redeliveryIsNotArchivedAgain(self) -> None:
        """A message a dying session hands back keeps its stanza-id and its one archive copy."""
        core, a, s = await self.pair()
        s.send("<message to='alicja@localhost/dom' id='r1' type='chat'><body>x</body></message>")
        [got] = a.take("message")
        # the socket died before the door could write it: the door hands it back
        core.im.closeSession(a)
        core.im.undeliverable(a, got)
        [stored] = await offline(core, "alicja")
        [mine] = await archiveOf(core, "alicja")
        self.assertEqual(stanzaId(parse(stored.xml), "alicja@localhost"), mine.id)
        self.assertEqual(stanzaId(got, "alicja@localhost"), mine.id)
        self.assertEqual(len(await archiveOf(core, "szymon")), 1)

    @_d
    async def test_notArchived(self) -> None:
        core, _a, s = await self.pair()
        for xml in (
            ("<message to='alicja@localhost' type='chat'>"
            "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"),
            "<message to='alicja@localhost' type='headline'><body>news</body></message>",
            "<message to='alicja@localhost' type='groupchat'><body>room</body></message>",
            "<message to='alicja@localhost' type='error'><body>e</body></message>",
            ("<message to='alicja@localhost' type='chat'><body>secret</body>"
            "<no-store xmlns='urn:xmpp:hints'/></message>"),
            ("<message to='alicja@localhost' type='chat'><body>secret</body>"
            "<no-permanent-store xmlns='urn:xmpp:hints'/></message>"),
            "<message to='localhost' type='chat'><body>to the server</body></message>",
            "<message to='nobody@localhost' type='chat'><body>nobody</body></message>",
            "<message to='x@elsewhere.example' type='chat'><body>remote</body></message>",
        ):
            s.send(xml)
        # the bounces (the unknown user's after a store round trip) say routing is over
        await until(lambda: len([e for e in s.received if e.getAttribute("type") == "error"]) == 3)
        self.assertEqual(await archiveOf(core, "alicja"), [])
        self.assertEqual(await archiveOf(core, "szymon"), [])

    @_d
    async def test_messageToSelfOnce(self) -> None:
        core, _a, s = await self.pair()
        s.send("<message to='szymon@localhost' type='chat'><body>note to self</body></message>")
        [entry] = await archiveOf(core, "szymon")
        self.assertEqual((entry.withJID, entry.outgoing), ("szymon@localhost", False))

    @_d
    async def test_forgedStanzaIdNotUsed(self) -> None:
        core, a, s = await self.pair()
        s.send("<message to='alicja@localhost' type='chat'><body>hi</body>"
               "<stanza-id xmlns='urn:xmpp:sid:0' by='alicja@localhost' id='forged'/></message>")
        [got] = a.take("message")
        [mine] = await archiveOf(core, "alicja")
        self.assertNotEqual(mine.id, "forged")
        self.assertEqual(mine.id, stanzaId(got, "alicja@localhost"))

    @_d
    async def test_disabled(self) -> None:
        core, a, s = await self.pair(archive=False)
        s.send("<message to='alicja@localhost' type='chat'><body>hi</body></message>")
        await core.im.archive.flush()
        page = await core.store.queryArchive("alicja", ArchiveQuery())
        self.assertEqual(page.count, 0)
        a.send("<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2'/></iq>")
        [error] = a.take("iq")
        self.assertEqual(errorCondition(error), "service-unavailable")


class _CountingStore:
    """Wraps the store to count (and optionally fail) archive writes."""

    def __init__(self, core: CoreFixture):
        self.calls: list[int] = []
        self.failing = False
        store = core.store
        original = store.archiveMessages

        def archiveMessages(messages: list[ArchiveMessage]) -> Any:
            self.calls.append(len(messages))
            if self.failing:
                return defer.fail(StoreUnavailable())
            return original(messages)

        store.archiveMessages = archiveMessages


class BatchingTests(_Base):
    def heldWrites(self, core: CoreFixture) -> list[defer.Deferred[None]]:
        """Hold every archive write until its gate (in the list returned) fires."""
        held: list[defer.Deferred[None]] = []
        original = core.store.archiveMessages

        def slow(messages: list[ArchiveMessage]) -> Any:
            gate: defer.Deferred[None] = defer.Deferred()
            held.append(gate)
            return gate.addCallback(lambda _: original(messages))

        core.store.archiveMessages = slow
        self.addCleanup(lambda: [gate.callback(None) for gate in held])
        return held

    @_d
    async def test_noDatabaseRoundTripPerMessage(self) -> None:
        """Messages wait in memory; one write C{interval} after the first, for all of them."""
        core, a, s = await self.pair()
        counting = _CountingStore(core)
        interval = core.im.archive.interval
        for n in range(5):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
        self.assertEqual(len(a.take("message")), 5)  # delivered at once
        self.assertEqual(counting.calls, [])
        core.clock.advance(interval - 0.001)
        self.assertEqual(counting.calls, [])
        core.clock.advance(0.001)
        # one transaction; each message once, for both parties' archives
        self.assertEqual(counting.calls, [5])
        await until(lambda: core.im.archive.written == 5)
        bodies = [str(parse(e.xml).body) for e in await archiveOf(core, "alicja")]
        self.assertEqual(bodies, ["0", "1", "2", "3", "4"])

    @_d
    async def test_chatStatesNeverQueued(self) -> None:
        """Typing notifications, the most frequent messages, cost the archive nothing more."""
        core, _a, s = await self.pair()
        for state in ("composing", "paused", "active"):
            s.send(f"<message to='alicja@localhost' type='chat'>"
                   f"<{state} xmlns='http://jabber.org/protocol/chatstates'/></message>")
        self.assertEqual(core.im.archive._queue, [])
        self.assertIsNone(core.im.archive._timer)

    @_d
    async def test_fullBatchWrittenWithoutWaiting(self) -> None:
        core, _a, s = await self.pair()
        counting = _CountingStore(core)
        archive = core.im.archive
        for n in range(archive.batchSize):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
        core.clock.advance(0)
        self.assertEqual(counting.calls, [archive.batchSize])
        await until(lambda: archive.written == archive.batchSize)
        self.assertEqual(archive.dropped, 0)

    @_d
    async def test_arrivalsDuringAWriteWaitForTheNextTimer(self) -> None:
        """
        Messages routed while a batch is written go in the next timer's batch (or a full
        one), not in a write of their own as soon as the first ends: a busy server writes a
        few large transactions.
        """
        core, _a, s = await self.pair()
        archive = core.im.archive
        held = self.heldWrites(core)
        counting = _CountingStore(core)
        for n in range(3):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
        core.clock.advance(archive.interval)
        self.assertEqual(counting.calls, [3])
        for n in range(3, 5):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
        held.pop().callback(None)
        await until(lambda: archive.written == 3)
        self.assertEqual((counting.calls, len(archive._queue)), ([3], 2))
        core.clock.advance(archive.interval)
        self.assertEqual(counting.calls, [3, 2])
        held.pop().callback(None)
        await until(lambda: archive.written == 5)
        bodies = [str(parse(e.xml).body) for e in await archiveOf(core, "alicja")]
        self.assertEqual(bodies, ["0", "1", "2", "3", "4"])

    @_d
    async def test_fullBatchesDuringAWriteOneWriterEach(self) -> None:
        """
        Full batches that fill while a batch is written are written by the writer under way
        when it is done, together: no writer per message waiting for its turn, each then
        writing the few messages queued by then.
        """
        core, _a, s = await self.pair()
        archive = core.im.archive
        archive.batchSize = 3
        held = self.heldWrites(core)
        counting = _CountingStore(core)
        for n in range(3):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
        core.clock.advance(0)
        self.assertEqual(counting.calls, [3])
        for n in range(3, 10):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
            core.clock.advance(0)
        # nothing scheduled, and no writer waiting for the lock
        self.assertIsNone(archive._timer)
        self.assertEqual(archive._lock.waiting, [])
        held.pop().callback(None)
        await until(lambda: len(counting.calls) == 2)
        self.assertEqual(counting.calls, [3, 7])
        held.pop().callback(None)
        await until(lambda: archive.written == 10)
        self.assertEqual((archive._queue, archive._timer), ([], None))
        bodies = [str(parse(e.xml).body) for e in await archiveOf(core, "alicja")]
        self.assertEqual(bodies, [str(n) for n in range(10)])

    @_d
    async def test_retryWaitsWhileTheDatabaseIsAway(self) -> None:
        """
        While the database is away, a full batch queued does not bring the retry forward:
        messages keep coming at chat speed, and a write attempt per message would hammer a
        database that is down.
        """
        core, _a, s = await self.pair()
        counting = _CountingStore(core)
        archive = core.im.archive
        archive.batchSize = 2
        counting.failing = True
        for n in range(2):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
        core.clock.advance(0)
        await settle()
        self.assertEqual(len(counting.calls), 1)
        for n in range(2, 6):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
            core.clock.advance(0)
        await settle()
        self.assertEqual(len(counting.calls), 1)
        counting.failing = False
        core.clock.advance(archive.retryDelay)
        await until(lambda: archive.written == 6)
        self.assertEqual(len(counting.calls), 2)

    @_d
    async def test_queryWritesWhatIsQueued(self) -> None:
        core, _a, s = await self.pair()
        s.send("<message to='alicja@localhost' type='chat'><body>just now</body></message>")
        # no time has passed: the query itself writes the queue first
        self.assertEqual(len(await archiveOf(core, "alicja")), 1)

    @_d
    async def test_databaseAwayThenBack(self) -> None:
        """Messages wait for the database (bounded, logged) and are written when it is back."""
        core, a, s = await self.pair()
        counting = _CountingStore(core)
        archive = core.im.archive
        archive.maxQueue = 3
        archive.highWater = 2
        events: list[dict[str, Any]] = []
        from twisted.logger import Logger

        archive.log = Logger(observer=events.append)
        counting.failing = True
        for n in range(2):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
        self.assertTrue(core.im.intakeHeld)  # behind, as far as the archive knows yet
        core.clock.advance(archive.interval)
        await settle()
        # the database is away: live chat must go on, so the doors read again
        self.assertFalse(core.im.intakeHeld)
        self.assertEqual(len(counting.calls), 1)
        self.assertEqual(len(archive._queue), 2)  # kept for later
        self.assertEqual(len(events), 1)
        self.assertIn("unavailable", events[0]["log_format"])
        for n in range(2, 5):
            s.send(f"<message to='alicja@localhost' type='chat'><body>{n}</body></message>")
        self.assertEqual(len(a.take("message")), 5)  # delivery never waits for the archive
        self.assertFalse(core.im.intakeHeld)
        self.assertEqual(archive.dropped, 2)  # the queue holds 3
        counting.failing = False
        core.clock.advance(archive.retryDelay)
        await until(lambda: archive.written == 3)
        bodies = [str(parse(e.xml).body) for e in await archiveOf(core, "alicja")]
        self.assertEqual(bodies, ["0", "1", "2"])
        self.assertIn("writing again", events[-1]["log_format"])
        self.assertEqual(events[-1]["n"], 2)
        # at shutdown, the count of what was never archived (bench/run.py reports it)
        await archive.close()
        from twisted.logger import formatEvent

        self.assertEqual(formatEvent(events[-1]),
                         "Message archive: 2 messages were not archived since the server started"
                         " (3 were)")

    @_d
    async def test_shutdownWritesTheQueue(self) -> None:
        core, _a, s = await self.pair()
        s.send("<message to='alicja@localhost' type='chat'><body>bye</body></message>")
        store = core.store
        await core.im.shutdown()
        page = await store.queryArchive("alicja", ArchiveQuery())
        self.assertEqual(page.count, 1)
        self.assertIsNone(core.im.archive._timer)


class RetentionTests(_Base):
    @_d
    async def test_purgeOlderThanRetention(self) -> None:
        core, _, s = await self.pair(archiveDays=1)
        archive = core.im.archive
        purged: list[int] = []
        original = archive.purge

        async def purge() -> int:
            purged.append(await original())
            return purged[-1]

        archive.purge = purge  # type: ignore[method-assign]
        s.send("<message to='alicja@localhost' type='chat'><body>old</body></message>")
        await archive.flush()
        # the purge runs every hour and deletes what is older than a day
        core.clock.advance(archive.purgeInterval - 1)
        self.assertEqual(purged, [])
        core.clock.advance(12 * 3600)
        await until(lambda: purged)
        self.assertEqual(purged, [0])
        s.send("<message to='alicja@localhost' type='chat'><body>new</body></message>")
        await archive.flush()
        self.assertEqual(len(await archiveOf(core, "alicja")), 2)
        core.clock.advance(86400)
        await until(lambda: len(purged) == 2)
        # the old message, from both archives
        self.assertEqual(purged, [0, 1])
        self.assertEqual([str(parse(e.xml).body) for e in await archiveOf(core, "alicja")],
                         ["new"])
        self.assertEqual(len(await archiveOf(core, "szymon")), 1)

    @_d
    async def test_foreverByDefault(self) -> None:
        core, _a, _s = await self.pair()
        self.assertIsNone(core.im.archive._purger)
        self.assertEqual(await core.im.archive.purge(), 0)


async def archiveUnreadable(core: CoreFixture, localpart: str) -> str:
    """Write a row to C{localpart}'s archive whose XML cannot be read back; its id."""
    sid = newStanzaId()
    when = datetime.datetime.fromtimestamp(core.clock.seconds(), UTC)
    await core.store.archiveMessages([ArchiveMessage(
        sid, micros(when), localpart, None, "szymon@localhost", "web", f"{localpart}@localhost", "",
        "<message><body>cut short")])
    return sid


class MAMTests(_Base):
    async def chat(self, core: CoreFixture, s: RecordingSession, a: RecordingSession,
                   n: int) -> list[str]:
        """szymon sends alicja C{n} messages, a second apart; their archive ids."""
        ids = []
        for i in range(n):
            s.send(f"<message to='alicja@localhost' type='chat' id='c{i}'><body>{i}</body></message>")
            ids.append(stanzaId(a.take("message")[0], "alicja@localhost"))
            core.clock.advance(1)
        return ids

    async def mam(self, session: RecordingSession, query: str = "", rsm: str = "",
                  queryid: str | None = "q1") -> tuple[list[domish.Element], domish.Element]:
        """Run a query; the result messages and the closing iq."""
        attribute = f" queryid='{queryid}'" if queryid is not None else ""
        form = ""
        if query:
            form = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                    f"<value>urn:xmpp:mam:2</value></field>{query}</x>")
        rsmXML = f"<set xmlns='{NS_RSM}'>{rsm}</set>" if rsm else ""
        session.send(f"<iq type='set' id='mam1'><query xmlns='urn:xmpp:mam:2'{attribute}>"
                     f"{form}{rsmXML}</query></iq>")
        await until(lambda: any(e.name == "iq" for e in session.received))
        results = session.take("message")
        [iq] = session.take("iq")
        return results, iq

    def fin(self, iq: domish.Element) -> tuple[str, dict[str, Any]]:
        self.assertEqual(iq["type"], "result", iq.toXml())
        fin = firstChild(iq, "fin", NS_MAM)
        rsm = firstChild(fin, "set", NS_RSM)
        info: dict[str, Any] = {}
        for child in rsm.elements():
            info[child.name] = str(child)
            if child.name == "first" and child.getAttribute("index") is not None:
                info["index"] = int(child["index"])
        return fin["complete"], info

    def ids(self, results: list[domish.Element]) -> list[str]:
        return [firstChild(r, "result", NS_MAM)["id"] for r in results]

    @_d
    async def test_unreadableRowLeftOut(self) -> None:
        """A row that cannot be read back is left out (and logged); the page is answered."""
        core, a, s = await self.pair()
        ids = await self.chat(core, s, a, 1)
        await archiveUnreadable(core, "alicja")
        ids += await self.chat(core, s, a, 1)
        results, iq = await self.mam(a)
        self.assertEqual(self.ids(results), ids)
        self.assertEqual(iq["type"], "result")
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    @_d
    async def test_resultsThenFin(self) -> None:
        core, a, s = await self.pair()
        ids = await self.chat(core, s, a, 3)
        results, iq = await self.mam(a)
        self.assertEqual(self.ids(results), ids)
        first = results[0]
        self.assertEqual((first["to"], first["from"]), ("alicja@localhost/dom", "alicja@localhost"))
        result = firstChild(first, "result", NS_MAM)
        self.assertEqual(result["queryid"], "q1")
        wrapper = firstChild(result, "forwarded", NS_FORWARD)
        delay = firstChild(wrapper, "delay", NS_DELAY)
        self.assertEqual(delay["stamp"], "1970-01-01T00:00:00.000000Z")
        self.assertEqual(delay["from"], "localhost")
        inner = firstChild(wrapper, "message")
        self.assertEqual(inner.uri, "jabber:client")
        self.assertEqual((inner["from"], inner["id"], str(inner.body)),
                         ("szymon@localhost/web", "c0", "0"))
        self.assertEqual(self.fin(iq), ("true", {"first": ids[0], "index": 0,
                                                 "last": ids[2], "count": "3"}))
        self.assertEqual(iq["id"], "mam1")
        # the sender's archive has them too, as sent
        results, iq = await self.mam(s, queryid=None)
        self.assertEqual(self.ids(results), ids)
        self.assertIsNone(firstChild(results[0], "result", NS_MAM).getAttribute("queryid"))

    @_d
    async def test_pagingForwardsAndBackwards(self) -> None:
        core, a, s = await self.pair()
        ids = await self.chat(core, s, a, 5)
        results, iq = await self.mam(a, rsm="<max>2</max>")
        self.assertEqual(self.ids(results), ids[0:2])
        self.assertEqual(self.fin(iq), ("false", {"first": ids[0], "index": 0, "last": ids[1],
                                                  "count": "5"}))
        results, iq = await self.mam(a, rsm=f"<max>2</max><after>{ids[1]}</after>")
        self.assertEqual(self.ids(results), ids[2:4])
        results, iq = await self.mam(a, rsm=f"<max>2</max><after>{ids[3]}</after>")
        self.assertEqual(self.ids(results), ids[4:])
        self.assertEqual(self.fin(iq)[0], "true")
        # an empty before is the last page; results stay oldest first; going backwards the
        # first has no index (see finElement)
        results, iq = await self.mam(a, rsm="<max>2</max><before/>")
        self.assertEqual(self.ids(results), ids[3:5])
        self.assertEqual(self.fin(iq), ("false", {"first": ids[3], "last": ids[4],
                                                  "count": "5"}))
        results, iq = await self.mam(a, rsm=f"<max>2</max><before>{ids[1]}</before>")
        self.assertEqual(self.ids(results), ids[0:1])
        self.assertEqual(self.fin(iq)[0], "true")
        # max 0: only the count
        results, iq = await self.mam(a, rsm="<max>0</max>")
        self.assertEqual(results, [])
        self.assertEqual(self.fin(iq), ("false", {"count": "5"}))

    @_d
    async def test_filters(self) -> None:
        core, a, s = await self.pair()
        e = await core.connect("ewa@localhost/x", messagesAtOnce=True)
        ids = await self.chat(core, s, a, 2)  # at t=0 and t=1
        e.send("<message to='alicja@localhost' type='chat'><body>from ewa</body></message>")
        ewas = stanzaId(a.take("message")[0], "alicja@localhost")  # at t=2
        core.clock.advance(1)
        results, _ = await self.mam(a, "<field var='with'><value>ewa@localhost</value></field>")
        self.assertEqual(self.ids(results), [ewas])
        results, _ = await self.mam(a, "<field var='with'><value>szymon@localhost/web</value></field>")
        self.assertEqual(self.ids(results), ids)
        results, _ = await self.mam(a, "<field var='with'><value>szymon@localhost/other</value></field>")
        self.assertEqual(results, [])
        results, iq = await self.mam(
            a, "<field var='start'><value>1970-01-01T00:00:01Z</value></field>"
               "<field var='end'><value>1970-01-01T01:00:02+01:00</value></field>")
        self.assertEqual(self.ids(results), [ids[1], ewas])
        self.assertEqual(self.fin(iq)[1]["count"], "2")
        results, _ = await self.mam(a, f"<field var='after-id'><value>{ids[0]}</value></field>"
                                       f"<field var='before-id'><value>{ewas}</value></field>")
        self.assertEqual(self.ids(results), [ids[1]])
        results, _ = await self.mam(a, f"<field var='ids'><value>{ewas}</value>"
                                       f"<value>{ids[0]}</value></field>")
        self.assertEqual(self.ids(results), [ids[0], ewas])
        # an empty field is no filter
        results, _ = await self.mam(a, "<field var='with'><value/></field>")
        self.assertEqual(len(results), 3)

    @_d
    async def test_cap(self) -> None:
        core, a, _s = await self.pair()
        stamp = datetime.datetime(2024, 1, 1, tzinfo=UTC)
        await core.store.archiveMessages([
            ArchiveMessage(f"id{i}", micros(stamp), "alicja", None, "szymon@localhost", "",
                           "alicja@localhost", "",
                           f"<message xmlns='jabber:client' type='chat'><body>{i}</body></message>")
            for i in range(MAX_PAGE + 10)
        ])
        results, iq = await self.mam(a, rsm="<max>100000</max>")
        self.assertEqual(len(results), MAX_PAGE)
        complete, info = self.fin(iq)
        self.assertEqual((complete, info["count"]), ("false", str(MAX_PAGE + 10)))
        # without max, a page of the default size
        results, _ = await self.mam(a)
        self.assertEqual(len(results), 50)

    @_d
    async def test_errors(self) -> None:
        core, a, s = await self.pair()
        await self.chat(core, s, a, 1)
        cases = [
            ("<field var='with'><value>a@b@c</value></field>", "", "jid-malformed"),
            ("<field var='start'><value>yesterday</value></field>", "", "bad-request"),
            ("<field var='start'><value>2024-01-01T00:00:00</value></field>", "", "bad-request"),
            ("<field var='colour'><value>red</value></field>", "", "bad-request"),
            ("", "<after>not-an-id</after>", "item-not-found"),
            ("", "<before>not-an-id</before>", "item-not-found"),
            ("<field var='after-id'><value>nope</value></field>", "", "item-not-found"),
            ("", "<max>-1</max>", "bad-request"),
            ("", "<max>ten</max>", "bad-request"),
            ("", "<index>3</index>", "feature-not-implemented"),
        ]
        for query, rsm, condition in cases:
            results, iq = await self.mam(a, query, rsm)
            self.assertEqual(results, [])
            self.assertEqual((iq["type"], errorCondition(iq)), ("error", condition), (query, rsm))
        a.send("<iq type='set' id='f'><query xmlns='urn:xmpp:mam:2'>"
               "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
               "<value>urn:example</value></field></x></query></iq>")
        await until(lambda: a.received)
        self.assertEqual(errorCondition(a.take("iq")[0]), "bad-request")

    @_d
    async def test_onlyTheOwnArchive(self) -> None:
        core, a, s = await self.pair()
        await self.chat(core, s, a, 1)
        a.send("<iq type='set' id='o' to='szymon@localhost'><query xmlns='urn:xmpp:mam:2'/></iq>")
        [error] = a.take("iq")
        self.assertEqual(errorCondition(error), "service-unavailable")
        # addressed to the own bare JID is the same as no "to"
        a.send("<iq type='set' id='o' to='alicja@localhost'><query xmlns='urn:xmpp:mam:2'/></iq>")
        await until(lambda: any(e.name == "iq" for e in a.received))
        self.assertEqual(len(a.take("message")), 1)
        self.assertEqual(a.take("iq")[0]["type"], "result")

    @_d
    async def test_form(self) -> None:
        _core, a, _s = await self.pair()
        a.send("<iq type='get' id='f1'><query xmlns='urn:xmpp:mam:2'/></iq>")
        [iq] = a.take("iq")
        form = firstChild(firstChild(iq, "query", NS_MAM), "x", "jabber:x:data")
        self.assertEqual(form["type"], "form")
        fields = {f["var"]: f["type"] for f in form.elements("jabber:x:data", "field")}
        self.assertEqual(fields, {"FORM_TYPE": "hidden", "with": "jid-single",
                                  "start": "text-single", "end": "text-single",
                                  "after-id": "text-single", "before-id": "text-single",
                                  "ids": "text-multi"})

    @_d
    async def test_metadata(self) -> None:
        core, a, s = await self.pair()
        a.send("<iq type='get' id='m0'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
        await until(lambda: a.received)
        [empty] = a.take("iq")
        self.assertEqual(list(firstChild(empty, "metadata", NS_MAM).elements()), [])
        ids = await self.chat(core, s, a, 3)
        a.send("<iq type='get' id='m1'><metadata xmlns='urn:xmpp:mam:2'/></iq>")
        await until(lambda: a.received)
        [iq] = a.take("iq")
        metadata = firstChild(iq, "metadata", NS_MAM)
        start, end = firstChild(metadata, "start"), firstChild(metadata, "end")
        self.assertEqual((start["id"], start["timestamp"]), (ids[0], "1970-01-01T00:00:00.000000Z"))
        self.assertEqual((end["id"], end["timestamp"]), (ids[2], "1970-01-01T00:00:02.000000Z"))

    @_d
    async def test_disco(self) -> None:
        _core, a, _s = await self.pair()
        a.send("<iq type='get' id='d1' to='alicja@localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        [iq] = a.take("iq")
        features = {f["var"] for f in firstChild(iq, "query").elements() if f.name == "feature"}
        self.assertTrue({"urn:xmpp:mam:2", "urn:xmpp:mam:2#extended"} <= features)

    @_d
    async def test_sessionGoneMidQuery(self) -> None:
        core, a, s = await self.pair()
        await self.chat(core, s, a, 2)
        pages = []
        query = core.im.archive.query

        async def recording(*args: Any) -> Any:
            pages.append(await query(*args))
            return pages[-1]

        core.im.archive.query = recording  # type: ignore[method-assign]
        a.send("<iq type='set' id='g'><query xmlns='urn:xmpp:mam:2'/></iq>")
        core.im.closeSession(a)
        await until(lambda: pages)
        await settle()
        self.assertEqual(len(pages[0].entries), 2)
        self.assertEqual(a.take("message"), [])


class ParseTests(unittest.TestCase):
    """L{parseMAMQuery} on its own."""

    def test_defaults(self) -> None:
        query = parseMAMQuery(parse("<query xmlns='urn:xmpp:mam:2'/>"))
        self.assertEqual(query, ArchiveQuery(max=50))

    def test_everything(self) -> None:
        query = parseMAMQuery(parse(
            "<query xmlns='urn:xmpp:mam:2' queryid='x'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>"
            "<field var='with'><value>Ewa@Localhost/Phone</value></field>"
            "<field var='start'><value>2024-05-17T12:30:15.5+02:00</value></field>"
            "<field var='end'><value>2024-05-18T00:00:00Z</value></field>"
            "<field var='after-id'><value>a</value></field>"
            "<field var='before-id'><value>b</value></field>"
            "<field var='ids'><value>i1</value><value>i2</value><value>i1</value></field>"
            "</x><set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>A</after>"
            "<before>B</before></set></query>"))
        self.assertEqual(query, ArchiveQuery(
            withJID="ewa@localhost", withResource="Phone",
            start=datetime.datetime(2024, 5, 17, 10, 30, 15, 500000, tzinfo=UTC),
            end=datetime.datetime(2024, 5, 18, tzinfo=UTC),
            afterId="a", beforeId="b", ids=("i1", "i2"), after="A", before="B", max=10))
        self.assertFalse(query.backward)

    def test_lastPage(self) -> None:
        query = parseMAMQuery(parse(
            "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>"
            "<max>5</max><before/></set></query>"))
        self.assertEqual((query.before, query.max, query.backward), ("", 5, True))


class HistoryRESTTests(_Base):
    """C{GET /me/history}, on the same core."""

    async def rest(self, **config: Any) -> tuple[CoreFixture, RestClient, str, list[str]]:
        from xmppjson.accounts import Accounts
        from xmppjson.web import makeRoot

        core, a, s = await self.pair(**config)
        accounts = Accounts(core.config, core.store, core.clock)
        client = RestClient(makeRoot(core.config, accounts, core.im, core.clock))
        token, _ = await accounts.login("alicja", "secret123")
        ids = []
        for i in range(5):
            s.send(f"<message to='alicja@localhost/dom' type='chat' id='h{i}'>"
                   f"<body>Dzień dobry {i}</body></message>")
            ids.append(stanzaId(a.take("message")[0], "alicja@localhost"))
            core.clock.advance(1)
        a.send("<message to='szymon@localhost' type='chat' id='back'><body>reply</body></message>")
        ids.append(stanzaId(s.take("message")[0], "szymon@localhost"))
        return core, client, token, ids

    def assertDocumented(self, response: Any) -> None:
        from openapi_schema_validator import OAS31Validator

        document = openAPI()
        documented = document["paths"]["/me/history"]["get"]["responses"]
        self.assertIn(str(response.code), documented)
        schema = dict(documented[str(response.code)]["content"]["application/json"]["schema"])
        schema["components"] = document["components"]
        OAS31Validator(schema).validate(response.json())

    @_d
    async def test_unreadableRowLeftOut(self) -> None:
        core, client, token, ids = await self.rest()
        await archiveUnreadable(core, "alicja")
        response = await client.get("/me/history", token=token)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual([m["id"] for m in response.json()["messages"]], ids)
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    @_d
    async def test_page(self) -> None:
        _core, client, token, ids = await self.rest()
        response = await client.get("/me/history", token=token)
        self.assertEqual(response.code, 200, response.body)
        self.assertDocumented(response)
        body = response.json()
        self.assertEqual([m["id"] for m in body["messages"]], ids)
        self.assertEqual((body["first"], body["last"], body["complete"], body["count"]),
                         (ids[0], ids[-1], True, 6))
        first = body["messages"][0]
        self.assertEqual(first, {
            "id": ids[0],
            "stamp": "1970-01-01T00:00:00.000000Z",
            "from": "szymon@localhost/web",
            "message_id": "h0",
            "to": "alicja@localhost/dom",
            "type": "chat",
            "body": "Dzień dobry 0",
            "delay": {"stamp": "1970-01-01T00:00:00.000000Z", "from": "localhost"},
            "stanza_id": ids[0],
            "direction": "in",
            "with": "szymon@localhost",
        })
        self.assertEqual(list(first)[:2], ["id", "stamp"])
        last = body["messages"][-1]
        self.assertEqual((last["direction"], last["with"], last["body"]),
                         ("out", "szymon@localhost", "reply"))

    @_d
    async def test_paging(self) -> None:
        _core, client, token, ids = await self.rest()
        body = (await client.get("/me/history?max=2&before=", token=token)).json()
        self.assertEqual([m["id"] for m in body["messages"]], ids[4:6])
        self.assertFalse(body["complete"])
        body = (await client.get(f"/me/history?max=2&before={body['first']}",
                                 token=token)).json()
        self.assertEqual([m["id"] for m in body["messages"]], ids[2:4])
        body = (await client.get(f"/me/history?max=3&after={ids[2]}", token=token)).json()
        self.assertEqual([m["id"] for m in body["messages"]], ids[3:6])
        self.assertTrue(body["complete"])
        body = (await client.get("/me/history?max=0", token=token)).json()
        self.assertEqual((body["messages"], body["first"], body["count"]), ([], None, 6))

    @_d
    async def test_filters(self) -> None:
        _core, client, token, ids = await self.rest()
        body = (await client.get("/me/history?with=szymon%40localhost%2Fweb",
                                 token=token)).json()
        self.assertEqual([m["id"] for m in body["messages"]], ids[:5])
        body = (await client.get("/me/history?start=1970-01-01T00:00:01Z"
                                 "&end=1970-01-01T00:00:02.5Z", token=token)).json()
        self.assertEqual([m["id"] for m in body["messages"]], ids[1:3])
        body = (await client.get("/me/history?with=ewa@localhost&start=&end=",
                                 token=token)).json()
        self.assertEqual(body["messages"], [])

    @_d
    async def test_errors(self) -> None:
        core, client, token, _ids = await self.rest()
        for query, status, condition in (
            ("?with=a@b@c", 400, "jid-malformed"),
            ("?start=today", 400, "bad-request"),
            ("?max=-3", 400, "bad-request"),
            ("?max=lots", 400, "bad-request"),
            ("?after=unknown", 404, "item-not-found"),
            ("?before=unknown", 404, "item-not-found"),
        ):
            response = await client.get("/me/history" + query, token=token)
            self.assertEqual((response.code, response.json()["error"]), (status, condition), query)
            self.assertDocumented(response)
        response = await client.get("/me/history")
        self.assertEqual(response.code, 401)
        # another user's id is not in this archive
        other = (await core.im.archive.query("ewa", ArchiveQuery())).entries
        self.assertEqual(other, [])

    @_d
    async def test_capAndOwnArchiveOnly(self) -> None:
        core, client, token, _ids = await self.rest()
        body = (await client.get("/me/history?max=999999", token=token)).json()
        self.assertEqual(len(body["messages"]), 6)
        from xmppjson.accounts import Accounts

        accounts = Accounts(core.config, core.store, core.clock)
        ewa, _ = await accounts.login("ewa", "secret123")
        body = (await client.get("/me/history", token=ewa)).json()
        self.assertEqual((body["messages"], body["count"], body["complete"]), ([], 0, True))

    @_d
    async def test_disabled(self) -> None:
        _core, client, token, _ids = await self.rest(archive=False)
        response = await client.get("/me/history", token=token)
        self.assertEqual((response.code, response.json()["error"]),
                         (501, "feature-not-implemented"))
        self.assertDocumented(response)


class JSONTranscriptTests(unittest.TestCase):
    """Web users chat over the JSON door and read their history with the C{history} iq."""

    @_d
    async def test_historyOverTheWebSocket(self) -> None:
        from tests.wshelpers import WebFixture

        web = await WebFixture(self).start("alicja", "szymon")
        alicja = await web.connect("alicja")
        szymon = await web.connect("szymon")
        me = szymon.take("session")[0]["payload"]["jid"]
        for n in range(3):
            alicja.sendJSON({"type": "message", "payload": {
                "to": "szymon@localhost", "type": "chat", "id": f"w{n}", "body": f"hej {n}"}})
        await web.until(lambda: len([f for f in szymon.frames if f["type"] == "message"]) == 3)
        live = [f["payload"] for f in szymon.take("message")]
        ids = [p["stanza_id"] for p in live]
        # the newest two, then the page before them
        szymon.sendJSON({"type": "iq", "payload": {"type": "set", "id": "h1", "history": {
            "with": "alicja@localhost", "max": 2, "before": ""}}})
        await web.until(lambda: any(f["type"] == "iq" for f in szymon.frames))
        results = szymon.take("message")
        [done] = szymon.take("iq")
        self.assertEqual([r["payload"]["result"]["id"] for r in results], ids[1:])
        first = results[0]["payload"]
        self.assertEqual((first["from"], first["to"]), ("szymon@localhost", me))
        self.assertEqual(first["result"]["queryid"], "h1")
        self.assertEqual(first["result"]["delay"]["from"], "localhost")
        archived = first["result"]["message"]
        self.assertEqual((archived["from"], archived["id"], archived["type"], archived["body"]),
                         (live[1]["from"], "w1", "chat", "hej 1"))
        self.assertEqual(done["payload"], {
            "type": "result", "id": "h1", "to": me,
            "history": {"first": ids[1], "last": ids[2], "complete": False, "count": 3,
                        "index": None}})
        szymon.sendJSON({"type": "iq", "payload": {"type": "set", "id": "h2", "history": {
            "with": "alicja@localhost", "max": 2, "before": ids[1]}}})
        await web.until(lambda: any(f["type"] == "iq" for f in szymon.frames))
        results = szymon.take("message")
        [done] = szymon.take("iq")
        self.assertEqual([r["payload"]["result"]["id"] for r in results], ids[:1])
        self.assertTrue(done["payload"]["history"]["complete"])
        # the sender's archive has the same ids
        alicja.take()
        alicja.sendJSON({"type": "iq", "payload": {"type": "set", "id": "a1", "history": {}}})
        await web.until(lambda: any(f["type"] == "iq" for f in alicja.frames))
        self.assertEqual([r["payload"]["result"]["id"] for r in alicja.take("message")], ids)
        self.assertTrue(alicja.take("iq")[0]["payload"]["history"]["complete"])
        # a query the archive cannot answer is an iq error, not an error frame
        alicja.sendJSON({"type": "iq", "payload": {"type": "set", "id": "a2", "history": {
            "after": "no-such-id"}}})
        await web.until(lambda: any(f["type"] == "iq" for f in alicja.frames))
        [error] = alicja.take("iq")
        self.assertEqual((error["payload"]["type"], error["payload"]["error"]["condition"]),
                         ("error", "item-not-found"))


class DoorTextTests(unittest.TestCase):
    """
    A message delivered on the XMPP door is archived with the text the door wrote for it
    (C{_c2sText}, no second serialisation) when that text is still the message's, and every
    reader of the archive drops the server's marks that text holds: clients see what they saw
    before.  The c2s door runs on L{StringTransport}s (L{tests.test_c2s.C2SFixture}); szymon
    is a recording session standing in for the JSON door.
    """

    async def core(self) -> tuple[C2SFixture, Wire, Wire, RecordingSession]:
        fx = await C2SFixture(self, allowPlaintext=True).start("juliet", "romeo", "szymon", "ewa")
        juliet = await fx.login("juliet", "balcony")
        romeo = await fx.login("romeo", "garden")
        szymon = RecordingSession("szymon@localhost/web", fx.im, messagesAtOnce=True)
        await fx.im.openSession(szymon)
        return fx, juliet, romeo, szymon

    def serialised(self) -> list[str]:
        """Record what the archive serialises itself from now on."""
        calls: list[str] = []

        def recording(element: domish.Element, children: list[Any] | None = None) -> str:
            calls.append(serialize(element, children))
            return calls[-1]

        self.patch(archiveModule, "serialize", recording)
        return calls

    async def written(self, wire: Wire) -> str:
        """The text the door writes to C{wire} next."""
        await waitUntil(lambda: wire.transport.value())
        text = wire.transport.value().decode("utf-8")
        wire.take()
        return text

    def shape(self, element: domish.Element) -> tuple[Any, ...]:
        """An element as a reader sees it: names, namespaces, attributes, text, in order."""
        return (element.uri, element.name, dict(element.attributes),
                [c if isinstance(c, str) else self.shape(c) for c in element.children])

    def withoutStanzaIds(self, message: domish.Element) -> domish.Element:
        copy = domish.Element((message.uri, message.name), message.defaultUri)
        copy.attributes = dict(message.attributes)
        copy.children = [c for c in message.children
                         if isinstance(c, str) or (c.uri, c.name) != (NS_SID, "stanza-id")]
        return copy

    async def test_storesTheTextTheDoorWrote(self) -> None:
        """Both parties' rows hold the recipient's wire text; the archive serialises nothing."""
        fx, juliet, romeo, _ = await self.core()
        serialised = self.serialised()
        romeo.send("<message to='juliet@localhost/balcony' type='chat' id='d1'>"
                   "<body>Wherefore art thou?</body></message>")
        wire = await self.written(juliet)
        [mine] = await archiveOf(fx, "juliet")
        [theirs] = await archiveOf(fx, "romeo")
        self.assertEqual((mine.xml, theirs.xml), (wire, wire))
        self.assertIn(f"<stanza-id xmlns='{NS_SID}' by='juliet@localhost' id='{mine.id}'/>", wire)
        self.assertEqual(serialised, [])

    async def test_readBackAsBefore(self) -> None:
        """
        MAM, the JSON dialect's history and C{GET /me/history} show a row with the door's text
        exactly as the row the archive would have serialised (the message without the
        server's stanza-id), and MAM on the wire has no stanza-id inside the result.
        """
        fx, juliet, romeo, _ = await self.core()
        romeo.send("<message to='juliet@localhost/balcony' type='chat' id='d1'>"
                   "<body>Wherefore art thou?</body><thread>t1</thread>"
                   "<x xmlns:p='urn:example:p'><p:y p:z='1'/></x></message>")
        await waitUntil(lambda: juliet.transport.value())
        [got] = juliet.take()
        [mine] = await archiveOf(fx, "juliet")
        self.assertIn("stanza-id", mine.xml)
        before = dataclasses.replace(mine, xml=serialize(self.withoutStanzaIds(got)))
        self.assertNotIn("stanza-id", before.xml)
        self.assertEqual(self.shape(forwarded(mine, "localhost")),
                         self.shape(forwarded(before, "localhost")))
        self.assertEqual(
            jsonstanza.toFrame(resultMessage(mine, "juliet@localhost/web", "juliet@localhost",
                                             "h1", "localhost")),
            jsonstanza.toFrame(resultMessage(before, "juliet@localhost/web", "juliet@localhost",
                                             "h1", "localhost")))
        self.assertEqual(historyItem(mine, "localhost"), historyItem(before, "localhost"))
        # and over the wire
        juliet.send("<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='f'/></iq>")
        await juliet.waitFor("iq")
        [result] = juliet.take()
        inner = firstChild(firstChild(firstChild(result, "result", NS_MAM), "forwarded",
                                      NS_FORWARD), "message")
        self.assertEqual(self.shape(inner), self.shape(self.withoutStanzaIds(got)))

    async def test_otherDoorsAndOfflineSerialisedAsBefore(self) -> None:
        """
        A message to a JSON session or to a user who is offline has no door text: the archive
        serialises it, without the server's stanza-id and offline delay, as before.
        """
        fx, _juliet, romeo, szymon = await self.core()
        serialised = self.serialised()
        romeo.send("<message to='szymon@localhost/web' type='chat'><body>web</body></message>")
        romeo.send("<message to='ewa@localhost' type='chat'><body>away</body></message>")
        await until(lambda: len(fx.im.archive._queue) == 2)
        [web] = await archiveOf(fx, "szymon")
        [away] = await archiveOf(fx, "ewa")
        self.assertEqual(serialised, [web.xml, away.xml])
        for entry in (web, away):
            self.assertNotIn("stanza-id", entry.xml)
            self.assertNotIn("delay", entry.xml)
        self.assertEqual(str(child(szymon.take("message")[0], "body")), "web")

    async def sendFrame(self, fx: C2SFixture, sender: RecordingSession, to: str,
                        body: str) -> domish.Element:
        """A chat message (with a chat state) read from a JSON frame, sent by C{sender}."""
        message = jsonstanza.parseFrame(json.dumps({"type": "message", "payload": {
            "to": to, "type": "chat", "id": "j1", "body": body, "composing": {}}}))
        fx.im.receive(sender, message)
        await until(lambda: fx.im.archive._queue)
        return message

    async def test_jsonDoorOfflineSerialised(self) -> None:
        """
        A message the JSON door's reader read, to a user who is offline, has the offline
        store's delay stamp added: it is not the message read any more, and is serialised,
        server marks left out.
        """
        fx, _juliet, _romeo, szymon = await self.core()
        serialised = self.serialised()
        body = "1 < 2 & 'q' \"d\" \n 😀"
        message = await self.sendFrame(fx, szymon, "ewa@localhost", body)
        [stored] = await archiveOf(fx, "ewa")
        kept = [c for c in message.children if c.name not in ("stanza-id", "delay")]
        self.assertEqual([c.name for c in kept], ["body", "composing"])
        self.assertEqual(serialised, [stored.xml])
        self.assertEqual(stored.xml, serialize(message, kept))
        self.assertEqual(str(firstChild(parse(stored.xml), "body", NS_CLIENT)), body)

    async def test_jsonDoorFrameStored(self) -> None:
        """
        A message the JSON door's reader read, delivered live to a session that is not the
        c2s door's, is stored as the frame it was read from, with its from: nothing is
        serialised, and every reader gets the message as routed, server marks left out (a
        CR in the body included, which XML would have read back as LF).
        """
        fx, _juliet, _romeo, szymon = await self.core()
        ewa = RecordingSession("ewa@localhost/web", fx.im, messagesAtOnce=True)
        await fx.im.openSession(ewa)
        serialised = self.serialised()
        body = "1 < 2 & 'q' \"d\" \r\n 😀 </message>"
        await self.sendFrame(fx, szymon, "ewa@localhost/web", body)
        [received] = ewa.take("message")
        [stored] = await archiveOf(fx, "ewa")
        [sent] = await archiveOf(fx, "szymon")
        self.assertEqual(serialised, [])
        self.assertTrue(jsonstanza.isArchivedFrame(stored.xml))
        self.assertEqual(stored.xml, sent.xml)
        routed = received
        dropServerMarks(routed, "localhost")
        self.assertEqual(routed.getAttribute("from"), "szymon@localhost/web")
        for entry in (stored, sent):
            shown = archivedMessage(entry, "localhost")
            self.assertEqual(serialize(shown), serialize(routed))
        self.assertEqual(str(child(archivedMessage(stored, "localhost"), "body")), body)

    async def test_messageChangedSinceWritten(self) -> None:
        """
        A message the door wrote is taken for the archive as it is routed (the queue holds
        what the store will write, not the message); the door's text of a message changed
        since the door wrote it (a child added) is not used.
        """
        fx, juliet, romeo, _ = await self.core()
        serialised = self.serialised()
        romeo.send("<message to='juliet@localhost/balcony' type='chat'><body>hi</body></message>")
        wire = await self.written(juliet)
        [queued] = fx.im.archive._queue
        self.assertIsInstance(queued, ArchiveMessage)
        self.assertEqual(queued.xml, wire)
        message = parse("<message from='romeo@localhost/garden' to='juliet@localhost/balcony'"
                        " type='chat'><body>hi</body>"
                        f"<stanza-id xmlns='{NS_SID}' by='juliet@localhost' id='s1'/></message>")
        juliet.session.deliver(message)
        written = await self.written(juliet)
        entry = fx.im.archive._entry(0.0, "juliet@localhost", message)
        assert entry is not None
        self.assertEqual((entry.id, entry.xml), ("s1", written))
        message.addElement(("urn:example:later", "later"))
        entry = fx.im.archive._entry(0.0, "juliet@localhost", message)
        assert entry is not None
        self.assertEqual(serialised, [entry.xml])
        self.assertIsNotNone(firstChild(parse(entry.xml), "later", "urn:example:later"))

    async def test_entryFromTheSessionIsTheEntry(self) -> None:
        """
        What the archive makes of a message as it is routed (L{Archive._entry} with the
        sender's session) is what it makes from the message's own addresses, for each kind of
        message, archived or not; and a message the door wrote is stored as the door's text.
        """
        fx, juliet, romeo, _ = await self.core()
        archive = fx.im.archive
        garden = romeo.session
        sent = [
            ("romeo", "juliet@localhost/balcony", "chat", "<body>to the resource</body>"),
            ("romeo", "juliet@localhost", "normal", "<subject>only a subject</subject>"),
            ("romeo", "Juliet@LocalHost/balcony", "chat", "<body>to a spelling</body>"),
            ("juliet", "juliet@localhost/balcony", "chat", "<body>to oneself</body>"),
            ("romeo", "juliet@localhost", "chat",
             "<body>kept out</body><no-store xmlns='urn:xmpp:hints'/>"),
            ("romeo", "juliet@localhost", "chat",
             "<body>not kept</body><no-permanent-store xmlns='urn:xmpp:hints'/>"),
            ("romeo", "juliet@localhost", "chat", "<body xmlns='urn:example'>not a body</body>"),
            ("romeo", "juliet@localhost", "chat", "<active xmlns='urn:example:states'/>"),
        ]
        made = []
        for n, (frm, to, mtype, inner) in enumerate(sent):
            sender = garden if frm == "romeo" else juliet.session
            message = parse(f"<message to='{to}' type='{mtype}'>{inner}</message>")
            message["from"] = sender.full
            fx.im.messages._stampId(message, "juliet@localhost")
            juliet.session.deliver(message)
            text = await self.written(juliet)
            entry = archive._entry(fx.im.reactor.seconds(), "juliet@localhost", message)
            withSession = archive._entry(fx.im.reactor.seconds(), "juliet@localhost", message,
                                         sender)
            if entry is None:
                self.assertIsNone(withSession, inner)
                continue
            assert withSession is not None, inner
            self.assertEqual(type(withSession), ArchiveMessage)
            self.assertEqual(withSession._replace(stamp=0), entry._replace(stamp=0), inner)
            self.assertEqual((withSession.id, withSession.xml),
                             (message.children[-1]["id"], text), inner)
            made.append(withSession)
        self.assertEqual([(m.recipient, m.sender, m.senderResource, m.recipientResource)
                          for m in made],
                         [("juliet", "romeo", "garden", "balcony"), ("juliet", "romeo", "garden", ""),
                          ("juliet", "romeo", "garden", "balcony"),
                          ("juliet", None, "balcony", "balcony")])

    async def test_doorTextFromAnotherSender(self) -> None:
        """
        A message whose C{from} is not its sender session's address (nothing the core routes
        looks like that today) is archived with the addresses it names.
        """
        fx, juliet, romeo, _ = await self.core()
        message = parse("<message from='szymon@localhost/web' to='juliet@localhost/balcony'"
                        " type='chat'><body>hi</body></message>")
        fx.im.messages._stampId(message, "juliet@localhost")
        juliet.session.deliver(message)
        await self.written(juliet)
        fx.im.archive.observe(message, "juliet@localhost", [juliet.session], romeo.session)
        [queued] = fx.im.archive._queue
        self.assertEqual((queued.sender, queued.senderJID, queued.senderResource),
                         ("szymon", "szymon@localhost", "web"))
        [entry] = await archiveOf(fx, "juliet")
        self.assertEqual((entry.withJID, entry.withResource), ("szymon@localhost", "web"))

    async def test_textWrittenBeforeRouting(self) -> None:
        """
        Text the door wrote before the message was routed (so before its stanza-id, and
        before the core set its C{from}) is not the routed message: not used.
        """
        fx, juliet, romeo, _ = await self.core()
        message = parse("<message to='szymon@localhost/web' type='chat'><body>hi</body></message>")
        juliet.session.deliver(message)
        self.assertIn("_c2sText", message.__dict__)
        fx.im.receive(romeo.session, message)
        [entry] = await archiveOf(fx, "szymon")
        self.assertEqual(parse(entry.xml)["from"], "romeo@localhost/garden")

    async def test_childNamedLikeTheText(self) -> None:
        """
        A client's child element named C{_c2sText} is not taken for the door's text (domish
        answers unknown attributes with a child of that name).
        """
        fx, _juliet, romeo, _ = await self.core()
        romeo.send("<message to='szymon@localhost/web' type='chat'><body>hi</body>"
                   "<_c2sText xmlns='urn:example'/></message>")
        [entry] = await archiveOf(fx, "szymon")
        self.assertEqual(fx.im.archive.dropped, 0)
        self.assertIsNotNone(firstChild(parse(entry.xml), "_c2sText", "urn:example"))

    async def test_bareJIDAndCarbons(self) -> None:
        """
        A message to the bare JID is the same element, with the same C{to}, on every resource
        it goes to, and a carbon is an element of its own: the row is the text each resource
        that got the message got.
        """
        fx, juliet, romeo, _ = await self.core()
        phone = await fx.login("juliet", "phone")
        for wire in (juliet, phone):
            wire.send("<presence/>")
        phone.send("<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        await phone.waitFor("iq")
        await settle()
        juliet.take()
        phone.take()
        serialised = self.serialised()
        romeo.send("<message to='juliet@localhost' type='chat'><body>both</body></message>")
        texts = [await self.written(juliet), await self.written(phone)]
        romeo.send("<message to='juliet@localhost/balcony' type='chat'><body>one</body></message>")
        balcony = await self.written(juliet)
        carbon = await self.written(phone)
        self.assertIn("urn:xmpp:carbons:2", carbon)
        rows = [e.xml for e in await archiveOf(fx, "juliet")]
        self.assertEqual(rows, [texts[0], balcony])
        self.assertEqual(texts[0], texts[1])
        self.assertEqual(parse(rows[0])["to"], "juliet@localhost")
        self.assertEqual(serialised, [])

    def test_readersDropTheServersMarks(self) -> None:
        """
        Every reader drops the stanza-ids by the domain or a local user and the delay in the
        domain's name, and keeps everyone else's.
        """
        xml = ("<message from='romeo@localhost/garden' to='juliet@localhost' type='chat'>"
               "<body>hi</body>"
               f"<stanza-id xmlns='{NS_SID}' by='other.example' id='theirs'/>"
               f"<delay xmlns='{NS_DELAY}' from='other.example' stamp='2001-01-01T00:00:00Z'/>"
               f"<stanza-id xmlns='{NS_SID}' by='juliet@localhost' id='s1'/>"
               f"<stanza-id xmlns='{NS_SID}' by='localhost' id='s2'/>"
               f"<delay xmlns='{NS_DELAY}' from='localhost' stamp='2002-02-02T00:00:00Z'/>"
               "</message>")
        entry = ArchiveEntry(owner="juliet", id="s1", stamp=datetime.datetime(2003, 3, 3, tzinfo=UTC),
                             withJID="romeo@localhost", withResource="garden", outgoing=False,
                             xml=xml)
        shown = archivedMessage(entry, "localhost")
        self.assertEqual([(c.name, c.getAttribute("by") or c.getAttribute("from"))
                          for c in shown.elements()],
                         [("body", None), ("stanza-id", "other.example"),
                          ("delay", "other.example")])
        # the dialect shows the first delay: the sender's, not the server's offline stamp
        self.assertEqual(historyItem(entry, "localhost")["delay"]["from"], "other.example")
        onlyOffline = dataclasses.replace(entry, xml=xml.replace("other.example", "localhost"))
        self.assertEqual(historyItem(onlyOffline, "localhost")["delay"],
                         {"stamp": "2003-03-03T00:00:00.000000Z", "from": "localhost"})

    async def test_streamNamespaceChild(self) -> None:
        """
        A child in the streams namespace, which the c2s door writes with the stream's
        C{stream:} prefix, is stored readable: the recipient's archive query and a later
        delivery from offline storage show it instead of failing.
        """
        fx, juliet, romeo, _ = await self.core()
        odd = "<message to='{}' type='chat'><body>odd</body><o xmlns='{}'/></message>"
        romeo.send(odd.format("juliet@localhost/balcony", NS_STREAMS))
        self.assertIn("<stream:o/>", await self.written(juliet))
        romeo.send(odd.format("ewa@localhost", NS_STREAMS))
        [mine] = await archiveOf(fx, "juliet")
        self.assertIsNotNone(firstChild(archivedMessage(mine, "localhost"), "o", NS_STREAMS))
        juliet.send("<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='f'/></iq>")
        fin = await juliet.waitFor("iq")
        [result] = juliet.take()
        self.assertEqual((result.name, fin["type"]), ("message", "result"))
        ewa = await fx.login("ewa", "phone")
        ewa.send("<presence/>")
        got = await ewa.waitFor("message")
        self.assertEqual(str(got.body), "odd")
        self.assertIsNotNone(firstChild(got, "o", NS_STREAMS))

    def test_oldRowsUnchanged(self) -> None:
        """Rows written before the door's text was stored (already without marks) read the same."""
        for xml in (
            "<message from='a@localhost/r' to='b@localhost' type='chat'><body>old</body></message>",
            ("<message from='a@localhost/r' to='b@localhost/s' type='normal' id='i'>"
             "<subject>s</subject><body>b &amp; c</body>"
             f"<stanza-id xmlns='{NS_SID}' by='elsewhere.example' id='x'/>"
             "<x:y xmlns:x='urn:example:x'/></message>"),
        ):
            entry = ArchiveEntry(owner="b", id="x1", stamp=datetime.datetime(2003, 3, 3, tzinfo=UTC),
                                 withJID="a@localhost", withResource="r", outgoing=False, xml=xml)
            self.assertEqual(archivedMessage(entry, "localhost").toXml(),
                             parseStanza(xml).toXml())


# -- the cost on the chat hot path: python -m tests.test_archive ----------------------------


class _NullSession(RecordingSession):
    """A door that writes nothing: only the core's own work is measured."""

    def deliver(self, element: domish.Element) -> None:
        pass


class _EmptyStore:
    """A store that answers every call at once with nothing (live routing needs no data)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: defer.succeed([])


class _NullStream:
    """Just enough of a C2SStream for C2SSession.deliver: writable, and writes nothing."""

    writable = True
    verbose = False
    outputPaused = False

    def __init__(self, im: Any):
        self.im = im
        self.transport = self

    def write(self, data: bytes) -> None:
        pass


def _nullCore(archive: bool, c2s: bool = False) -> tuple[Any, RecordingSession]:
    """
    A core on a store that has nothing, with szymon@localhost/web and alicja@localhost/dom
    connected through doors that write nothing; returns the core and szymon's session.

    @param c2s: alicja's door is the XMPP door's session (serialising each stanza and
        keeping a message's text, as on a connection) rather than one that does nothing.
    """
    from twisted.internet import task
    from twisted.words.protocols.jabber.jid import JID

    from xmppjson.c2s.stream import C2SSession
    from xmppjson.config import Config
    from xmppjson.im.server import IMServer

    im = IMServer(Config(archive=archive), _EmptyStore(), task.Clock())
    sender = _NullSession("szymon@localhost/web", im, messagesAtOnce=True)
    recipient: Any = _NullSession("alicja@localhost/dom", im, messagesAtOnce=True)
    if c2s:
        recipient = C2SSession(JID("alicja@localhost/dom"), _NullStream(im))  # type: ignore[arg-type]
        recipient.receivesMessages = recipient.interested = True
    for session in (sender, recipient):
        im.router.add(session)
        # What a session's start loads: without it the recipient's (empty) blocklist is read
        # for every message, as for a recipient who is offline.
        defer.ensureDeferred(im.blocking.load(session.localpart, SessionState([], [], None)))
    return im, sender


class FreedWithoutCollectorTests(unittest.TestCase):
    """
    A routed stanza holds no reference cycle: it is freed when its last reference goes, not at
    the cyclic collector's next pass.  The c2s door's parser links no element to its parent
    (L{xmppjson.xmltext.StanzaParser}), nor does the JSON door's reader (tests.test_websocket).
    """

    def _routedAndDropped(self, message: domish.Element) -> list[Any]:
        """
        Route C{message} (and its first child) with the cyclic collector off, drop the
        caller's reference, and return what is still alive of the two.
        """
        import gc
        import weakref

        im, sender = _nullCore(archive=False)
        refs = [weakref.ref(message), weakref.ref(message.firstChildElement())]
        enabled = gc.isenabled()
        gc.disable()
        try:
            im.receive(sender, message)
            del message
            return [ref() for ref in refs]
        finally:
            gc.collect()
            if enabled:
                gc.enable()

    def test_routedMessageFreedByReferenceCounting(self) -> None:
        from xmppjson.xmltext import StanzaParser

        parser = StanzaParser()
        got: list[domish.Element] = []
        parser.DocumentStartEvent = lambda root: None
        parser.ElementEvent = got.append
        parser.parse(b"<stream xmlns='jabber:client'><message to='alicja@localhost/dom' type='chat'>"
                     b"<body>hej</body><x xmlns='urn:example'><y/></x></message>")
        self.assertEqual(self._routedAndDropped(got.pop()), [None, None])

    def test_linkedTreeIsACycle(self) -> None:
        """
        The same message built with parent links (as domish's parser and C{addElement} make
        it) outlives its last reference: the test above would fail without the parser's care.
        """
        message = domish.Element((None, "message"))
        message["to"], message["type"] = "alicja@localhost/dom", "chat"
        message.addElement("body", content="hej")
        alive = self._routedAndDropped(message)
        self.assertIsNotNone(alive[0])


def measureHotPath(messages: int = 100_000, rounds: int = 20) -> dict[str, float]:
    """
    Microseconds per message of the core's route of one chat message between two connected
    users (C{IMServer.receive}: stamp C{from}, filters, route, stanza-id, deliver, observers),
    with and without the archive, whose share is making what the store writes: for a message
    delivered to a door that writes nothing, serialising it (C{archive_share_on_route_us}),
    for one the XMPP door delivered, taking the text the door wrote (C{c2s_archive_share_us}).

    The two cores run in alternating rounds of C{messages / rounds} messages, and the best
    round of each counts, so that a busy machine disturbs both alike; CPU time of the process,
    not wall time.  As the difference of two noisy numbers is noisier still, the archive's
    observer is also timed on its own (C{observe_us}).
    """
    import time

    from xmppjson.im.server import IMServer

    text = ("<message to='alicja@localhost' type='chat' id='b1'>"
            "<body>A chat message of a typical length, some sixty characters.</body>"
            "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")

    def core(archive: bool, c2s: bool = False) -> tuple[IMServer, RecordingSession,
                                                        domish.Element]:
        im, sender = _nullCore(archive, c2s)
        return im, sender, parse(text)

    def round_(im: IMServer, sender: RecordingSession, message: domish.Element, n: int) -> float:
        elapsed = 0.0
        chunk = 200  # the batch size: the writer empties the queue about this often
        for _ in range(n // chunk):
            start = time.process_time()
            for _ in range(chunk):
                im.receive(sender, message)
            elapsed += time.process_time() - start
            # What the batch writer takes away, outside the timed loop.
            im.archive._queue.clear()
        return elapsed / n * 1e6

    # The XMPP door's session serialises each message (and the archive takes the door's
    # text as the message is routed, see Archive.observe): its own pair of cores.
    cores = {"without": core(False), "with": core(True),
             "c2s_without": core(False, c2s=True), "c2s_with": core(True, c2s=True)}
    per = messages // rounds
    for pair in cores.values():
        round_(*pair, 2000)  # warm caches (JIDs, code paths) before measuring
    best = dict.fromkeys(cores, float("inf"))
    for _ in range(rounds):
        for name, pair in cores.items():
            best[name] = min(best[name], round_(*pair, per))
    withArchive = cores["with"]
    # The observer alone, on the message as routed (with its stanza-id).
    im, sender, message = withArchive
    recipient = im.router.session("alicja@localhost", "dom")
    observe = im.archive.observe
    observed = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(per):
            observe(message, "alicja@localhost", [recipient], sender)
        observed = min(observed, (time.process_time() - start) / per * 1e6)
        im.archive._queue.clear()
    return {"route_without_archive_us": round(best["without"], 2),
            "route_with_archive_us": round(best["with"], 2),
            "archive_share_on_route_us": round(best["with"] - best["without"], 2),
            "observe_us": round(observed, 2),
            "c2s_route_without_archive_us": round(best["c2s_without"], 2),
            "c2s_route_with_archive_us": round(best["c2s_with"], 2),
            "c2s_archive_share_us": round(best["c2s_with"] - best["c2s_without"], 2)}


if __name__ == "__main__":
    import json as _json

    print(_json.dumps(measureHotPath(), indent=1))
