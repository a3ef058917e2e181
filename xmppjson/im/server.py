"""
The IM core's entry point, shared by every door.

A door authenticates a client, builds a L{xmppjson.session.Session} and then talks to the core
through four calls only:

 - C{await openSession(session)}: register a bound session (a session with the same full JID is
   replaced and closed with C{conflict}); raises L{ResourceConstraint} when the user has too
   many sessions.
 - C{receive(session, element)}: a stanza from the client.  Never raises: every error is
   answered to the session as a stanza error.
 - C{closeSession(session)}: the connection is gone (idempotent).
 - C{undeliverable(session, element)}: a stanza could not be written to a dying session.

Stanzas are C{domish.Element}s in C{jabber:client}; the core stamps C{from}, applies RFC 6121
and calls C{deliver} on the target sessions.
"""

from __future__ import annotations

import os
from typing import Any, Coroutine

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from xmppjson.config import Config
from xmppjson.error import ResourceConstraint, asError
from xmppjson.im.archive import Archive
from xmppjson.im.blocking import Blocking
from xmppjson.im.carbons import Carbons, isCarbon
from xmppjson.im.iq import IQHandler
from xmppjson.im.last import LastActivity
from xmppjson.im.message import MessageHandler
from xmppjson.im.presence import PresenceHandler
from xmppjson.im.roster import RosterManager
from xmppjson.im.stanzas import errorReply
from xmppjson.im.vcard import VCards
from xmppjson.router import Router
from xmppjson.session import Session


class IMServer:
    """
    The core: the router plus the IM features, door-agnostic.

    @ivar router: the L{Router} of all live sessions.
    @ivar rosters: L{RosterManager}.
    @ivar presence: L{PresenceHandler}.
    @ivar messages: L{MessageHandler}.
    @ivar iq: L{IQHandler} (register more iq services on it).
    @ivar archive: L{Archive}, the message archive (XEP-0313).
    @ivar vcards: L{VCards}, profiles as vCards and avatar hashes (XEP-0054, XEP-0153).
    @ivar last: L{LastActivity} (XEP-0012).
    @ivar blocking: L{Blocking}, blocklists (XEP-0191).
    @ivar carbons: L{Carbons}, message carbons (XEP-0280).
    """

    log = Logger()

    def __init__(self, config: Config, store: Any, reactor: Any, router: Router | None = None):
        self.config = config
        self.store = store
        self.reactor = reactor
        self.domain = config.domain
        # (not "router or Router()": an empty router is falsy, it has a length)
        self.router = router if router is not None else Router()
        #: True while a writer of the core is behind (the archive): the doors stop reading
        #: from their clients until L{releaseIntake}, so that overload slows clients down
        #: instead of losing what could not be written.  Live routing never waits for it.
        self.intakeHeld = False
        self._heldReaders: set[Any] = set()
        self.rosters = RosterManager(self)
        self.presence = PresenceHandler(self)
        self.messages = MessageHandler(self)
        self.iq = IQHandler(self)
        # After messages and iq: it observes the one and registers with the other.
        self.archive = Archive(self)
        # Also after messages and iq.  Blocking filters messages before routing; carbons
        # observe them after.
        self.vcards = VCards(self)
        self.last = LastActivity(self)
        self.blocking = Blocking(self)
        self.carbons = Carbons(self)
        # Sessions of each user being opened (between the checks and the router): their
        # user's caches must not be released by another session ending meanwhile.
        self._opening: dict[str, int] = {}
        self._handlers = {
            "message": self.messages.outbound,
            "presence": self.presence.outbound,
            "iq": self.iq.outbound,
        }
        self.shuttingDown = False
        # A clustered router copies sessions' state to other nodes: tell it when that may have
        # changed.  Read once, so a single process pays one attribute test per presence or iq.
        self._replicated = self.router.replicated

    def streamFeatures(self) -> list[domish.Element]:
        """
        The stream features that announce what the core implements, for a door to advertise
        after authentication: roster versioning (XEP-0237) and subscription pre-approval
        (RFC 6121 section 3.4).  New elements on every call, so a door may keep them.
        """
        return [
            domish.Element(("urn:xmpp:features:rosterver", "ver")),
            domish.Element(("urn:xmpp:features:pre-approval", "sub")),
        ]

    def newResource(self) -> str:
        """A fresh server-generated resource."""
        return "xj-" + os.urandom(6).hex()

    # sessions --------------------------------------------------------------

    def holdIntake(self) -> None:
        """Ask the doors to stop reading from clients (they do at their next read)."""
        self.intakeHeld = True

    def heldReader(self, reader: Any) -> None:
        """A door connection stopped reading for L{intakeHeld}: call its C{releaseIntake()} later."""
        self._heldReaders.add(reader)

    def releaseIntake(self) -> None:
        """The doors may read again."""
        self.intakeHeld = False
        readers, self._heldReaders = self._heldReaders, set()
        for reader in readers:
            reader.releaseIntake()

    async def openSession(self, session: Session) -> None:
        if self.shuttingDown:
            raise ResourceConstraint("the server is shutting down", condition="service-unavailable")
        if not self.router.ready:
            raise ResourceConstraint("the server is joining its cluster", condition="service-unavailable")
        replacing = self.router.session(session.bare, session.resource) is not None
        if not replacing and self.router.countOf(session.bare) >= self.config.maxSessionsPerUser:
            raise ResourceConstraint(
                f"too many sessions for {session.bare} (at most {self.config.maxSessionsPerUser})",
                condition="policy-violation",
            )
        localpart = session.localpart
        self._opening[localpart] = self._opening.get(localpart, 0) + 1
        try:
            # The per-user caches a live session needs: read at once when none is there (the
            # user's first session), else each one that is missing.
            state = None
            if not (self.rosters.isCached(localpart) or self.blocking.isCached(localpart)
                    or self.vcards.isCached(localpart)):
                mark = self.messages.storesMark(localpart)
                state = await self.store.getSessionState(localpart)
                if not state.offline:
                    # No stored message to read when the session becomes available: one
                    # query fewer at a login (docs/performance.md, item 27).
                    self.messages.noteNothingStored(localpart, mark)
            loads: list[defer.Deferred[Any]] = [
                defer.Deferred.fromCoroutine(self.rosters.load(localpart, state)),
                defer.Deferred.fromCoroutine(self.blocking.load(localpart, state)),
                defer.Deferred.fromCoroutine(self.vcards.load(localpart, state)),
            ]
            await defer.gatherResults(loads, consumeErrors=True)
        except defer.FirstError as e:
            self._doneOpening(localpart)
            self._releaseIfIdle(localpart, session.bare)
            e.subFailure.raiseException()
        self._doneOpening(localpart)
        if not session.active:
            self._releaseIfIdle(localpart, session.bare)
            return
        replaced = self.router.add(session)
        if replaced is not None:
            self._ended(replaced)
            replaced.active = False
            replaced.close("conflict", "replaced by a new session with the same resource")
        self.carbons.opened(session)
        self.log.info("{door} session {jid} opened", door=session.door, jid=session.full)
        if session.receivesMessages:
            self.messages.deliverOffline(session)

    def closeSession(self, session: Session) -> None:
        if not self.router.remove(session):
            session.active = False
            return
        self._ended(session)
        session.active = False
        self.log.info("{door} session {jid} closed", door=session.door, jid=session.full)

    def _ended(self, session: Session) -> None:
        """A session left the router: unavailable to everyone who saw it, caches released."""
        try:
            self.presence.unavailable(session)
        except Exception:
            self.log.failure("Broadcasting unavailable for {s} failed", s=session)
        self.carbons.ended(session)
        self.blocking.ended(session)
        self._releaseIfIdle(session.localpart, session.bare)

    def _doneOpening(self, localpart: str) -> None:
        count = self._opening.get(localpart, 0) - 1
        if count > 0:
            self._opening[localpart] = count
        else:
            self._opening.pop(localpart, None)

    def _releaseIfIdle(self, localpart: str, bare: str) -> None:
        """Drop a user's caches once no session of theirs is left or being opened."""
        if self.router.hasSessions(bare) or localpart in self._opening:
            return
        self.rosters.release(localpart)
        self.blocking.release(localpart)
        self.vcards.release(localpart)

    def undeliverable(self, session: Session, element: domish.Element) -> None:
        # A carbon copy that could not be written is dropped: routed again it would reach the
        # user's other sessions as a second copy (XEP-0280 section 10.3).
        if element.name == "message" and not isCarbon(element):
            self.messages.undeliverable(session, element)

    def profileChanged(self, localpart: str, profile: dict[str, Any] | None = None) -> defer.Deferred[None]:
        """
        A user's profile changed outside the XMPP protocols (the REST door's C{PATCH /me}):
        their presence then advertises the new avatar (XEP-0153).  Never fails.

        @param profile: the new profile when the caller has it (at least C{avatar}); else
            it is read from the store.
        """
        d = defer.Deferred.fromCoroutine(self.vcards.profileChanged(localpart, profile))
        d.addErrback(lambda f: self.log.failure("Refreshing the profile of {u} failed", f, u=localpart))
        return d

    def deliverOffline(self, session: Session) -> None:
        self.messages.deliverOffline(session)

    async def shutdown(self) -> None:
        """Close every session with C{system-shutdown} and write what is pending."""
        self.shuttingDown = True
        for session in list(self.router):
            self.closeSession(session)
            try:
                session.close("system-shutdown", "the server is shutting down")
            except Exception:
                self.log.failure("Closing {s} failed", s=session)
        # Started before the first await, so that its writes reach the store before the
        # service stopping next closes it.
        archived = defer.Deferred.fromCoroutine(self.archive.close())
        await self.presence.lastSeen.flush()
        # Offline messages still being stored (or waiting to retry) are written, or bounced,
        # before the store closes: an accepted message is never lost to a shutdown.
        await self.messages.drain()
        await archived

    # stanzas -----------------------------------------------------------------

    def receive(self, session: Session, element: domish.Element) -> None:
        """
        A stanza from a session's client.  The sender's address is always the session's.

        @param element: a tree without links from children to parents (each is a reference
            cycle), so that it is freed by reference counting, not by the cyclic collector:
            the c2s door's parser makes none (L{xmppjson.xmltext.StanzaParser}), nor does the
            JSON door's reader.
        """
        if not session.active:
            return
        handler = self._handlers.get(element.name)
        if handler is None:
            session.deliver(errorReply(element, "bad-request", text="unknown stanza", sender=self.domain))
            return
        if element.name == "presence" and element.getAttribute("type") in (
            "subscribe", "subscribed", "unsubscribe", "unsubscribed"
        ):
            element["from"] = session.bare
        else:
            element["from"] = session.full
        try:
            handler(session, element)
        except Exception as e:
            self._answerError(session, element, e)
        if self._replicated and element.name != "message":
            self.router.changed(session)

    def spawn(self, session: Session, element: domish.Element, work: Coroutine[Any, Any, Any]) -> None:
        """Run the asynchronous part of handling a stanza; its failure is answered to the sender."""
        d = defer.ensureDeferred(work)
        d.addErrback(lambda f: self._answerError(session, element, f))
        if self._replicated:
            # e.g. a roster get makes the session "interested" once the roster is loaded
            d.addBoth(self._changedAfter, session)

    def _changedAfter(self, result: object, session: Session) -> None:
        if session.active:
            self.router.changed(session)

    def _answerError(self, session: Session, element: domish.Element, reason: Exception | Failure) -> None:
        error = asError(reason)
        if error.condition == "internal-server-error":
            failure = reason if isinstance(reason, Failure) else Failure(reason)
            self.log.failure("Handling a {name} from {s} failed", failure, name=element.name, s=session)
        if element.getAttribute("type") in ("error", "result"):
            return
        if not session.active:
            return
        stanzaError = error.toStanzaError()
        session.deliver(errorReply(element, stanzaError.condition, stanzaError.type, stanzaError.text,
                                   sender=self.domain))
