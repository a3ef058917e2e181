"""
Small helpers to build and inspect stanzas (C{domish.Element} in C{jabber:client}), shared by the
IM core.  No I/O.
"""

from __future__ import annotations

import base64
import datetime
import os
import time
from typing import Any, Optional

from twisted.words.protocols.jabber import error as jerror
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.xish import domish

from xmppjson.xmltext import isElement

NS_CLIENT = "jabber:client"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
NS_ROSTER = "jabber:iq:roster"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_VERSION = "jabber:iq:version"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

CHAT_STATES = frozenset(("active", "composing", "paused", "inactive", "gone"))
MESSAGE_TYPES = frozenset(("chat", "error", "groupchat", "headline", "normal"))
SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))

_jidCache: dict[str, JID] = {}
_JID_CACHE_MAX = 20000


def parseJID(text: str) -> JID:
    """
    Parse and stringprep a JID, with a bounded cache: the same few thousand addresses recur in
    every stanza, and stringprep is the most expensive step of routing.

    @raise InvalidFormat: for a malformed JID.
    """
    found = _jidCache.get(text)
    if found is None:
        found = JID(text)
        if len(_jidCache) >= _JID_CACHE_MAX:
            _jidCache.clear()
        _jidCache[text] = found
    return found


def tryJID(text: Optional[str]) -> Optional[JID]:
    """L{parseJID}, but C{None} for a missing or malformed address."""
    if not text:
        return None
    try:
        return parseJID(text)
    except (InvalidFormat, UnicodeError, ValueError):
        return None


def now(reactor) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(reactor.seconds(), datetime.timezone.utc)


def stamp(when: datetime.datetime) -> str:
    """XEP-0082 date-time in UTC with microseconds."""
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _SuffixPool:
    """
    The random part of stanza-ids: 72 bits from the operating system's CSPRNG each, as 12
    characters of URL-safe base64, made C{COUNT} at a time.  Every routed message takes an id,
    and a C{getrandom} system call, or even a base64 encoding, per message cost more than the
    rest of making the id.  Nine bytes are exactly twelve base64 characters (no padding), so
    the encoding of many suffixes' bytes is their encodings one after the other.  Filled
    lazily, so a process that forks before routing anything (twistd daemonising) never shares
    a pool with its parent.
    """

    __slots__ = ("_pos", "_text")

    COUNT = 512

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0

    def take(self) -> str:
        pos = self._pos
        if pos >= len(self._text):
            self._text = base64.urlsafe_b64encode(os.urandom(9 * self.COUNT)).decode("ascii")
            pos = 0
        self._pos = pos + 12
        return self._text[pos:pos + 12]


_pool = _SuffixPool()
_lastMicros = 0


def newStanzaId() -> str:
    """
    A unique, unguessable server-assigned id (XEP-0359): the time in microseconds as 13 hex
    digits, then 72 random bits in URL-safe base64 (25 characters in all).

    The random part makes it unguessable; the time in front makes ids sort in the order they
    were made (as UUIDv7 does, RFC 9562), so that the archive's unique index on them grows at
    its end instead of touching a random page of a big B-tree for every message.  The time
    part never goes back, even when the clock does.
    """
    global _lastMicros
    micros = time.time_ns() // 1000
    if micros <= _lastMicros:
        micros = _lastMicros + 1
    _lastMicros = micros
    return f"{micros:013x}{_pool.take()}"


def isServerMark(name: str, uri: str | None, attributes: dict[Any, str], domain: str) -> bool:
    """
    Whether a child of a message is one of the marks only this server adds: a XEP-0359
    stanza-id by the domain or by a local user, or a XEP-0203 delay stamp in the domain's name
    (offline storage).  The core removes such children from what clients send
    (L{dropServerMarks}), so every one in a routed message is the server's; the archive shows
    messages without them (its ids and times are its own).
    """
    if name == "stanza-id" and uri == NS_SID:
        by = attributes.get("by", "")
        return by == domain or by.endswith("@" + domain)
    return name == "delay" and uri == NS_DELAY and attributes.get("from") == domain


def dropServerMarks(element: domish.Element, domain: str) -> None:
    """Remove the children of C{element} that are server marks (L{isServerMark})."""
    children = element.children
    for index in range(len(children) - 1, -1, -1):
        child = children[index]
        if not isinstance(child, str) and isServerMark(child.name, child.uri, child.attributes,
                                                       domain):
            del children[index]


def makeElement(name: str, **attrs: Optional[str]) -> domish.Element:
    element = domish.Element((NS_CLIENT, name))
    for key, value in attrs.items():
        if value is not None:
            element[key] = value
    return element


def retarget(stanza: domish.Element, to: Optional[str]) -> domish.Element:
    """
    A shallow copy of C{stanza} with another C{to}, sharing the (never mutated) children, for
    fanning one presence out to many contacts without copying its payload.
    """
    copy = domish.Element((stanza.uri, stanza.name), stanza.defaultUri)
    copy.attributes = dict(stanza.attributes)
    copy.children = stanza.children
    if to is None:
        copy.attributes.pop("to", None)
    else:
        copy.attributes["to"] = to
    return copy


def firstChild(stanza: domish.Element, name: str, uri: Optional[str] = None):
    for child in stanza.children:
        if isElement(child) and child.name == name and (
            uri is None or child.uri == uri
        ):
            return child
    return None


def childText(stanza: domish.Element, name: str) -> Optional[str]:
    child = firstChild(stanza, name, NS_CLIENT)
    if child is None:
        child = firstChild(stanza, name)
    return None if child is None else str(child)


def hasBody(stanza: domish.Element) -> bool:
    """Whether a message carries content worth storing offline (a body or a subject)."""
    for child in stanza.children:
        if isElement(child) and child.name in ("body", "subject") and (
            child.uri in (NS_CLIENT, None)
        ):
            return True
    return False


def errorReply(
    stanza: domish.Element,
    condition: str,
    errorType: Optional[str] = None,
    text: Optional[str] = None,
    sender: Optional[str] = None,
) -> domish.Element:
    """
    The error response to C{stanza} (RFC 6120 section 8.3): addresses swapped, same id, type
    C{error}, the original payload kept, and an C{<error/>} child.

    @param sender: the C{from} of the reply when the stanza had no C{to} (the server itself).
    """
    reply = domish.Element((NS_CLIENT, stanza.name))
    to = stanza.getAttribute("from")
    frm = stanza.getAttribute("to") or sender
    if to:
        reply["to"] = to
    if frm:
        reply["from"] = frm
    if stanza.getAttribute("id") is not None:
        reply["id"] = stanza["id"]
    reply["type"] = "error"
    for child in stanza.children:
        if isElement(child) and child.name != "error":
            reply.addChild(child)
    error = jerror.StanzaError(condition, errorType, text).getElement()
    # Twisted builds <error/> without a namespace; it belongs to the stanza's (jabber:client).
    error.uri = error.defaultUri = NS_CLIENT
    reply.addChild(error)
    return reply


def iqResult(iq: domish.Element, sender: Optional[str] = None) -> domish.Element:
    """An empty C{result} to an iq get/set."""
    reply = domish.Element((NS_CLIENT, "iq"))
    if iq.getAttribute("from"):
        reply["to"] = iq["from"]
    frm = iq.getAttribute("to") or sender
    if frm:
        reply["from"] = frm
    reply["id"] = iq.getAttribute("id", "")
    reply["type"] = "result"
    return reply


def addDelay(stanza: domish.Element, when: datetime.datetime, by: str) -> None:
    """Add a XEP-0203 delay stamp (replacing none: a stanza keeps its first, oldest stamp)."""
    if firstChild(stanza, "delay", NS_DELAY) is not None:
        return
    delay = stanza.addElement((NS_DELAY, "delay"))
    delay["stamp"] = stamp(when)
    delay["from"] = by


_WRAPPER = b"<s xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"


def parseStanza(xml: str) -> domish.Element:
    """
    Parse one serialised stanza (as stored by the server itself) back into an element in
    C{jabber:client}.  The text is what a c2s stream carries, so a child in the streams
    namespace has the stream's C{stream:} prefix, declared by the stream header there and by
    the wrapper here.
    """
    result: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = result.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(_WRAPPER + xml.encode("utf-8") + b"</s>")
    if len(result) != 1:
        raise ValueError("expected exactly one stored stanza")
    return result[0]
