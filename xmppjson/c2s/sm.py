"""
XEP-0198 Stream Management: acknowledgements and resumption for one XMPP session.

A L{StreamManagement} belongs to a L{xmppjson.c2s.stream.C2SSession} from the client's
C{<enable/>} on, and outlives the stream it was enabled on when resumption was granted:

 - I{Counting.}  C{inbound} counts the stanzas received from the client (the C{h} we report);
   every stanza written to the client goes into C{unacked} until the client's C{<a h=…/>} covers
   it.  Both are plain integers modulo 2^32 and a deque: a few attribute operations per stanza.
 - I{Asking.}  The server asks for an ack (C{<r/>}) once L{ACK_EVERY} stanzas went out since the
   last request and none is outstanding, so a busy stream carries at most one request per round
   trip; and after L{ACK_IDLE} seconds with stanzas still unacknowledged.
 - I{Detached.}  When the connection drops without a closing handshake, a resumable session
   stays registered in the IM core (its presence unchanged: no one is told it left) and
   stanzas for it are queued.  A new stream of the same user may take it over with
   C{<resume/>} within C{timeout} seconds: unacknowledged stanzas are written again and the
   session carries on.  Otherwise it ends as any session ends: C{im.closeSession}, then every
   stanza never acknowledged goes back to the core (C{im.undeliverable}: messages are stored
   offline or routed to another resource).
 - I{Bounded.}  At most L{MAX_UNACKED} stanzas wait for an acknowledgement; a client that lets
   more pile up loses its stream (C{policy-violation}) and the stanzas go back to the core.

The stream code (L{xmppjson.c2s.stream}) does the XML; this module keeps the state and timers.
"""

from __future__ import annotations

import base64
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.words.xish import domish

if TYPE_CHECKING:
    from xmppjson.c2s.stream import C2SSession

NS_SM = "urn:xmpp:sm:3"

#: Sequence numbers wrap at 2^32 (XEP-0198 section 5).
MAX_SEQ = 2**32

#: Stanzas written between two ack requests, at most.
ACK_EVERY = 5

#: Seconds after which stanzas still unacknowledged trigger another request.
ACK_IDLE = 30.0

#: The most stanzas that may wait for an acknowledgement (written and not acked, or queued
#: while detached).  Prosody's default is 500; a burst of offline messages at login can be
#: larger, and a stanza held here costs a few kilobytes at most.
MAX_UNACKED = 1000

REQUEST = f"<r xmlns='{NS_SM}'/>".encode("ascii")


def newResumptionId() -> str:
    """An unguessable resumption id (128 random bits, URL-safe)."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def parseCount(value: str | None) -> int | None:
    """An C{h} attribute as an integer in [0, 2^32), or C{None} if it is not one."""
    # isascii(): str.isdigit() also accepts "²", which int() refuses, and "٣", which it reads.
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 10:
        return None
    count = int(value)
    return count if count < MAX_SEQ else None


class StreamManagement:
    """
    XEP-0198 state of one session.

    @ivar id: the resumption id, or C{None} when resumption was not granted.
    @ivar timeout: seconds a detached session waits for C{<resume/>}.
    @ivar inbound: stanzas handled from the client, modulo 2^32.
    @ivar acked: the client's last C{h} (stanzas it confirmed of ours), modulo 2^32.
    @ivar unacked: stanzas written (or queued while detached) and not yet acknowledged,
        oldest first.
    @ivar detached: the connection is gone and the session waits for a resumption.
    """

    log = Logger()

    __slots__ = (
        "_expiry",
        "_idleCall",
        "_overflowing",
        "_requested",
        "_sinceRequest",
        "acked",
        "detached",
        "id",
        "inbound",
        "reactor",
        "registry",
        "session",
        "timeout",
        "unacked",
    )

    def __init__(
        self,
        session: C2SSession,
        reactor: Any,
        registry: dict[str, C2SSession],
        timeout: float,
    ):
        """
        @param registry: resumable sessions by resumption id (shared by a listener's streams);
            the session is entered when C{timeout} is positive.
        @param timeout: seconds a dropped session may be resumed; 0 grants acks only.
        """
        self.session = session
        self.reactor = reactor
        self.registry = registry
        self.timeout = timeout
        self.id: str | None = None
        if timeout > 0:
            self.id = newResumptionId()
            registry[self.id] = session
        self.inbound = 0
        self.acked = 0
        self.unacked: deque[domish.Element] = deque()
        self.detached = False
        self._sinceRequest = 0
        self._requested = False
        self._idleCall: Any = None
        self._expiry: Any = None
        self._overflowing = False

    @property
    def resumable(self) -> bool:
        return self.id is not None

    @property
    def outbound(self) -> int:
        """Stanzas written (or queued) since C{<enable/>}, modulo 2^32."""
        return (self.acked + len(self.unacked)) % MAX_SEQ

    # -- attached ----------------------------------------------------------------------------

    def sent(self, element: domish.Element) -> None:
        """C{element} was just written to the client: keep it until acknowledged."""
        unacked = self.unacked
        unacked.append(element)
        self._sinceRequest += 1
        if self._sinceRequest >= ACK_EVERY and not self._requested:
            self.request()
        if self._idleCall is None:
            self._idleCall = self.reactor.callLater(ACK_IDLE, self._idle)
        if len(unacked) > MAX_UNACKED:
            self._overflow()

    def request(self) -> None:
        """Write C{<r/>}."""
        stream = self.session.stream
        if not stream.writable:
            return
        self._requested = True
        self._sinceRequest = 0
        stream.transport.write(REQUEST)

    def _idle(self) -> None:
        self._idleCall = None
        if self.unacked and not self.detached and self.session.stream.writable:
            self.request()
            self._idleCall = self.reactor.callLater(ACK_IDLE, self._idle)

    def ack(self, h: int) -> bool:
        """
        The client handled C{h} of our stanzas: forget those.  C{False} (and nothing changed)
        when C{h} acknowledges stanzas that were never sent.
        """
        count = (h - self.acked) % MAX_SEQ
        unacked = self.unacked
        if count > len(unacked):
            return False
        if count == len(unacked):
            unacked.clear()
        else:
            for _ in range(count):
                unacked.popleft()
        self.acked = h
        self._requested = False
        return True

    def handled(self) -> None:
        """One more stanza from the client was handled (the stream inlines this on its path)."""
        self.inbound = (self.inbound + 1) % MAX_SEQ

    def _overflow(self) -> None:
        if self._overflowing:
            return
        self._overflowing = True
        # Not from inside deliver(): the core may be in the middle of a broadcast.
        self.reactor.callLater(0, self._overflowed)

    def _overflowed(self) -> None:
        session = self.session
        if not session.active:
            return
        self.log.info(
            "{session}: more than {n} stanzas unacknowledged, ending it", session=session,
            n=MAX_UNACKED,
        )
        if self.detached:
            session.finish()
        else:
            session.stream.closeStream(
                "policy-violation", f"more than {MAX_UNACKED} stanzas unacknowledged"
            )

    # -- detached ----------------------------------------------------------------------------

    def detach(self) -> None:
        """The connection is gone: wait C{timeout} seconds for a resumption."""
        self.detached = True
        self._requested = False
        self._cancel("_idleCall")
        self._expiry = self.reactor.callLater(self.timeout, self._expired)

    def queue(self, element: domish.Element) -> None:
        """A stanza for the detached session: written when it is resumed."""
        self.unacked.append(element)
        if len(self.unacked) > MAX_UNACKED:
            self._overflow()

    def _expired(self) -> None:
        self._expiry = None
        self.log.info("{session} was not resumed in time, ending it", session=self.session)
        self.session.finish()

    def attach(self) -> None:
        """A new stream took the session over (C{<resume/>} accepted)."""
        self.detached = False
        self._overflowing = False
        self._cancel("_expiry")

    def stop(self) -> list[domish.Element]:
        """
        The session ends: timers off, no longer resumable.  Returns the stanzas never
        acknowledged, oldest first, for the core to deal with.
        """
        self.detached = False
        self._cancel("_idleCall")
        self._cancel("_expiry")
        if self.id is not None and self.registry.get(self.id) is self.session:
            del self.registry[self.id]
        leftover = list(self.unacked)
        self.unacked.clear()
        return leftover

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        if call is not None and call.active():
            call.cancel()
        setattr(self, name, None)
