"""
Rosters and the subscription state machine of RFC 6121 sections 2 and 3.

Rosters of users with at least one session are cached in memory (presence broadcast reads them
for every presence change); rosters of offline users are read from the store when a subscription
stanza reaches them.  Every change is written through to the store and pushed to the user's
interested sessions.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Optional

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.words.xish import domish

from xmppjson.error import BadRequest, NotFound
from xmppjson.im.stanzas import NS_CLIENT, NS_ROSTER, iqResult, tryJID
from xmppjson.storage import RosterItem, SessionState

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

Roster = dict[str, RosterItem]

_ADD_TO = {"none": "to", "from": "both", "to": "to", "both": "both"}
_ADD_FROM = {"none": "from", "to": "both", "from": "from", "both": "both"}
_REMOVE_TO = {"to": "none", "both": "from", "none": "none", "from": "from"}
_REMOVE_FROM = {"from": "none", "both": "to", "none": "none", "to": "to"}

MAX_NAME = 1024
MAX_GROUPS = 64


def addTo(item: RosterItem) -> None:
    item.subscription = _ADD_TO[item.subscription]


def addFrom(item: RosterItem) -> None:
    item.subscription = _ADD_FROM[item.subscription]


def removeTo(item: RosterItem) -> None:
    item.subscription = _REMOVE_TO[item.subscription]


def removeFrom(item: RosterItem) -> None:
    item.subscription = _REMOVE_FROM[item.subscription]


def hasTo(item: Optional[RosterItem]) -> bool:
    return item is not None and item.subscription in ("to", "both")


def hasFrom(item: Optional[RosterItem]) -> bool:
    return item is not None and item.subscription in ("from", "both")


def itemElement(item: RosterItem, remove: bool = False) -> domish.Element:
    element = domish.Element((NS_ROSTER, "item"))
    element["jid"] = item.jid
    if remove:
        element["subscription"] = "remove"
        return element
    element["subscription"] = item.subscription
    if item.name:
        element["name"] = item.name
    if item.askOut:
        element["ask"] = "subscribe"
    if item.approved:
        element["approved"] = "true"
    for group in item.groups:
        element.addElement("group", content=group)
    return element


def rosterVersion(roster: Roster) -> str:
    """
    The roster version (XEP-0237): a digest of the visible items, so equal rosters have equal
    versions without storing a counter.
    """
    digest = hashlib.sha1()
    for jid in sorted(roster):
        item = roster[jid]
        if item.inRoster:
            digest.update(
                repr((jid, item.name, item.subscription, item.askOut, item.approved, item.groups)).encode()
            )
    return digest.hexdigest()[:16]


class RosterManager:
    """
    The rosters of all users, cached for the online ones.
    """

    def __init__(self, server: "IMServer"):
        self.server = server
        self.store = server.store
        self._cache: dict[str, Roster] = {}
        self._loading: dict[str, list[defer.Deferred[Roster]]] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        self._pushCounter = 0

    # cache -------------------------------------------------------------

    def cached(self, localpart: str) -> Optional[Roster]:
        return self._cache.get(localpart)

    def isCached(self, localpart: str) -> bool:
        """Whether the user's roster is in the cache, or being read into it."""
        return localpart in self._cache or localpart in self._loading

    async def load(self, localpart: str, state: SessionState | None = None) -> Roster:
        """
        Load a user's roster into the cache (at session start); concurrent loads share one query.

        @param state: what L{IStore.getSessionState} read, if it was; else the roster is read.
        """
        roster = self._cache.get(localpart)
        if roster is not None:
            return roster
        waiters = self._loading.get(localpart)
        if waiters is not None:
            waiter: defer.Deferred[Roster] = defer.Deferred()
            waiters.append(waiter)
            return await waiter
        if state is not None:
            roster = self._cache[localpart] = {item.jid: item for item in state.roster}
            return roster
        self._loading[localpart] = waiters = []
        try:
            roster = await self._fetch(localpart)
        except BaseException:
            del self._loading[localpart]
            failure = Failure()
            for waiter in waiters:
                waiter.errback(failure)
            raise
        del self._loading[localpart]
        self._cache[localpart] = roster
        for waiter in waiters:
            waiter.callback(roster)
        return roster

    async def _fetch(self, localpart: str) -> Roster:
        items = await self.store.getRoster(localpart)
        return {item.jid: item for item in items}

    def release(self, localpart: str) -> None:
        """Drop a user's roster from the cache when their last session ends."""
        self._cache.pop(localpart, None)
        lock = self._locks.get(localpart)
        if lock is not None and not lock.locked:
            del self._locks[localpart]

    async def get(self, localpart: str) -> Roster:
        """The roster of any user: the cached one, or a fresh copy from the store."""
        roster = self._cache.get(localpart)
        if roster is not None:
            return roster
        return await self._fetch(localpart)

    def lock(self, localpart: str) -> defer.DeferredLock:
        """Serialises subscription changes of one user."""
        lock = self._locks.get(localpart)
        if lock is None:
            lock = self._locks[localpart] = defer.DeferredLock()
        return lock

    # changes -------------------------------------------------------------

    async def save(self, localpart: str, roster: Roster, item: RosterItem) -> None:
        """
        Store C{item} (or delete it once it carries no state at all) and push it to the user.
        """
        visibleBefore = item.jid in roster and roster[item.jid].inRoster
        if (
            not item.inRoster
            and item.subscription == "none"
            and not (item.askOut or item.pendingIn or item.approved)
        ):
            roster.pop(item.jid, None)
            await self.store.removeRosterItem(localpart, item.jid)
            if visibleBefore:
                self.push(localpart, item, remove=True)
            return
        roster[item.jid] = item
        await self.store.setRosterItem(localpart, item)
        if item.inRoster:
            self.push(localpart, item)

    async def delete(self, localpart: str, roster: Roster, contact: str) -> None:
        item = roster.pop(contact, None)
        await self.store.removeRosterItem(localpart, contact)
        if item is not None and item.inRoster:
            self.push(localpart, item, remove=True)

    def push(self, localpart: str, item: RosterItem, remove: bool = False) -> None:
        """A roster push (RFC 6121 2.1.6) to every interested session of the user."""
        bare = f"{localpart}@{self.server.domain}"
        roster = self._cache.get(localpart)
        version = rosterVersion(roster) if roster is not None else None
        for session in self.server.router.sessionsOf(bare):
            if not session.interested:
                continue
            self._pushCounter += 1
            iq = domish.Element((NS_CLIENT, "iq"))
            iq["type"] = "set"
            iq["id"] = f"push{self._pushCounter}"
            iq["from"] = bare
            iq["to"] = session.full
            query = iq.addElement((NS_ROSTER, "query"))
            if version is not None:
                query["ver"] = version
            query.addChild(itemElement(item, remove))
            session.deliver(iq)

    # the jabber:iq:roster protocol ----------------------------------------

    async def handleIQ(self, session: "Session", iq: domish.Element, query: domish.Element) -> domish.Element:
        """Roster get and set from a user's own session."""
        if iq.getAttribute("type") == "get":
            roster = await self.load(session.localpart)
            session.interested = True
            reply = iqResult(iq, session.bare)
            version = rosterVersion(roster)
            if query.getAttribute("ver") == version:
                # XEP-0237: unchanged since the client's copy; changes come as pushes.
                return reply
            result = reply.addElement((NS_ROSTER, "query"))
            result["ver"] = version
            for item in sorted(roster.values(), key=lambda i: i.jid):
                if item.inRoster:
                    result.addChild(itemElement(item))
            return reply
        return await self._set(session, iq, query)

    async def _set(self, session: "Session", iq: domish.Element, query: domish.Element) -> domish.Element:
        items = [c for c in query.elements() if c.name == "item"]
        if len(items) != 1:
            raise BadRequest("a roster set carries exactly one item")
        element = items[0]
        contact = tryJID(element.getAttribute("jid"))
        if contact is None or contact.resource:
            raise BadRequest("roster item jid must be a valid bare JID")
        if contact.userhost() == session.bare:
            raise BadRequest("a user cannot be their own contact")
        contactBare = contact.userhost()
        subscription = element.getAttribute("subscription")
        localpart = session.localpart
        if subscription == "remove":
            await self.server.presence.removeContact(session, contactBare)
            return iqResult(iq, session.bare)
        if subscription not in (None, "none", "to", "from", "both"):
            raise BadRequest(f"subscription {subscription!r} cannot be set by a client")
        name = element.getAttribute("name")
        if name is not None and len(name) > MAX_NAME:
            raise BadRequest("roster item name is too long")
        groups: list[str] = []
        for group in element.elements():
            if group.name != "group":
                continue
            text = str(group).strip()
            if not text or len(text) > MAX_NAME:
                raise BadRequest("roster groups must be non-empty names")
            if text in groups:
                raise BadRequest(f"duplicate roster group {text!r}")
            groups.append(text)
        if len(groups) > MAX_GROUPS:
            raise BadRequest("too many roster groups")
        async with self.lock(localpart):
            roster = await self.load(localpart)
            item = roster.get(contactBare) or RosterItem(jid=contactBare)
            item.name = name or None
            item.groups = groups
            item.inRoster = True
            await self.save(localpart, roster, item)
        return iqResult(iq, session.bare)

    async def itemOrFail(self, localpart: str, contact: str) -> RosterItem:
        roster = await self.get(localpart)
        item = roster.get(contact)
        if item is None or not item.inRoster:
            raise NotFound(f"{contact} is not in the roster")
        return item

