"""
Blocking Command (XEP-0191): a user's list of addresses they want nothing to do with, stored in
the database and enforced by the core for every door.

The blocklists of users with a session are cached in memory (loaded when a session opens,
released with the last one), so the checks on the paths of live messages and presence are
dictionary lookups: nothing here costs a database round trip unless a message is on its way to
an offline user (whose delivery costs a round trip anyway), and with no blocklist loaded at
all every check returns at its first line.

What a block does (XEP-0191 section 3.3, for user U blocking address B):
 - stanzas from B to U: presence of every kind is dropped without an answer, messages are
   answered C{service-unavailable} (as for a user who does not exist), iq get/set are answered
   C{service-unavailable} and other iqs dropped;
 - stanzas from U to B: answered C{not-acceptable} with
   C{<blocked xmlns='urn:xmpp:blocking:errors'/>}; presence broadcasts simply leave B out;
 - when the block is set, B's sessions that could see U get U's unavailable presence, and U's
   sessions get B's (U's clients then show B offline); when it is lifted, both get the current
   presence again, where the subscriptions allow.

JID matching follows XEP-0191 section 6 (as XEP-0016): an item C{user@domain} blocks every
resource of that user, C{user@domain/resource} that resource only, C{domain} everyone at that
domain and C{domain/resource} that resource of the domain.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from xmppjson.error import BadRequest, PolicyViolation, StoreUnavailable
from xmppjson.im.stanzas import (
    errorReply,
    hasBody,
    iqResult,
    makeElement,
    parseJID,
    retarget,
    tryJID,
)
from xmppjson.storage import SessionState
from xmppjson.xmltext import isElement

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"


def matches(items: set[str] | frozenset[str], jid: JID) -> bool:
    """
    Whether an address is blocked by a list of normalised JID strings (XEP-0191 section 6).
    """
    host = jid.host
    if host in items:
        return True
    if jid.user:
        if jid.userhost() in items:
            return True
        return bool(jid.resource) and jid.full() in items
    return bool(jid.resource) and f"{host}/{jid.resource}" in items


def blockedError(stanza: domish.Element, sender: str) -> domish.Element:
    """
    The answer to a stanza a user sent to an address they block: C{not-acceptable} with the
    XEP-0191 application condition.
    """
    reply = errorReply(stanza, "not-acceptable", "cancel",
                       "you are blocking this address; unblock it first", sender=sender)
    for child in reply.children:
        if isElement(child) and child.name == "error":
            child.addElement((NS_BLOCKING_ERRORS, "blocked"))
    return reply


class Blocking:
    """
    Blocklists: the C{urn:xmpp:blocking} iq protocol and the checks the rest of the core asks.

    @ivar maxItems: the most addresses one user may block.
    """

    log = Logger()
    maxItems = 1000

    def __init__(self, server: IMServer):
        self.server = server
        self.store = server.store
        self.router = server.router
        self.domain = server.domain
        # Users whose list is cached (they have, or are opening, a session) ...
        self._loaded: set[str] = set()
        # ... and, of those, the ones whose list is not empty: "nobody blocks anything" is
        # then one truth test.
        self._lists: dict[str, set[str]] = {}
        # Sessions that asked for the blocklist: they get the pushes (XEP-0191 section 3.3).
        self._requested: dict[str, set[Session]] = {}
        # Messages waiting for the blocklist of an offline recipient, in arrival order.
        self._waiting: dict[str, list[tuple[Session, domish.Element, JID]]] = {}
        self._pushCounter = 0
        server.iq.register(NS_BLOCKING, self.handleIQ, account=True)
        server.messages.filters.append(self.filterMessage)

    # cache ----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether any cached user blocks anything (else every check is trivially false)."""
        return bool(self._lists)

    def isCached(self, localpart: str) -> bool:
        return localpart in self._loaded

    async def load(self, localpart: str, state: SessionState | None = None) -> None:
        """
        Cache a user's blocklist (when a session opens); a no-op when it is cached.

        @param state: what L{IStore.getSessionState} read, if it was; else the list is read.
        """
        if localpart in self._loaded:
            return
        if state is not None:
            items = state.blocklist
        else:
            items = await self.store.getBlocklist(localpart)
        # Another session of the same user may have loaded it meanwhile, and changed it since:
        # the cached copy is then the newer one.
        if localpart not in self._loaded:
            self._loaded.add(localpart)
            if items:
                self._lists[localpart] = set(items)

    async def reload(self, localpart: str) -> None:
        """
        The user's list changed outside this core (another cluster node): read it again if it
        is cached here.
        """
        if localpart not in self._loaded:
            return
        items = await self.store.getBlocklist(localpart)
        if localpart in self._loaded:
            if items:
                self._lists[localpart] = set(items)
            else:
                self._lists.pop(localpart, None)

    def release(self, localpart: str) -> None:
        """Forget a user's blocklist when their last session is gone."""
        self._loaded.discard(localpart)
        self._lists.pop(localpart, None)

    def ended(self, session: Session) -> None:
        """A session left: no more pushes for it."""
        requested = self._requested.get(session.bare)
        if requested is not None:
            requested.discard(session)
            if not requested:
                del self._requested[session.bare]

    def blocklist(self, localpart: str) -> list[str]:
        """The cached blocklist of a user with a session, sorted."""
        return sorted(self._lists.get(localpart, ()))

    # checks ---------------------------------------------------------------

    def blocks(self, localpart: str | None, jid: JID) -> bool:
        """Whether a user with a session blocks C{jid} (C{False} for users not cached)."""
        items = self._lists.get(localpart) if localpart else None
        return items is not None and matches(items, jid)

    def separated(self, one: JID, other: JID) -> bool:
        """Whether either of two addresses is blocked by the other's user (cached users only)."""
        lists = self._lists
        if not lists:
            return False
        if one.host == self.domain and one.user:
            items = lists.get(one.user)
            if items is not None and matches(items, other):
                return True
        if other.host == self.domain and other.user:
            items = lists.get(other.user)
            if items is not None and matches(items, one):
                return True
        return False

    def screen(self, jid: JID, targets: list[Session]) -> list[Session]:
        """The sessions among C{targets} that may exchange stanzas with C{jid}."""
        if not self._lists or not targets:
            return targets
        return [t for t in targets if not self.separated(jid, t.jid)]

    async def isBlockedBy(self, localpart: str, jid: JID) -> bool:
        """
        Whether any user (cached or not) blocks C{jid}: for stanzas that reach an offline user,
        whose list is then read from the store.
        """
        if localpart in self._loaded:
            return self.blocks(localpart, jid)
        items = await self.store.getBlocklist(localpart)
        return bool(items) and matches(set(items), jid)

    def refuseOutbound(self, session: Session, stanza: domish.Element, target: JID) -> bool:
        """
        A stanza from a user to an address they block: answer C{not-acceptable} (XEP-0191
        section 3.3) and return C{True}; C{False} when it may go on.
        """
        items = self._lists.get(session.localpart)
        if items is None or not matches(items, target) or target.userhost() == session.bare:
            return False
        if stanza.getAttribute("type") not in ("error", "result"):
            session.deliver(blockedError(stanza, self.domain))
        return True

    # messages -------------------------------------------------------------

    def filterMessage(self, sender: Session, message: domish.Element, target: JID) -> bool:
        """
        The L{MessageHandler.filters} hook: stop messages between a user and an address one of
        them blocks.  Returns C{True} when it took care of the message.
        """
        localpart = target.user or ""
        if localpart == sender.localpart:
            return False
        if self._lists and self.refuseOutbound(sender, message, target):
            return True
        if localpart in self._loaded:
            if self._lists and self.blocks(localpart, sender.jid):
                self._inboundBlocked(sender, message)
                return True
            return False
        if message.getAttribute("type", "normal") not in ("chat", "normal") or not hasBody(message):
            # Not a message that could be stored for an offline recipient: routing drops it or
            # answers it without telling the sender anything a block would hide.
            return False
        # The recipient is offline, so the message is bound for the store: read their list
        # first, keeping messages to the same recipient in order.
        waiting = self._waiting.get(localpart)
        if waiting is not None:
            waiting.append((sender, message, target))
            return True
        self._waiting[localpart] = [(sender, message, target)]
        d = defer.ensureDeferred(self._checkOffline(localpart))
        d.addErrback(lambda f: self.log.failure("Blocklist check for {u} failed", f, u=localpart))
        return True

    async def _checkOffline(self, localpart: str) -> None:
        items: set[str] | None = None
        # The same patience as storing the message itself: a short outage costs a delay, not
        # an error (messages arriving meanwhile wait in order behind the first).
        delays = self.server.config.offlineRetryDelays
        for attempt in range(len(delays) + 1):
            if attempt:
                await task.deferLater(self.server.reactor, delays[attempt - 1], lambda: None)
            try:
                items = set(await self.store.getBlocklist(localpart))
                break
            except StoreUnavailable:
                continue
            except Exception:  # noqa: BLE001 - the waiting messages must be answered whatever failed
                self.log.failure("Reading the blocklist of {u} failed", u=localpart)
                break
        waiting = self._waiting.pop(localpart, [])
        for sender, message, target in waiting:
            if items is None:
                self._answer(sender, message, "resource-constraint", "wait",
                             "the recipient is offline and the message could not be stored;"
                             " try again later")
            elif items and matches(items, sender.jid):
                self._inboundBlocked(sender, message)
            else:
                self.server.messages.route(message, target, sender)

    def _inboundBlocked(self, sender: Session, stanza: domish.Element) -> None:
        """A message from a blocked address: answered as if the user did not exist."""
        if stanza.getAttribute("type") != "error":
            self._answer(sender, stanza, "service-unavailable")

    def _answer(self, sender: Session, stanza: domish.Element, condition: str,
                errorType: str | None = None, text: str | None = None) -> None:
        if sender.active and stanza.getAttribute("type") != "error":
            sender.deliver(errorReply(stanza, condition, errorType, text, sender=self.domain))

    # the urn:xmpp:blocking protocol ----------------------------------------

    def handleIQ(self, session: Session, iq: domish.Element, child: domish.Element):
        """Blocklist get, block and unblock, from a user's own session."""
        itype = iq.getAttribute("type")
        if itype == "get" and child.name == "blocklist":
            return self._get(session, iq)
        if itype == "set" and child.name == "block":
            return self._block(session, iq, self._items(child, session))
        if itype == "set" and child.name == "unblock":
            jids = self._items(child, session)
            return self._unblock(session, iq, jids or None)
        raise BadRequest("expected a blocklist get, or a block or unblock set")

    def _items(self, child: domish.Element, session: Session) -> list[str]:
        jids: list[str] = []
        for item in child.elements():
            if item.name != "item" or item.uri != NS_BLOCKING:
                continue
            jid = tryJID(item.getAttribute("jid"))
            if jid is None:
                raise BadRequest("every item needs a valid 'jid'", condition="jid-malformed")
            if jid.userhost() == session.bare and jid.user:
                raise BadRequest("you cannot block your own account", condition="not-acceptable")
            jids.append(jid.full())
        if len(jids) > self.maxItems:
            raise PolicyViolation(f"at most {self.maxItems} items at once")
        return list(dict.fromkeys(jids))

    async def _get(self, session: Session, iq: domish.Element) -> domish.Element:
        await self.load(session.localpart)
        self._requested.setdefault(session.bare, set()).add(session)
        reply = iqResult(iq, session.bare)
        blocklist = reply.addElement((NS_BLOCKING, "blocklist"))
        for jid in self.blocklist(session.localpart):
            blocklist.addElement("item")["jid"] = jid
        return reply

    async def _block(self, session: Session, iq: domish.Element, jids: list[str]) -> None:
        if not jids:
            raise BadRequest("a block needs at least one item")
        localpart = session.localpart
        await self.load(localpart)
        current = self._lists.get(localpart, set())
        if len(current | set(jids)) > self.maxItems:
            raise PolicyViolation(f"a blocklist holds at most {self.maxItems} addresses")
        added = await self.store.addToBlocklist(localpart, jids)
        if localpart in self._loaded and added:
            self._lists.setdefault(localpart, set()).update(added)
        if session.active:
            session.deliver(iqResult(iq, session.bare))
        self._push(session.bare, "block", jids)
        if added:
            self._hide(session.bare, localpart, set(added))

    async def _unblock(self, session: Session, iq: domish.Element, jids: list[str] | None) -> None:
        localpart = session.localpart
        await self.load(localpart)
        removed = await self.store.removeFromBlocklist(localpart, jids)
        items = self._lists.get(localpart)
        if items is not None:
            items.difference_update(removed)
            if not items:
                del self._lists[localpart]
        if session.active:
            session.deliver(iqResult(iq, session.bare))
        self._push(session.bare, "unblock", jids or [])
        if removed:
            self._reveal(session.bare, localpart, set(removed))

    def _push(self, bare: str, name: str, jids: Iterable[str]) -> None:
        """The block/unblock push to every session of the user that fetched the blocklist."""
        for session in list(self._requested.get(bare, ())):
            if not session.active:
                continue
            self._pushCounter += 1
            iq = makeElement("iq", type="set", id=f"block{self._pushCounter}", to=session.full)
            iq["from"] = bare
            command = iq.addElement((NS_BLOCKING, name))
            for jid in jids:
                command.addElement("item")["jid"] = jid
            session.deliver(iq)

    # presence consequences -----------------------------------------------------

    def _peers(self, localpart: str, items: set[str], subscriptions: tuple[str, ...]) -> list[Session]:
        """
        The available sessions of the user's contacts (with one of C{subscriptions}) that the
        given items match.
        """
        roster = self.server.rosters.cached(localpart) or {}
        found: list[Session] = []
        for item in roster.values():
            if item.subscription not in subscriptions:
                continue
            for peer in self.router.availableSessionsOf(item.jid):
                if matches(items, peer.jid):
                    found.append(peer)
        return found

    def _hide(self, bare: str, localpart: str, items: set[str]) -> None:
        """Newly blocked contacts and the user stop seeing each other: unavailable both ways."""
        mine = self.router.availableSessionsOf(bare)
        if not mine:
            return
        # They could see the user: subscription from the user, or directed presence.
        viewers = self._peers(localpart, items, ("from", "both"))
        for own in mine:
            for address in own.directedTo:
                jid = tryJID(address)
                if jid is None or not matches(items, jid) or not jid.user:
                    continue
                for peer in self.router.availableSessionsOf(jid.userhost()):
                    if peer not in viewers and (not jid.resource or peer.full == jid.full()):
                        viewers.append(peer)
        for own in mine:
            gone = makeElement("presence", type="unavailable")
            gone["from"] = own.full
            for peer in viewers:
                peer.deliver(retarget(gone, peer.bare))
        for peer in self._peers(localpart, items, ("to", "both")):
            gone = makeElement("presence", type="unavailable")
            gone["from"] = peer.full
            for own in mine:
                own.deliver(retarget(gone, own.full))

    def _reveal(self, bare: str, localpart: str, items: set[str]) -> None:
        """Unblocked contacts get the user's current presence, and the user theirs."""
        mine = self.router.availableSessionsOf(bare)
        if not mine:
            return
        userJID = parseJID(bare)
        for peer in self._peers(localpart, items, ("from", "both")):
            if self.separated(userJID, peer.jid):
                continue  # still blocked by another item, or blocking the user
            for own in mine:
                if own.presence is not None:
                    peer.deliver(retarget(own.presence, peer.bare))
        for peer in self._peers(localpart, items, ("to", "both")):
            if self.separated(userJID, peer.jid) or peer.presence is None:
                continue
            for own in mine:
                own.deliver(retarget(peer.presence, own.full))
