"""
Tests for the IM core (L{xmppjson.im}): RFC 6121 routing, rosters and subscriptions, presence,
offline storage and server iq, on a real store, with recording sessions standing in for doors.
"""

from __future__ import annotations

import datetime

from twisted.internet import defer
from twisted.trial import unittest

from xmppjson.im.stanzas import NS_DELAY, NS_ROSTER, NS_SID, firstChild
from xmppjson.router import Router
from xmppjson.storage import RosterItem
from xmppjson.xmltext import Element
from tests.imhelpers import CoreFixture, parse, settle, until


def _d(f):
    """Run an async test method as a Deferred."""

    def wrapper(self, *a, **kw):
        return defer.ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    return wrapper


def errorCondition(stanza) -> str | None:
    error = firstChild(stanza, "error")
    if error is None:
        return None
    for child in error.elements():
        if child.uri == "urn:ietf:params:xml:ns:xmpp-stanzas" and child.name != "text":
            return child.name
    return None


class MessageRoutingTests(unittest.TestCase):
    @_d
    async def test_fullJIDDelivery(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='alicja@localhost/dom' id='m1' type='chat' from='forged@evil/x'><body>cześć 👋</body></message>")
        [got] = a.take("message")
        self.assertEqual(got["from"], "szymon@localhost/web")
        self.assertEqual(got["id"], "m1")
        self.assertEqual(str(got.body), "cześć 👋")
        sid = firstChild(got, "stanza-id", NS_SID)
        self.assertEqual(sid["by"], "alicja@localhost")
        self.assertTrue(sid["id"])
        # The core's own element kind, whose attribute reads are the fast ones (xmltext.Element)
        self.assertIs(type(sid), Element)

    @_d
    async def test_bareJIDHighestPriority(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        low = await core.connect("alicja@localhost/low", presence="<presence><priority>1</priority></presence>")
        high = await core.connect("alicja@localhost/high", presence="<presence><priority>5</priority></presence>")
        neg = await core.connect("alicja@localhost/neg", presence="<presence><priority>-1</priority></presence>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='alicja@localhost' type='chat'><body>hi</body></message>")
        self.assertEqual(len(high.take("message")), 1)
        self.assertEqual(low.take("message"), [])
        self.assertEqual(neg.take("message"), [])

    @_d
    async def test_goneResourceFallsBackToBare(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='alicja@localhost/gone' type='chat'><body>hi</body></message>")
        self.assertEqual(len(a.take("message")), 1)

    @_d
    async def test_unknownUserGetsServiceUnavailable(self):
        core = await CoreFixture(self).start("szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='nobody@localhost' id='x1' type='chat'><body>hi</body></message>")
        await until(lambda: s.received)
        [error] = s.take("message")
        self.assertEqual(error["type"], "error")
        self.assertEqual(error["id"], "x1")
        self.assertEqual(errorCondition(error), "service-unavailable")

    @_d
    async def test_otherDomainGetsRemoteServerNotFound(self):
        core = await CoreFixture(self).start("szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='x@elsewhere.example' type='chat'><body>hi</body></message>")
        [error] = s.take("message")
        self.assertEqual(errorCondition(error), "remote-server-not-found")

    @_d
    async def test_malformedToGetsJIDMalformed(self):
        core = await CoreFixture(self).start("szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='a@b@c' type='chat'><body>hi</body></message>")
        [error] = s.take("message")
        self.assertEqual(errorCondition(error), "jid-malformed")


class OfflineTests(unittest.TestCase):
    @_d
    async def test_storedAndDeliveredOnceAtInitialPresence(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='alicja@localhost' id='o1' type='chat'><body>later</body></message>")
        await settle()
        stored = await core.store.getOffline("alicja")
        self.assertEqual(len(stored), 1)
        a = await core.connect("alicja@localhost/dom")
        self.assertEqual(a.take("message"), [])  # no presence yet: not reachable
        a.send("<presence/>")
        await until(lambda: any(e.name == "message" for e in a.received))
        [got] = a.take("message")
        self.assertEqual(got["id"], "o1")
        self.assertEqual(got["from"], "szymon@localhost/web")
        delay = firstChild(got, "delay", NS_DELAY)
        self.assertEqual(delay["from"], "localhost")
        self.assertTrue(delay["stamp"].endswith("Z"))
        await settle()
        self.assertEqual(await core.store.getOffline("alicja"), [])
        # A second session does not get it again.
        b = await core.connect("alicja@localhost/other", presence="<presence/>")
        await settle()
        self.assertEqual(b.take("message"), [])

    @_d
    async def test_webSessionGetsOfflineAtOpen(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='alicja@localhost' id='o2' type='chat'><body>later</body></message>")
        await settle()
        w = await core.connect("alicja@localhost/web", messagesAtOnce=True)
        await until(lambda: w.received)
        self.assertEqual([m["id"] for m in w.take("message")], ["o2"])

    @_d
    async def test_chatStatesNotStored(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='alicja@localhost' type='chat'>"
               "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        await settle()
        self.assertEqual(await core.store.getOffline("alicja"), [])
        self.assertEqual(s.take("message"), [])  # not an error either

    @_d
    async def test_undeliverableGoesOffline(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        core.im.closeSession(a)  # the socket died; the door hands back what it could not write
        core.im.undeliverable(a, parse(
            "<message from='szymon@localhost/web' to='alicja@localhost/dom' type='chat' id='u1'><body>x</body></message>"))
        await settle()
        stored = await core.store.getOffline("alicja")
        self.assertEqual(len(stored), 1)
        self.assertIn("u1", stored[0].xml)
        del s


class OfflineHintTests(unittest.TestCase):
    """
    The core remembers users who have no offline message stored and skips the store's query at
    their next login; every way a message can be stored while that memory is being formed must
    still see the message delivered at the next login.
    """

    def countQueries(self, core: CoreFixture) -> list[str]:
        queried: list[str] = []
        original = core.store.getOffline

        def getOffline(localpart):
            queried.append(localpart)
            return original(localpart)

        core.store.getOffline = getOffline
        return queried

    async def login(self, core: CoreFixture, full: str):
        session = await core.connect(full, presence="<presence/>")
        await settle()
        return session

    async def logout(self, core: CoreFixture, session) -> None:
        core.im.closeSession(session)
        await settle()

    async def sendToAlicja(self, core: CoreFixture, ident: str) -> None:
        """Szymon writes to Alicja (who is away), and the core has done with it."""
        s = await core.connect(f"szymon@localhost/{ident}", messagesAtOnce=True)
        s.send(f"<message to='alicja@localhost' id='{ident}' type='chat'><body>x</body></message>")
        await settle()

    def stateUnknown(self, core: CoreFixture) -> None:
        """The store's session state says nothing of offline messages (maybe some)."""
        original = core.store.getSessionState

        async def getSessionState(localpart):
            return (await original(localpart))._replace(offline=True)

        core.store.getSessionState = getSessionState

    @_d
    async def test_nothingStoredSkipsTheQuery(self):
        core = await CoreFixture(self).start("alicja")
        self.stateUnknown(core)
        queried = self.countQueries(core)
        await self.logout(core, await self.login(core, "alicja@localhost/a"))
        self.assertEqual(queried, ["alicja"])
        await self.logout(core, await self.login(core, "alicja@localhost/b"))
        self.assertEqual(queried, ["alicja"])

    @_d
    async def test_sessionStateSaysNothingStored(self):
        """
        The session state read at a login says whether anything is stored: when nothing is,
        not even the first login queries the offline messages.
        """
        core = await CoreFixture(self).start("alicja", "szymon")
        queried = self.countQueries(core)
        await self.logout(core, await self.login(core, "alicja@localhost/a"))
        self.assertEqual(queried, [])
        await self.sendToAlicja(core, "o6")
        a = await self.login(core, "alicja@localhost/b")
        await until(lambda: a.received)
        self.assertEqual([m["id"] for m in a.take("message")], ["o6"])
        self.assertEqual(queried, ["alicja"])

    @_d
    async def test_storeStartedWhileReadingTheSessionState(self):
        """
        A store that starts while a login reads the session state (which saw nothing
        stored) is not hidden by it: the message is queried and delivered at that login.
        """
        core = await CoreFixture(self).start("alicja", "szymon")
        gate: defer.Deferred[None] = defer.Deferred()
        original = core.store.getSessionState

        async def slowState(localpart):
            state = await original(localpart)  # read before the store below
            if localpart == "alicja":
                await gate
            return state

        core.store.getSessionState = slowState
        opening = defer.ensureDeferred(core.connect("alicja@localhost/a", presence="<presence/>"))
        await self.sendToAlicja(core, "o7")
        self.assertEqual(len(await core.store.getOffline("alicja")), 1)
        gate.callback(None)
        a = await opening
        await until(lambda: a.received)
        self.assertEqual([m["id"] for m in a.take("message")], ["o7"])

    @_d
    async def test_deliveredEverythingSkipsTheQuery(self):
        """Once what was stored is delivered and deleted, nothing is stored any more."""
        core = await CoreFixture(self).start("alicja", "szymon")
        await self.sendToAlicja(core, "o1")
        queried = self.countQueries(core)
        a = await self.login(core, "alicja@localhost/a")
        await until(lambda: a.received)
        self.assertEqual([m["id"] for m in a.take("message")], ["o1"])
        await self.logout(core, a)
        await self.logout(core, await self.login(core, "alicja@localhost/b"))
        self.assertEqual(queried, ["alicja"])

    @_d
    async def test_storedAfterNothingIsDelivered(self):
        """A message stored after a login found nothing is delivered at the next login."""
        core = await CoreFixture(self).start("alicja", "szymon")
        await self.logout(core, await self.login(core, "alicja@localhost/a"))
        await self.sendToAlicja(core, "o2")
        a = await self.login(core, "alicja@localhost/b")
        await until(lambda: a.received)
        self.assertEqual([m["id"] for m in a.take("message")], ["o2"])
        self.assertEqual(await core.store.getOffline("alicja"), [])

    @_d
    async def test_storeUnderWayWhileQuerying(self):
        """
        A login's query that runs while a store is under way (not yet visible to it) proves
        nothing: the message is delivered at the next login.
        """
        core = await CoreFixture(self).start("alicja", "szymon")
        gate: defer.Deferred[None] = defer.Deferred()
        original = core.store.storeOffline

        async def slowStore(*args):
            await gate
            return await original(*args)

        core.store.storeOffline = slowStore
        await self.sendToAlicja(core, "o3")
        a = await self.login(core, "alicja@localhost/a")  # queries while the store waits
        self.assertEqual(a.take("message"), [])
        await self.logout(core, a)
        gate.callback(None)
        await settle()
        self.assertEqual(len(await core.store.getOffline("alicja")), 1)
        b = await self.login(core, "alicja@localhost/b")
        await until(lambda: b.received)
        self.assertEqual([m["id"] for m in b.take("message")], ["o3"])

    @_d
    async def test_storeStartedWhileQuerying(self):
        """A store that starts while a login's query runs: delivered at the next login."""
        core = await CoreFixture(self).start("alicja", "szymon")
        gate: defer.Deferred[None] = defer.Deferred()
        original = core.store.getOffline

        async def slowQuery(localpart):
            result = await original(localpart)  # read before the store below
            await gate
            return result

        core.store.getOffline = slowQuery
        self.stateUnknown(core)
        a = await core.connect("alicja@localhost/a", presence="<presence/>")  # query waits
        await self.logout(core, a)
        await self.sendToAlicja(core, "o4")
        self.assertEqual(len(await original("alicja")), 1)
        gate.callback(None)  # the query answers: nothing (it read before the store)
        await settle()
        b = await self.login(core, "alicja@localhost/b")
        await until(lambda: b.received)
        self.assertEqual([m["id"] for m in b.take("message")], ["o4"])

    @_d
    async def test_replicatedRouterAlwaysQueries(self):
        """
        A cluster node's peers store offline messages for the same users: with a replicated
        router every login queries the store.
        """
        self.patch(Router, "replicated", True)
        core = await CoreFixture(self).start("alicja")
        queried = self.countQueries(core)
        await self.logout(core, await self.login(core, "alicja@localhost/a"))
        await self.logout(core, await self.login(core, "alicja@localhost/b"))
        self.assertEqual(queried, ["alicja", "alicja"])
        # What another node stored behind this one's back is delivered.
        await core.store.storeOffline(
            "alicja", datetime.datetime.now(datetime.UTC),
            "<message xmlns='jabber:client' to='alicja@localhost' id='o5' type='chat'>"
            "<body>5</body></message>",
        )
        c = await self.login(core, "alicja@localhost/c")
        await until(lambda: c.received)
        self.assertEqual([m["id"] for m in c.take("message")], ["o5"])


class RosterTests(unittest.TestCase):
    @_d
    async def test_setGetRemove(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>"
               "<item jid='alicja@localhost' name='Alicja'><group>Friends</group></item></query></iq>")
        await until(lambda: len(s.received) >= 2)
        push, result = s.take("iq")
        self.assertEqual(push["type"], "set")
        item = firstChild(firstChild(push, "query", NS_ROSTER), "item")
        self.assertEqual((item["jid"], item["name"], item["subscription"]), ("alicja@localhost", "Alicja", "none"))
        self.assertEqual(result["type"], "result")
        self.assertEqual(result["id"], "r1")
        s.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>")
        await until(lambda: s.received)
        [roster] = s.take("iq")
        items = list(firstChild(roster, "query", NS_ROSTER).elements())
        self.assertEqual([i["jid"] for i in items], ["alicja@localhost"])
        self.assertEqual([str(g) for g in items[0].elements()], ["Friends"])
        s.send("<iq type='set' id='r3'><query xmlns='jabber:iq:roster'>"
               "<item jid='alicja@localhost' subscription='remove'/></query></iq>")
        await until(lambda: len(s.received) >= 2)
        push, result = s.take("iq")
        self.assertEqual(firstChild(firstChild(push, "query", NS_ROSTER), "item")["subscription"], "remove")
        self.assertEqual(result["type"], "result")
        self.assertEqual(await core.store.getRoster("szymon"), [])

    @_d
    async def test_badRosterSet(self):
        core = await CoreFixture(self).start("szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<iq type='set' id='b1'><query xmlns='jabber:iq:roster'>"
               "<item jid='a@localhost'/><item jid='b@localhost'/></query></iq>")
        await until(lambda: s.received)
        [error] = s.take("iq")
        self.assertEqual(errorCondition(error), "bad-request")
        s.send("<iq type='set' id='b2'><query xmlns='jabber:iq:roster'>"
               "<item jid='nobody@localhost' subscription='remove'/></query></iq>")
        await until(lambda: s.received)
        [error] = s.take("iq")
        self.assertEqual(errorCondition(error), "item-not-found")


async def _subscribe(core, a, b):
    """a subscribes to b and b approves; then b subscribes to a and a approves."""
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    await until(lambda: any(e.getAttribute("type") == "subscribe" for e in b.received))
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    await settle()
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    await until(lambda: any(e.getAttribute("type") == "subscribe" for e in a.received))
    a.send(f"<presence type='subscribed' to='{b.bare}'/>")
    await settle(8)


class SubscriptionTests(unittest.TestCase):
    @_d
    async def test_handshakeToBoth(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        a.send("<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True, presence="<presence/>")
        await _subscribe(core, s, a)
        rosterS = {i.jid: i for i in await core.store.getRoster("szymon")}
        rosterA = {i.jid: i for i in await core.store.getRoster("alicja")}
        self.assertEqual(rosterS["alicja@localhost"].subscription, "both")
        self.assertEqual(rosterA["szymon@localhost"].subscription, "both")
        self.assertFalse(rosterS["alicja@localhost"].askOut or rosterS["alicja@localhost"].pendingIn)
        pushes = [e for e in s.received if e.name == "iq" and e.getAttribute("type") == "set"]
        last = firstChild(firstChild(pushes[-1], "query", NS_ROSTER), "item")
        self.assertEqual(last["subscription"], "both")
        # Each now sees the other's presence.
        s.take()
        a.take()
        a.send("<presence><show>away</show><status>busy</status></presence>")
        [p] = s.take("presence")
        self.assertEqual(p["from"], "alicja@localhost/dom")
        self.assertEqual(str(firstChild(p, "show")), "away")

    @_d
    async def test_requestWaitsForOfflineContact(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True, presence="<presence/>")
        s.send("<presence type='subscribe' to='alicja@localhost'/>")
        await settle(8)
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        requests = [e for e in a.received if e.getAttribute("type") == "subscribe"]
        self.assertEqual([r["from"] for r in requests], ["szymon@localhost"])

    @_d
    async def test_unsubscribedDenies(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True, presence="<presence/>")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s.send("<presence type='subscribe' to='alicja@localhost'/>")
        await until(lambda: any(e.getAttribute("type") == "subscribe" for e in a.received))
        a.send("<presence type='unsubscribed' to='szymon@localhost'/>")
        await until(lambda: any(e.getAttribute("type") == "unsubscribed" for e in s.received))
        rosterS = {i.jid: i for i in await core.store.getRoster("szymon")}
        self.assertEqual(rosterS["alicja@localhost"].subscription, "none")
        self.assertFalse(rosterS["alicja@localhost"].askOut)
        self.assertEqual(await core.store.getRoster("alicja"), [])

    @_d
    async def test_subscribeToUnknownUserIsDenied(self):
        core = await CoreFixture(self).start("szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True, presence="<presence/>")
        s.send("<presence type='subscribe' to='ghost@localhost'/>")
        await settle(8)
        [item] = await core.store.getRoster("szymon")
        self.assertFalse(item.askOut)
        self.assertEqual(item.subscription, "none")


class PresenceTests(unittest.TestCase):
    async def _pair(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True, presence="<presence/>")
        await _subscribe(core, s, a)
        a.take()
        s.take()
        return core, a, s

    @_d
    async def test_disconnectBroadcastsUnavailable(self):
        core, a, s = await self._pair()
        core.im.closeSession(a)
        [p] = s.take("presence")
        self.assertEqual((p["from"], p["type"]), ("alicja@localhost/dom", "unavailable"))

    @_d
    async def test_newSessionReceivesContactsPresence(self):
        core, a, s = await self._pair()
        a.send("<presence><show>dnd</show></presence>")
        s2 = await core.connect("szymon@localhost/phone", presence="<presence/>")
        froms = {(p["from"], str(firstChild(p, "show") or "")) for p in s2.take("presence")}
        self.assertIn(("alicja@localhost/dom", "dnd"), froms)
        self.assertIn(("szymon@localhost/web", ""), froms)

    @_d
    async def test_noPresenceWithoutSubscription(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True, presence="<presence/>")
        a.send("<presence><show>away</show></presence>")
        self.assertEqual(s.take("presence"), [])

    @_d
    async def test_directedPresenceAndItsUnavailable(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True, presence="<presence/>")
        s.send("<presence to='alicja@localhost/dom'><status>hi</status></presence>")
        [p] = a.take("presence")
        self.assertEqual(p["from"], "szymon@localhost/web")
        core.im.closeSession(s)
        [p] = a.take("presence")
        self.assertEqual(p["type"], "unavailable")

    @_d
    async def test_lastSeenRecorded(self):
        core, a, s = await self._pair()
        a.send("<presence><show>xa</show><status>out</status></presence>")
        await core.im.presence.lastSeen.flush()
        profile = await core.store.getProfile("alicja")
        self.assertEqual((profile["presence"], profile["status"]), ("xa", "out"))
        core.im.closeSession(a)
        await core.im.presence.lastSeen.flush()
        profile = await core.store.getProfile("alicja")
        self.assertEqual(profile["presence"], "unavailable")
        self.assertIsNotNone(profile["last_seen"])

    @_d
    async def test_badShowIsBadRequest(self):
        core = await CoreFixture(self).start("alicja")
        a = await core.connect("alicja@localhost/dom")
        a.send("<presence id='p'><show>sleeping</show></presence>")
        [error] = a.take("presence")
        self.assertEqual(errorCondition(error), "bad-request")


class SessionTests(unittest.TestCase):
    @_d
    async def test_conflictReplacesOldSession(self):
        core = await CoreFixture(self).start("alicja")
        old = await core.connect("alicja@localhost/dom", presence="<presence/>")
        new = await core.connect("alicja@localhost/dom")
        self.assertEqual(old.closedWith, "conflict")
        self.assertFalse(old.active)
        self.assertIs(core.im.router.session("alicja@localhost", "dom"), new)

    @_d
    async def test_sessionLimit(self):
        core = await CoreFixture(self, maxSessionsPerUser=2).start("alicja")
        await core.connect("alicja@localhost/1")
        await core.connect("alicja@localhost/2")
        with self.assertRaises(Exception) as caught:
            await core.connect("alicja@localhost/3")
        self.assertEqual(caught.exception.condition, "policy-violation")

    @_d
    async def test_shutdownClosesEverySession(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        await core.im.shutdown()
        self.assertEqual((a.closedWith, s.closedWith), ("system-shutdown", "system-shutdown"))
        self.assertEqual(len(core.im.router), 0)


class ServerIQTests(unittest.TestCase):
    @_d
    async def test_ping(self):
        core = await CoreFixture(self).start("alicja")
        a = await core.connect("alicja@localhost/dom")
        a.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        [r] = a.take("iq")
        self.assertEqual((r["type"], r["id"], r["from"], r["to"]), ("result", "p1", "localhost", "alicja@localhost/dom"))

    @_d
    async def test_discoListsFeatures(self):
        core = await CoreFixture(self).start("alicja")
        a = await core.connect("alicja@localhost/dom")
        a.send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        [r] = a.take("iq")
        query = firstChild(r, "query")
        features = {f["var"] for f in query.elements() if f.name == "feature"}
        self.assertTrue({"urn:xmpp:ping", "jabber:iq:version", "msgoffline"} <= features)
        identity = firstChild(query, "identity")
        self.assertEqual((identity["category"], identity["type"]), ("server", "im"))

    @_d
    async def test_unknownIQServiceUnavailable(self):
        core = await CoreFixture(self).start("alicja")
        a = await core.connect("alicja@localhost/dom")
        a.send("<iq type='get' id='u1' to='localhost'><query xmlns='urn:example:nothing'/></iq>")
        [r] = a.take("iq")
        self.assertEqual(errorCondition(r), "service-unavailable")

    @_d
    async def test_iqToOtherUsersSession(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        a.send("<iq type='get' id='v1' to='szymon@localhost/web'><query xmlns='jabber:iq:version'/></iq>")
        [got] = s.take("iq")
        self.assertEqual(got["from"], "alicja@localhost/dom")
        a.send("<iq type='get' id='v2' to='szymon@localhost/gone'><query xmlns='jabber:iq:version'/></iq>")
        [r] = a.take("iq")
        self.assertEqual(errorCondition(r), "service-unavailable")


class RosterVersioningTests(unittest.TestCase):
    @_d
    async def test_unchangedRosterIsEmptyResult(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='alicja@localhost'/></query></iq>")
        await until(lambda: len(s.received) >= 2)
        push = s.take("iq")[0]
        pushVer = firstChild(push, "query", NS_ROSTER)["ver"]
        s.send("<iq type='get' id='g1'><query xmlns='jabber:iq:roster' ver=''/></iq>")
        await until(lambda: s.received)
        [full] = s.take("iq")
        ver = firstChild(full, "query", NS_ROSTER)["ver"]
        self.assertEqual(ver, pushVer)
        s.send(f"<iq type='get' id='g2'><query xmlns='jabber:iq:roster' ver='{ver}'/></iq>")
        await until(lambda: s.received)
        [empty] = s.take("iq")
        self.assertEqual(empty["type"], "result")
        self.assertIsNone(firstChild(empty, "query", NS_ROSTER))
        s.send("<iq type='set' id='r2'><query xmlns='jabber:iq:roster'><item jid='alicja@localhost' name='A'/></query></iq>")
        await until(lambda: len(s.received) >= 2)
        newVer = firstChild(s.take("iq")[0], "query", NS_ROSTER)["ver"]
        self.assertNotEqual(newVer, ver)


class ForgeryTests(unittest.TestCase):
    @_d
    async def test_clientCannotForgeServerStamps(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        s.send("<message to='alicja@localhost' type='chat' id='f1'><body>x</body>"
               "<stanza-id xmlns='urn:xmpp:sid:0' by='alicja@localhost' id='fake'/>"
               "<stanza-id xmlns='urn:xmpp:sid:0' by='localhost' id='fake2'/>"
               "<delay xmlns='urn:xmpp:delay' from='localhost' stamp='2001-01-01T00:00:00Z'/></message>")
        [got] = a.take("message")
        ids = [c["id"] for c in got.elements() if c.name == "stanza-id"]
        self.assertEqual(len(ids), 1)
        self.assertNotIn(ids[0], ("fake", "fake2"))
        self.assertIsNone(firstChild(got, "delay", NS_DELAY))


class OfflineOrderTests(unittest.TestCase):
    @_d
    async def test_burstToOfflineUserKeepsOrder(self):
        """Each store round trip is slowed differently; the stored order is still the sent order."""
        import random

        from twisted.internet import reactor, task

        core = await CoreFixture(self).start("alicja", "szymon")
        original = core.store.storeOffline

        async def jittery(*args, **kwargs):
            await task.deferLater(reactor, random.random() * 0.01, lambda: None)
            return await original(*args, **kwargs)

        core.store.storeOffline = jittery
        s = await core.connect("szymon@localhost/web", messagesAtOnce=True)
        for i in range(20):
            s.send(f"<message to='alicja@localhost' type='chat' id='b{i}'><body>{i}</body></message>")
        stored = []
        for _ in range(500):
            stored = await core.store.getOffline("alicja")
            if len(stored) == 20:
                break
            await settle(1)
        self.assertEqual([parse(m.xml)["id"] for m in stored], [f"b{i}" for i in range(20)])


class StanzaIdTests(unittest.TestCase):
    """Server-assigned ids (XEP-0359) come from a pool of CSPRNG bytes."""

    def test_uniqueAcrossRefills(self):
        from xmppjson.im import stanzas

        pool = stanzas._SuffixPool()
        self.patch(stanzas, "_pool", pool)
        count = 3 * stanzas._SuffixPool.COUNT + 5
        ids = [stanzas.newStanzaId() for _ in range(count)]
        self.assertEqual(len(set(ids)), count)
        for value in ids[:3] + ids[-3:]:
            self.assertRegex(value, r"^[0-9a-f]{13}[A-Za-z0-9_-]{12}$")

    def test_orderedByTimeEvenWhenTheClockGoesBack(self):
        """Ids sort in the order they were made (the archive's index grows at its end)."""
        import time

        from xmppjson.im import stanzas

        now = [1_800_000_000_000_000_000]
        self.patch(time, "time_ns", lambda: now[0])
        self.patch(stanzas, "_lastMicros", 0)  # put back afterwards, so later ids are not in 2027
        first = [stanzas.newStanzaId() for _ in range(3)]
        now[0] -= 5_000_000_000  # the clock steps back 5 s
        later = [stanzas.newStanzaId() for _ in range(3)]
        ids = first + later
        self.assertEqual(sorted(ids), ids)
        self.assertEqual(int(ids[0][:13], 16), now[0] // 1000 + 5_000_000)
        self.assertEqual(len({i[13:] for i in ids}), len(ids))

    def test_poolHandsOutItsTextInTurn(self):
        """
        Each suffix is the next 12 characters of one encoding of 9 random bytes per suffix, and
        the pool's text is made anew when it is used up.
        """
        import base64

        from xmppjson.im.stanzas import _SuffixPool

        pool = _SuffixPool()
        taken = [pool.take() for _ in range(_SuffixPool.COUNT)]
        self.assertEqual("".join(taken), pool._text)
        self.assertEqual(len(base64.urlsafe_b64decode(pool._text)), 9 * _SuffixPool.COUNT)
        self.assertEqual({len(t) for t in taken}, {12})
        first = pool._text
        following = pool.take()
        self.assertNotEqual(pool._text, first)
        self.assertEqual(following, pool._text[:12])


class SessionOpenTests(unittest.TestCase):
    @_d
    async def test_firstSessionReadsItsStateOnce(self):
        """
        A user's first session reads roster, blocklist and profile in one store call; a second
        session of the same user reads nothing (the caches are warm).
        """
        core = await CoreFixture(self).start("alicja", "szymon")
        await core.store.setRosterItem("alicja", RosterItem("szymon@localhost", subscription="both"))
        await core.store.addToBlocklist("alicja", ["spam@localhost"])
        calls: list[str] = []
        for name in ("getSessionState", "getRoster", "getBlocklist", "getProfile"):
            original = getattr(core.store, name)

            def spy(*args, _name=name, _original=original):
                calls.append(_name)
                return _original(*args)

            self.patch(core.store, name, spy)
        await core.connect("alicja@localhost/a")
        self.assertEqual(calls, ["getSessionState"])
        self.assertIn("szymon@localhost", core.im.rosters.cached("alicja"))
        self.assertTrue(core.im.blocking.isCached("alicja"))
        self.assertTrue(core.im.vcards.isCached("alicja"))
        await core.connect("alicja@localhost/b")
        self.assertEqual(calls, ["getSessionState"])
