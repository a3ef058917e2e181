"""
XEP-0352 Client State Indication: what an inactive client is spared until it needs it.

A mobile client that goes to the background sends C{<inactive xmlns='urn:xmpp:csi:0'/>}; every
stanza then costs it radio time and battery.  While it is inactive, the door holds back the
stanzas that only describe a changing state (the latest value is all the client will want) and
writes everything else at once.  The policy, also in C{docs/xmpp.md}:

 - Held: available/unavailable presence (only the latest per sender full JID is kept); messages
   that carry nothing but chat states (XEP-0085, only the latest per sender bare JID is kept) or
   delivery receipts and chat markers (XEP-0184, XEP-0333, kept in order).
 - Urgent, and written at once after everything held so far (the client wakes up anyway, so it
   gets the current picture in order): any iq, a message with a body or subject (the chat states
   held from that sender are dropped first: the message makes them stale), error stanzas,
   subscription presence, and any message carrying something not known to be unimportant
   (a call invitation, an encrypted payload, a carbon).
 - C{<active/>} writes everything held.
 - At most L{MAX_HELD} stanzas are held; one more is written with everything before it.

This module is pure: no I/O, no reactor.  L{xmppjson.c2s.stream.C2SSession.deliver} asks
L{CSIBuffer.hold} and writes what L{CSIBuffer.release} returns.
"""

from __future__ import annotations

from collections.abc import Hashable

from twisted.words.xish import domish

from xmppjson.xmltext import isElement

NS_CSI = "urn:xmpp:csi:0"
NS_CLIENT = "jabber:client"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"

#: Payload namespaces that never make a body-less message urgent.
_PASSIVE = frozenset(
    (
        "urn:xmpp:receipts",  # XEP-0184 <received/>
        "urn:xmpp:chat-markers:0",  # XEP-0333
        "urn:xmpp:sid:0",  # XEP-0359 stanza-id / origin-id (the core adds one to every message)
        "urn:xmpp:hints",  # XEP-0334
        "urn:xmpp:delay",  # XEP-0203
    )
)

#: The most stanzas held for one inactive session.
MAX_HELD = 256


def _bare(jid: str | None) -> str | None:
    if jid is None:
        return None
    return jid.split("/", 1)[0]


def _classifyMessage(message: domish.Element) -> str | None:
    """
    C{"chatstate"} for a message carrying only chat states (and passive payloads),
    C{"passive"} for one carrying only passive payloads (receipts, markers), C{None} when it is
    urgent.
    """
    if message.getAttribute("type") == "error":
        return None
    chatstate = False
    for child in message.children:
        if type(child) is str or not isElement(child):
            continue
        uri = child.uri
        if uri == NS_CHATSTATES:
            chatstate = True
        elif uri in _PASSIVE or uri == NS_CLIENT and child.name == "thread":
            continue
        else:
            # <body/>, <subject/>, or anything we cannot judge: urgent.
            return None
    return "chatstate" if chatstate else "passive"


class CSIBuffer:
    """
    The stanzas held for one inactive session, in the order they will be written.  Held
    stanzas that a newer one replaces are dropped, and the newer one goes to the end.
    """

    __slots__ = ("_held", "_serial")

    def __init__(self) -> None:
        self._held: dict[Hashable, domish.Element] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, element: domish.Element) -> bool:
        """
        Keep C{element} back if the policy allows it.  C{False} means: write
        L{release}C{(element)} and then C{element}, now.
        """
        held = self._held
        if len(held) >= MAX_HELD:
            return False
        name = element.name
        key: Hashable
        if name == "presence":
            kind = element.getAttribute("type")
            if kind is not None and kind != "unavailable":
                return False
            key = ("presence", element.getAttribute("from"))
        elif name == "message":
            kind = _classifyMessage(element)
            if kind is None:
                return False
            if kind == "chatstate":
                key = ("chatstate", _bare(element.getAttribute("from")))
            else:
                self._serial += 1
                key = self._serial
        else:
            return False
        # Re-inserting moves the key to the end: the newest state is written last.
        held.pop(key, None)
        held[key] = element
        return True

    def release(self, trigger: domish.Element | None = None) -> list[domish.Element]:
        """
        Everything held, oldest first, and forget it.  When C{trigger} is a message with a
        body, the chat states held from its sender are dropped: the message supersedes them.
        """
        held = self._held
        if trigger is not None and trigger.name == "message" and held:
            held.pop(("chatstate", _bare(trigger.getAttribute("from"))), None)
        released = list(held.values())
        held.clear()
        return released
