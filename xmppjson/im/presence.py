"""
Presence (RFC 6121 sections 3 and 4): broadcast to the contacts allowed to see it, probes answered
from live sessions, directed presence, unavailable on every kind of session end, and the
subscription handshake on both the sender's and the contact's roster.

Every party is local (xmppjson has no server-to-server links), so "outbound" and "inbound"
processing of RFC 6121 happen here back to back.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger
from twisted.words.xish import domish

from xmppjson.error import BadRequest
from xmppjson.im import roster as R
from xmppjson.im.stanzas import childText, errorReply, makeElement, now, parseJID, retarget, tryJID
from xmppjson.storage import RosterItem
from xmppjson.xmltext import isElement

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

SHOW_VALUES = frozenset(("away", "chat", "dnd", "xa"))


class LastSeen:
    """
    The live presence, status and last activity of each user, written to the store in coalesced
    batches (presence changes must not cost a database write each) and on shutdown.
    """

    log = Logger()

    def __init__(self, server: "IMServer", delay: float = 1.0):
        self.server = server
        self.delay = delay
        self._pending: dict[str, tuple[datetime.datetime, str, str]] = {}
        self._call = None

    def note(self, localpart: str, presence: str, status: str) -> None:
        self._pending[localpart] = (now(self.server.reactor), presence, status)
        if self._call is None or not self._call.active():
            self._call = self.server.reactor.callLater(self.delay, self._flushSoon)

    def pending(self, localpart: str) -> tuple[datetime.datetime, str, str] | None:
        """The time, presence and status noted for a user and not yet written, if any."""
        return self._pending.get(localpart)

    def _flushSoon(self) -> None:
        self._call = None
        self.flush()

    def flush(self):
        """Write everything pending; returns a Deferred that fires when written."""
        from twisted.internet import defer

        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        pending, self._pending = self._pending, {}
        writes = []
        for localpart, (when, presence, status) in pending.items():
            d = self.server.store.setLastPresence(localpart, when, presence, status)
            d.addErrback(
                lambda f, lp=localpart: self.log.warn(
                    "Could not record last presence of {user}: {err}", user=lp, err=f.getErrorMessage()
                )
            )
            writes.append(d)
        return defer.DeferredList(writes)


class PresenceHandler:
    """Presence stanzas from clients, and presence consequences of sessions ending."""

    log = Logger()

    def __init__(self, server: "IMServer"):
        self.server = server
        self.router = server.router
        self.rosters = server.rosters
        self.domain = server.domain
        self.lastSeen = LastSeen(server)

    # from a client ---------------------------------------------------------

    def outbound(self, session: "Session", presence: domish.Element) -> None:
        ptype = presence.getAttribute("type")
        to = presence.getAttribute("to")
        if ptype in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            target = self._contact(session, presence, to)
            if target is not None and not self._refused(session, presence, target):
                self.server.spawn(session, presence, self._subscriptionFromClient(session, ptype, target, presence))
            return
        if ptype == "probe":
            target = self._contact(session, presence, to)
            if target is not None and not self._refused(session, presence, target):
                self.server.spawn(session, presence, self._probe(session, target))
            return
        if ptype == "error":
            # A presence error from a client is routed to a live session or dropped.
            jid = tryJID(to)
            if jid is not None and jid.resource:
                peer = self.router.session(jid.userhost(), jid.resource)
                if peer is not None and not self.server.blocking.separated(session.jid, peer.jid):
                    peer.deliver(presence)
            return
        if ptype not in (None, "unavailable"):
            raise BadRequest(f"unknown presence type {ptype!r}")
        if to:
            jid = tryJID(to)
            if jid is None:
                raise BadRequest("presence 'to' is not a valid JID", condition="jid-malformed")
            if jid.userhost() != session.bare:
                if not self.server.blocking.refuseOutbound(session, presence, jid):
                    self._directed(session, presence, jid, ptype)
                return
        if ptype is None:
            self.available(session, presence)
        else:
            self.unavailable(session, presence)

    def _refused(self, session: Session, presence: domish.Element, contact: str) -> bool:
        """The user blocks the contact (XEP-0191): answered C{not-acceptable}."""
        return self.server.blocking.refuseOutbound(session, presence, parseJID(contact))

    async def _subscriptionFromClient(self, session: Session, ptype: str, contact: str, presence: domish.Element) -> None:
        # A contact who blocks the user never hears of it, and their roster does not change
        # (XEP-0191 section 3.3); they may be offline, their blocklist then read from the store.
        if await self.server.blocking.isBlockedBy(contact.split("@", 1)[0], session.jid):
            return
        await self.subscription(session, ptype, contact, presence)

    def _contact(self, session: "Session", presence: domish.Element, to: Optional[str]) -> Optional[str]:
        jid = tryJID(to)
        if jid is None or not jid.user:
            raise BadRequest("a subscription needs the contact's bare JID in 'to'", condition="jid-malformed")
        if jid.host != self.domain:
            session.deliver(errorReply(presence, "remote-server-not-found", sender=self.domain))
            return None
        bare = jid.userhost()
        if bare == session.bare:
            return None
        return bare

    # availability --------------------------------------------------------

    def available(self, session: "Session", presence: domish.Element) -> None:
        show = childText(presence, "show")
        if show is not None and show not in SHOW_VALUES:
            raise BadRequest(f"show must be one of {', '.join(sorted(SHOW_VALUES))}")
        priorityText = childText(presence, "priority")
        priority = 0
        if priorityText is not None:
            try:
                priority = int(priorityText.strip())
            except ValueError:
                raise BadRequest("priority must be an integer")
            if not -128 <= priority <= 127:
                raise BadRequest("priority must be between -128 and 127")
        first = session.presence is None
        # XEP-0153: the avatar hash the server knows, whatever the client said.
        self.server.vcards.stampPresence(session.localpart, presence)
        session.presence = presence
        session.priority = priority
        session.receivesMessages = True
        self._broadcast(session, presence)
        if first:
            self._initial(session)
        self.lastSeen.note(session.localpart, show or "available", childText(presence, "status") or "")

    def _broadcast(self, session: "Session", presence: domish.Element) -> set[str]:
        """
        To every contact with a 'from' subscription, and the user's other resources.  Returns
        the bare JIDs of the contacts it was meant for.
        """
        roster = self.rosters.cached(session.localpart) or {}
        screen = self.server.blocking.screen
        told: set[str] = set()
        for item in roster.values():
            if item.subscription in ("from", "both"):
                told.add(item.jid)
                targets = screen(session.jid, self.router.availableSessionsOf(item.jid))
                if targets:
                    copy = retarget(presence, item.jid)
                    for target in targets:
                        target.deliver(copy)
        for other in self.router.availableSessionsOf(session.bare):
            if other is not session:
                other.deliver(retarget(presence, other.full))
        return told

    def refresh(self, session: Session) -> None:
        """
        Broadcast an available session's presence again, stamped anew: its user's avatar
        changed on the server (XEP-0153), and contacts learn it from presence.
        """
        if session.presence is None:
            return
        presence = retarget(session.presence, None)
        presence.children = list(presence.children)
        self.server.vcards.stampPresence(session.localpart, presence)
        session.presence = presence
        self._broadcast(session, presence)

    def _initial(self, session: "Session") -> None:
        """
        First available presence: the contacts' presence (probes answered from their live
        sessions), the user's other resources, pending subscription requests, offline messages.
        """
        roster = self.rosters.cached(session.localpart) or {}
        blocking = self.server.blocking
        for item in roster.values():
            if item.subscription in ("to", "both"):
                for contact in blocking.screen(session.jid, self.router.availableSessionsOf(item.jid)):
                    session.deliver(retarget(contact.presence, session.full))
            if item.pendingIn and not (blocking.active and blocking.separated(session.jid, parseJID(item.jid))):
                request = makeElement("presence", type="subscribe", to=session.bare)
                request["from"] = item.jid
                session.deliver(request)
        for other in self.router.availableSessionsOf(session.bare):
            if other is not session:
                session.deliver(retarget(other.presence, session.full))
        if session.priority >= 0:
            self.server.deliverOffline(session)

    def unavailable(self, session: "Session", presence: Optional[domish.Element] = None) -> None:
        """
        The session is no longer available (explicit unavailable presence, or its end): tell
        everyone who saw it.
        """
        if session.presence is None and not session.directedTo:
            return
        if presence is None or presence.getAttribute("from") != session.full:
            presence = makeElement("presence", type="unavailable")
            presence["from"] = session.full
        told: set[str] = set()
        if session.presence is not None:
            told = self._broadcast(session, presence)
        for address in session.directedTo:
            jid = tryJID(address)
            if jid is None or jid.userhost() in told:
                continue
            self._deliverPresence(retarget(presence, address), jid)
        session.directedTo.clear()
        wasAvailable = session.presence is not None
        session.presence = None
        if wasAvailable:
            session.receivesMessages = session.messagesWhileUnavailable
            if not any(s is not session for s in self.router.availableSessionsOf(session.bare)):
                self.lastSeen.note(
                    session.localpart, "unavailable", childText(presence, "status") or ""
                )

    def _directed(self, session: "Session", presence: domish.Element, jid, ptype: Optional[str]) -> None:
        """Directed presence (RFC 6121 4.6) to a local user, remembered for the final unavailable."""
        if jid.host != self.domain:
            return
        if self.server.blocking.blocks(jid.user, session.jid):
            return  # XEP-0191: a blocked sender's presence is dropped without an answer
        address = jid.full()
        if ptype is None:
            session.directedTo.add(address)
        else:
            session.directedTo.discard(address)
        self._deliverPresence(presence, jid)

    def _deliverPresence(self, presence: domish.Element, jid) -> None:
        frm = tryJID(presence.getAttribute("from"))
        if jid.resource:
            target = self.router.session(jid.userhost(), jid.resource)
            if target is not None and not (frm is not None and self.server.blocking.separated(frm, target.jid)):
                target.deliver(presence)
            return
        targets = self.router.availableSessionsOf(jid.userhost())
        for target in targets if frm is None else self.server.blocking.screen(frm, targets):
            target.deliver(presence)

    async def _probe(self, session: "Session", contact: str) -> None:
        """An explicit probe: answered with the contact's presence if the user may see it."""
        contactPart = contact.split("@", 1)[0]
        if await self.server.blocking.isBlockedBy(contactPart, session.jid):
            return  # XEP-0191: no answer to a blocked prober
        roster = await self.rosters.get(contactPart)
        if not R.hasFrom(roster.get(session.bare)):
            return
        sessions = self.server.blocking.screen(session.jid, self.router.availableSessionsOf(contact))
        for peer in sessions:
            session.deliver(retarget(peer.presence, session.full))
        if not sessions:
            gone = makeElement("presence", type="unavailable", to=session.full)
            gone["from"] = contact
            session.deliver(gone)

    # subscriptions ---------------------------------------------------------

    def _subscriptionStanza(self, ptype: str, sender: str, to: str, original: Optional[domish.Element] = None) -> domish.Element:
        stanza = makeElement("presence", type=ptype, to=to)
        stanza["from"] = sender
        if original is not None:
            if original.getAttribute("id"):
                stanza["id"] = original["id"]
            for child in original.children:
                if isElement(child) and child.name == "status":
                    stanza.addChild(child)
        return stanza

    def _deliverToUser(self, bare: str, stanza: domish.Element) -> None:
        """Subscription stanzas go to every session that can show them."""
        blocking = self.server.blocking
        if blocking.active:
            frm = tryJID(stanza.getAttribute("from"))
            if frm is not None and blocking.separated(frm, parseJID(bare)):
                return  # XEP-0191: nothing passes between a user and whom they block
        for target in self.router.sessionsOf(bare):
            if target.presence is not None or target.interested:
                target.deliver(stanza)

    async def subscription(self, session: "Session", ptype: str, contact: str, presence: Optional[domish.Element] = None) -> None:
        """
        The user sends a subscription stanza to a local contact: update the user's roster, then
        the contact's, then tell whoever must know.
        """
        user = session.bare
        userPart, contactPart = session.localpart, contact.split("@", 1)[0]
        first, second = sorted((userPart, contactPart))
        async with self.rosters.lock(first):
            async with self.rosters.lock(second):
                await self._subscription(user, userPart, contact, contactPart, ptype, presence)

    async def _subscription(self, user: str, userPart: str, contact: str, contactPart: str, ptype: str, presence: Optional[domish.Element]) -> None:
        rosters = self.rosters
        mine = await rosters.get(userPart)
        item = mine.get(contact)
        exists = self.router.hasSessions(contact) or await self.server.store.userExists(contactPart)
        theirs = await rosters.get(contactPart) if exists else {}
        their = theirs.get(user)
        stanza = self._subscriptionStanza(ptype, user, contact, presence)

        if ptype == "subscribe":
            if not R.hasTo(item):
                item = item or RosterItem(jid=contact)
                item.askOut = True
                item.inRoster = True
                await rosters.save(userPart, mine, item)
            if not exists:
                await self._inboundUnsubscribed(userPart, mine, contact, user)
                return
            if R.hasFrom(their):
                await self._inboundSubscribed(userPart, mine, contact, user)
            elif their is not None and their.approved:
                their.approved = False
                R.addFrom(their)
                await rosters.save(contactPart, theirs, their)
                await self._inboundSubscribed(userPart, mine, contact, user)
            else:
                their = their or RosterItem(jid=user, inRoster=False)
                if not their.pendingIn:
                    their.pendingIn = True
                    await rosters.save(contactPart, theirs, their)
                self._deliverToUser(contact, stanza)

        elif ptype == "subscribed":
            if item is not None and item.pendingIn:
                item.pendingIn = False
                item.inRoster = True
                R.addFrom(item)
                await rosters.save(userPart, mine, item)
                if exists:
                    await self._inboundSubscribed(contactPart, theirs, user, contact, stanza)
            elif not R.hasFrom(item):
                # Pre-approval (RFC 6121 3.4).
                item = item or RosterItem(jid=contact)
                item.approved = True
                item.inRoster = True
                await rosters.save(userPart, mine, item)

        elif ptype == "unsubscribe":
            if item is not None and (R.hasTo(item) or item.askOut):
                R.removeTo(item)
                item.askOut = False
                await rosters.save(userPart, mine, item)
            if their is not None and (R.hasFrom(their) or their.pendingIn):
                R.removeFrom(their)
                their.pendingIn = False
                their.approved = False
                await rosters.save(contactPart, theirs, their)
                self._deliverToUser(contact, stanza)
                self._sendUnavailable(contact, user)

        elif ptype == "unsubscribed":
            if item is not None and (R.hasFrom(item) or item.pendingIn or item.approved):
                R.removeFrom(item)
                item.pendingIn = False
                item.approved = False
                await rosters.save(userPart, mine, item)
            if exists:
                await self._inboundUnsubscribed(contactPart, theirs, user, contact, stanza)
            self._sendUnavailable(user, contact)

    async def _inboundSubscribed(self, part: str, roster: R.Roster, contact: str, bare: str, stanza: Optional[domish.Element] = None) -> None:
        """
        C{contact} approved C{bare}'s request: C{bare} now sees C{contact}'s presence.
        """
        item = roster.get(contact)
        if item is None or not item.askOut:
            return
        item.askOut = False
        R.addTo(item)
        await self.rosters.save(part, roster, item)
        self._deliverToUser(bare, stanza or self._subscriptionStanza("subscribed", contact, bare))
        for peer in self.router.availableSessionsOf(contact):
            copy = retarget(peer.presence, bare)
            for target in self.server.blocking.screen(peer.jid, self.router.availableSessionsOf(bare)):
                target.deliver(copy)

    async def _inboundUnsubscribed(self, part: str, roster: R.Roster, contact: str, bare: str, stanza: Optional[domish.Element] = None) -> None:
        """C{contact} cancelled or denied C{bare}'s subscription to it."""
        item = roster.get(contact)
        if item is None or not (R.hasTo(item) or item.askOut):
            return
        R.removeTo(item)
        item.askOut = False
        await self.rosters.save(part, roster, item)
        self._deliverToUser(bare, stanza or self._subscriptionStanza("unsubscribed", contact, bare))

    def _sendUnavailable(self, sender: str, to: str) -> None:
        """C{to} may no longer see C{sender}: unavailable from each of C{sender}'s resources."""
        for peer in self.router.availableSessionsOf(sender):
            gone = makeElement("presence", type="unavailable", to=to)
            gone["from"] = peer.full
            for target in self.router.availableSessionsOf(to):
                target.deliver(gone)

    async def removeContact(self, session: "Session", contact: str) -> None:
        """
        Roster remove (RFC 6121 2.5): cancel both directions of the subscription, then delete.
        """
        from xmppjson.error import NotFound

        roster = await self.rosters.get(session.localpart)
        item = roster.get(contact)
        if item is None or not item.inRoster:
            raise NotFound(f"{contact} is not in the roster")
        contactPart = contact.split("@", 1)[0]
        if contact.endswith("@" + self.domain):
            if R.hasTo(item) or item.askOut:
                await self.subscription(session, "unsubscribe", contact)
            if R.hasFrom(item) or item.pendingIn:
                await self.subscription(session, "unsubscribed", contact)
        async with self.rosters.lock(session.localpart):
            roster = await self.rosters.get(session.localpart)
            await self.rosters.delete(session.localpart, roster, contact)
        del contactPart
