"""
Message routing (RFC 6121 section 8.5) and offline storage (XEP-0160).

The hot path (a chat message to a connected user) is synchronous: one router lookup, one
stanza-id, one C{deliver} per target.  Only messages that must be stored touch the database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from xmppjson.error import BadRequest, StoreUnavailable
from xmppjson.im.stanzas import (
    NS_DELAY,
    NS_SID,
    addDelay,
    dropServerMarks,
    errorReply,
    firstChild,
    hasBody,
    newStanzaId,
    now,
    parseStanza,
    tryJID,
)
from xmppjson.xmltext import Element

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

#: Users remembered as having no offline message stored, at most (then the memory starts over).
MAX_NOTHING_STORED = 100_000


class MessageHandler:
    """Routes messages between local users and keeps them for users who are away."""

    log = Logger()

    def __init__(self, server: "IMServer"):
        self.server = server
        self.router = server.router
        self.store = server.store
        self.domain = server.domain
        self._offlineLocks: dict[str, defer.DeferredLock] = {}
        self._storeLocks: dict[str, defer.DeferredLock] = {}
        #: Offline messages being stored (retries included), for L{drain}.
        self._storing: set[defer.Deferred[None]] = set()
        #: Users known to have no offline message stored: their next available session skips
        #: the store's query (a thread round trip and a read per login).  Empty at start (then
        #: every user is queried once), and only kept when this process is the only one that
        #: stores offline messages: a cluster node's peers store them for the same users.
        self._nothingStored: set[str] = set()
        self._hintNothingStored = not self.router.replicated
        #: Offline stores started so far, and those under way per user: a query that saw
        #: nothing proves nothing if a store for the user was under way when it began or
        #: started before it ended (the row may or may not have been visible to it).
        self._storesStarted = 0
        self._storesUnderWay: dict[str, int] = {}
        #: Features that may stop a message before it is routed (blocking, ...): each is called
        #: as C{f(sender, message, target)} and returns C{True} when it took care of the
        #: message (answered or dropped it), which ends routing.
        self.filters: list[Callable[["Session", domish.Element, JID], bool]] = []
        #: Features that act on every routed message (archive, carbons, ...): each is called as
        #: C{f(message, bare, delivered, sender)} after the message was handed to the sessions in
        #: C{delivered} (empty when it was stored offline).
        self.observers: list[Callable[[domish.Element, str, list["Session"], "Session | None"], None]] = []

    def outbound(self, session: "Session", message: domish.Element) -> None:
        to = message.getAttribute("to")
        if to is None:
            target = session.jid.userhostJID()
        else:
            target = tryJID(to)
            if target is None:
                raise BadRequest("message 'to' is not a valid JID", condition="jid-malformed")
        if target.host != self.domain:
            if message.getAttribute("type") != "error":
                session.deliver(errorReply(message, "remote-server-not-found", sender=self.domain,
                                           text="this server does not federate"))
            return
        if not target.user:
            # Messages to the server itself: nothing here reads them.
            if message.getAttribute("type") not in ("error", "headline", "groupchat") and hasBody(message):
                session.deliver(errorReply(message, "service-unavailable", sender=self.domain))
            return
        # What only this server may add, so that a client cannot fake history.
        dropServerMarks(message, self.domain)
        for accept in self.filters:
            if accept(session, message, target):
                return
        self.route(message, target, session)

    def route(self, message: domish.Element, target: JID, sender: "Session | None" = None,
              redelivery: bool = False) -> None:
        """
        Deliver a message to a local JID: the named resource, else the best resources of the
        bare JID, else offline storage, else an error to the sender.

        @param redelivery: the message was routed before and is being routed again (a door
            handed it back): it keeps its stanza-id, and observers (archive, ...) are not told
            twice about it.
        """
        bare = target.userhost()
        mtype = message.getAttribute("type", "normal")
        if target.resource:
            session = self.router.session(bare, target.resource)
            if session is not None:
                self._stampId(message, bare, redelivery)
                session.deliver(message)
                if self.observers and not redelivery:
                    self._observe(message, bare, [session], sender)
                return
            if mtype in ("error", "headline"):
                return
            if mtype == "groupchat":
                self._bounce(message, sender, "service-unavailable")
                return
        targets = self.router.messageTargets(bare)
        if targets:
            if mtype == "groupchat":
                self._bounce(message, sender, "service-unavailable")
                return
            self._stampId(message, bare, redelivery)
            for session in targets:
                session.deliver(message)
            if self.observers and not redelivery:
                self._observe(message, bare, targets, sender)
            return
        if mtype in ("error", "headline"):
            return
        d = defer.ensureDeferred(self._offline(message, bare, mtype, sender, redelivery))
        d.addErrback(self._offlineFailed, message, sender)
        if not d.called:
            self._storing.add(d)
            d.addBoth(self._stored, d)

    def _stored(self, result: object, d: defer.Deferred[None]) -> None:
        self._storing.discard(d)

    async def drain(self) -> None:
        """
        Wait until every offline message being stored (or waiting to retry) is stored or
        bounced: what shutdown must wait for before it closes the store.
        """
        while self._storing:
            await defer.DeferredList(list(self._storing))

    def _observe(self, message: domish.Element, bare: str, delivered: list["Session"], sender: "Session | None") -> None:
        for observer in self.observers:
            try:
                observer(message, bare, delivered, sender)
            except Exception:
                self.log.failure("Message observer {o} failed", o=observer)

    def _stampId(self, message: domish.Element, by: str, keep: bool = False) -> None:
        """
        Add the server's XEP-0359 stanza-id, removing any a client forged in our name.

        @param keep: keep the stanza-id by C{by} the message already has (a redelivery): the
            id is the message's id in the archive and for de-duplicating clients.
        """
        children = message.children
        for index in range(len(children) - 1, -1, -1):
            child = children[index]
            if (
                not isinstance(child, str)
                and child.name == "stanza-id"
                and child.uri == NS_SID
                and child.attributes.get("by") == by
            ):
                if keep and child.attributes.get("id"):
                    return
                del children[index]
        # Built in one step: this runs for every message routed.
        # (No parent link: it would make the message a reference cycle, see IMServer.receive.)
        sid = Element((NS_SID, "stanza-id"), NS_SID, {"by": by, "id": newStanzaId()})
        children.append(sid)

    async def _offline(self, message: domish.Element, bare: str, mtype: str, sender: "Session | None",
                       redelivery: bool = False) -> None:
        """
        Store a message for a user who has no eligible session.  While the store is unavailable
        the attempt is repeated after each of C{config.offlineRetryDelays} seconds (on the
        core's reactor), so that a short outage costs a delay rather than an error; if the
        recipient becomes reachable meanwhile the message is delivered to it instead.  After the
        last delay the L{StoreUnavailable} propagates and L{_offlineFailed} bounces the message.
        """
        # One recipient's messages are stored one after the other, in the order they came:
        # with a pool of connections (PostgreSQL) concurrent inserts could swap them.
        lock = self._storeLocks.get(bare)
        if lock is None:
            lock = self._storeLocks[bare] = defer.DeferredLock()
        try:
            async with lock:
                await self._offlineInOrder(message, bare, mtype, sender, redelivery)
        finally:
            if not lock.locked and not lock.waiting:
                self._storeLocks.pop(bare, None)

    async def _offlineInOrder(self, message: domish.Element, bare: str, mtype: str,
                              sender: "Session | None", redelivery: bool) -> None:
        delays = self.server.config.offlineRetryDelays
        for attempt in range(len(delays) + 1):
            if attempt:
                await task.deferLater(self.server.reactor, delays[attempt - 1], lambda: None)
                if self.router.messageTargets(bare):
                    self.route(message, JID(bare), sender, redelivery)
                    return
            try:
                await self._storeOffline(message, bare, mtype, sender, redelivery)
                return
            except StoreUnavailable:
                if attempt == len(delays):
                    raise
                self.log.info("The store is unavailable; storing an offline message for {bare} "
                              "again in {delay}s", bare=bare, delay=delays[attempt])

    async def _storeOffline(self, message: domish.Element, bare: str, mtype: str,
                            sender: "Session | None", redelivery: bool) -> None:
        localpart = bare.split("@", 1)[0]
        if not self.router.hasSessions(bare) and not await self.store.userExists(localpart):
            self._bounce(message, sender, "service-unavailable")
            return
        if mtype == "groupchat":
            self._bounce(message, sender, "service-unavailable")
            return
        if not hasBody(message):
            # Chat states and receipts are about now: never stored (contract).
            return
        when = now(self.server.reactor)
        self._stampId(message, bare, redelivery)
        delay = firstChild(message, "delay", NS_DELAY)
        addDelay(message, when, self.domain)
        # Before the store is asked, so that no query can see "nothing" from now on.
        self._nothingStored.discard(localpart)
        self._storesStarted += 1
        underWay = self._storesUnderWay
        underWay[localpart] = underWay.get(localpart, 0) + 1
        try:
            await self.store.storeOffline(localpart, when, message.toXml())
        except BaseException:
            if delay is None:
                # Not stored: the stamp would be wrong on a later attempt or a live delivery.
                ours = firstChild(message, "delay", NS_DELAY)
                if ours is not None:
                    message.children.remove(ours)
            raise
        finally:
            left = underWay[localpart] - 1
            if left:
                underWay[localpart] = left
            else:
                del underWay[localpart]
        if self.observers and not redelivery:
            self._observe(message, bare, [], sender)
        # A session may have become reachable while we were storing: hand it over now.
        if self.router.messageTargets(bare):
            for session in self.router.messageTargets(bare):
                self.deliverOffline(session)
                break

    def _offlineFailed(self, failure, message: domish.Element, sender: "Session | None") -> None:
        if failure.check(StoreUnavailable):
            self._bounce(message, sender, "resource-constraint", "wait",
                         "the recipient is offline and the message could not be stored; try again later")
        else:
            self.log.failure("Storing an offline message failed", failure)
            self._bounce(message, sender, "internal-server-error", "wait")

    def _bounce(self, message: domish.Element, sender: "Session | None", condition: str,
                errorType: str | None = None, text: str | None = None) -> None:
        if message.getAttribute("type") == "error":
            return
        reply = errorReply(message, condition, errorType, text, sender=self.domain)
        frm = message.getAttribute("from")
        if sender is not None and sender.active:
            sender.deliver(reply)
        elif frm:
            jid = tryJID(frm)
            if jid is not None and jid.host == self.domain and jid.user:
                self.route(reply, jid)

    def deliverOffline(self, session: "Session") -> None:
        """Deliver and then delete the user's stored messages (once, even with racing sessions)."""
        if session.localpart in self._nothingStored:
            return
        d = defer.ensureDeferred(self._deliverOffline(session))
        d.addErrback(lambda f: self.log.failure("Offline delivery to {s} failed", f, s=session))

    async def _deliverOffline(self, session: "Session") -> None:
        localpart = session.localpart
        lock = self._offlineLocks.get(localpart)
        if lock is None:
            lock = self._offlineLocks[localpart] = defer.DeferredLock()
        try:
            async with lock:
                if not session.active:
                    return
                started = self.storesMark(localpart)
                stored = await self.store.getOffline(localpart)
                if not stored:
                    self.noteNothingStored(localpart, started)
                    return
                if not session.active:
                    return
                delivered = []
                for entry in stored:
                    try:
                        message = parseStanza(entry.xml)
                    except Exception:
                        self.log.warn("Dropping unreadable offline message {id}", id=entry.id)
                        delivered.append(entry.id)
                        continue
                    if not session.active:
                        break
                    session.deliver(message)
                    delivered.append(entry.id)
                if delivered:
                    await self.store.deleteOffline(localpart, delivered)
                if len(delivered) == len(stored):
                    self.noteNothingStored(localpart, started)
        finally:
            if not lock.locked and not lock.waiting:
                self._offlineLocks.pop(localpart, None)

    def storesMark(self, localpart: str) -> int:
        """
        What L{noteNothingStored} needs to know of the offline stores when a read of the
        user's stored messages begins: the count of stores so far, -1 if one for this user is
        under way.
        """
        return self._storesStarted if localpart not in self._storesUnderWay else -1

    def noteNothingStored(self, localpart: str, started: int) -> None:
        """
        The user's stored messages were all read (and delivered and deleted), or a read found
        none: remember that nothing is stored for them, unless an offline store started since
        C{started} (L{storesMark} when the read began): its message may or may not have been
        in what was read.
        """
        if not self._hintNothingStored or self._storesStarted != started:
            return
        if len(self._nothingStored) >= MAX_NOTHING_STORED:
            self._nothingStored.clear()
        self._nothingStored.add(localpart)

    def undeliverable(self, session: "Session", message: domish.Element) -> None:
        """A door could not write a message: route it again, as to the bare JID."""
        if message.getAttribute("type", "normal") in ("error", "headline", "groupchat"):
            return
        if session.jid.host != self.domain:
            return
        self.route(message, session.jid.userhostJID(), redelivery=True)
