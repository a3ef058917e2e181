"""
The native XMPP door: client-to-server XML streams (RFC 6120) on TCP.

This module negotiates: the stream header, STARTTLS, SASL (with failed-login throttling),
in-band registration (L{xmppjson.c2s.register}), resource binding or XEP-0198 resumption, and the
legacy session.  Once a resource is bound, every stanza the client sends goes unchanged to the
IM core (C{im.receive(session, element)}), and every stanza the core hands to the session's
L{C2SSession.deliver} is serialised onto the wire.  The door translates nothing; what it adds
is about the connection: stream management acks and resumption (L{xmppjson.c2s.sm}), client
state indication (L{xmppjson.c2s.csi}), and an inbound rate limit that pauses reading.

The pieces, on Twisted's own XMPP stream classes:

 - L{C2SStream} (an L{xmlstream.XmlStream}): the bytes.  It owns the expat parser, enforces the
   XML restrictions and size limits, runs the timers, and, once bound, hands each stanza
   straight to the core without going through xpath observers (parse, C{im.receive},
   C{deliver}, C{toXml}, C{write} is the whole per-message path).
 - L{C2SAuthenticator} (an L{xmlstream.ListenAuthenticator}): the negotiation state machine
   (stream headers, features, STARTTLS, SASL, bind).
 - L{C2SSession} (a L{xmppjson.session.Session}): what the core sees.
 - L{C2SFactory} / L{makeC2SFactory}: one per listening port.
"""

from __future__ import annotations

import base64
import binascii
import os
import pyexpat
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StanzaError, StreamError
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.protocols.jabber.xmpp_stringprep import nameprep, resourceprep
from twisted.words.xish import domish
from zope.interface import implementer

from xmppjson.accounts import addressKey
from xmppjson.c2s import sasl
from xmppjson.c2s.csi import NS_CSI, CSIBuffer
from xmppjson.c2s.register import NS_REGISTER, Registration
from xmppjson.c2s.sm import MAX_SEQ, NS_SM, StreamManagement, parseCount
from xmppjson.c2s.tls import ServerTLS, loadServerTLS
from xmppjson.config import Config
from xmppjson.error import asError
from xmppjson.limits import TokenBucket
from xmppjson.session import Session
from xmppjson.xmltext import StanzaParser, isElement, serialize

NS_CLIENT = "jabber:client"
NS_STREAMS = xmlstream.NS_STREAMS
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: Failed SASL attempts tolerated on one connection; the last failure also ends the stream with
#: C{policy-violation}, so a password cannot be guessed faster than one connection per 3 tries.
MAX_AUTH_FAILURES = 3

#: Deepest element nesting accepted in a stanza.  Real stanzas stay under 10; the limit exists
#: because serialising (here and in the JSON door) recurses once per level.
MAX_DEPTH = 64

#: Most elements in one stanza (a 256 KiB stanza of C{<a/>} would otherwise become ~50 MB of
#: Python objects).
MAX_ELEMENTS = 10000

#: Elements that may arrive while an authentication or bind step is waiting for the database;
#: a client has no reason to send more than a handful.
MAX_QUEUED = 64

#: Seconds a closing stream waits for its last bytes to drain before the socket is cut (a
#: client that never reads must not pin the connection forever).
CLOSE_TIMEOUT = 10.0

#: Output that may pile up for a client that stopped reading, at the least (see
#: L{C2SStream.outputBacklog}); four of the largest stanzas if that is more.
MIN_OUTPUT_BACKLOG = 1024 * 1024

#: Seconds the server waits, when it stops, for closed streams to be written out.
SHUTDOWN_GRACE = 3.0

#: The longest resourcepart, in bytes (RFC 7622 section 3.4).
MAX_RESOURCE_BYTES = 1023

_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")

_STANZAS = frozenset(("message", "presence", "iq"))


class RestrictedXML(Exception):
    """The client sent XML that RFC 6120 section 11.1 forbids in a stream (DTD, PI, comment)."""


def _refuse(what: str) -> Callable[..., None]:
    def refuse(*args: Any) -> None:
        raise RestrictedXML(f"{what} are not allowed in an XMPP stream")

    return refuse


_REFUSE_DTD = _refuse("DTDs")
_REFUSE_ENTITY = _refuse("entity declarations")
_REFUSE_PI = _refuse("processing instructions")
_REFUSE_COMMENT = _refuse("comments")


def _depth(element: domish.Element) -> int:
    """The nesting depth of an element tree, without recursion (the tree may be hostile)."""
    deepest = 0
    stack = [(element, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        for child in node.children:
            if type(child) is not str and isElement(child):
                stack.append((child, level + 1))
    return deepest


def _iqChild(iq: domish.Element) -> domish.Element | None:
    for child in iq.children:
        if isElement(child):
            return child
    return None


def _iqResult(iq: domish.Element, payload: domish.Element | None = None) -> domish.Element:
    result = domish.Element((NS_CLIENT, "iq"))
    result["type"] = "result"
    if iq.getAttribute("id") is not None:
        result["id"] = iq["id"]
    if payload is not None:
        result.addChild(payload)
    return result


def _iqError(
    iq: domish.Element, condition: str, errorType: str, text: str | None = None
) -> domish.Element:
    response = domish.Element((NS_CLIENT, "iq"))
    response["type"] = "error"
    if iq.getAttribute("id") is not None:
        response["id"] = iq["id"]
    response.addChild(StanzaError(condition, errorType, text).getElement())
    return response


def _prepareResource(requested: str) -> str:
    """
    resourceprep (RFC 7622 section 3.4) of a requested resource: printable ASCII is its own
    resourceprep (nothing in it is mapped or prohibited), anything else goes through the full
    profile.

    @raise UnicodeError: the profile refuses it.
    """
    if requested.isascii() and requested.isprintable():
        return requested
    return resourceprep.prepare(requested)


def _preparedJID(localpart: str, domain: str, resource: str) -> JID:
    """
    A full JID from parts that are already prepared (the localpart by Accounts, the resource by
    resourceprep here, the domain by the configuration): C{JID(tuple=...)} would run all three
    stringprep profiles again, the most expensive step of a login after the password hash.
    """
    jid = JID.__new__(JID)
    jid.user, jid.host, jid.resource = localpart, domain, resource
    return jid


def _handledCountTooHigh(h: int, sent: int) -> domish.Element:
    """The XEP-0198 application condition for an C{h} beyond what was sent."""
    element = domish.Element((NS_SM, "handled-count-too-high"))
    element["h"] = str(h)
    element["send-count"] = str(sent)
    return element


def _smFailed(condition: str) -> domish.Element:
    """XEP-0198 C{<failed/>} with a stanza error condition."""
    failed = domish.Element((NS_SM, "failed"))
    failed.addElement((NS_STANZAS, condition))
    return failed


class C2SSession(Session):
    """
    A session bound on an XMPP stream: what the IM core delivers to.

    Deliveries that arrive before the bind result has been written (the core may deliver while
    C{openSession} runs) are held and written right after it, so a client never sees a stanza
    before it knows its own JID.

    With stream management (XEP-0198) the session may outlive its stream: L{sm} counts and
    keeps what is written, and a session whose connection dropped stays in the core, queueing,
    until it is resumed on a new stream or L{finish}ed.  With client state indication
    (XEP-0352) L{csi} holds back what an inactive client does not need yet.

    @ivar stream: the L{C2SStream} the session currently lives on (a resumption changes it).
    @ivar sm: the XEP-0198 state once the client enabled it, else C{None}.
    @ivar csi: the stanzas held while the client is inactive, C{None} while it is active.
    @ivar finished: the session has left the core (see L{finish}).
    """

    door = "c2s"
    log = Logger()

    def __init__(self, jid: JID, stream: C2SStream):
        super().__init__(jid)
        self.stream = stream
        self.im = stream.im
        self._held: list[domish.Element] | None = []
        self.sm: StreamManagement | None = None
        self.csi: CSIBuffer | None = None
        self.finished = False

    def deliver(self, element: domish.Element) -> None:
        """
        Serialise C{element} and write it.  Never raises.  A stanza that can no longer be
        written (connection gone or closing) goes back to the core through
        C{im.undeliverable}, so a message is stored offline or bounced rather than lost; with
        stream management it is queued for a resumption instead.

        A message keeps the text written for it, as C{_c2sText}: the archive stores that text
        instead of serialising the message a second time (L{xmppjson.im.archive.Archive._archived}
        says when it may).
        """
        if self.csi is not None and self._csiHolds(element):
            return
        stream = self.stream
        if stream.writable:
            try:
                text = serialize(element)
                data = text.encode("utf-8")
            except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
                self.log.failure("Cannot serialise a stanza for {session}", session=self)
                return
            if element.name == "message":
                element._c2sText = text  # type: ignore[attr-defined]
            if stream.verbose:
                stream.logTraffic("SEND", data)
            stream.transport.write(data)
            sm = self.sm
            if sm is not None:
                sm.sent(element)
            if stream.outputPaused:
                stream.outputBacklog(len(data))
            return
        sm = self.sm
        if sm is not None and sm.detached:
            sm.queue(element)
            return
        if not self.finished:
            # Not bound yet (written after the bind result), or the stream is going and the
            # session will finish() any moment: while it is still routable, handing a stanza
            # back to the core would route it straight back here.  finish() hands these back.
            if self._held is None:
                self._held = []
            self._held.append(element)
            return
        self._undeliverable(element)

    def _csiHolds(self, element: domish.Element) -> bool:
        """
        The client is inactive: hold C{element} back, or write everything held before it
        (C{False}: the caller then writes C{element}).
        """
        csi = self.csi
        assert csi is not None
        if csi.hold(element):
            return True
        earlier = csi.release(element)
        if earlier:
            # Write them without passing the gate again (it would hold them once more).
            self.csi = None
            try:
                for held in earlier:
                    self.deliver(held)
            finally:
                if self.csi is None and not self.finished:
                    self.csi = csi
        return False

    def activate(self) -> None:
        """XEP-0352 C{<active/>}: write everything held and stop holding."""
        csi, self.csi = self.csi, None
        if csi is not None:
            for held in csi.release():
                self.deliver(held)

    def deactivate(self) -> None:
        """XEP-0352 C{<inactive/>}: hold back what the policy allows from now on."""
        if self.csi is None:
            self.csi = CSIBuffer()

    def _undeliverable(self, element: domish.Element) -> None:
        try:
            self.im.undeliverable(self, element)
        except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            self.log.failure("im.undeliverable failed for {session}", session=self)

    def _bound(self) -> None:
        """The bind result is on the wire: write what was held, deliver directly from now on."""
        held, self._held = self._held, None
        for element in held or ():
            self.deliver(element)

    def finish(self) -> None:
        """
        The session is over for good (its stream closed, or it was not resumed in time):
        leave the core (C{im.closeSession}: unavailable presence is broadcast now), then hand
        every stanza it never confirmed receiving back to the core (C{im.undeliverable}: the
        core stores messages offline or routes them to another resource).  Idempotent.
        """
        if self.finished:
            return
        self.finished = True
        leftover: list[domish.Element] = []
        if self.sm is not None:
            leftover.extend(self.sm.stop())
        csi, self.csi = self.csi, None
        if csi is not None:
            leftover.extend(csi.release())
        held, self._held = self._held, None
        if held:
            leftover.extend(held)
        try:
            self.im.closeSession(self)
        except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            self.log.failure("im.closeSession failed for {session}", session=self)
        # Only now: while the session was still routable, the core would have routed them
        # straight back here.
        for element in leftover:
            self._undeliverable(element)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """
        End the session: the stream error C{condition} (if given), C{</stream:stream>}, then
        the connection.  A detached session (XEP-0198) just ends.
        """
        sm = self.sm
        if sm is not None and sm.detached:
            self.finish()
            return
        self.stream.closeStream(condition, text)


class C2SAuthenticator(xmlstream.ListenAuthenticator):
    """
    Negotiation of one client stream: header, features, STARTTLS, SASL, bind, legacy session.

    @ivar authenticated: the localpart once SASL succeeded, else C{None}.
    @ivar authFailures: failed SASL attempts so far.
    """

    namespace = NS_CLIENT
    log = Logger()

    xmlstream: C2SStream

    def __init__(self, factory: C2SFactory):
        super().__init__()
        self.factory = factory
        self.config = factory.config
        self.accounts = factory.accounts
        self.im = factory.im
        self.domain = factory.config.domain
        self.authenticated: str | None = None
        self.authFailures = 0
        self.mechanism: sasl.SASLMechanism | None = None

    # -- stream header ---------------------------------------------------------------------

    def streamStarted(self, rootElement: domish.Element) -> None:
        """
        The client's stream header: check it (RFC 6120 section 4.7), answer with ours and the
        features for this stage of the negotiation.
        """
        xs = self.xmlstream
        xs.namespace = NS_CLIENT
        xs.sid = base64.b32encode(os.urandom(10)).decode("ascii").lower()  # type: ignore[assignment]
        language = rootElement.getAttribute((NS_XML, "lang"))
        xs.language = language if language and _LANGUAGE_TAG.match(language) else "en"
        if rootElement.uri != NS_STREAMS or rootElement.name != "stream":
            xs.closeStream("invalid-namespace", "the stream element must be <stream:stream/>")
            return
        if rootElement.defaultUri != NS_CLIENT:
            xs.closeStream("invalid-namespace", "the content namespace must be jabber:client")
            return
        to = rootElement.getAttribute("to")
        if to != self.domain and to is not None:
            # nameprep costs tens of microseconds; nearly every client sends the domain as is.
            try:
                to = nameprep.prepare(to).rstrip(".")
            except UnicodeError:
                to = None
        if to != self.domain:
            xs.closeStream("host-unknown", f"this server is {self.domain}")
            return
        version = rootElement.getAttribute("version") or "0.0"
        try:
            major = int(version.split(".")[0])
        except ValueError:
            major = 0
        if major < 1:
            xs.closeStream("unsupported-version", "XMPP 1.0 (RFC 6120) streams only")
            return
        xs.version = (1, 0)
        xs.thisEntity = self.factory.domainJID  # type: ignore[assignment]
        xs.sendHeader()
        xs.send(
            self.factory.cachedFeatures((self.authenticated is not None, xs.secure), self.features)
        )

    def features(self) -> domish.Element:
        """The C{<stream:features/>} for the current stage."""
        xs = self.xmlstream
        features = domish.Element((NS_STREAMS, "features"))
        if self.authenticated is None:
            tls = self.factory.tls
            if tls is not None and not xs.secure:
                starttls = features.addElement((NS_TLS, "starttls"))
                if self.factory.tlsRequired:
                    starttls.addElement((NS_TLS, "required"))
                    # Nothing else may be negotiated before TLS (RFC 6120 section 5.3.1).
                    return features
            mechanisms = features.addElement((NS_SASL, "mechanisms"))
            for name in sasl.offeredMechanisms(xs.secure, self.config.allowPlaintext):
                mechanisms.addElement((NS_SASL, "mechanism"), content=name)
            register = self.factory.registration.feature()
            if register is not None:
                features.addChild(register)
        else:
            features.addElement((NS_BIND, "bind"))
            session = features.addElement((NS_SESSION, "session"))
            session.addElement((NS_SESSION, "optional"))
            for feature in self.im.streamFeatures():
                features.addChild(feature)
            # The door's own: stream management (XEP-0198, enabled after binding, or resumed
            # instead of binding) and client state indication (XEP-0352).
            features.addElement((NS_SM, "sm"))
            features.addElement((NS_CSI, "csi"))
        return features

    # -- elements before binding -------------------------------------------------------------

    def onElement(self, element: domish.Element) -> None:
        """One top-level element before the resource is bound."""
        uri, name = element.uri, element.name
        xs = self.xmlstream
        if xs.stream.elementCount > 32 and _depth(element) > MAX_DEPTH:
            xs.closeStream("policy-violation", f"elements nested deeper than {MAX_DEPTH}")
            return
        if uri == NS_SASL:
            if self.authenticated is not None:
                xs.closeStream("policy-violation", "already authenticated")
            elif name == "auth":
                xs.runStep(self._auth(element))
            elif name == "response":
                xs.runStep(self._response(element))
            elif name == "abort":
                self.mechanism = None
                self._saslFailure(sasl.SASLFailure("aborted"))
            else:
                xs.closeStream("unsupported-stanza-type", f"unknown SASL element <{name}/>")
        elif uri == NS_TLS and name == "starttls":
            self._startTLS()
        elif uri == NS_CLIENT and name in _STANZAS:
            if self.authenticated is None:
                if name != "iq" or not self._registerIQ(element):
                    xs.closeStream("not-authorized", "authenticate first")
            elif name == "iq":
                self._iqBeforeBind(element)
            else:
                xs.closeStream("not-authorized", "bind a resource first")
        elif uri == NS_SM and name in ("resume", "enable"):
            if name == "resume" and self.authenticated is not None:
                self._resume(element)
            else:
                # <enable/> comes after binding; <resume/> after authentication.
                xs.send(_smFailed("unexpected-request"))
        elif uri == NS_STREAMS and name == "error":
            xs.peerStreamError(element)
        else:
            xs.closeStream("unsupported-stanza-type", f"unexpected <{name} xmlns='{uri}'/>")

    # -- XEP-0077 in-band registration (before authentication) -------------------------------

    def _registerIQ(self, iq: domish.Element) -> bool:
        """
        Handle C{iq} if it is an in-band registration request; C{False} if it is not one (a
        stanza that has no business before authentication).
        """
        child = _iqChild(iq)
        if child is None or child.uri != NS_REGISTER or child.name != "query":
            return False
        xs = self.xmlstream
        if self.factory.tlsRequired and not xs.secure:
            # The password would cross the network in clear; nothing but STARTTLS yet.
            xs.send(_iqError(iq, "not-allowed", "cancel", "use STARTTLS first"))
            return True
        xs.runStep(self._register(iq, child))
        return True

    async def _register(self, iq: domish.Element, query: domish.Element) -> None:
        xs = self.xmlstream
        reply = await self.factory.registration.register(iq, query, xs.peerHost)
        xs.send(reply)
        if reply.getAttribute("type") == "error" and iq.getAttribute("type") == "set":
            # Each attempt may cost a password hash: a connection gets as many failed
            # attempts as failed logins.
            self.authFailures += 1
            if self.authFailures >= MAX_AUTH_FAILURES:
                xs.closeStream("policy-violation", "too many failed registration attempts")

    # -- XEP-0198 resumption (after authentication, instead of binding) --------------------

    def _resume(self, element: domish.Element) -> None:
        """
        C{<resume previd=… h=…/>}: take over the user's session with that resumption id,
        acknowledge what the client handled, and write again what it did not get.
        """
        xs = self.xmlstream
        previd = element.getAttribute("previd") or ""
        h = parseCount(element.getAttribute("h"))
        if h is None:
            xs.send(_smFailed("bad-request"))
            return
        session = self.factory.smSessions.get(previd)
        sm = session.sm if session is not None else None
        if (
            session is None
            or sm is None
            or session.localpart != self.authenticated
            or not session.active
            or session.finished
        ):
            # Another user's id looks exactly like an expired one.
            xs.send(_smFailed("item-not-found"))
            return
        if not sm.ack(h):
            xs.closeStream(
                "undefined-condition",
                "the client acknowledged stanzas that were never sent",
                appCondition=_handledCountTooHigh(h, sm.outbound),
            )
            return
        old = session.stream
        if old is not xs and not old.lost:
            # The client noticed the broken connection before we did.
            old.release()
            old.closeStream("conflict", "the session was resumed on another connection")
        sm.attach()
        session.stream = xs
        xs.session = session
        resumed = domish.Element((NS_SM, "resumed"))
        resumed["previd"] = previd
        resumed["h"] = str(sm.inbound)
        xs.send(resumed)
        xs.bound(session)
        for stanza in sm.unacked:
            xs.send(stanza)
        if sm.unacked:
            sm.request()

    # -- STARTTLS (RFC 6120 section 5) -----------------------------------------------------

    def _startTLS(self) -> None:
        xs = self.xmlstream
        tls = self.factory.tls
        if tls is None or xs.secure or self.authenticated is not None:
            # RFC 6120 5.4.2.2: answer <failure/> and close the stream.
            xs.send(domish.Element((NS_TLS, "failure")))
            xs.closeStream()
            return
        xs.send(domish.Element((NS_TLS, "proceed")))
        xs.beginTLS(tls)

    # -- SASL (RFC 6120 section 6) ---------------------------------------------------------

    def _decode(self, element: domish.Element) -> bytes | None:
        """
        The base64 payload of an C{<auth/>} or C{<response/>}: C{None} when there is none, and
        C{b""} for C{=} (an empty response).

        @raise sasl.SASLFailure: C{incorrect-encoding} for invalid base64 (RFC 6120 6.5.2).
        """
        text = "".join(str(c) for c in element.children if isinstance(c, str))
        # Whitespace inside the payload is not allowed, but some clients wrap long lines.
        text = "".join(text.split())
        if not text:
            return None
        if text == "=":
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise sasl.SASLFailure(
                "incorrect-encoding", "the payload is not valid base64"
            ) from None

    async def _auth(self, element: domish.Element) -> None:
        xs = self.xmlstream
        name = element.getAttribute("mechanism") or ""
        self.mechanism = None
        tlsPending = self.factory.tlsRequired and not xs.secure
        mechanism: sasl.SASLMechanism | None = None
        try:
            if tlsPending:
                raise sasl.SASLFailure("encryption-required", "use STARTTLS first")
            if self.accounts.loginRetryAfter(None, xs.peerHost):
                raise sasl.SASLFailure(
                    "temporary-auth-failure",
                    "too many failed logins from your address; try again later",
                )
            if name not in sasl.offeredMechanisms(xs.secure, self.config.allowPlaintext):
                if name == "PLAIN":
                    raise sasl.SASLFailure("encryption-required", "PLAIN is only allowed over TLS")
                raise sasl.SASLFailure(
                    "invalid-mechanism", f"{name or 'no mechanism'} is not offered"
                )
            mechanism = sasl.makeMechanism(
                name,
                self.accounts,
                self.domain,
                self.factory.secret,
                self.config.scramIterations,
                gate=self._accountGate,
            )
            self.mechanism = mechanism
            initial = self._decode(element)
            step = await mechanism.start(initial)
        except sasl.SASLFailure as failure:
            self.mechanism = None
            self._saslFailure(
                failure,
                counts=failure.condition != "encryption-required",
                account=mechanism.account if mechanism is not None else None,
            )
            return
        self._saslStep(step)

    def _accountGate(self, localpart: str) -> None:
        """Called by a mechanism once it knows the account, before checking credentials."""
        if self.accounts.loginRetryAfter(localpart, None):
            raise sasl.SASLFailure(
                "temporary-auth-failure",
                "too many failed logins for this account; try again later",
            )

    async def _response(self, element: domish.Element) -> None:
        mechanism = self.mechanism
        if mechanism is None:
            self._saslFailure(
                sasl.SASLFailure("malformed-request", "no authentication in progress")
            )
            return
        try:
            step = await mechanism.respond(self._decode(element) or b"")
        except sasl.SASLFailure as failure:
            self.mechanism = None
            self._saslFailure(failure, account=mechanism.account)
            return
        self._saslStep(step)

    def _saslStep(self, step: sasl.Challenge | sasl.Success) -> None:
        xs = self.xmlstream
        if isinstance(step, sasl.Challenge):
            challenge = domish.Element((NS_SASL, "challenge"))
            if step.data:
                challenge.addContent(base64.b64encode(step.data).decode("ascii"))
            xs.send(challenge)
            return
        self.mechanism = None
        success = domish.Element((NS_SASL, "success"))
        if step.data is not None:
            success.addContent(base64.b64encode(step.data).decode("ascii") if step.data else "=")
        self.authenticated = step.localpart
        self.accounts.loginSucceeded(step.localpart, self.xmlstream.peerHost)
        # No log line here: the core logs every session it opens, with its JID, and one line
        # per login is what a busy server can afford.
        xs.send(success)
        xs.authenticatedAs(step.localpart)

    def _saslFailure(
        self, failure: sasl.SASLFailure, counts: bool = True, account: str | None = None
    ) -> None:
        xs = self.xmlstream
        if failure.condition == "not-authorized":
            # Wrong credentials: they count against the address and the account, beyond this
            # connection (see C{docs/xmpp.md}, "Throttling").
            # Counted by Accounts: one count per account and per address for every door.
            self.accounts.loginFailed(account, xs.peerHost)
        element = domish.Element((NS_SASL, "failure"))
        element.addElement((NS_SASL, failure.condition))
        if failure.text:
            text = element.addElement((NS_SASL, "text"), content=failure.text)
            text[(NS_XML, "lang")] = "en"
        xs.send(element)
        if counts:
            self.authFailures += 1
            self.log.info(
                "{peer}: SASL failure {condition} ({n} of {max})",
                peer=xs.peer,
                condition=failure.condition,
                n=self.authFailures,
                max=MAX_AUTH_FAILURES,
            )
            if self.authFailures >= MAX_AUTH_FAILURES:
                xs.closeStream("policy-violation", "too many failed authentication attempts")

    # -- binding (RFC 6120 section 7) ------------------------------------------------------

    def _iqBeforeBind(self, iq: domish.Element) -> None:
        xs = self.xmlstream
        child = _iqChild(iq)
        if child is not None and child.uri == NS_BIND and child.name == "bind":
            if iq.getAttribute("type") != "set":
                xs.send(_iqError(iq, "bad-request", "modify", "bind with type='set'"))
                return
            xs.runStep(self._bind(iq, child))
        elif child is not None and child.uri == NS_SESSION:
            xs.send(_iqError(iq, "not-allowed", "cancel", "bind a resource first"))
        else:
            xs.closeStream("not-authorized", "bind a resource first")

    async def _bind(self, iq: domish.Element, bind: domish.Element) -> None:
        xs = self.xmlstream
        localpart = self.authenticated
        assert localpart is not None
        requested = None
        for child in bind.elements(NS_BIND, "resource"):
            requested = str(child).strip()
            break
        try:
            if requested:
                resource = _prepareResource(requested)
                if not resource or len(resource.encode("utf-8")) > MAX_RESOURCE_BYTES:
                    raise UnicodeError("empty or too long")
            else:
                resource = self.im.newResource()
            jid = _preparedJID(localpart, self.domain, resource)
        except (UnicodeError, InvalidFormat):
            xs.send(_iqError(iq, "bad-request", "modify", "invalid resource"))
            return
        session = C2SSession(jid, xs)
        xs.session = session
        try:
            await self.im.openSession(session)
        except Exception as e:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            error = asError(e)
            if error.condition == "internal-server-error":
                self.log.failure("openSession failed for {jid}", Failure(e), jid=jid.full())
            if xs.session is session:
                xs.session = None
            if not xs.lost:
                stanzaError = error.toStanzaError()
                xs.send(_iqError(iq, stanzaError.condition, stanzaError.type, stanzaError.text))
            return
        if xs.lost or xs.closing:
            # The connection went away while the core registered us; connectionLost has already
            # told the core (closeSession), which keeps it consistent.
            return
        payload = domish.Element((NS_BIND, "bind"))
        payload.addElement((NS_BIND, "jid"), content=jid.full())
        xs.send(_iqResult(iq, payload))
        xs.bound(session)


@implementer(interfaces.IPushProducer, interfaces.IHalfCloseableProtocol)
class C2SStream(xmlstream.XmlStream):
    """
    One client connection.

    @ivar session: the L{C2SSession}, from the start of binding (or a resumption) on; C{None}
        again if another stream resumed it.
    @ivar addressKey: the client's address as the throttles count it (IPv6: its /64).
    @ivar secure: whether the connection is encrypted (STARTTLS done, or a TLS listener).
    @ivar writable: whether L{C2SSession.deliver} may write (bound and not closing).
    @ivar closing: we sent (or are sending) C{</stream:stream>}; input is ignored.
    @ivar lost: the connection is gone.
    """

    log = Logger()

    authenticator: C2SAuthenticator
    # The transport is a TCP (or TLS) transport; Twisted's ITransport does not list startTLS.
    transport: Any

    def __init__(self, authenticator: C2SAuthenticator, factory: C2SFactory):
        super().__init__(authenticator)
        self.factory = factory
        self.im = factory.im
        self.config = factory.config
        self.reactor = factory.reactor
        self.verbose = factory.config.verbose
        self.session: C2SSession | None = None
        self.secure = False
        self.writable = False
        self.closing = False
        self.lost = False
        self.peer = "?"
        self.peerHost = "?"
        self.language = "en"
        self.busy = False
        self.outputPaused = False
        self._backlog = 0
        self._queue: deque[domish.Element] = deque()
        self._limit = factory.config.maxStanzaSizePreAuth
        self._fed = 0
        self._boundary = 0
        self._parser: Any = None
        self._parse: Callable[[bytes], Any] | None = None
        self._timer: Any = None
        self._idleTimer: Any = None
        self._closeTimer: Any = None
        self._lastActivity = 0.0
        self._idleTimeout = factory.config.idleTimeout
        self.addressKey = "?"
        #: XEP-0198 state of the bound session (read per stanza, hence here).
        self._sm: StreamManagement | None = None
        #: The inbound rate limit, from binding on (C{None}: unlimited).
        self._bucket: TokenBucket | None = None
        #: Stanzas handled since the bucket was last charged.
        self._stanzas = 0
        self._throttled = False
        self._held = False  # reading stopped by the core (IMServer.intakeHeld)
        self._throttleCall: Any = None

    def _callLater(self, *args: Any, **kwargs: Any) -> Any:
        # Twisted's XmlStream would use the global reactor; tests inject a Clock.
        return self.reactor.callLater(*args, **kwargs)

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peerHost = str(getattr(peer, "host", peer))
        self.peer = f"{self.peerHost}:{getattr(peer, 'port', '')}"
        self.addressKey = addressKey(self.peerHost)
        self.secure = interfaces.ISSLTransport.providedBy(self.transport)
        super().connectionMade()
        self.factory.connectionOpened(self)
        if self.closing:
            return
        timeout = self.config.handshakeTimeout
        if timeout and timeout > 0:
            self._timer = self._callLater(timeout, self._handshakeTimedOut)

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        if self.session is None or not self.writable:
            self.log.info(
                "{peer}: no session after {t}s, closing",
                peer=self.peer,
                t=self.config.handshakeTimeout,
            )
            self.closeStream("connection-timeout", "the stream was not negotiated in time")

    def _idleCheck(self) -> None:
        self._idleTimer = None
        if self.lost or self.closing:
            return
        silent = self.reactor.seconds() - self._lastActivity
        if silent >= self._idleTimeout:
            self.closeStream("connection-timeout", "idle for too long")
        else:
            self._idleTimer = self._callLater(self._idleTimeout - silent, self._idleCheck)

    def _resumable(self, session: C2SSession) -> bool:
        """Whether a lost connection leaves C{session} waiting for XEP-0198 resumption."""
        sm = session.sm
        return (
            sm is not None
            and sm.resumable
            and not self.closing
            and session.active
            and not self.im.shuttingDown
        )

    def readConnectionLost(self) -> None:
        """
        The client shut its side of the TCP connection (perhaps in the middle of a stanza).
        Without this Twisted closes the socket at once, dropping what was written to it and not
        sent yet, which the core counts as delivered.  Instead the session ends now (unless
        stream management keeps it for resumption), so nothing more is routed here, and the
        connection closes once everything already written has left.
        """
        session = self.session
        if (
            session is not None
            and session.stream is self
            and not session.finished
            and not self._resumable(session)
        ):
            session.finish()
        if self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Nothing to do: the server never half-closes (L{IHalfCloseableProtocol})."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.writable = False
        for name in ("_timer", "_idleTimer", "_closeTimer", "_throttleCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        self._queue.clear()
        session = self.session
        if session is not None and session.stream is self and not session.finished:
            sm = session.sm
            if sm is not None and self._resumable(session):
                # Dropped without a closing handshake: the client may come back for it.
                self.log.info(
                    "{session} lost its connection; resumable for {t}s",
                    session=session,
                    t=sm.timeout,
                )
                sm.detach()
            else:
                session.finish()
        self.factory.connectionClosed(self)
        try:
            super().connectionLost(reason)
        except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            self.log.failure("Cleaning up {peer} failed", peer=self.peer)

    # -- parsing ---------------------------------------------------------------------------

    def _initializeStream(self) -> None:
        """
        A fresh parser (at connection and after each stream restart), with the previous one
        disarmed: bytes the old parser still holds (a client writing after C{<starttls/>}
        before the handshake) must never become elements.
        """
        old = self.stream
        if old is not None:
            ignore = lambda *args: None
            old.DocumentStartEvent = ignore
            old.ElementEvent = ignore
            old.DocumentEndEvent = ignore
        stream = StanzaParser()
        stream.maxElementCount = MAX_ELEMENTS
        stream.DocumentStartEvent = self.onDocumentStart
        stream.ElementEvent = self.onElement
        stream.DocumentEndEvent = self.onDocumentEnd
        parser = stream.parser
        # No buffer_text: its 8 KiB buffer per connection would cost a third more memory for
        # an idle session than the whole parser, for no measurable speed (domish merges
        # adjacent text anyway).
        parser.StartDoctypeDeclHandler = _REFUSE_DTD
        parser.EntityDeclHandler = _REFUSE_ENTITY
        parser.ProcessingInstructionHandler = _REFUSE_PI
        parser.CommentHandler = _REFUSE_COMMENT
        self.stream = stream
        self._parser = parser
        self._parse = parser.Parse
        self._fed = 0
        self._boundary = 0

    def dataReceived(self, data: bytes) -> None:
        """
        Feed the parser and police the size of the stanza being received: bytes since the end
        of the last complete top-level element may not exceed the current limit.  Nothing
        raised here may escape: one bad client never disturbs the reactor or anyone else.
        """
        if self.closing:
            return
        if self.verbose:
            self.logTraffic("RECV", data)
        if self._idleTimeout:
            self._lastActivity = self.reactor.seconds()
        stream = self.stream
        self._fed += len(data)
        try:
            self._parse(data)  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            if stream is self.stream and not self.closing:
                self._parseFailed(e)
            return
        if stream is not self.stream or self.closing:
            # The stream was restarted (STARTTLS) or closed while this chunk was parsed.
            return
        if stream.currElem is None:
            # Between stanzas: everything fed so far has been consumed except a partial tag.
            self._boundary = self._parser.CurrentByteIndex
        if self._fed - self._boundary > self._limit:
            self.closeStream("policy-violation", f"stanza larger than {self._limit} bytes")
            return
        if self._stanzas:
            # Charge the rate limit once per read, not once per stanza.
            count, self._stanzas = self._stanzas, 0
            bucket = self._bucket
            if bucket is not None:
                pause = bucket.take(count)
                if pause:
                    self._throttle(pause)
            if self.im.intakeHeld and not self._held:
                # The core is behind on writing (the archive): read no more until it catches up.
                self._held = True
                self.transport.pauseProducing()
                self.im.heldReader(self)

    def releaseIntake(self) -> None:
        """The core caught up (L{IMServer.releaseIntake}): read again unless paused otherwise."""
        self._held = False
        if not self.outputPaused and not self.lost and not self.closing and not self._throttled:
            self.transport.resumeProducing()

    def _throttle(self, pause: float) -> None:
        """
        The client sent faster than C{config.stanzaRate}: stop reading from it for C{pause}
        seconds.  What it already sent is handled; it is slowed down, never dropped.
        """
        if self._throttled or self.lost or self.closing:
            return
        self._throttled = True
        self.log.debug("{peer}: over the stanza rate, pausing {t:.2f}s", peer=self.peer, t=pause)
        self.transport.pauseProducing()
        self._throttleCall = self._callLater(pause, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttleCall = None
        self._throttled = False
        if not self.outputPaused and not self.lost and not self.closing and not self._held:
            self.transport.resumeProducing()

    def _parseFailed(self, e: Exception) -> None:
        if isinstance(e, RestrictedXML):
            self.closeStream("restricted-xml", str(e))
        elif isinstance(e, pyexpat.error):
            self.log.info("{peer}: XML error {error}", peer=self.peer, error=e)
            self.closeStream("not-well-formed", str(e))
        elif isinstance(e, domish.ParserError):
            self.closeStream("policy-violation", f"stanza too large: {e}")
        else:
            self.log.failure("Handling input from {peer} failed", Failure(e), peer=self.peer)
            self.closeStream("internal-server-error")

    def onDocumentStart(self, rootElement: domish.Element) -> None:
        # Twisted's version adds an xpath observer per stream; we dispatch by hand instead.
        try:
            self.authenticator.streamStarted(rootElement)
        except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            self.log.failure("Stream header from {peer} failed", peer=self.peer)
            self.closeStream("internal-server-error")

    def onDocumentEnd(self) -> None:
        """The client closed its stream: close ours and the connection (RFC 6120 4.4)."""
        self.closeStream()

    def onElement(self, element: domish.Element) -> None:
        """A top-level element before binding: negotiation."""
        self._boundary = self._parser.CurrentByteIndex
        if self.closing:
            return
        if self.busy:
            if len(self._queue) >= MAX_QUEUED:
                self.closeStream("policy-violation", "too many elements while negotiating")
            else:
                self._queue.append(element)
            return
        try:
            self.authenticator.onElement(element)
        except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            self.log.failure("Negotiation with {peer} failed", peer=self.peer)
            self.closeStream("internal-server-error")

    def _onStanza(self, element: domish.Element) -> None:
        """A top-level element of a bound stream: the hot path, straight to the core."""
        self._boundary = self._parser.CurrentByteIndex
        if self.closing:
            # The rest of a read whose earlier stanza ended the stream: ignored, as any input
            # after our </stream:stream> (nothing routed, nothing written after it).
            return
        self._stanzas += 1
        try:
            if self.stream.elementCount > 32 and _depth(element) > MAX_DEPTH:
                self.closeStream("policy-violation", f"elements nested deeper than {MAX_DEPTH}")
                return
            uri = element.uri
            if uri == NS_CLIENT:
                name = element.name
                if name == "message" or name == "presence":
                    sm = self._sm
                    if sm is not None:
                        sm.inbound = (sm.inbound + 1) % MAX_SEQ
                    self.im.receive(self.session, element)
                    return
                if name == "iq":
                    sm = self._sm
                    if sm is not None:
                        sm.inbound = (sm.inbound + 1) % MAX_SEQ
                    for child in element.children:
                        if type(child) is not str:
                            childURI = getattr(child, "uri", None)
                            if childURI == NS_SESSION:
                                self._legacySession(element)
                                return
                            if childURI == NS_BIND:
                                self._reply(
                                    _iqError(
                                        element,
                                        "not-allowed",
                                        "cancel",
                                        "a resource is already bound",
                                    )
                                )
                                return
                            break
                    self.im.receive(self.session, element)
                    return
            elif uri == NS_SM:
                self._onSM(element)
                return
            elif uri == NS_CSI:
                self._onCSI(element)
                return
            if uri == NS_STREAMS and element.name == "error":
                self.peerStreamError(element)
            else:
                self.closeStream(
                    "unsupported-stanza-type", f"unexpected <{element.name} xmlns='{uri}'/>"
                )
        except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            self.log.failure("Handling a stanza from {session} failed", session=self.session)
            self._stanzaFailed(element)

    def _reply(self, stanza: domish.Element) -> None:
        """A stanza the door itself answers with: through the session, so XEP-0198 counts it."""
        session = self.session
        if session is not None and self.writable:
            session.deliver(stanza)
        else:
            self.send(stanza)

    # -- XEP-0198 stream management --------------------------------------------------------

    def _onSM(self, element: domish.Element) -> None:
        name = element.name
        sm = self._sm
        if name == "r" and sm is not None:
            self.send(f"<a xmlns='{NS_SM}' h='{sm.inbound}'/>")
        elif name == "a" and sm is not None:
            h = parseCount(element.getAttribute("h"))
            if h is None:
                self.closeStream("bad-format", "h must be a number below 2^32")
            elif not sm.ack(h):
                self.closeStream(
                    "undefined-condition",
                    "the client acknowledged stanzas that were never sent",
                    appCondition=_handledCountTooHigh(h, sm.outbound),
                )
        elif name == "enable":
            if sm is not None:
                self.send(_smFailed("unexpected-request"))
            else:
                self._enableSM(element)
        elif name == "resume":
            # Resumption replaces binding; this stream is bound already.
            self.send(_smFailed("unexpected-request"))
        else:
            self.closeStream(
                "unsupported-stanza-type",
                f"<{name}/> needs stream management enabled"
                if name in ("r", "a")
                else f"unknown stream management element <{name}/>",
            )

    def _enableSM(self, element: domish.Element) -> None:
        session = self.session
        assert session is not None
        timeout = 0.0
        if element.getAttribute("resume") in ("true", "1"):
            timeout = self.config.smResumeTimeout
            wanted = parseCount(element.getAttribute("max"))
            if wanted:
                timeout = min(timeout, float(wanted))
        sm = StreamManagement(session, self.reactor, self.factory.smSessions, timeout)
        enabled = domish.Element((NS_SM, "enabled"))
        if sm.id is not None:
            enabled["id"] = sm.id
            enabled["resume"] = "true"
            enabled["max"] = str(max(1, round(timeout)))
        # <enabled/> goes out before the first stanza it counts.
        self.send(enabled)
        session.sm = sm
        self._sm = sm

    def release(self) -> None:
        """Another stream took the session over (XEP-0198 resumption): let go of it."""
        self.session = None
        self._sm = None
        self.writable = False

    # -- XEP-0352 client state indication --------------------------------------------------

    def _onCSI(self, element: domish.Element) -> None:
        session = self.session
        assert session is not None
        if element.name == "inactive":
            session.deactivate()
        elif element.name == "active":
            session.activate()
        else:
            self.closeStream("unsupported-stanza-type", f"unknown CSI element <{element.name}/>")

    def _stanzaFailed(self, element: domish.Element) -> None:
        """Answer a stanza whose handling crashed with internal-server-error; the stream lives on."""
        try:
            if element.getAttribute("type") in ("error", "result") or element.uri != NS_CLIENT:
                return
            reply = domish.Element((NS_CLIENT, element.name))
            reply["type"] = "error"
            for attribute in ("id",):
                if element.getAttribute(attribute) is not None:
                    reply[attribute] = element[attribute]
            if element.getAttribute("to"):
                reply["from"] = element["to"]
            reply.addChild(StanzaError("internal-server-error", "cancel").getElement())
            self._reply(reply)
        except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            self.log.failure("Cannot even report an error to {peer}", peer=self.peer)
            self.closeStream("internal-server-error")

    def _legacySession(self, iq: domish.Element) -> None:
        # RFC 3921's session establishment is a no-op since RFC 6121, but older clients wait
        # for its result.
        if iq.getAttribute("type") == "set":
            self._reply(_iqResult(iq))
        else:
            self._reply(_iqError(iq, "bad-request", "modify"))

    # -- negotiation steps -----------------------------------------------------------------

    def runStep(self, coroutine: Any) -> None:
        """
        Run an asynchronous negotiation step (a SASL exchange step, a bind).  Elements that
        arrive meanwhile wait in order and are handled when it is done.
        """
        self.busy = True
        d = defer.Deferred.fromCoroutine(coroutine)
        d.addErrback(self._stepFailed)
        d.addBoth(self._stepDone)

    def _stepFailed(self, failure: Failure) -> None:
        self.log.failure("Negotiation step for {peer} failed", failure, peer=self.peer)
        self.closeStream("internal-server-error")

    def _stepDone(self, _: object) -> None:
        self.busy = False
        while self._queue and not self.busy and not self.closing and not self.lost:
            element = self._queue.popleft()
            if self.writable:
                self._onStanza(element)
            else:
                try:
                    self.authenticator.onElement(element)
                except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
                    self.log.failure("Negotiation with {peer} failed", peer=self.peer)
                    self.closeStream("internal-server-error")

    def beginTLS(self, tls: ServerTLS) -> None:
        """C{<proceed/>} is written: switch the transport to TLS and expect a new stream."""
        self.transport.startTLS(tls.contextFactory)
        self.secure = True
        self.reset()

    def authenticatedAs(self, localpart: str) -> None:
        """SASL succeeded: larger stanzas allowed, and a new stream expected (RFC 6120 6.4.6)."""
        self._limit = self.config.maxStanzaSize
        self._queue.clear()
        self.reset()

    def bound(self, session: C2SSession) -> None:
        """The bind result is written: from now on stanzas go straight to the core."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.stream.ElementEvent = self._onStanza
        self.writable = True
        self._sm = session.sm
        if self.config.stanzaRate > 0 and self._bucket is None:
            self._bucket = TokenBucket(self.config.stanzaRate, self.config.stanzaBurst, self.reactor)
        if self._idleTimeout and self._idleTimeout > 0:
            self._lastActivity = self.reactor.seconds()
            self._idleTimer = self._callLater(self._idleTimeout, self._idleCheck)
        # From now on others write to this client: be told when it stops reading.  (Only now:
        # the transport may still have been switched to TLS before.)
        self.transport.registerProducer(self, True)
        session._bound()

    # -- a client that does not read (IPushProducer, registered once bound) --------------

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: the client is not reading fast enough.  Stop
        reading from it too (a client that does not read does not get to send), and start
        counting what piles up for it.
        """
        self.outputPaused = True
        self._backlog = 0
        if not self.lost:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The client caught up (reading resumes unless it is over its stanza rate)."""
        self.outputPaused = False
        self._backlog = 0
        if not self.lost and not self.closing and not self._throttled and not self._held:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is going away; L{connectionLost} does the cleaning up."""

    def outputBacklog(self, size: int) -> None:
        """
        C{size} more bytes were queued for a client that is not reading.  Past
        C{maxOutputBacklog} the connection is cut: the session ends, and what the core hands
        it afterwards goes back through C{im.undeliverable} (stored offline, for messages)
        instead of piling up in memory.
        """
        self._backlog += size
        if self._backlog > self.factory.maxOutputBacklog and not self.closing:
            self.log.info(
                "{peer} is not reading ({n} bytes waiting), disconnecting",
                peer=self.peer,
                n=self._backlog,
            )
            self.closing = True
            self.writable = False
            self.transport.abortConnection()
            session = self.session
            if session is not None and session.stream is self:
                # Out of the core in the next turn (not from inside a delivery); what it is
                # handed meanwhile waits in the session and goes back to the core then.
                self._callLater(0, session.finish)

    # -- output ----------------------------------------------------------------------------

    def sendHeader(self) -> None:
        """Our stream header (RFC 6120 section 4.7), with a fresh stream id."""
        header = (
            "<?xml version='1.0'?>"
            f"<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'"
            f" id='{self.sid or ''}' from='{self.config.domain}' version='1.0'"
            f" xml:lang='{self.language}'>"
        )
        self.send(header)
        self._headerSent = True

    def send(self, obj: Any) -> None:
        """Write an element or string, unless the connection is gone or closed."""
        if self.lost or self.transport is None:
            return
        if isElement(obj):
            # Elements in the stream namespace (features, errors) fall back to domish, which
            # writes them with the header's "stream" prefix.
            obj = serialize(obj)
        if isinstance(obj, str):
            obj = obj.encode("utf-8")
        if self.verbose:
            self.logTraffic("SEND", obj)
        self.transport.write(obj)

    def logTraffic(self, direction: str, data: bytes) -> None:
        self.log.info(
            "{direction} {peer}: {data}",
            direction=direction,
            peer=self.peer,
            data=data.decode("utf-8", "replace"),
        )

    def peerStreamError(self, element: domish.Element) -> None:
        """The client sent a stream error: log it and close our side."""
        condition = _iqChild(element)
        self.log.info(
            "{peer} sent stream error {condition}",
            peer=self.peer,
            condition=condition.name if condition is not None else "?",
        )
        self.closeStream()

    def closeStream(
        self,
        condition: str | None = None,
        text: str | None = None,
        appCondition: domish.Element | None = None,
    ) -> None:
        """
        End the stream from our side: our header if the client never got one, the stream
        error C{condition}, C{</stream:stream>}, then close the connection.  The session (if
        any) ends at once: a closed stream is never resumed.  Idempotent.
        """
        if self.closing or self.lost or self.transport is None:
            return
        self.closing = True
        self.writable = False
        if condition is not None:
            self.log.info(
                "{peer}: stream error {condition} ({text})",
                peer=self.peer,
                condition=condition,
                text=text,
            )
        try:
            if not self._headerSent:
                self.sendHeader()
            if condition is not None:
                error = StreamError(condition, text, appCondition=appCondition).getElement()
                self.send(error)
            self.sendFooter()
        except Exception:  # noqa: BLE001 - an edge Twisted calls: answer, never propagate
            self.log.failure("Closing the stream of {peer} failed", peer=self.peer)
        finally:
            session = self.session
            if session is not None and session.stream is self and not session.finished:
                # Leave the core now, not when the socket is finally gone (up to
                # CLOSE_TIMEOUT later): meanwhile the core would keep routing to this session,
                # and whatever it could not write would be routed straight back to it.
                session.finish()
            self.transport.loseConnection()
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None and not self.lost:
                self._closeTimer = self._callLater(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self._closeTimer = None
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()


class C2SFactory(xmlstream.XmlStreamServerFactory):
    """
    Builds a L{C2SStream} per client connection.

    @ivar tls: the STARTTLS setup, or C{None} when no certificate is available.
    @ivar tlsRequired: clients must STARTTLS before authenticating (a certificate is available
        and C{--allow-plaintext} is not given).
    @ivar secret: keys the fake SCRAM salts of unknown users (stable for the process).
    @ivar streams: the open connections, for shutdown.
    @ivar smSessions: XEP-0198 sessions that may be resumed, by resumption id.
    @ivar registration: XEP-0077 (L{Registration}).
    """

    protocol = C2SStream  # type: ignore[assignment]
    log = Logger()

    def __init__(self, config: Config, accounts: Any, im: Any, reactor: Any, tls: ServerTLS | None):
        super().__init__(lambda: C2SAuthenticator(self))
        self.config = config
        self.accounts = accounts
        self.im = im
        self.reactor = reactor
        self.tls = tls
        self.tlsRequired = tls is not None and not config.allowPlaintext
        self.secret = os.urandom(32)
        self.streams: set[C2SStream] = set()
        self._perAddress: dict[str, int] = {}
        self._shutdownHooked = False
        self._drained: list[defer.Deferred[None]] = []
        self.domainJID = JID(tuple=(None, config.domain, None))
        #: Bytes that may wait for a client that stopped reading before it is disconnected.
        self.maxOutputBacklog = max(MIN_OUTPUT_BACKLOG, 4 * config.maxStanzaSize)
        self._features: dict[Any, bytes] = {}
        #: XEP-0198: sessions that may be resumed, by resumption id.
        self.smSessions: dict[str, C2SSession] = {}
        #: XEP-0077: registration before authentication, password change after.
        self.registration = Registration(config, accounts, reactor)
        iq = getattr(im, "iq", None)
        if iq is not None and NS_REGISTER not in iq.serverHandlers:
            # One handler per core: a second listener on it (say direct TLS beside STARTTLS)
            # shares the first one's.
            iq.register(NS_REGISTER, self.registration.handleIQ, server=True, account=True)

    def cachedFeatures(self, key: Any, build: Callable[[], domish.Element]) -> bytes:
        """
        The serialised C{<stream:features/>} for one stage of the negotiation: they only depend
        on the stage, so each is built once per factory rather than twice per login.
        """
        features = self._features.get(key)
        if features is None:
            features = self._features[key] = serialize(build()).encode("utf-8")
        return features

    def buildProtocol(self, addr: Any) -> C2SStream:
        authenticator = C2SAuthenticator(self)
        stream = C2SStream(authenticator, self)
        stream.factory = self
        self.installBootstraps(stream)
        return stream

    def connectionOpened(self, stream: C2SStream) -> None:
        """Count the connection; one over C{maxConnectionsPerAddress} is refused politely."""
        self.streams.add(stream)
        host = stream.peerHost
        count = self._perAddress.get(host, 0) + 1
        self._perAddress[host] = count
        limit = self.config.maxConnectionsPerAddress
        if limit and count > limit:
            stream.closeStream("policy-violation", "too many connections from your address")

    def connectionClosed(self, stream: C2SStream) -> None:
        if stream in self.streams:
            self.streams.discard(stream)
            host = stream.peerHost
            count = self._perAddress.get(host, 1) - 1
            if count > 0:
                self._perAddress[host] = count
            else:
                self._perAddress.pop(host, None)
        if not self.streams:
            waiting, self._drained = self._drained, []
            for d in waiting:
                if not d.called:  # the grace period may have ended it already
                    d.callback(None)

    def startFactory(self) -> None:
        """
        The listener starts.  With a real reactor, also take part in its shutdown: see
        L{drain}.
        """
        if not self._shutdownHooked and hasattr(self.reactor, "addSystemEventTrigger"):
            self._shutdownHooked = True
            self.reactor.addSystemEventTrigger("before", "shutdown", self.drain)

    def drain(self, grace: float = SHUTDOWN_GRACE) -> defer.Deferred[None]:
        """
        Close every stream with C{system-shutdown} and fire once all connections are gone, or
        after C{grace} seconds.  Run before the reactor stops, so that the stream errors and
        footers are really written: when the reactor finally disconnects what is left, buffered
        bytes are dropped.  The core's own C{shutdown()} closing the bound sessions as well is
        harmless (closing is idempotent).
        """
        for stream in list(self.streams):
            stream.closeStream("system-shutdown", "the server is shutting down")
        if not self.streams:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)

        def giveUp() -> None:
            if not d.called:
                self.log.info("{n} client connections still open at shutdown", n=len(self.streams))
                d.callback(None)

        timeout = self.reactor.callLater(grace, giveUp)

        def cancelTimeout(result: None) -> None:
            if timeout.active():
                timeout.cancel()
            return result

        d.addBoth(cancelTimeout)
        return d

    def stopFactory(self) -> None:
        """
        The listener stops: streams still negotiating are closed with C{system-shutdown} (bound
        sessions are the core's to close, in C{im.shutdown()}).
        """
        for stream in list(self.streams):
            if not stream.writable:
                stream.closeStream("system-shutdown", "the server is shutting down")


def makeC2SFactory(config: Config, accounts: Any, im: Any, reactor: Any) -> C2SFactory:
    """
    The factory for the XMPP c2s listener: TLS from C{config.tlsCert}/C{config.tlsKey} or a
    generated self-signed certificate (see L{xmppjson.c2s.tls}).

    @raise xmppjson.c2s.tls.TLSConfigurationError: a configured certificate is unusable.
    """
    return C2SFactory(config, accounts, im, reactor, loadServerTLS(config))
