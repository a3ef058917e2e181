"""
The JSON door: the WebSocket dialect of C{docs/json-dialect.md} on C{/stream}.

L{StreamResource} authenticates the handshake with a login token (query C{?token=} or
C{Authorization: Bearer}) before handing the connection to Autobahn, so a bad token is refused
with HTTP 401 and a JSON body.  Each socket becomes a L{WebSocketSession} in the IM core; frames
are translated by L{xmppjson.jsonstanza} and nothing else happens here.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket import protocol as _abprotocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from zope.interface import implementer

from xmppjson import jsonstanza
from xmppjson.config import Config
from xmppjson.error import XMPPJSONError, asError
from xmppjson.limits import ConnectionCounter, TokenBucket
from xmppjson.rest import clientAddress
from xmppjson.session import Session

def _xor(data: bytes, mask: bytes) -> bytes:
    """
    The XOR (un)masking of RFC 6455, as one big-integer XOR: for the small frames chat traffic
    is made of, several times cheaper than a masker object per frame.
    """
    n = len(data)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class _SmallFrameMasker:
    """
    L{_xor} in the shape of Autobahn's maskers, for the frames Autobahn's own reader handles
    (fragments, frames split across reads).  Autobahn's native masker costs a CFFI allocation
    per frame, several times the work itself below a couple of KiB; larger frames keep it.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes):
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        if not data:
            return b""
        offset = self._ptr & 3
        self._ptr += len(data)
        return _xor(data, self._mask[offset:] + self._mask[:offset])


_SMALL_FRAME = 2048
_nativeMasker = _abprotocol.create_xor_masker


def _createMasker(mask: bytes, length: Optional[int] = None) -> Any:
    if length is not None and length < _SMALL_FRAME:
        return _SmallFrameMasker(mask)
    return _nativeMasker(mask, length)


# Autobahn looks the factory up in its protocol module for every frame it reads or writes.
_abprotocol.create_xor_masker = _createMasker

_STATE_OPEN = WebSocketServerProtocol.STATE_OPEN
# First byte of an unfragmented text frame without extension bits (FIN + opcode 1).
_TEXT_FIN = 0x81
# The largest frame the direct reader takes whole (a 16-bit extended length); bigger frames
# come in several reads anyway and go through Autobahn's incremental reader.
_DIRECT_MAX = 0xFFFF


def _frameHeader(opcode: int, length: int) -> bytes:
    """The header of an unmasked, unfragmented server frame (RFC 6455 section 5.2)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length <= 0xFFFF:
        return bytes((0x80 | opcode, 126, length >> 8, length & 0xFF))
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


# The headers of the short text frames, made once.
_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]

# WebSocket close codes for the reasons the server ends a session.
# (RFC 6455 reserves 1xxx for the protocol; 4000 + an HTTP-like status says why.)
CLOSE_CODES = {
    "conflict": 4409,
    "system-shutdown": 4503,
    "policy-violation": 4429,
    "not-authorized": 4401,
    "connection-timeout": 4408,
    "internal-server-error": 4500,
}

# Frames a client may send before its session is registered (the handshake is asynchronous);
# more than this is a misbehaving client.
MAX_EARLY_FRAMES = 64


class WebSocketSession(Session):
    """
    A session on the JSON door.  It receives messages from the moment it opens and roster pushes
    always (the original web API did both), and is available only once it sends presence.
    """

    door = "websocket"
    messagesWhileUnavailable = True

    def __init__(self, jid: JID, protocol: "StreamProtocol"):
        super().__init__(jid)
        self.protocol = protocol
        self.interested = True

    def deliver(self, element: domish.Element) -> None:
        protocol = self.protocol
        # Not only closed: a socket that Autobahn is already closing (a frame over the limit,
        # invalid UTF-8) can no longer send, and sendMessage would raise into the router.
        if not self.active or protocol.closing or protocol.state != protocol.STATE_OPEN:
            if self.active:
                # The session ends now rather than when the socket is gone, so that this
                # stanza and the next ones go to the user's other sessions or offline, not
                # back here.
                protocol.im.closeSession(self)
            protocol.im.undeliverable(self, element)
            return
        try:
            payload = jsonstanza.serialize(element).encode("utf-8")
        except Exception:
            protocol.logger.failure("Cannot translate a {name} for {s}", name=element.name, s=self)
            return
        protocol.sendMessage(payload, False)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        self.protocol.closeWith(condition, text)


@implementer(IHalfCloseableProtocol)
class StreamProtocol(WebSocketServerProtocol):
    """One WebSocket connection: frames in, stanzas out, and the reverse."""

    # Not "log": Autobahn logs every frame at debug level through self.log, a txaio
    # logger that filters by level; a twisted.logger.Logger there would emit all of it.
    logger = Logger()
    localpart: str = ""
    im: Any = None
    config: Config
    #: the peer address counted in the factory's per-address connection cap
    address: Optional[str] = None

    def __init__(self) -> None:
        super().__init__()
        self.session: Optional[WebSocketSession] = None
        self.closing = False
        self._early: Optional[list[tuple[bytes, bool]]] = []
        self._paused = False
        self._held = False  # reading stopped by the core (IMServer.intakeHeld)
        self.bucket: Optional[TokenBucket] = None

    def onOpen(self) -> None:
        if self.config.stanzaRate > 0:
            self.bucket = TokenBucket(self.config.stanzaRate, self.config.stanzaBurst, self.factory.reactor)
        jid = JID(tuple=(self.localpart, self.config.domain, "web-" + self.im.newResource()[3:11]))
        self.session = WebSocketSession(jid, self)
        d = defer.ensureDeferred(self.im.openSession(self.session))
        d.addCallbacks(self._opened, self._openFailed)

    def _opened(self, _: Any) -> None:
        if self.closing or self.session is None or self.state != self.STATE_OPEN:
            # The socket is going away (onClose ends the session once it is gone).
            return
        self.sendText(jsonstanza.sessionFrame(self.session.full))
        early, self._early = self._early or [], None
        for payload, isBinary in early:
            self._frame(payload, isBinary)

    def _openFailed(self, failure: Any) -> None:
        error = asError(failure)
        if error.condition == "internal-server-error":
            self.logger.failure("Opening a WebSocket session failed", failure)
        self.closeWith(error.condition, error.text)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.closing:
            return
        if self.bucket is not None:
            pause = self.bucket.take()
            if pause and not self._paused:
                # Over its rate: stop reading from this client until the bucket refills.
                self._paused = True
                self.transport.pauseProducing()
                self.factory.reactor.callLater(pause, self._resume)
        if self._early is not None:
            if len(self._early) >= MAX_EARLY_FRAMES:
                self.closeWith("policy-violation", "too many frames before the session opened")
                return
            self._early.append((payload, isBinary))
            return
        self._frame(payload, isBinary)
        if self.im.intakeHeld and not self._held and not self.closing:
            # The core is behind on writing (the archive): read no more until it catches up.
            self._held = True
            self.transport.pauseProducing()
            self.im.heldReader(self)

    def onMessageEnd(self) -> None:
        """
        Hand the complete message to L{onMessage}.  Autobahn's version also fires its observer
        signal, a Deferred and a gathered result per message, which nothing here listens to.
        """
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    # -- the direct frame path ------------------------------------------------------------
    #
    # Autobahn reads a frame through some fifteen method calls (header, frame begin, message
    # begin, frame data, incremental UTF-8 validation, frame end, message end) and writes one
    # through three, each with checks for features this door never negotiates; that was a
    # third of the JSON door's CPU under chat load.  The common frames take a direct path
    # here: a whole, masked, unfragmented text frame already in the buffer is unmasked,
    # decoded and handed to onMessage in one step, and a server frame is one header and one
    # write.  Anything else (control frames, fragments, frames split across reads, binary
    # frames, anything breaking a rule or a limit) is left to Autobahn, untouched, so that its
    # checks and close codes apply exactly as before.

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's version formats (colourised) debug log arguments for every read.
        self._dataReceived(data)

    def processData(self) -> bool:
        # Every whole frame of the common kind in the buffer, one after the other, with the
        # buffer cut once at the end (Autobahn's loop calls this once per frame, and cutting
        # the buffer per frame copies the rest of a read each time).
        data = self.data
        size = len(data)
        offset = 0
        if (
            self.current_frame is None
            and not self.inside_message
            and self._perMessageCompress is None
        ):
            limit = self.maxFramePayloadSize
            messageLimit = self.maxMessagePayloadSize
            while size - offset > 5 and data[offset] == _TEXT_FIN and data[offset + 1] & 0x80 \
                    and self.state == _STATE_OPEN:
                length = data[offset + 1] & 0x7F
                if length < 126:
                    start = offset + 6
                elif length == 126 and size - offset > 7:
                    length = (data[offset + 2] << 8) | data[offset + 3]
                    if length < 126:
                        break  # not the minimal length encoding: Autobahn fails the connection
                    start = offset + 8
                else:
                    break
                end = start + length
                if end > size or 0 < limit < length or 0 < messageLimit < length:
                    break
                try:
                    text = _xor(data[start:end], data[start - 4 : start]).decode("utf-8")
                except UnicodeDecodeError:
                    break  # Autobahn fails the connection with 1007, as RFC 6455 requires
                offset = end
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                    self._cancelAutoPingTimeoutCall()
                self.onMessage(text, False)
        if offset:
            # (From the buffer as it is now: anything appended while the frames were handled
            # comes after them.)
            self.data = self.data[offset:]
            # Autobahn calls again while the state allows it: what is left (a frame of
            # another kind, or part of one) goes to its reader then.
            return len(self.data) > 0
        return super().processData()

    def sendText(self, text: str) -> None:
        """Send C{text} as one text frame."""
        self.sendMessage(text.encode("utf-8"), False)

    def sendMessage(self, payload: bytes, isBinary: bool = False, fragmentSize: Optional[int] = None,
                    sync: bool = False, doNotCompress: bool = False) -> None:
        """
        One frame, one write, for what this door sends: whole messages, no compression, no
        fragmentation.  The size limit of the factory bounds what clients send, not the frames
        the server writes (a roster or a history page may be larger than a client frame may).
        """
        if (
            fragmentSize or sync or self.send_queue or self.logFrames
            or self._perMessageCompress is not None or self.state != _STATE_OPEN
        ):
            super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
            return
        n = len(payload)
        if n < 126 and not isBinary:
            self.transport.write(_TEXT_HEADERS[n] + payload)
        else:
            self.transport.write(_frameHeader(2 if isBinary else 1, n) + payload)

    def sendData(self, data: bytes, sync: bool = False, chopsize: Optional[int] = None) -> None:
        """
        Autobahn's C{sendData} formats a (colourised) debug log line for every write before
        the logger decides to drop it, which costs more than the rest of a message's journey;
        the common case here is a plain write.
        """
        if sync or chopsize or self.send_queue:
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)

    def _resume(self) -> None:
        if self.closing or self.transport is None:
            self._paused = False
            return
        # Frames that arrived in the same read as the one that ran the bucket dry were handled
        # meanwhile and deepened the deficit: stay paused until all of it is paid back.
        wait = self.bucket.take(0) if self.bucket is not None else 0.0
        if wait > 0:
            self.factory.reactor.callLater(wait, self._resume)
            return
        self._paused = False
        if not self._held:
            self.transport.resumeProducing()

    def releaseIntake(self) -> None:
        """The core caught up (L{IMServer.releaseIntake}): read again unless over the rate."""
        self._held = False
        if not self._paused and not self.closing and self.transport is not None:
            self.transport.resumeProducing()

    def _frame(self, payload: bytes, isBinary: bool = False) -> None:
        session = self.session
        if session is None or not session.active:
            return
        if isBinary:
            # The dialect is text frames only; guessing that a binary frame holds UTF-8 JSON
            # would make a client work here and nowhere else.  Refused, the socket stays.
            self._errorFrame("bad-request", "frame: binary frames are not part of the dialect; "
                             "send each frame as text (UTF-8 JSON)", None)
            return
        try:
            element = jsonstanza.parseFrame(payload, self.config.maxFrameSize)
        except jsonstanza.FrameError as e:
            self._errorFrame(e.condition, e.text, e.frameId)
            return
        except Exception:
            self.logger.failure("Reading a frame from {s} failed", s=session)
            self._errorFrame("internal-server-error", "the server could not read this frame", None)
            return
        if self.config.verbose:
            self.logger.debug("IN {s}: {frame!r}", s=session, frame=payload)
        try:
            self.im.receive(session, element)
        except Exception:
            self.logger.failure("Handling a frame from {s} failed", s=session)

    def _errorFrame(self, condition: str, text: str, frameId: Any) -> None:
        self.sendText(jsonstanza.errorFrame(condition, text, frameId))

    def closeWith(self, condition: str | None, text: str | None) -> None:
        """End the session from the server side: an error frame saying why, then a close."""
        if self.closing:
            return
        self.closing = True
        if condition and self.state == self.STATE_OPEN:
            self._errorFrame(condition, text or condition, None)
        self.sendClose(CLOSE_CODES.get(condition or "", 1000), (text or condition or "")[:120])

    def readConnectionLost(self) -> None:
        """
        The client shut its side of the TCP connection (it went away, perhaps in the middle of
        a frame).  Without this Twisted would close the socket at once and drop whatever was
        written to it and not sent yet, messages included, which the core counts as
        delivered.  Instead the session ends now, so that nothing more is routed here (it goes
        to the user's other sessions or offline), and the connection closes once everything
        already written has left.
        """
        self.closing = True
        self._early = None
        if self.session is not None:
            self.im.closeSession(self.session)
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Nothing to do: we never half-close (L{IHalfCloseableProtocol})."""

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.closing = True
        self._early = None
        if self.session is not None:
            self.im.closeSession(self.session)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self.address is not None:
            self.factory.connections.release(self.address)
            self.address = None


class StreamFactory(WebSocketServerFactory):
    """Builds L{StreamProtocol}s sharing the IM core."""

    protocol = StreamProtocol

    def __init__(self, config: Config, im: Any, reactor: Any):
        super().__init__(reactor=reactor)
        self._batched_timer = batchedTimer(reactor)
        self.config = config
        self.im = im
        self.connections = ConnectionCounter(config.maxConnectionsPerAddress)
        self.setProtocolOptions(
            maxFramePayloadSize=config.maxFrameSize,
            maxMessagePayloadSize=config.maxFrameSize,
            # A frame over the size limit (refused by its header, never buffered) or a text frame
            # that is not UTF-8 fails the connection: with a close frame (1009, 1007) saying
            # why, rather than a silent drop the client cannot tell from a network failure.
            failByDrop=False,
            openHandshakeTimeout=config.handshakeTimeout,
            autoPingInterval=60,
            autoPingTimeout=30,
        )

    def buildFor(self, localpart: str, addr: Any) -> StreamProtocol:
        protocol = self.buildProtocol(addr)
        protocol.localpart = localpart
        protocol.im = self.im
        protocol.config = self.config
        return protocol


class _Call:
    """A delayed call that may be cancelled any number of times, as Autobahn expects."""

    __slots__ = ("call",)

    def __init__(self, call: Any):
        self.call = call

    def cancel(self) -> None:
        if self.call.active():
            self.call.cancel()


class _Timers:
    """
    What Autobahn calls a batched timer, on the injected reactor.  Autobahn's own is bound to
    the global reactor and never cancels its buckets; this one uses plain C{callLater}, so the
    reactor given to the factory (a C{task.Clock} in tests) drives every handshake and ping
    timeout, and nothing is left scheduled once a connection is gone.
    """

    def __init__(self, reactor: Any):
        self.reactor = reactor

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> _Call:
        return _Call(self.reactor.callLater(delay, func, *args, **kwargs))


def batchedTimer(reactor: Any) -> _Timers:
    return _Timers(reactor)


class _OneUser:
    """What L{WebSocketResource} calls C{factory}: builds the protocol for one authenticated user."""

    def __init__(self, factory: StreamFactory, localpart: str, address: str):
        self.factory = factory
        self.localpart = localpart
        self.address = address

    def buildProtocol(self, addr: Any) -> StreamProtocol:
        protocol = self.factory.buildFor(self.localpart, addr)
        protocol.address = self.address
        return protocol


def _jsonError(request: Any, status: int, condition: str, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    if status in (429, 503):
        # the database is down (token check) or the address holds too many connections
        request.setHeader(b"retry-after", b"5")
    return json.dumps({"error": condition, "description": text}).encode("utf-8")


class StreamResource(resource.Resource):
    """
    C{/stream}: checks the token, then upgrades to the WebSocket dialect.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, config: Config, accounts: Any, im: Any, reactor: Any):
        super().__init__()
        self.accounts = accounts
        self.factory = StreamFactory(config, im, reactor)

    def render(self, request: Any) -> Any:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket":
            request.setHeader(b"upgrade", b"websocket")
            return _jsonError(request, 426, "upgrade-required",
                              "this endpoint speaks WebSocket: connect with a WebSocket client")
        allowed = self.factory.config.allowedOrigins
        if allowed:
            origin = (request.getHeader(b"origin") or b"").decode("latin-1")
            if origin not in allowed:
                return _jsonError(request, 403, "forbidden", f"origin {origin!r} is not allowed")
        token = _token(request)
        if not token:
            return _jsonError(request, 401, "not-authorized",
                              "a login token is required (?token= or Authorization: Bearer)")
        d = defer.ensureDeferred(self.accounts.authenticateToken(token))
        d.addCallbacks(self._authenticated, self._failed, (request,), None, (request,), None)
        return server.NOT_DONE_YET

    def _authenticated(self, localpart: Optional[str], request: Any) -> None:
        if request.finished or request.channel is None:
            return
        if not localpart:
            request.write(_jsonError(request, 401, "not-authorized", "unknown or expired token"))
            request.finish()
            return
        host = clientAddress(request, self.factory.config.trustedProxies) or str(
            request.getClientAddress()
        )
        if not self.factory.connections.acquire(host):
            request.write(_jsonError(request, 429, "policy-violation",
                                     "too many connections from this address"))
            request.finish()
            return
        try:
            WebSocketResource(_OneUser(self.factory, localpart, host)).render(request)
        except Exception:
            self.factory.connections.release(host)
            self.log.failure("WebSocket upgrade failed")
            if not request.finished and request.channel is not None:
                request.write(_jsonError(request, 500, "internal-server-error", "upgrade failed"))
                request.finish()

    def _failed(self, failure: Any, request: Any) -> None:
        error: XMPPJSONError = asError(failure)
        if error.condition == "internal-server-error":
            self.log.failure("Token check failed", failure)
        if request.finished or request.channel is None:
            return
        request.write(_jsonError(request, error.httpStatus, error.condition, error.text or error.condition))
        request.finish()


def _token(request: Any) -> Optional[str]:
    auth = request.getHeader(b"authorization")
    if auth:
        scheme, _, value = auth.partition(" ") if isinstance(auth, str) else auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = request.args.get(b"token")
    if values:
        try:
            return values[0].decode("ascii")
        except UnicodeDecodeError:
            return None
    return None
