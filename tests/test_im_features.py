"""
Tests for the IM core's account features, each written once in the core for every door:
profiles as vCards (L{xmppjson.im.vcard}, XEP-0054) with avatar hashes in presence (XEP-0153),
last activity (L{xmppjson.im.last}, XEP-0012), blocking (L{xmppjson.im.blocking}, XEP-0191) and
message carbons (L{xmppjson.im.carbons}, XEP-0280).

Core tests run a real core on a real store (sqlite::memory:) with recording sessions standing in
for doors; the cross-door scenarios at the end put a JSON WebSocket session (the real Site,
Autobahn on memory transports) next to an XMPP-style session of the same core.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.words.xish import domish

from tests.imhelpers import CoreFixture, RecordingSession, parse, settle, until
from tests.wshelpers import WebFixture
from xmppjson.im.blocking import NS_BLOCKING, NS_BLOCKING_ERRORS, matches
from xmppjson.im.carbons import NS_CARBONS, NS_FORWARD, eligible
from xmppjson.im.last import NS_LAST
from xmppjson.im.stanzas import NS_DISCO_INFO, NS_STANZAS, firstChild, parseJID
from xmppjson.im.vcard import (
    NS_VCARD,
    NS_VCARD_UPDATE,
    avatarHash,
    buildVCard,
    parseDataURL,
    parseVCard,
)
from xmppjson.storage import PROFILE_FIELDS, RosterItem

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PNG64 = base64.b64encode(PNG).decode("ascii")
PNG_SHA1 = hashlib.sha1(PNG).hexdigest()
PNG_URL = "data:image/png;base64," + PNG64

FULL_VCARD = (
    "<vCard xmlns='vcard-temp'>"
    "<FN>Alicja Nowak</FN><NICKNAME>ala</NICKNAME>"
    "<ORG><ORGNAME>ACME</ORGNAME><ORGUNIT>R&amp;D</ORGUNIT></ORG>"
    "<TITLE>Engineer</TITLE><ROLE>Lead</ROLE>"
    "<ADR><WORK/><EXTADD>Suite 6</EXTADD><STREET>Długa 1</STREET><LOCALITY>Kraków</LOCALITY>"
    "<REGION>Małopolskie</REGION><PCODE>30-001</PCODE><CTRY>PL</CTRY></ADR>"
    "<DESC>\n   O mnie\n  </DESC>"
    "<EMAIL><INTERNET/><USERID>ala@example.org</USERID></EMAIL>"
    "<URL>https://ala.example.org/</URL>"
    "<TEL><HOME/><FAX/><NUMBER/></TEL><TEL><WORK/><VOICE/><NUMBER>+48 12 345</NUMBER></TEL>"
    "<BDAY>1990-01-02</BDAY>"
    f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{PNG64[:40]}\n{PNG64[40:]}</BINVAL></PHOTO>"
    "<JABBERID>alicja@localhost</JABBERID><N><GIVEN>Ignored</GIVEN></N>"
    "</vCard>"
)

FULL_PROFILE = {
    "full_name": "Alicja Nowak",
    "nick_name": "ala",
    "company": "ACME",
    "department": "R&D",
    "position": "Engineer",
    "role": "Lead",
    "street": "Długa 1",
    "streer_2": "Suite 6",
    "city": "Kraków",
    "state": "Małopolskie",
    "zip_code": "30-001",
    "country": "PL",
    "about": "O mnie",
    "email": "ala@example.org",
    "www": "https://ala.example.org/",
    "phone": "+48 12 345",
    "birthday": "1990-01-02",
    "avatar": PNG_URL,
}


def _d(f):
    """Run an async test method as a Deferred."""

    def wrapper(self, *a, **kw):
        return defer.ensureDeferred(f(self, *a, **kw))

    wrapper.__name__ = f.__name__
    return wrapper


def errorCondition(stanza: domish.Element) -> str | None:
    error = firstChild(stanza, "error")
    if error is None:
        return None
    for child in error.elements():
        if child.uri == NS_STANZAS and child.name != "text":
            return child.name
    return None


def vcardText(vcard: domish.Element, *path: str) -> str | None:
    element = vcard
    for name in path:
        element = firstChild(element, name, NS_VCARD)
        if element is None:
            return None
    return str(element)


def photoOf(presence: domish.Element) -> str | None:
    """The XEP-0153 photo hash in a presence: None without <x/>, "-" for an <x/> without photo."""
    x = firstChild(presence, "x", NS_VCARD_UPDATE)
    if x is None:
        return None
    photo = firstChild(x, "photo")
    return "-" if photo is None else str(photo)


async def befriend(core: CoreFixture, a: str, b: str, ab: str = "both", ba: str = "both") -> None:
    """Roster items between two users, straight into the store (before they connect)."""
    await core.store.setRosterItem(a, RosterItem(jid=f"{b}@localhost", subscription=ab))
    await core.store.setRosterItem(b, RosterItem(jid=f"{a}@localhost", subscription=ba))


async def answer(session: RecordingSession, xml: str, name: str = "iq") -> domish.Element:
    """Send a stanza and wait for the one answer of that name (iq results/errors by id)."""
    sent = parse(xml)
    ident = sent.getAttribute("id")
    session.im.receive(session, sent)

    def found() -> bool:
        return any(e.name == name and e.getAttribute("id") == ident for e in session.received)

    await until(found)
    [reply] = [e for e in session.received if e.name == name and e.getAttribute("id") == ident]
    session.received.remove(reply)
    return reply


# ---- sessions and the per-user caches ----------------------------------------------------


class SessionCacheTests(unittest.TestCase):
    @_d
    async def test_cachesKeptForASessionBeingOpened(self):
        """A user's last session ending while another opens does not drop the user's caches."""
        core = await CoreFixture(self).start("alicja")
        await core.store.addToBlocklist("alicja", ["marek@localhost"])
        await core.store.updateProfile("alicja", {"avatar": PNG_URL})
        first = RecordingSession("alicja@localhost/1", core.im)
        second = RecordingSession("alicja@localhost/2", core.im)
        opening = [defer.ensureDeferred(core.im.openSession(s)) for s in (first, second)]
        await opening[0]
        core.im.closeSession(first)
        await opening[1]
        self.assertIsNotNone(core.im.rosters.cached("alicja"))
        self.assertTrue(core.im.blocking.blocks("alicja", parseJID("marek@localhost")))
        self.assertEqual(core.im.vcards.photoHash("alicja"), PNG_SHA1)
        core.im.closeSession(second)
        self.assertIsNone(core.im.rosters.cached("alicja"))
        self.assertFalse(core.im.blocking.active)
        self.assertIsNone(core.im.vcards.photoHash("alicja"))

    @_d
    async def test_storeDownRefusesTheSession(self):
        core = await CoreFixture(self).start("alicja")
        await core.store.close()
        with self.assertRaises(Exception) as caught:
            await core.connect("alicja@localhost/dom")
        self.assertEqual(caught.exception.condition, "service-unavailable")
        self.assertEqual(len(core.im.router), 0)


# ---- vCard (XEP-0054) --------------------------------------------------------------------


class VCardCodecTests(unittest.TestCase):
    """The pure translation between profile fields and vCards."""

    def test_parseEveryField(self):
        fields = parseVCard(parse(FULL_VCARD))
        self.assertEqual(fields, FULL_PROFILE)
        self.assertEqual(set(fields), set(PROFILE_FIELDS))

    def test_roundTrip(self):
        vcard = buildVCard(FULL_PROFILE)
        self.assertEqual(parseVCard(vcard), FULL_PROFILE)
        # the XEP-0054 rules: upper-case names, CTRY, NUMBER and USERID as children
        self.assertEqual(vcardText(vcard, "ADR", "CTRY"), "PL")
        self.assertEqual(vcardText(vcard, "TEL", "NUMBER"), "+48 12 345")
        self.assertEqual(vcardText(vcard, "EMAIL", "USERID"), "ala@example.org")
        self.assertEqual(vcardText(vcard, "PHOTO", "TYPE"), "image/png")
        self.assertEqual(base64.b64decode(vcardText(vcard, "PHOTO", "BINVAL")), PNG)
        names = [c.name for c in vcard.elements()]
        self.assertEqual(names, ["FN", "NICKNAME", "PHOTO", "BDAY", "ADR", "TEL", "EMAIL",
                                 "TITLE", "ROLE", "ORG", "URL", "DESC"])

    def test_emptyProfileEmptyVCard(self):
        vcard = buildVCard(dict.fromkeys(PROFILE_FIELDS))
        self.assertEqual((vcard.name, vcard.uri, vcard.children), ("vCard", NS_VCARD, []))
        self.assertEqual(parseVCard(vcard), dict.fromkeys(PROFILE_FIELDS))

    def test_externalPhoto(self):
        fields = parseVCard(parse(
            "<vCard xmlns='vcard-temp'><PHOTO><EXTVAL>https://x.example/a.png</EXTVAL></PHOTO></vCard>"))
        self.assertEqual(fields["avatar"], "https://x.example/a.png")
        vcard = buildVCard(fields)
        self.assertEqual(vcardText(vcard, "PHOTO", "EXTVAL"), "https://x.example/a.png")
        self.assertIsNone(firstChild(firstChild(vcard, "PHOTO"), "BINVAL"))

    def test_photoWithoutTypeIsSniffed(self):
        fields = parseVCard(parse(f"<vCard xmlns='vcard-temp'><PHOTO><BINVAL>{PNG64}</BINVAL></PHOTO></vCard>"))
        self.assertEqual(fields["avatar"], PNG_URL)

    def test_nameFromN(self):
        fields = parseVCard(parse(
            "<vCard xmlns='vcard-temp'><N><FAMILY>Nowak</FAMILY><GIVEN>Alicja</GIVEN><MIDDLE/></N></vCard>"))
        self.assertEqual(fields["full_name"], "Alicja Nowak")

    def test_lenientEmailAndTel(self):
        fields = parseVCard(parse(
            "<vCard xmlns='vcard-temp'><EMAIL>a@b.example</EMAIL><TEL>123</TEL></vCard>"))
        self.assertEqual((fields["email"], fields["phone"]), ("a@b.example", "123"))

    def test_limits(self):
        with self.assertRaises(Exception) as caught:
            parseVCard(parse(f"<vCard xmlns='vcard-temp'><PHOTO><BINVAL>{PNG64}</BINVAL></PHOTO></vCard>"),
                       maxAvatar=100)
        self.assertEqual(caught.exception.condition, "not-acceptable")
        with self.assertRaises(Exception) as caught:
            parseVCard(parse("<vCard xmlns='vcard-temp'><PHOTO><BINVAL>not base64!</BINVAL></PHOTO></vCard>"))
        self.assertEqual(caught.exception.condition, "bad-request")
        with self.assertRaises(Exception) as caught:
            parseVCard(parse(f"<vCard xmlns='vcard-temp'><DESC>{'x' * 20000}</DESC></vCard>"))
        self.assertEqual(caught.exception.condition, "not-acceptable")

    def test_dataURLsAndHashes(self):
        self.assertEqual(parseDataURL(PNG_URL), ("image/png", PNG))
        self.assertEqual(parseDataURL("data:,a%20b"), ("application/octet-stream", b"a b"))
        self.assertIsNone(parseDataURL("data:image/png;base64,@@@"))
        self.assertIsNone(parseDataURL("https://x.example/a.png"))
        self.assertEqual(avatarHash(PNG_URL), PNG_SHA1)
        self.assertEqual(avatarHash(None), "")
        self.assertEqual(avatarHash(""), "")
        self.assertIsNone(avatarHash("https://x.example/a.png"))


class VCardTests(unittest.TestCase):
    @_d
    async def test_ownEmptyVCard(self):
        core = await CoreFixture(self).start("alicja")
        a = await core.connect("alicja@localhost/dom")
        reply = await answer(a, "<iq type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>")
        self.assertEqual((reply["type"], reply["from"], reply["to"]),
                         ("result", "alicja@localhost", "alicja@localhost/dom"))
        vcard = firstChild(reply, "vCard", NS_VCARD)
        self.assertEqual(vcard.children, [])

    @_d
    async def test_setIsWhatTheProfileHolds(self):
        """A vCard set is the REST profile: every field, and a full replacement."""
        core = await CoreFixture(self).start("alicja")
        a = await core.connect("alicja@localhost/dom")
        reply = await answer(a, f"<iq type='set' id='s1'>{FULL_VCARD}</iq>")
        self.assertEqual(reply["type"], "result")
        profile = await core.store.getProfile("alicja")
        self.assertEqual({k: profile[k] for k in PROFILE_FIELDS}, FULL_PROFILE)
        # what GET /me shows, XMPP reads back
        reply = await answer(a, "<iq type='get' id='g1' to='alicja@localhost'><vCard xmlns='vcard-temp'/></iq>")
        self.assertEqual(parseVCard(firstChild(reply, "vCard", NS_VCARD)), FULL_PROFILE)
        # XEP-0054: a set replaces the whole vCard
        await answer(a, "<iq type='set' id='s2'><vCard xmlns='vcard-temp'><NICKNAME>A</NICKNAME></vCard></iq>")
        profile = await core.store.getProfile("alicja")
        expected = dict.fromkeys(PROFILE_FIELDS)
        expected["nick_name"] = "A"
        self.assertEqual({k: profile[k] for k in PROFILE_FIELDS}, expected)

    @_d
    async def test_restChangeIsWhatXMPPReads(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        await core.store.updateProfile("szymon", {"full_name": "Szymon", "company": "Firma",
                                                  "avatar": "https://x.example/s.png"})
        a = await core.connect("alicja@localhost/dom")
        reply = await answer(a, "<iq type='get' id='g' to='szymon@localhost'><vCard xmlns='vcard-temp'/></iq>")
        self.assertEqual((reply["type"], reply["from"]), ("result", "szymon@localhost"))
        vcard = firstChild(reply, "vCard", NS_VCARD)
        self.assertEqual(vcardText(vcard, "FN"), "Szymon")
        self.assertEqual(vcardText(vcard, "ORG", "ORGNAME"), "Firma")
        self.assertEqual(vcardText(vcard, "PHOTO", "EXTVAL"), "https://x.example/s.png")

    @_d
    async def test_otherUsersErrors(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        a = await core.connect("alicja@localhost/dom")
        reply = await answer(a, "<iq type='get' id='g1' to='nobody@localhost'><vCard xmlns='vcard-temp'/></iq>")
        self.assertEqual((errorCondition(reply), reply["from"]), ("service-unavailable", "nobody@localhost"))
        reply = await answer(a, "<iq type='get' id='g2' to='szymon@localhost'><vCard xmlns='vcard-temp'/></iq>")
        self.assertEqual(errorCondition(reply), "item-not-found")
        reply = await answer(a, f"<iq type='set' id='s1' to='szymon@localhost'>{FULL_VCARD}</iq>")
        self.assertEqual(errorCondition(reply), "forbidden")
        self.assertIsNone((await core.store.getProfile("szymon"))["full_name"])

    @_d
    async def test_setErrors(self):
        core = await CoreFixture(self).start("alicja")
        core.im.vcards.maxAvatar = 1000
        a = await core.connect("alicja@localhost/dom")
        reply = await answer(a, f"<iq type='set' id='s1'>{FULL_VCARD}</iq>")
        self.assertEqual(errorCondition(reply), "not-acceptable")
        reply = await answer(a, "<iq type='set' id='s2'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>**</BINVAL></PHOTO></vCard></iq>")
        self.assertEqual(errorCondition(reply), "bad-request")
        self.assertIsNone((await core.store.getProfile("alicja"))["full_name"])

    @_d
    async def test_maxAvatarFromConfig(self):
        core = CoreFixture(self)
        core.config.maxAvatarSize = 123  # type: ignore[attr-defined]
        from xmppjson.im.server import IMServer

        im = IMServer(core.config, core.store, core.clock)
        self.assertEqual(im.vcards.maxAvatar, 123)

    @_d
    async def test_discoListsEveryFeature(self):
        core = await CoreFixture(self).start("alicja")
        a = await core.connect("alicja@localhost/dom")
        reply = await answer(a, f"<iq type='get' id='d' to='localhost'><query xmlns='{NS_DISCO_INFO}'/></iq>")
        features = {f["var"] for f in firstChild(reply, "query").elements() if f.name == "feature"}
        for feature in ("vcard-temp", "jabber:iq:last", "urn:xmpp:blocking", "urn:xmpp:carbons:2"):
            self.assertIn(feature, features)
        # and nothing of what this code does not implement
        self.assertNotIn("urn:xmpp:carbons:1", features)
        self.assertNotIn("jabber:iq:privacy", features)


# ---- avatar hashes (XEP-0153) ------------------------------------------------------------


class AvatarHashTests(unittest.TestCase):
    async def pair(self, avatar: str | None = None):
        core = await CoreFixture(self).start("alicja", "szymon")
        if avatar is not None:
            await core.store.updateProfile("alicja", {"avatar": avatar})
        await befriend(core, "alicja", "szymon")
        s = await core.connect("szymon@localhost/dom", presence="<presence/>")
        a = await core.connect("alicja@localhost/dom")
        return core, a, s

    @_d
    async def test_hashInPresence(self):
        core, a, s = await self.pair(PNG_URL)
        other = await core.connect("alicja@localhost/phone", presence="<presence/>")
        [p] = s.take("presence")
        self.assertEqual((p["from"], photoOf(p)), ("alicja@localhost/phone", PNG_SHA1))
        other.take()
        # a client-supplied hash is replaced by the server's
        a.send("<presence><x xmlns='vcard-temp:x:update'><photo>0000</photo></x></presence>")
        [p] = s.take("presence")
        self.assertEqual(photoOf(p), PNG_SHA1)
        self.assertEqual(len([c for c in p.elements() if c.uri == NS_VCARD_UPDATE]), 1)
        # the user's own other resource sees it too
        [p] = other.take("presence")
        self.assertEqual(photoOf(p), PNG_SHA1)

    @_d
    async def test_emptyPhotoWithoutAvatar(self):
        _core, a, s = await self.pair()
        a.send("<presence/>")
        [p] = s.take("presence")
        self.assertEqual(photoOf(p), "")

    @_d
    async def test_externalAvatarHasNoHash(self):
        _core, a, s = await self.pair("https://x.example/a.png")
        a.send("<presence/>")
        [p] = s.take("presence")
        self.assertEqual(photoOf(p), "-")

    @_d
    async def test_vcardSetRebroadcasts(self):
        core, a, s = await self.pair()
        a.send("<presence><show>away</show></presence>")
        s.take("presence")
        await answer(a, f"<iq type='set' id='s1'>{FULL_VCARD}</iq>")
        await until(lambda: s.received)
        [p] = s.take("presence")
        self.assertEqual(photoOf(p), PNG_SHA1)
        self.assertEqual(str(firstChild(p, "show")), "away")  # the same presence, re-stamped
        self.assertEqual(core.im.vcards.photoHash("alicja"), PNG_SHA1)
        # a set that keeps the avatar says nothing new
        await answer(a, f"<iq type='set' id='s2'>{FULL_VCARD}</iq>")
        await settle()
        self.assertEqual(s.take("presence"), [])

    @_d
    async def test_profileChangedFromREST(self):
        core, a, s = await self.pair()
        a.send("<presence/>")
        s.take("presence")
        await core.store.updateProfile("alicja", {"avatar": PNG_URL})
        await core.im.profileChanged("alicja")
        [p] = s.take("presence")
        self.assertEqual(photoOf(p), PNG_SHA1)
        # with the profile in hand, no read
        await core.im.profileChanged("alicja", {"avatar": None})
        [p] = s.take("presence")
        self.assertEqual(photoOf(p), "")
        # an offline user: nothing to tell, nothing cached
        await core.im.profileChanged("szymon-not-online")
        self.assertIsNone(core.im.vcards.photoHash("szymon-not-online"))

    @_d
    async def test_hashForgottenWithLastSession(self):
        core, a, _s = await self.pair(PNG_URL)
        self.assertEqual(core.im.vcards.photoHash("alicja"), PNG_SHA1)
        core.im.closeSession(a)
        self.assertIsNone(core.im.vcards.photoHash("alicja"))


# ---- last activity (XEP-0012) ------------------------------------------------------------


class LastActivityTests(unittest.TestCase):
    def seconds(self, reply: domish.Element) -> tuple[int, str]:
        query = firstChild(reply, "query", NS_LAST)
        return int(query["seconds"]), str(query)

    @_d
    async def test_uptime(self):
        core = await CoreFixture(self).start("alicja")
        core.clock.advance(1234)
        a = await core.connect("alicja@localhost/dom")
        reply = await answer(a, "<iq type='get' id='u' to='localhost'><query xmlns='jabber:iq:last'/></iq>")
        self.assertEqual(reply["from"], "localhost")
        self.assertEqual(self.seconds(reply), (1234, ""))

    @_d
    async def test_contactOfflineAndOnline(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        await befriend(core, "alicja", "szymon")
        s = await core.connect("szymon@localhost/dom", presence="<presence/>")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        reply = await answer(s, "<iq type='get' id='l1' to='alicja@localhost'><query xmlns='jabber:iq:last'/></iq>")
        self.assertEqual(reply["from"], "alicja@localhost")
        self.assertEqual(self.seconds(reply), (0, ""))
        a.send("<presence type='unavailable'><status>Idę do domu</status></presence>")
        core.im.closeSession(a)
        core.clock.advance(90)  # also writes the last presence
        await settle()
        profile = await core.store.getProfile("alicja")
        self.assertEqual(profile["status"], "Idę do domu")
        core.clock.advance(13)
        reply = await answer(s, "<iq type='get' id='l2' to='alicja@localhost'><query xmlns='jabber:iq:last'/></iq>")
        self.assertEqual(self.seconds(reply), (103, "Idę do domu"))
        # the time the REST API reports as last_seen
        self.assertEqual(int(core.clock.seconds() - profile["last_seen"].timestamp()), 103)

    @_d
    async def test_notYetWritten(self):
        """A last presence still waiting for its batched write is the one reported."""
        core = await CoreFixture(self).start("alicja", "szymon")
        await befriend(core, "alicja", "szymon")
        s = await core.connect("szymon@localhost/dom", presence="<presence/>")
        a = await core.connect("alicja@localhost/dom", presence="<presence/>")
        core.clock.advance(5)
        a.send("<presence type='unavailable'><status>bye</status></presence>")
        self.assertEqual((await core.store.getProfile("alicja"))["status"], "")
        core.clock.advance(0.5)  # not yet the batch's second
        reply = await answer(s, "<iq type='get' id='l' to='alicja@localhost'><query xmlns='jabber:iq:last'/></iq>")
        self.assertEqual(self.seconds(reply), (0, "bye"))
        self.assertEqual((await core.store.getProfile("alicja"))["status"], "")

    @_d
    async def test_permission(self):
        core = await CoreFixture(self).start("alicja", "szymon", "marek")
        # szymon may see alicja's presence; alicja may not see szymon's
        await befriend(core, "alicja", "szymon", ab="from", ba="to")
        s = await core.connect("szymon@localhost/dom")
        a = await core.connect("alicja@localhost/dom")
        m = await core.connect("marek@localhost/dom")
        query = "<query xmlns='jabber:iq:last'/>"
        reply = await answer(s, f"<iq type='get' id='1' to='alicja@localhost'>{query}</iq>")
        self.assertEqual(errorCondition(reply), "item-not-found")  # never seen, but allowed
        reply = await answer(a, f"<iq type='get' id='2' to='szymon@localhost'>{query}</iq>")
        self.assertEqual(errorCondition(reply), "forbidden")
        reply = await answer(m, f"<iq type='get' id='3' to='alicja@localhost'>{query}</iq>")
        self.assertEqual(errorCondition(reply), "forbidden")
        reply = await answer(m, f"<iq type='get' id='4' to='nobody@localhost'>{query}</iq>")
        self.assertEqual(errorCondition(reply), "service-unavailable")
        reply = await answer(m, f"<iq type='set' id='5' to='alicja@localhost'>{query}</iq>")
        self.assertEqual(errorCondition(reply), "bad-request")

    @_d
    async def test_ownAccount(self):
        core = await CoreFixture(self).start("alicja")
        epoch = datetime.datetime.fromtimestamp(0, datetime.UTC)
        await core.store.setLastPresence("alicja", epoch, "unavailable", "earlier")
        core.clock.advance(42)
        a = await core.connect("alicja@localhost/dom")
        reply = await answer(a, "<iq type='get' id='o'><query xmlns='jabber:iq:last'/></iq>")
        self.assertEqual(self.seconds(reply), (42, "earlier"))
        a.send("<presence/>")
        reply = await answer(a, "<iq type='get' id='o2' to='alicja@localhost'><query xmlns='jabber:iq:last'/></iq>")
        self.assertEqual(self.seconds(reply), (0, ""))


# ---- blocking (XEP-0191) -----------------------------------------------------------------


def blockedCondition(stanza: domish.Element) -> bool:
    error = firstChild(stanza, "error")
    return error is not None and firstChild(error, "blocked", NS_BLOCKING_ERRORS) is not None


class MatchTests(unittest.TestCase):
    def test_jidForms(self):
        bare = {"romeo@montague.net"}
        self.assertTrue(matches(bare, parseJID("romeo@montague.net")))
        self.assertTrue(matches(bare, parseJID("romeo@montague.net/orchard")))
        self.assertFalse(matches(bare, parseJID("juliet@montague.net")))
        full = {"romeo@montague.net/orchard"}
        self.assertTrue(matches(full, parseJID("romeo@montague.net/orchard")))
        self.assertFalse(matches(full, parseJID("romeo@montague.net/garden")))
        self.assertFalse(matches(full, parseJID("romeo@montague.net")))
        domain = {"montague.net"}
        self.assertTrue(matches(domain, parseJID("romeo@montague.net/orchard")))
        self.assertTrue(matches(domain, parseJID("montague.net")))
        self.assertFalse(matches(domain, parseJID("romeo@capulet.net")))
        domainResource = {"montague.net/bot"}
        self.assertTrue(matches(domainResource, parseJID("montague.net/bot")))
        self.assertFalse(matches(domainResource, parseJID("romeo@montague.net/bot")))


class BlockingTests(unittest.TestCase):
    async def trio(self, presence: bool = True):
        """alicja and szymon are mutual contacts, both available; marek is a third user."""
        core = await CoreFixture(self).start("alicja", "szymon", "marek")
        await befriend(core, "alicja", "szymon")
        p = "<presence/>" if presence else None
        a = await core.connect("alicja@localhost/dom", presence=p)
        s = await core.connect("szymon@localhost/dom", presence=p)
        a.take()
        s.take()
        return core, a, s

    async def block(self, session: RecordingSession, *jids: str, name: str = "block") -> domish.Element:
        items = "".join(f"<item jid='{j}'/>" for j in jids)
        return await answer(session, f"<iq type='set' id='{name}{len(jids)}'><{name} xmlns='urn:xmpp:blocking'>{items}</{name}></iq>")

    async def blocklist(self, session: RecordingSession) -> list[str]:
        reply = await answer(session, "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        blocklist = firstChild(reply, "blocklist", NS_BLOCKING)
        return [i["jid"] for i in blocklist.elements()]

    @_d
    async def test_listBlockUnblockAndPushes(self):
        core, a, _s = await self.trio()
        watcher = await core.connect("alicja@localhost/watcher")
        quiet = await core.connect("alicja@localhost/quiet")
        self.assertEqual(await self.blocklist(watcher), [])
        reply = await self.block(a, "marek@localhost", "Example.ORG")
        self.assertEqual(reply["type"], "result")
        # the push goes to the session that asked for the list, only
        [push] = watcher.take("iq")
        self.assertEqual((push["type"], push["from"], push["to"]),
                         ("set", "alicja@localhost", "alicja@localhost/watcher"))
        block = firstChild(push, "block", NS_BLOCKING)
        self.assertEqual([i["jid"] for i in block.elements()], ["marek@localhost", "example.org"])
        self.assertEqual(quiet.take("iq"), [])
        self.assertEqual(await self.blocklist(a), ["example.org", "marek@localhost"])
        self.assertEqual(await core.store.getBlocklist("alicja"), ["example.org", "marek@localhost"])
        reply = await self.block(a, "example.org", name="unblock")
        self.assertEqual(reply["type"], "result")
        [push] = watcher.take("iq")
        self.assertEqual([i["jid"] for i in firstChild(push, "unblock", NS_BLOCKING).elements()], ["example.org"])
        # unblock all: an empty unblock, pushed empty
        reply = await answer(a, "<iq type='set' id='ua'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        self.assertEqual(reply["type"], "result")
        [push] = watcher.take("iq")
        self.assertEqual(firstChild(push, "unblock", NS_BLOCKING).children, [])
        self.assertEqual(await core.store.getBlocklist("alicja"), [])
        self.assertFalse(core.im.blocking.active)

    @_d
    async def test_badRequests(self):
        core, a, _s = await self.trio()
        reply = await answer(a, "<iq type='set' id='b0'><block xmlns='urn:xmpp:blocking'/></iq>")
        self.assertEqual(errorCondition(reply), "bad-request")
        reply = await self.block(a, "a@b@c")
        self.assertEqual(errorCondition(reply), "jid-malformed")
        reply = await self.block(a, "alicja@localhost")
        self.assertEqual(errorCondition(reply), "not-acceptable")
        reply = await answer(a, "<iq type='get' id='b1'><block xmlns='urn:xmpp:blocking'/></iq>")
        self.assertEqual(errorCondition(reply), "bad-request")
        core.im.blocking.maxItems = 2
        reply = await self.block(a, "x@localhost", "y@localhost", "z@localhost")
        self.assertEqual(errorCondition(reply), "policy-violation")
        self.assertEqual(await core.store.getBlocklist("alicja"), [])

    @_d
    async def test_messagesBothWays(self):
        core, a, s = await self.trio()
        await self.block(a, "szymon@localhost")
        s.send("<message to='alicja@localhost' id='m1' type='chat'><body>hej</body></message>")
        self.assertEqual(a.take("message"), [])
        [error] = s.take("message")
        self.assertEqual((error["id"], errorCondition(error)), ("m1", "service-unavailable"))
        self.assertFalse(blockedCondition(error))  # the blocked learn nothing
        a.send("<message to='szymon@localhost/dom' id='m2' type='chat'><body>hej</body></message>")
        self.assertEqual(s.take("message"), [])
        [error] = a.take("message")
        self.assertEqual((error["id"], errorCondition(error)), ("m2", "not-acceptable"))
        self.assertTrue(blockedCondition(error))
        self.assertEqual(firstChild(error, "error")["type"], "cancel")
        # other users are not affected
        m = await core.connect("marek@localhost/dom", presence="<presence/>")
        m.send("<message to='alicja@localhost' type='chat'><body>hi</body></message>")
        self.assertEqual(len(a.take("message")), 1)
        # unblocked: messages flow again
        await self.block(a, "szymon@localhost", name="unblock")
        s.send("<message to='alicja@localhost' type='chat'><body>again</body></message>")
        self.assertEqual(len(a.take("message")), 1)

    @_d
    async def test_offlineRecipientBlocks(self):
        """A blocker who is offline: their list is read, nothing is stored for them."""
        core = await CoreFixture(self).start("alicja", "szymon")
        await core.store.addToBlocklist("alicja", ["szymon@localhost"])
        s = await core.connect("szymon@localhost/dom", presence="<presence/>")
        for n in range(3):
            s.send(f"<message to='alicja@localhost' id='o{n}' type='chat'><body>{n}</body></message>")
        await until(lambda: len(s.received) == 3)
        self.assertEqual([(e["id"], errorCondition(e)) for e in s.take("message")],
                         [(f"o{n}", "service-unavailable") for n in range(3)])
        self.assertEqual(await core.store.getOffline("alicja"), [])
        # not blocked: stored, in order
        await core.store.removeFromBlocklist("alicja", None)
        for n in range(3):
            s.send(f"<message to='alicja@localhost' id='k{n}' type='chat'><body>{n}</body></message>")
        for _ in range(20):
            await settle()
            if len(await core.store.getOffline("alicja")) == 3:
                break
        stored = await core.store.getOffline("alicja")
        self.assertEqual([parse(e.xml)["id"] for e in stored], ["k0", "k1", "k2"])
        # chat states to an offline user are not worth a read: dropped as always
        s.send("<message to='alicja@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        self.assertEqual(core.im.blocking._waiting, {})

    @_d
    async def test_presenceCutAndRestored(self):
        core, a, s = await self.trio()
        await self.block(a, "szymon@localhost")
        # the blocked contact sees the user go, and the user sees the contact go
        [gone] = s.take("presence")
        self.assertEqual((gone["type"], gone["from"]), ("unavailable", "alicja@localhost/dom"))
        [gone] = a.take("presence")
        self.assertEqual((gone["type"], gone["from"]), ("unavailable", "szymon@localhost/dom"))
        # no presence either way
        a.send("<presence><show>dnd</show></presence>")
        s.send("<presence><show>away</show></presence>")
        self.assertEqual(s.take("presence"), [])
        self.assertEqual(a.take("presence"), [])
        # a new session of the blocked contact gets nothing from the user either
        s2 = await core.connect("szymon@localhost/tablet", presence="<presence/>")
        self.assertEqual([p["from"] for p in s2.take("presence")], ["szymon@localhost/dom"])
        self.assertEqual(a.take("presence"), [])
        self.assertEqual([p["from"] for p in s.take("presence")], ["szymon@localhost/tablet"])
        # probes go unanswered
        s.send("<presence type='probe' to='alicja@localhost'/>")
        await settle()
        self.assertEqual(s.take("presence"), [])
        # unblock: the current presence both ways
        await self.block(a, "szymon@localhost", name="unblock")
        shown = {p["from"]: str(firstChild(p, "show") or "") for p in s.take("presence")}
        self.assertEqual(shown, {"alicja@localhost/dom": "dnd"})
        shown = {p["from"] for p in a.take("presence")}
        self.assertEqual(shown, {"szymon@localhost/dom", "szymon@localhost/tablet"})

    @_d
    async def test_subscriptionFromBlockedDropped(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        await core.store.addToBlocklist("alicja", ["szymon@localhost"])
        s = await core.connect("szymon@localhost/dom", presence="<presence/>")
        s.send("<presence type='subscribe' to='alicja@localhost'/>")
        await settle()
        # no error, and no trace in the blocker's roster
        self.assertEqual([e for e in s.received if e.getAttribute("type") == "error"], [])
        self.assertEqual([i.jid for i in await core.store.getRoster("alicja")], [])
        # the blocker cannot send one either
        a = await core.connect("alicja@localhost/dom")
        a.send("<presence type='subscribe' to='szymon@localhost' id='sub'/>")
        [error] = a.take("presence")
        self.assertEqual(errorCondition(error), "not-acceptable")
        self.assertTrue(blockedCondition(error))

    @_d
    async def test_iqBothWays(self):
        _core, a, s = await self.trio()
        await self.block(a, "szymon@localhost")
        s.send("<iq type='get' id='i1' to='alicja@localhost/dom'><query xmlns='jabber:iq:version'/></iq>")
        [error] = s.take("iq")
        self.assertEqual(errorCondition(error), "service-unavailable")
        self.assertEqual(a.take("iq"), [])
        # answered by the server on the user's behalf: blocked too
        reply = await answer(s, "<iq type='get' id='i2' to='alicja@localhost'><vCard xmlns='vcard-temp'/></iq>")
        self.assertEqual(errorCondition(reply), "service-unavailable")
        # results and errors from the blocked are dropped silently
        s.send("<iq type='result' id='x' to='alicja@localhost/dom'/>")
        self.assertEqual((a.take("iq"), s.take("iq")), ([], []))
        a.send("<iq type='get' id='i3' to='szymon@localhost/dom'><query xmlns='jabber:iq:version'/></iq>")
        [error] = a.take("iq")
        self.assertEqual(errorCondition(error), "not-acceptable")
        self.assertTrue(blockedCondition(error))

    @_d
    async def test_iqToOfflineBlocker(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        await core.store.updateProfile("alicja", {"full_name": "Alicja"})
        await core.store.addToBlocklist("alicja", ["szymon@localhost"])
        s = await core.connect("szymon@localhost/dom")
        reply = await answer(s, "<iq type='get' id='i' to='alicja@localhost'><vCard xmlns='vcard-temp'/></iq>")
        self.assertEqual(errorCondition(reply), "service-unavailable")

    @_d
    async def test_resourceAndDomainItems(self):
        core, a, s = await self.trio()
        s2 = await core.connect("szymon@localhost/phone", presence="<presence/>")
        a.take()
        await self.block(a, "szymon@localhost/phone")
        s2.send("<message to='alicja@localhost' type='chat'><body>1</body></message>")
        s.send("<message to='alicja@localhost' type='chat'><body>2</body></message>")
        self.assertEqual([str(firstChild(m, "body")) for m in a.take("message")], ["2"])
        await self.block(a, "localhost")  # the whole domain
        s.send("<message to='alicja@localhost' type='chat'><body>3</body></message>")
        self.assertEqual(a.take("message"), [])
        # the user's own resources are never blocked
        a2 = await core.connect("alicja@localhost/other", presence="<presence/>")
        a2.send("<message to='alicja@localhost/dom' type='chat'><body>self</body></message>")
        self.assertEqual(len(a.take("message")), 1)

    @_d
    async def test_reloadAfterAChangeElsewhere(self):
        core, a, s = await self.trio()
        await core.store.addToBlocklist("alicja", ["szymon@localhost"])
        self.assertFalse(core.im.blocking.active)  # the cache does not know yet
        await core.im.blocking.reload("alicja")
        s.send("<message to='alicja@localhost' type='chat'><body>hej</body></message>")
        self.assertEqual(a.take("message"), [])
        await core.store.removeFromBlocklist("alicja", None)
        await core.im.blocking.reload("alicja")
        await core.im.blocking.reload("marek")  # not cached: nothing to do
        self.assertFalse(core.im.blocking.active)
        self.assertNotIn("marek", core.im.blocking._loaded)

    @_d
    async def test_persistsAcrossSessions(self):
        core, a, s = await self.trio()
        await self.block(a, "szymon@localhost")
        core.im.closeSession(a)
        self.assertFalse(core.im.blocking.active)  # released with the last session
        a = await core.connect("alicja@localhost/new", presence="<presence/>")
        self.assertTrue(core.im.blocking.active)
        s.take()
        s.send("<message to='alicja@localhost' type='chat'><body>hej</body></message>")
        self.assertEqual(a.take("message"), [])
        self.assertEqual(errorCondition(s.take("message")[0]), "service-unavailable")


# ---- carbons (XEP-0280) ------------------------------------------------------------------


def carbonOf(stanza: domish.Element) -> tuple[str, domish.Element] | None:
    """(received|sent, the forwarded message) of a carbon, or None."""
    for kind in ("received", "sent"):
        wrapper = firstChild(stanza, kind, NS_CARBONS)
        if wrapper is not None:
            forwarded = firstChild(wrapper, "forwarded", NS_FORWARD)
            return kind, firstChild(forwarded, "message")
    return None


class CarbonsTests(unittest.TestCase):
    async def setup(self):
        """alicja: 'main' (priority 5) and 'copy' (carbons on) ; szymon: one session."""
        core = await CoreFixture(self).start("alicja", "szymon")
        main = await core.connect("alicja@localhost/main", presence="<presence><priority>5</priority></presence>")
        copy = await core.connect("alicja@localhost/copy", presence="<presence/>")
        s = await core.connect("szymon@localhost/dom", presence="<presence/>")
        reply = await answer(copy, "<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        self.assertEqual((reply["type"], reply["from"]), ("result", "alicja@localhost"))
        for session in (main, copy, s):
            session.take()
        return core, main, copy, s

    @_d
    async def test_receivedCarbon(self):
        _core, main, copy, s = await self.setup()
        s.send("<message to='alicja@localhost' id='m1' type='chat'><body>do ciebie</body></message>")
        [original] = main.take("message")
        [carbon] = copy.take("message")
        self.assertEqual((carbon["from"], carbon["to"], carbon["type"]),
                         ("alicja@localhost", "alicja@localhost/copy", "chat"))
        kind, inner = carbonOf(carbon)
        self.assertEqual(kind, "received")
        self.assertEqual((inner["from"], inner["to"], inner["id"], inner.uri),
                         ("szymon@localhost/dom", "alicja@localhost", "m1", "jabber:client"))
        self.assertEqual(str(firstChild(inner, "body")), "do ciebie")
        # the copy serialises with the message's namespace, and the original is untouched
        self.assertIn("<message xmlns='jabber:client'", carbon.toXml())
        self.assertIsNone(carbonOf(original))
        # to a full JID too
        s.send("<message to='alicja@localhost/main' type='chat'><body>2</body></message>")
        self.assertEqual(len(main.take("message")), 1)
        self.assertEqual(carbonOf(copy.take("message")[0])[0], "received")

    @_d
    async def test_sentCarbon(self):
        _core, main, copy, s = await self.setup()
        main.send("<message to='szymon@localhost' id='m2' type='chat'><body>ode mnie</body></message>")
        self.assertEqual(len(s.take("message")), 1)
        self.assertEqual(main.take("message"), [])
        [carbon] = copy.take("message")
        kind, inner = carbonOf(carbon)
        self.assertEqual(kind, "sent")
        self.assertEqual((carbon["from"], inner["from"], inner["to"]),
                         ("alicja@localhost", "alicja@localhost/main", "szymon@localhost"))
        # the sender does not get its own copy, even with carbons on
        await answer(main, "<iq type='set' id='c2'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        copy.send("<message to='szymon@localhost' type='chat'><body>x</body></message>")
        self.assertEqual(copy.take("message"), [])
        self.assertEqual(carbonOf(main.take("message")[0])[0], "sent")

    @_d
    async def test_onlyEnabledSessionGetsNoCopyOfItsOwnMessages(self):
        """
        A user whose one carbons-enabled session is the one a message went to (or came from)
        gets no carbon of it: the common case of every web session, decided without reading
        the message.
        """
        _core, main, copy, s = await self.setup()
        s.send("<message to='alicja@localhost/copy' type='chat'><body>tylko tu</body></message>")
        [message] = copy.take("message")
        self.assertIsNone(carbonOf(message))
        self.assertEqual(main.take("message"), [])
        copy.send("<message to='szymon@localhost' type='chat'><body>stąd</body></message>")
        self.assertEqual(len(s.take("message")), 1)
        self.assertEqual((copy.take("message"), main.take("message")), ([], []))

    @_d
    async def test_sentCarbonWhenStoredOffline(self):
        core, main, copy, s = await self.setup()
        main.send("<message to='marek-offline@localhost' type='chat'><body>?</body></message>")
        await settle()
        self.assertEqual(copy.take("message"), [])  # unknown user: bounced, no copy
        core.im.closeSession(s)
        main.send("<message to='szymon@localhost' id='off' type='chat'><body>later</body></message>")
        await until(lambda: copy.received)
        self.assertEqual(carbonOf(copy.take("message")[0])[1]["id"], "off")

    @_d
    async def test_disableAndHints(self):
        _core, main, copy, s = await self.setup()
        for hint in ("<private xmlns='urn:xmpp:carbons:2'/>", "<no-copy xmlns='urn:xmpp:hints'/>"):
            s.send(f"<message to='alicja@localhost' type='chat'><body>p</body>{hint}</message>")
            main.send(f"<message to='szymon@localhost' type='chat'><body>p</body>{hint}</message>")
        for mtype in ("headline", "error"):
            s.send(f"<message to='alicja@localhost/main' type='{mtype}'><body>h</body></message>")
        s.send("<message to='alicja@localhost' type='normal'><body>n</body></message>")
        s.send("<message to='alicja@localhost' type='normal'><x xmlns='urn:example'/></message>")
        self.assertEqual(len(copy.take("message")), 1)  # the normal message with a body only
        await answer(copy, "<iq type='set' id='c3'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        await answer(copy, "<iq type='set' id='c4'><disable xmlns='urn:xmpp:carbons:2'/></iq>")
        s.send("<message to='alicja@localhost' type='chat'><body>x</body></message>")
        main.send("<message to='szymon@localhost' type='chat'><body>y</body></message>")
        self.assertEqual(copy.take("message"), [])
        reply = await answer(copy, "<iq type='get' id='c5'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        self.assertEqual(errorCondition(reply), "bad-request")

    @_d
    async def test_chatStatesAreCopied(self):
        _core, _main, copy, s = await self.setup()
        s.send("<message to='alicja@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        self.assertEqual(carbonOf(copy.take("message")[0])[0], "received")

    @_d
    async def test_webSessionsStartEnabled(self):
        core = await CoreFixture(self).start("alicja", "szymon")
        xmpp = await core.connect("alicja@localhost/dom", presence="<presence><priority>1</priority></presence>")
        web = await core.connect("alicja@localhost/web", messagesAtOnce=True)
        self.assertTrue(core.im.carbons.enabledFor(web))
        self.assertFalse(core.im.carbons.enabledFor(xmpp))
        s = await core.connect("szymon@localhost/dom", presence="<presence/>")
        s.send("<message to='alicja@localhost' type='chat'><body>1</body></message>")
        self.assertEqual(len(xmpp.take("message")), 1)
        self.assertEqual(carbonOf(web.take("message")[0])[0], "received")
        core.im.closeSession(web)
        self.assertEqual(core.im.carbons._enabled, {})

    @_d
    async def test_selfMessagesCopiedOnce(self):
        _core, main, copy, _s = await self.setup()
        main.send("<message to='alicja@localhost/copy' type='chat'><body>note</body></message>")
        got = copy.take("message")
        self.assertEqual([carbonOf(m) for m in got], [None])  # the message itself, no copy

    @_d
    async def test_undeliverableCarbonDropped(self):
        core, main, copy, s = await self.setup()
        copy.active = False  # the door can no longer write: deliveries come back to the core
        core.im.router.remove(copy)
        core.im.router.add(copy)
        s.send("<message to='alicja@localhost' type='chat'><body>1</body></message>")
        self.assertEqual(len(main.take("message")), 1)  # once, not again as a "redelivery"
        self.assertEqual(copy.received, [])

    def test_eligible(self):
        self.assertTrue(eligible(parse("<message type='chat'/>")))
        self.assertTrue(eligible(parse("<message><body>x</body></message>")))
        self.assertFalse(eligible(parse("<message/>")))
        self.assertFalse(eligible(parse("<message type='groupchat'><body>x</body></message>")))
        self.assertFalse(eligible(parse(
            "<message type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>")))


# ---- across doors --------------------------------------------------------------------------


def httpRequest(web: WebFixture, method: str, path: str, token: str, body: Any = None) -> tuple[StringTransport, Any]:
    """One HTTP request to the real Site, on a StringTransport."""
    payload = b"" if body is None else json.dumps(body).encode()
    transport = StringTransport()
    protocol = web.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
    protocol.makeConnection(transport)
    protocol.dataReceived(
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
    )
    return transport, protocol


async def http(web: WebFixture, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    transport, _ = httpRequest(web, method, path, token, body)
    await web.until(lambda: b"\r\n\r\n" in transport.value() and transport.value().rstrip().endswith((b"}", b"0")))
    head, _, rest = transport.value().partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        chunks = []
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            chunks.append(rest[:n])
            rest = rest[n + 2:]
        rest = b"".join(chunks)
    return status, json.loads(rest) if rest else None


def xmlEntries(frame: dict[str, Any]) -> list[domish.Element]:
    return [parse(x) if x.startswith("<message") else _parseFragment(x) for x in frame["payload"].get("xml", [])]


def _parseFragment(xml: str) -> domish.Element:
    result: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = result.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(f"<s>{xml}</s>".encode())
    return result[0]


class AcrossDoorsTests(unittest.TestCase):
    """A web (JSON) session and an XMPP-style session on one core."""

    @_d
    async def test_profileBetweenRESTAndVCard(self):
        web = await WebFixture(self).start("alicja", "szymon")
        token = await web.token("alicja")
        session = RecordingSession("alicja@localhost/dom", web.im)
        await web.im.openSession(session)
        # XMPP edits its vCard: REST /me shows it
        await answer(session, f"<iq type='set' id='s'>{FULL_VCARD}</iq>")
        status, me = await http(web, "GET", "/me", token)
        self.assertEqual(status, 200)
        self.assertEqual({k: me[k] for k in PROFILE_FIELDS}, FULL_PROFILE)
        # REST edits the profile: the vCard shows it
        status, _ = await http(web, "PATCH", "/me", token, {"full_name": "Ala", "avatar": None})
        self.assertEqual(status, 200)
        reply = await answer(session, "<iq type='get' id='g'><vCard xmlns='vcard-temp'/></iq>")
        vcard = firstChild(reply, "vCard", NS_VCARD)
        self.assertEqual(vcardText(vcard, "FN"), "Ala")
        self.assertIsNone(firstChild(vcard, "PHOTO"))

    @_d
    async def test_webVCardAndLastThroughXml(self):
        """A web client reaches the vCard and last activity through the dialect's xml list."""
        web = await WebFixture(self).start("alicja", "szymon")
        await befriend(web, "alicja", "szymon")
        await web.store.updateProfile("alicja", {"full_name": "Alicja"})
        client = await web.connect("szymon")
        client.sendJSON({"type": "iq", "payload": {"type": "get", "id": "v", "to": "alicja@localhost",
                                                   "xml": ["<vCard xmlns='vcard-temp'/>"]}})
        client.sendJSON({"type": "iq", "payload": {"type": "get", "id": "l", "to": "alicja@localhost",
                                                   "xml": ["<query xmlns='jabber:iq:last'/>"]}})
        await web.until(lambda: len([f for f in client.frames if f["type"] == "iq"]) >= 2)
        frames = {f["payload"].get("id"): f for f in client.frames if f["type"] == "iq"}
        [vcard] = xmlEntries(frames["v"])
        self.assertEqual(vcardText(vcard, "FN"), "Alicja")
        self.assertEqual(frames["l"]["payload"]["error"]["condition"], "item-not-found")  # never seen

    @_d
    async def test_carbonsReachTheWebSession(self):
        web = await WebFixture(self).start("alicja", "szymon")
        client = await web.connect("alicja")
        xmpp = RecordingSession("alicja@localhost/dom", web.im)
        await web.im.openSession(xmpp)
        xmpp.send("<presence><priority>5</priority></presence>")
        s = RecordingSession("szymon@localhost/dom", web.im)
        await web.im.openSession(s)
        s.send("<presence/>")
        client.take()
        # a chat on the XMPP client, both directions: the web session sees both
        s.send("<message to='alicja@localhost' id='in' type='chat'><body>cześć</body></message>")
        xmpp.send("<message to='szymon@localhost/dom' id='out' type='chat'><body>hej</body></message>")
        self.assertEqual(len(xmpp.take("message")), 1)
        await web.until(lambda: len(client.frames) >= 2)
        [received, sent] = client.take("message")
        for frame, kind, ident in ((received, "received", "in"), (sent, "sent", "out")):
            self.assertEqual(frame["payload"]["from"], "alicja@localhost")
            # The dialect maps carbons to a "carbon" key (docs/json-dialect.md).
            carbon = frame["payload"]["carbon"]
            self.assertEqual((carbon["direction"], carbon["message"]["id"]), (kind, ident))
            self.assertNotIn("xml", frame["payload"])
        # and the web session's own messages are copied to the XMPP client once it asks
        await answer(xmpp, "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        client.sendJSON({"type": "message", "payload": {"to": "szymon@localhost", "type": "chat",
                                                        "id": "w1", "body": "z przeglądarki"}})
        await web.until(lambda: xmpp.received)
        kind, inner = carbonOf(xmpp.take("message")[0])
        self.assertEqual((kind, inner["id"], str(firstChild(inner, "body"))), ("sent", "w1", "z przeglądarki"))

    @_d
    async def test_blockingAgainstAWebSender(self):
        web = await WebFixture(self).start("alicja", "szymon")
        xmpp = RecordingSession("alicja@localhost/dom", web.im)
        await web.im.openSession(xmpp)
        xmpp.send("<presence/>")
        await answer(xmpp, "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='szymon@localhost'/></block></iq>")
        client = await web.connect("szymon")
        client.sendJSON({"type": "message", "payload": {"to": "alicja@localhost", "type": "chat",
                                                        "id": "w2", "body": "hej"}})
        await web.until(lambda: any(f["type"] == "message" for f in client.frames))
        [error] = client.take("message")
        self.assertEqual((error["payload"]["type"], error["payload"]["error"]["condition"]),
                         ("error", "service-unavailable"))
        self.assertEqual(xmpp.take("message"), [])

    @_d
    async def test_webPresenceCarriesTheAvatarHash(self):
        web = await WebFixture(self).start("alicja", "szymon")
        await befriend(web, "alicja", "szymon")
        await web.store.updateProfile("szymon", {"avatar": PNG_URL})
        xmpp = RecordingSession("alicja@localhost/dom", web.im)
        await web.im.openSession(xmpp)
        xmpp.send("<presence/>")
        await web.connect("szymon", presence={})
        await web.until(lambda: xmpp.received)
        [p] = xmpp.take("presence")
        self.assertEqual((p["from"].split("/")[0], photoOf(p)), ("szymon@localhost", PNG_SHA1))
