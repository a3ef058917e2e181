"""
Message Carbons (XEP-0280), C{urn:xmpp:carbons:2}: every carbon-enabled session of a user sees
both sides of the user's conversations, whichever session (and door) took part in them.

 - A session enables or disables carbons for itself with an iq C{set} of C{<enable/>} or
   C{<disable/>}.  Sessions whose class sets C{carbonsAtStart} start enabled; without that
   attribute, sessions that receive messages before they send presence (the JSON door's,
   C{messagesWhileUnavailable}) start enabled, so a web client sees the conversations the
   user holds in an XMPP client without asking (contract: every session of a user sees the
   conversation, whatever door).
 - Received carbons: a message delivered to some of a user's sessions (to the bare or a full
   JID) is copied, wrapped in C{<received/>}, to the user's other enabled sessions.
 - Sent carbons: a message a session sends is copied, wrapped in C{<sent/>}, to the sender's
   other enabled sessions, whether it was delivered, stored offline or routed to the sender's
   own account.
 - Eligible: C{chat} messages (chat states included, XEP-0280 section 10.2) and C{normal} ones
   with a body, without C{<private xmlns='urn:xmpp:carbons:2'/>} or
   C{<no-copy xmlns='urn:xmpp:hints'/>}.  Never errors, headlines, groupchat, nor a carbon.

The copies are built after routing, by a L{MessageHandler.observers} hook that returns at its
first line while no session has carbons enabled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.words.xish import domish

from xmppjson.error import BadRequest
from xmppjson.im.stanzas import NS_CLIENT, hasBody, iqResult, retarget
from xmppjson.xmltext import isElement

if TYPE_CHECKING:
    from xmppjson.im.server import IMServer
    from xmppjson.session import Session

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"


def eligible(message: domish.Element) -> bool:
    """Whether a routed message is copied to other sessions (XEP-0280 section 6)."""
    mtype = message.getAttribute("type", "normal")
    if mtype != "chat" and not (mtype == "normal" and hasBody(message)):
        return False
    for child in message.children:
        if isElement(child) and (
            (child.uri == NS_CARBONS and child.name in ("private", "received", "sent"))
            or (child.uri == NS_HINTS and child.name == "no-copy")
        ):
            return False
    return True


def isCarbon(message: domish.Element) -> bool:
    """Whether a message is a carbon copy made here (it must never be routed again)."""
    for child in message.children:
        if isElement(child) and child.uri == NS_CARBONS and child.name in (
            "received", "sent"
        ):
            return True
    return False


class Carbons:
    """The carbons state of every session, and the copies."""

    def __init__(self, server: IMServer):
        self.server = server
        self.router = server.router
        # bare JID -> the user's carbon-enabled sessions.
        self._enabled: dict[str, set[Session]] = {}
        server.iq.register(NS_CARBONS, self.handleIQ, account=True)
        server.messages.observers.append(self.observe)

    # per-session state ------------------------------------------------------

    def enabledFor(self, session: Session) -> bool:
        enabled = self._enabled.get(session.bare)
        return enabled is not None and session in enabled

    def enable(self, session: Session) -> None:
        self._enabled.setdefault(session.bare, set()).add(session)

    def disable(self, session: Session) -> None:
        enabled = self._enabled.get(session.bare)
        if enabled is not None:
            enabled.discard(session)
            if not enabled:
                del self._enabled[session.bare]

    def opened(self, session: Session) -> None:
        """A session joined the router: enable carbons if its door wants them from the start."""
        if getattr(session, "carbonsAtStart", session.messagesWhileUnavailable):
            self.enable(session)

    def ended(self, session: Session) -> None:
        """A session left the router."""
        self.disable(session)

    def handleIQ(self, session: Session, iq: domish.Element, child: domish.Element) -> domish.Element:
        """C{<enable/>} or C{<disable/>} from a user's own session (repeating either is fine)."""
        if iq.getAttribute("type") != "set" or child.name not in ("enable", "disable"):
            raise BadRequest("expected an iq set of <enable/> or <disable/>")
        if child.name == "enable":
            self.enable(session)
        else:
            self.disable(session)
        return iqResult(iq, session.bare)

    # copies -------------------------------------------------------------

    def observe(self, message: domish.Element, bare: str, delivered: list[Session],
                sender: Session | None) -> None:
        """The L{MessageHandler.observers} hook: copy a routed message to enabled sessions."""
        if not self._enabled:
            return
        received = self._enabled.get(bare) if delivered else None
        if received is not None and len(received) == 1 and len(delivered) == 1 \
                and next(iter(received)) is delivered[0]:
            # The usual case (every web session has carbons on): the recipient's one enabled
            # session is the one the message went to.
            received = None
        sent = None
        if sender is not None:
            senderBare = sender.bare
            if senderBare != bare:
                sent = self._enabled.get(senderBare)
                if sent is not None and len(sent) == 1 and sender in sent:
                    sent = None  # the sender's own session is its only enabled one
        if not received and not sent:
            return
        # Who would get a copy comes first: it is usually nobody (a user with one session, as
        # every web user has carbons on), and that costs less than reading the message.
        copies = []
        if received:
            copies = [("received", bare, session) for session in received
                      if session not in delivered and session is not sender and session.active]
        if sent and sender is not None:
            copies += [("sent", sender.bare, session) for session in sent
                       if session is not sender and session.active]
        if not copies or not eligible(message):
            return
        forwarded = self._forwarded(message)
        for kind, owner, session in copies:
            session.deliver(self._wrap(kind, forwarded, owner, session, message))

    def _forwarded(self, message: domish.Element) -> domish.Element:
        """
        The C{<forwarded/>} holding a copy of the message: a shallow one, sharing the (never
        mutated) children, so the original keeps its place and the copy costs no deep copy.
        """
        forwarded = domish.Element((NS_FORWARD, "forwarded"))
        copy = retarget(message, message.getAttribute("to"))
        forwarded.children.append(copy)
        return forwarded

    def _wrap(self, kind: str, forwarded: domish.Element, bare: str, session: Session,
              message: domish.Element) -> domish.Element:
        carbon = domish.Element((NS_CLIENT, "message"))
        carbon["from"] = bare
        carbon["to"] = session.full
        carbon["type"] = message.getAttribute("type", "normal")
        wrapper = carbon.addElement((NS_CARBONS, kind))
        wrapper.children.append(forwarded)
        return carbon
