"""
The JSON WebSocket dialect (version 1): a pure translation between one WebSocket text frame and
one XMPP stanza (a L{domish.Element} in C{jabber:client}), in both directions, with validation.

No I/O, no reactor: the WebSocket door calls L{parseFrame} on every frame a web client sends and
L{serialize} on every stanza the router delivers to a web session.  Every rule here is written
down, with examples, in C{docs/json-dialect.md}.

Design, in short:
 - Every JSON key maps to exactly one XMPP construct, and an XMPP child element is given a key
   only when the key represents it exactly (no attributes lost, no text lost).  Anything else
   travels as serialised XML in the C{"xml"} list, both ways, so nothing is dropped.
 - Input is validated key by key; any unreadable frame raises L{FrameError}, whose C{text} names
   the offending key (C{payload.to: not a valid JID}), and which the door turns into an error
   frame with L{errorFrame}.
 - Strings put into XML are checked for characters XML 1.0 cannot carry, so a web client can
   never make the server write a stream a legacy client cannot parse.
 - The C{"xml"} strings are written by a small serialiser of our own instead of
   C{Element.toXml()}: domish does not escape CR in text nor TAB/LF/CR in attribute values (so a
   parser would silently normalise them), and it invents C{xn0:} prefixes with redundant
   C{xmlns='jabber:client'} declarations for children whose namespace was declared by prefix on
   the stanza.  Ours makes each string self-contained: the root always declares its namespace,
   descendants declare it when it changes, namespaced attributes get a prefix declared on the
   spot.

Timing, measured with C{python -m tests.test_jsonstanza} (CPython 3.11.7, a 2-core container
shared with other builds, so best of 15 x 20000 runs; the spread between runs was up to 2x), for
a chat message with a 96-byte body and an C{<active/>} chat state (287 bytes as XML, 238 as
JSON):
 - C{toFrame(element)}: 2-3 us, about a quarter to a third of C{element.toXml()} (9-10 us),
   which is what the c2s door pays to write the same stanza;
 - C{serialize(element)}: 2.5-3 us, written directly by the fast path for plain messages and
   presences (toFrame plus the compact C{json} encoder, the general path, was 5.5-6.5 us);
 - C{parseFrame(frame)}: 7 us with the JID cache warm (10 us before the fast path), of
   which C{json} decoding is ~1.5 us and building the elements most of the rest.  A cold JID
   check (Twisted's stringprep) costs ~60 us, hence the bounded memo in L{_jid}.
C{bench/codec.py} has the per-frame figures of the chat traffic's frames, before and after.
"""

from __future__ import annotations

import functools
import json
import pyexpat
import re
import sys
from collections.abc import Callable
from typing import Any

from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from xmppjson.error import BadRequest
from xmppjson.xmltext import Element

__all__ = [
    "DIALECT_VERSION",
    "MAX_FRAME_SIZE",
    "FrameError",
    "FrameTooBig",
    "errorFrame",
    "parseFrame",
    "serialize",
    "sessionFrame",
    "toFrame",
]

DIALECT_VERSION = 1

NS_CLIENT = "jabber:client"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
NS_ROSTER = "jabber:iq:roster"
NS_PING = "urn:xmpp:ping"
NS_MAM = "urn:xmpp:mam:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_DATA = "jabber:x:data"

# Limits.  The frame size is the door's (configurable) limit; the others only stop a frame from
# being pathological within that size.
MAX_FRAME_SIZE = 256 * 1024
MAX_DEPTH = 32  # JSON nesting; a legitimate frame needs 4 (frame, payload, item, groups)
MAX_XML_DEPTH = 32  # element nesting inside one "xml" string
MAX_XML_ELEMENTS = 1000  # elements in all "xml" strings of one frame (each costs ~1 KB of RAM)
MAX_XML_ITEMS = 64  # strings in one "xml" list
MAX_GROUPS = 128  # groups of one roster item
LIMIT_ID = 1024
LIMIT_JID_PART = 1023  # bytes, RFC 7622 section 3
LIMIT_LANG = 128
LIMIT_SHORT = 1023  # roster name, group name, roster ver, error "by"/"uri"
LIMIT_THREAD = 1024
LIMIT_STATUS = 4096  # presence is broadcast to every contact: keep it modest
LIMIT_TEXT = 4096  # error text
LIMIT_SUBJECT = 16384
# body and xml strings are bounded by the frame size only.

MESSAGE_TYPES = frozenset({"chat", "error", "groupchat", "headline", "normal"})
PRESENCE_TYPES = frozenset(
    {"error", "probe", "subscribe", "subscribed", "unavailable", "unsubscribe", "unsubscribed"}
)
IQ_TYPES = frozenset({"get", "set", "result", "error"})
SHOWS = frozenset({"away", "chat", "dnd", "xa"})
CHAT_STATES = ("active", "composing", "gone", "inactive", "paused")
ERROR_TYPES = frozenset({"auth", "cancel", "continue", "modify", "wait"})

# RFC 6120 section 8.3.3: every defined condition and the error type it usually goes with, used
# when a web client leaves "type" out of an error object.
ERROR_CONDITIONS: dict[str, str] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}
# The two conditions whose element may carry text: an XMPP URI (RFC 6120 8.3.3.5 and 8.3.3.14).
_URI_CONDITIONS = frozenset({"gone", "redirect"})

_XML_LANG = (NS_XML, "lang")


def _add(parent: domish.Element, uri: str, name: str, text: str = "") -> domish.Element:
    """
    Append a new child element (with optional text) to C{parent}.  Direct list operations: the
    same result as C{addElement}, without its zope interface check per child, which is most of
    its cost and this runs for every element of every frame; and without the link back to the
    parent, as for every stanza the core receives (L{xmppjson.xmltext.StanzaParser}).
    """
    child = Element((uri, name), uri)
    if text:
        child.children.append(text)
    parent.children.append(child)
    return child


class FrameError(BadRequest):
    """
    A WebSocket frame that cannot be read: not JSON, not an object, an unknown frame type, a key
    of the wrong type or value.  The door answers it with L{errorFrame} and keeps the socket.

    @ivar text: what is wrong, prefixed with the path of the offending key
        (C{payload.to: not a valid JID}).
    @ivar frameId: the payload's C{id} if it could be read (a string or an integer), else
        C{None}; echoed in the error frame so the client can tell which frame failed.
    @ivar tooBig: C{True} only for L{FrameTooBig}.
    """

    tooBig = False

    def __init__(self, text: str, frameId: str | int | None = None):
        super().__init__(text)
        self.frameId = frameId


class FrameTooBig(FrameError):
    """
    A frame larger than the size limit.  It is not parsed at all (so C{frameId} is C{None}), and
    its condition is C{policy-violation} so the door can count or log it apart.
    """

    condition = "policy-violation"
    tooBig = True



# ---------------------------------------------------------------------------------------------
# JSON in and out
# ---------------------------------------------------------------------------------------------


def _refuseConstant(name: str) -> Any:
    # json accepts NaN and Infinity by default; they are not JSON.
    raise ValueError(f"{name} is not allowed in JSON")


# Built once: json.loads/json.dumps with keyword arguments build a new decoder/encoder per call.
_decoder = json.JSONDecoder(parse_constant=_refuseConstant)
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_scanOnce = _decoder.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__

# JSONEncoder.encode builds a new C encoder (and a dict for its circular-reference check) on
# every call, which is about half of what it costs for a frame; this is the same C encoder with
# the same settings, built once and without the check (a frame built by toFrame has no cycles).
# The string encoder is the one JSONEncoder picks for ensure_ascii=False.
_encodeString = json.encoder.encode_basestring
_makeEncoder = getattr(json.encoder, "c_make_encoder", None)
_cEncoder = (
    None if _makeEncoder is None
    else _makeEncoder(None, _encoder.default, _encodeString, None, ":", ",", False, False, True)
)


def _encodeOnce(value: Any) -> str:
    return "".join(_cEncoder(value, 0))  # type: ignore[misc]


# The json module's own encoder on an interpreter without the C accelerator.
_encode: Callable[[Any], str] = _encoder.encode if _cEncoder is None else _encodeOnce

# The original API documents its roster request as  "query": {"jabber:iq:roster"}  which is not
# JSON.  Clients were written from that page, so exactly that shape (a braced, quoted namespace
# as the value of "query") is rewritten to a plain string, and only after the real parser has
# refused the frame: it is a repair of one known mistake, not a lenient JSON parser.
_SET_LITERAL = re.compile(r'([{,]\s*"query"\s*:\s*)\{\s*("[^"\\\s{}]+")\s*\}')


def _decode(text: str) -> Any:
    try:
        return _decoder.decode(text)
    except RecursionError:
        raise FrameError(f"frame: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        original = e
    repaired, count = _SET_LITERAL.subn(r"\1\2", text, count=1)
    if count:
        try:
            return _decoder.decode(repaired)
        except (ValueError, RecursionError):
            pass
    raise FrameError(f"frame: not valid JSON ({original})") from None


def _checkDepth(value: Any) -> None:
    # Iterative so that the check itself cannot hit the recursion limit.
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FrameError(f"frame: nested deeper than {MAX_DEPTH} levels")
        children = current.values() if type(current) is dict else current
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))


def _readableId(payload: Any) -> str | int | None:
    if type(payload) is not dict:
        return None
    value = payload.get("id")
    if type(value) is str and len(value) <= LIMIT_ID:
        return value
    if type(value) is int and -(2**53) < value < 2**53:
        return value
    return None


def parseFrame(text: str | bytes, maxSize: int = MAX_FRAME_SIZE) -> domish.Element:
    """
    Read one WebSocket text frame sent by a web client.

    @param text: the frame, as text or as the UTF-8 bytes Autobahn hands over.
    @param maxSize: the size limit, in bytes of UTF-8.
    @return: a C{message}, C{presence} or C{iq} element in C{jabber:client}, with no C{from}
        attribute (the door sets it; a client-supplied C{from} is ignored).
    @raise FrameTooBig: the frame is over C{maxSize} bytes.
    @raise FrameError: anything else that makes the frame unreadable.
    """
    if type(text) is str:
        size = len(text)
        # Only encode when the character count cannot settle it (a UTF-8 character is 1-4 bytes).
        if size * 4 > maxSize and size <= maxSize:
            size = len(text.encode("utf-8", "surrogatepass"))
        if size > maxSize:
            raise FrameTooBig(f"frame: too big ({size} bytes, the limit is {maxSize})")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        if len(raw) > maxSize:
            raise FrameTooBig(f"frame: too big ({len(raw)} bytes, the limit is {maxSize})")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FrameError(f"frame: not valid UTF-8 (at byte {e.start})") from None
    else:
        raise TypeError(f"a frame is str or bytes, not {type(text).__name__}")

    # The scanner alone, without JSONDecoder.decode's two whitespace regexes around it: a
    # frame it reads to its last character is exactly what decode would give; anything else
    # (leading or trailing space, an error) goes through _decode, which words the errors.
    whole: str | None = text  # the frame's text, when it is the JSON read (see _fastMessage)
    try:
        frame, end = _scanOnce(text, 0)
    except Exception:  # noqa: BLE001 - StopIteration, ValueError, RecursionError: see _decode
        frame = _decode(text)
        whole = None  # (perhaps repaired: not what was read)
    else:
        if end != len(text):
            frame = _decode(text)
            whole = None
    if type(frame) is dict and len(frame) == 2:
        # The frames that are the traffic (see _fastMessage): read without the general
        # machinery, or, at the first thing out of the ordinary, by it from the start.
        kind = frame.get("type")
        payload = frame.get("payload")
        if type(payload) is dict:
            if kind == "message":
                element = _fastMessage(payload, whole)
                if element is not None:
                    return element
            elif kind == "presence":
                element = _fastPresence(payload)
                if element is not None:
                    return element
    if type(frame) is not dict:
        if type(frame) is list and text.count("[") + text.count("{") > MAX_DEPTH:
            _checkDepth(frame)
        raise FrameError('frame: must be a JSON object {"type": ..., "payload": {...}}')
    payload = frame.get("payload", _MISSING)
    frameId = _readableId(payload)
    try:
        # Counting brackets is a cheap upper bound of the depth; walk only when it is not enough.
        if text.count("{") + text.count("[") > MAX_DEPTH:
            _checkDepth(frame)
        for key in frame:
            if key != "type" and key != "payload":
                raise FrameError(
                    f"frame: unknown key {key[:64]!r} (a frame has only type and payload)"
                )
        kind = frame.get("type", _MISSING)
        if kind is _MISSING:
            raise FrameError("type: missing")
        if type(kind) is not str:
            raise FrameError("type: must be a string")
        reader = _READERS.get(kind)
        if reader is None:
            if kind in ("error", "session"):
                raise FrameError(f"type: {kind!r} frames are sent by the server only")
            raise FrameError(f"type: unknown frame type {kind[:64]!r} (message, presence or iq)")
        if payload is _MISSING:
            raise FrameError("payload: missing")
        if type(payload) is not dict:
            raise FrameError("payload: must be an object")
        return reader(payload)
    except FrameError as e:
        if e.frameId is None:
            e.frameId = frameId
        raise


def errorFrame(condition: str, text: str, frameId: str | int | None = None) -> str:
    """
    The error frame answering an unreadable frame:
    C{{"type":"error","payload":{"condition":...,"text":...,"id":...}}}.
    """
    return _encoder.encode(
        {"type": "error", "payload": {"condition": condition, "text": text, "id": frameId}}
    )


def sessionFrame(jid: str, version: int = DIALECT_VERSION) -> str:
    """The first frame on every socket: C{{"type":"session","payload":{"jid":...,"version":1}}}."""
    return _encoder.encode({"type": "session", "payload": {"jid": jid, "version": version}})


def serialize(element: domish.Element) -> str:
    """L{toFrame}, as compact JSON text ready for a WebSocket text frame."""
    name = element.name
    try:
        if name == "message":
            text = _messageFrame(element)
            if text is not None:
                return text
        elif name == "presence":
            return _presenceFrame(element)
    except TypeError:
        pass  # a value that is not a string: the general path writes whatever it is
    return _encode(toFrame(element))


# ---------------------------------------------------------------------------------------------
# Input: values
# ---------------------------------------------------------------------------------------------

_MISSING: Any = object()

# Characters XML 1.0 cannot carry (section 2.2): C0 controls except TAB, LF, CR; surrogates
# (a JSON "\ud800" escape decodes to a lone one); U+FFFE and U+FFFF.
_NOT_XML = frozenset(
    [chr(c) for c in range(0x20) if c not in (0x9, 0xA, 0xD)]
    + [chr(c) for c in range(0xD800, 0xE000)]
    + ["\ufffe", "\uffff"]
)


def _string(value: Any, path: str, limit: int | None = None) -> str:
    """
    A string that may go into XML text or an attribute value.
    """
    if type(value) is not str:
        raise FrameError(f"{path}: must be a string")
    if limit is not None and len(value) > limit:
        raise FrameError(f"{path}: longer than {limit} characters")
    # Every printable character is a legal XML character, and isprintable() is a C loop, so the
    # set scan only runs for strings with newlines, tabs, format characters and the like.
    if not value.isprintable() and not _NOT_XML.isdisjoint(value):
        raise FrameError(f"{path}: contains a character XML cannot carry")
    return value


def _prepJID(value: str) -> str | None:
    """
    The normalised form of a JID, or C{None} if it is not a valid one.
    """
    try:
        jid = JID(value)
    except Exception:  # noqa: BLE001 - see below
        # Twisted's parser raises InvalidFormat for most bad input but also IndexError
        # ("a@b..c") and RuntimeError (""); all mean the same thing here.
        return None
    # Twisted accepts "@domain" and "user@domain/" (empty localpart or resource), which RFC 7622
    # forbids; refusing them keeps "@localhost" from silently meaning the server.
    slash = value.find("/")
    if value.startswith("@") or slash == len(value) - 1:
        return None
    for part in (jid.user, jid.host, jid.resource):
        if part and len(part.encode("utf-8")) > LIMIT_JID_PART:
            return None
    return jid.full()


# Twisted's stringprep costs ~100 us per JID and a web client addresses the same few contacts
# again and again, so results are memoised; only for short strings, to bound the memory an
# attacker sending unique long addresses can pin (2048 x 256 characters).
_prepJIDCached = functools.lru_cache(maxsize=2048)(_prepJID)


def _jid(value: Any, path: str) -> str:
    value = _string(value, path, 3 * LIMIT_JID_PART + 2)
    prepped = _prepJIDCached(value) if len(value) <= 256 else _prepJID(value)
    if prepped is None:
        raise FrameError(f"{path}: not a valid JID")
    return prepped


def _object(value: Any, path: str) -> dict:
    if type(value) is not dict:
        raise FrameError(f"{path}: must be an object")
    return value


def _emptyObject(value: Any, path: str) -> None:
    if type(value) is not dict or value:
        raise FrameError(f"{path}: must be {{}}")


def _unknownKey(key: str, path: str, known: Any) -> FrameError:
    return FrameError(
        f"{path}: unknown key {key[:64]!r} (known: {', '.join(sorted(known))})"
    )


# ---------------------------------------------------------------------------------------------
# Input: XML strings
# ---------------------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside an expat handler to abort the parse with a reason."""


class _OneElementReader:
    """
    Parse a string that must hold exactly one XML element, with expat, refusing DTDs, entity
    declarations and processing instructions.  Elements without a namespace are in
    C{jabber:client}, as they would be written inside a stanza on an XMPP stream.  The elements
    are built the way Twisted's own stream parser builds them (same C{uri}, C{defaultUri},
    C{localPrefixes}), so the c2s door serialises them like any stanza it parsed itself, but
    without links to their parents (as L{xmppjson.xmltext.StanzaParser} makes them).
    """

    def __init__(self, budget: list[int]):
        self.budget = budget
        self.root: domish.Element | None = None
        self.current: domish.Element | None = None
        self.open: list[domish.Element] = []  # the ancestors of current: no parent links
        self.depth = 0
        self.defaultNs = [NS_CLIENT]
        self.prefixes: dict[str, str] = {}
        parser = pyexpat.ParserCreate(None, " ")
        parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.buffer_text = True
        parser.StartDoctypeDeclHandler = self._refuseDoctype
        parser.EntityDeclHandler = self._refuseEntity
        parser.UnparsedEntityDeclHandler = self._refuseEntity
        parser.NotationDeclHandler = self._refuseEntity
        parser.ExternalEntityRefHandler = self._refuseExternal
        parser.ProcessingInstructionHandler = self._refusePI
        parser.XmlDeclHandler = self._refuseXmlDecl
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        parser.StartNamespaceDeclHandler = self._startNs
        parser.EndNamespaceDeclHandler = self._endNs
        self.parser = parser

    def read(self, text: str) -> domish.Element:
        if not text.lstrip().startswith("<"):
            # expat would say "syntax error" about text before the element
            raise _Refused("must hold exactly one element")
        try:
            self.parser.Parse(text, True)
        except pyexpat.ExpatError as e:
            # "no element found" also means an unclosed element; only without a root is it ours.
            if e.code == _JUNK_AFTER or (e.code == _NO_ELEMENTS and self.root is None):
                raise _Refused("must hold exactly one element")
            raise _Refused(f"not well-formed XML ({pyexpat.ErrorString(e.code)}, column {e.offset})")
        except UnicodeError:
            raise _Refused("contains a character XML cannot carry")
        assert self.root is not None  # expat reports "no element found" otherwise
        return self.root

    def _refuseDoctype(self, *args: Any) -> None:
        raise _Refused("DTDs are not allowed")

    def _refuseEntity(self, *args: Any) -> None:
        raise _Refused("entity declarations are not allowed")

    def _refuseExternal(
        self, context: str, base: str | None, systemId: str | None, publicId: str | None
    ) -> int:
        raise _Refused("external entities are not allowed")

    def _refusePI(self, *args: Any) -> None:
        raise _Refused("processing instructions are not allowed")

    def _refuseXmlDecl(self, *args: Any) -> None:
        raise _Refused("an XML declaration is not allowed")

    def _startNs(self, prefix: str | None, uri: str | None) -> None:
        if prefix is None:
            self.defaultNs.append(uri or "")
        else:
            self.prefixes[prefix] = uri or ""

    def _endNs(self, prefix: str | None) -> None:
        if prefix is None:
            self.defaultNs.pop()

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        if self.root is not None and self.current is None:
            raise _Refused("must hold exactly one element")
        self.depth += 1
        if self.depth > MAX_XML_DEPTH:
            raise _Refused(f"elements nested deeper than {MAX_XML_DEPTH} levels")
        self.budget[0] -= 1
        if self.budget[0] < 0:
            raise _Refused(f"more than {MAX_XML_ELEMENTS} elements in one frame")
        uri, sep, local = name.rpartition(" ")
        default = self.defaultNs[-1]
        if not sep:
            uri = default
        attributes: dict[Any, str] = {}
        for key, value in attrs.items():
            if " " in key:  # a namespaced attribute: "uri name", as a (uri, name) key in domish
                attrUri, _, attrName = key.rpartition(" ")
                attributes[(attrUri, attrName)] = value
            else:
                attributes[key] = value
        element = Element((uri, local), default, attributes, self.prefixes)
        self.prefixes = {}
        if self.current is None:
            self.root = element
        else:
            self.current.children.append(element)
            self.open.append(self.current)
        self.current = element

    def _end(self, name: str) -> None:
        self.depth -= 1
        assert self.current is not None
        self.current = self.open.pop() if self.open else None

    def _text(self, data: str) -> None:
        if self.current is not None:
            self.current.addContent(data)


_JUNK_AFTER = pyexpat.errors.codes[pyexpat.errors.XML_ERROR_JUNK_AFTER_DOC_ELEMENT]
_NO_ELEMENTS = pyexpat.errors.codes[pyexpat.errors.XML_ERROR_NO_ELEMENTS]


def _xmlElements(value: Any, path: str, budget: list[int]) -> list[domish.Element]:
    if type(value) is not list:
        raise FrameError(f"{path}: must be a list of strings, each one XML element")
    if len(value) > MAX_XML_ITEMS:
        raise FrameError(f"{path}: more than {MAX_XML_ITEMS} elements")
    elements = []
    for index, item in enumerate(value):
        itemPath = f"{path}[{index}]"
        if type(item) is not str:
            raise FrameError(f"{itemPath}: must be a string holding one XML element")
        try:
            elements.append(_OneElementReader(budget).read(item))
        except _Refused as e:
            raise FrameError(f"{itemPath}: {e}") from None
    return elements


# ---------------------------------------------------------------------------------------------
# Input: stanzas
# ---------------------------------------------------------------------------------------------


class _Reading:
    """
    What one payload has produced so far: the stanza, and the facts checked once all keys are
    read (keys may come in any order).
    """

    __slots__ = ("budget", "element", "error", "history", "payloads", "roster", "type")

    def __init__(self, name: str):
        self.element = Element((NS_CLIENT, name))
        self.type: str | None = None
        self.error = False
        self.payloads = 0  # iq payload children (roster query, ping, xml elements)
        self.roster: dict[str, Any] = {}
        self.history: dict[str, Any] | None = None
        self.budget = [MAX_XML_ELEMENTS]


_Handler = Callable[[_Reading, Any, str], None]


def _inIgnored(r: _Reading, value: Any, key: str) -> None:
    # from (set by the server), delay and stanza_id (server-set, echoed by clients), and the
    # original API's "name": "message".
    pass


def _inTo(r: _Reading, value: Any, key: str) -> None:
    if value != "":  # "" (as our own output shows a missing to) means the user's own account
        r.element.attributes["to"] = _jid(value, "payload.to")


def _inId(r: _Reading, value: Any, key: str) -> None:
    value = _string(value, "payload.id", LIMIT_ID)
    if value:
        r.element.attributes["id"] = value


def _inLang(r: _Reading, value: Any, key: str) -> None:
    value = _string(value, "payload.lang", LIMIT_LANG)
    if value:
        r.element.attributes[_XML_LANG] = value


def _inXml(r: _Reading, value: Any, key: str) -> None:
    element = r.element
    for child in _xmlElements(value, "payload.xml", r.budget):
        element.children.append(child)
        r.payloads += 1


def _inError(r: _Reading, value: Any, key: str) -> None:
    error = _errorElement(_object(value, "payload.error"), r.budget)
    r.element.children.append(error)
    r.error = True


_ERROR_KEYS = frozenset({"type", "condition", "text", "by", "uri", "xml"})


def _errorElement(value: dict, budget: list[int]) -> domish.Element:
    for key in value:
        if key not in _ERROR_KEYS:
            raise _unknownKey(key, "payload.error", _ERROR_KEYS)
    condition = value.get("condition", _MISSING)
    if condition is _MISSING:
        raise FrameError("payload.error.condition: missing")
    if type(condition) is not str or condition not in ERROR_CONDITIONS:
        raise FrameError("payload.error.condition: not an RFC 6120 stanza error condition")
    errorType = value.get("type", ERROR_CONDITIONS[condition])
    if type(errorType) is not str or errorType not in ERROR_TYPES:
        raise FrameError(
            "payload.error.type: must be one of auth, cancel, continue, modify, wait"
        )
    error = Element((NS_CLIENT, "error"), NS_CLIENT, {"type": errorType})
    if "by" in value:
        error.attributes["by"] = _jid(value["by"], "payload.error.by")
    conditionElement = _add(error, NS_STANZAS, condition)
    if "uri" in value:
        if condition not in _URI_CONDITIONS:
            raise FrameError("payload.error.uri: only for the conditions gone and redirect")
        uri = _string(value["uri"], "payload.error.uri", LIMIT_SHORT)
        if uri:
            conditionElement.children.append(uri)
    if "text" in value:
        text = _string(value["text"], "payload.error.text", LIMIT_TEXT)
        if text:
            _add(error, NS_STANZAS, "text", text)
    if "xml" in value:
        for child in _xmlElements(value["xml"], "payload.error.xml", budget):
            error.children.append(child)
    return error


def _inMessageType(r: _Reading, value: Any, key: str) -> None:
    if type(value) is not str or value not in MESSAGE_TYPES:
        raise FrameError("payload.type: must be one of chat, error, groupchat, headline, normal")
    r.element.attributes["type"] = r.type = value


def _inBody(r: _Reading, value: Any, key: str) -> None:
    # "" is what our output shows for a message without a body (chat states): no element.
    value = _string(value, "payload.body")
    if value:
        _add(r.element, NS_CLIENT, "body", value)


def _textHandler(limit: int) -> _Handler:
    def handler(r: _Reading, value: Any, key: str) -> None:
        _add(r.element, NS_CLIENT, key, _string(value, f"payload.{key}", limit))

    return handler


def _inChatState(r: _Reading, value: Any, key: str) -> None:
    # Any object: the original API shows composing as {"ID": ""}, and clients copy that.
    _object(value, f"payload.{key}")
    _add(r.element, NS_CHATSTATES, key)


def _inPresenceType(r: _Reading, value: Any, key: str) -> None:
    if type(value) is str and value in PRESENCE_TYPES:
        r.element.attributes["type"] = r.type = value
    elif value != "" and value != "available":  # both mean what a missing type means
        raise FrameError(
            "payload.type: must be one of unavailable, subscribe, subscribed, unsubscribe,"
            " unsubscribed, probe, error (or absent for available)"
        )


def _inShow(r: _Reading, value: Any, key: str) -> None:
    if type(value) is str and value in SHOWS:
        _add(r.element, NS_CLIENT, "show", value)
    elif value != "" and value != "av":  # the original API's spellings of available
        raise FrameError('payload.show: must be one of away, chat, dnd, xa (or "", "av")')


def _inPriority(r: _Reading, value: Any, key: str) -> None:
    if type(value) is not int or not -128 <= value <= 127:  # type() also excludes true/false
        raise FrameError("payload.priority: must be an integer from -128 to 127")
    _add(r.element, NS_CLIENT, "priority", str(value))


def _inIqType(r: _Reading, value: Any, key: str) -> None:
    if type(value) is not str or value not in IQ_TYPES:
        raise FrameError("payload.type: must be one of get, set, result, error")
    r.element.attributes["type"] = r.type = value


def _inQuery(r: _Reading, value: Any, key: str) -> None:
    if "query" in r.roster:
        raise FrameError("payload: give the roster query once (query or query-roster)")
    if key == "query-roster":
        _emptyObject(value, "payload.query-roster")
    elif type(value) is dict:
        # {"jabber:iq:roster": {}}
        if len(value) != 1 or NS_ROSTER not in value:
            raise FrameError(f'payload.query: must be "{NS_ROSTER}"')
        _emptyObject(value[NS_ROSTER], f"payload.query.{NS_ROSTER}")
    elif type(value) is str:
        if value != NS_ROSTER:
            raise FrameError(
                f"payload.query: unknown namespace {value[:64]!r} (only {NS_ROSTER} has a key;"
                " send other queries in xml)"
            )
    else:
        raise FrameError(f'payload.query: must be "{NS_ROSTER}"')
    r.roster["query"] = True


def _inVer(r: _Reading, value: Any, key: str) -> None:
    r.roster["ver"] = _string(value, "payload.ver", LIMIT_SHORT)


def _inItem(r: _Reading, value: Any, key: str) -> None:
    if "items" in r.roster:
        raise FrameError("payload: give either item or items, not both")
    r.roster["items"] = [_rosterItem(value, "payload.item")]


def _inItems(r: _Reading, value: Any, key: str) -> None:
    if "items" in r.roster:
        raise FrameError("payload: give either item or items, not both")
    if type(value) is not list:
        raise FrameError("payload.items: must be a list of objects")
    r.roster["items"] = [_rosterItem(v, f"payload.items[{i}]") for i, v in enumerate(value)]


_ITEM_KEYS = frozenset({"jid", "name", "subscription", "ask", "groups"})
_ITEM_ATTRIBUTES = frozenset({"jid", "name", "subscription", "ask"})


def _rosterItem(value: Any, path: str) -> domish.Element:
    value = _object(value, path)
    for key in value:
        if key not in _ITEM_KEYS:
            raise _unknownKey(key, path, _ITEM_KEYS)
    if "jid" not in value:
        raise FrameError(f"{path}.jid: missing")
    item = Element((NS_ROSTER, "item"))
    item.attributes["jid"] = _jid(value["jid"], f"{path}.jid")
    name = value.get("name")
    if name is not None:  # null is how our output shows "no name"
        item.attributes["name"] = _string(name, f"{path}.name", LIMIT_SHORT)
    subscription = value.get("subscription")
    if subscription == "remove":
        item.attributes["subscription"] = "remove"
    elif subscription is not None:
        # RFC 6121 2.1.2.5: the subscription state is the server's; a client only removes.
        raise FrameError(f'{path}.subscription: only "remove" can be sent')
    if value.get("ask") is not None:
        raise FrameError(f"{path}.ask: set by the server only")
    groups = value.get("groups")
    if groups is not None:
        if type(groups) is not list:
            raise FrameError(f"{path}.groups: must be a list of strings")
        if len(groups) > MAX_GROUPS:
            raise FrameError(f"{path}.groups: more than {MAX_GROUPS} groups")
        seen = set()
        for index, group in enumerate(groups):
            group = _string(group, f"{path}.groups[{index}]", LIMIT_SHORT)
            if not group:
                raise FrameError(f"{path}.groups[{index}]: must not be empty")
            if group in seen:
                raise FrameError(f"{path}.groups[{index}]: duplicate group {group[:64]!r}")
            seen.add(group)
            _add(item, NS_ROSTER, "group", group)
    return item


def _inPing(r: _Reading, value: Any, key: str) -> None:
    _emptyObject(value, "payload.ping")
    _add(r.element, NS_PING, "ping")
    r.payloads += 1


def _finishMessage(r: _Reading) -> None:
    _checkError(r)


def _finishPresence(r: _Reading) -> None:
    _checkError(r)


def _checkError(r: _Reading) -> None:
    if r.type == "error" and not r.error:
        raise FrameError("payload.error: required when type is 'error'")
    if r.error and r.type != "error":
        raise FrameError("payload.error: only allowed when type is 'error'")


# The keys of a history query: its XEP-0313 form fields, then its XEP-0059 paging.
_HISTORY_FIELDS = {"with": "with", "start": "start", "end": "end", "after_id": "after-id",
                   "before_id": "before-id", "ids": "ids"}
_HISTORY_PAGING = ("max", "after", "before")
MAX_HISTORY_IDS = 250


def _inHistory(r: _Reading, value: Any, key: str) -> None:
    """
    C{"history": {...}}: a XEP-0313 archive query, built in L{_finishIq} once the iq's id
    (its queryid) is known.
    """
    value = _object(value, "payload.history")
    history: dict[str, Any] = {}
    for name, item in value.items():
        path = f"payload.history.{name}"
        if name == "with":
            history[name] = _jid(item, path)
        elif name in ("start", "end", "after_id", "before_id", "after"):
            text = _string(item, path, LIMIT_ID)
            if not text:
                raise FrameError(f"{path}: must not be empty")
            history[name] = text
        elif name == "before":
            history[name] = _string(item, path, LIMIT_ID)  # "" asks for the last page
        elif name == "ids":
            if type(item) is not list or len(item) > MAX_HISTORY_IDS:
                raise FrameError(f"{path}: must be a list of at most {MAX_HISTORY_IDS} ids")
            ids = [_string(i, f"{path}[{n}]", LIMIT_ID) for n, i in enumerate(item)]
            if not all(ids):
                raise FrameError(f"{path}: ids must not be empty")
            history[name] = ids
        elif name == "max":
            if type(item) is not int or not 0 <= item <= 10**9:
                raise FrameError(f"{path}: must be a whole number, 0 or more")
            history[name] = item
        else:
            raise _unknownKey(name, "payload.history", (*_HISTORY_FIELDS, *_HISTORY_PAGING))
    r.history = history
    r.payloads += 1


def _historyQuery(history: dict[str, Any], queryid: str) -> domish.Element:
    """The C{<query xmlns='urn:xmpp:mam:2'/>} of a history object (see L{_inHistory})."""
    query = Element((NS_MAM, "query"))
    query.attributes["queryid"] = queryid
    fields = [(var, history[name]) for name, var in _HISTORY_FIELDS.items() if name in history]
    if fields:
        form = _add(query, NS_DATA, "x")
        form.attributes["type"] = "submit"
        formType = _add(form, NS_DATA, "field")
        formType.attributes.update({"var": "FORM_TYPE", "type": "hidden"})
        _add(formType, NS_DATA, "value", NS_MAM)
        for var, values in fields:
            field = _add(form, NS_DATA, "field")
            field.attributes["var"] = var
            for text in values if type(values) is list else [values]:
                _add(field, NS_DATA, "value", text)
    if any(name in history for name in _HISTORY_PAGING):
        rsm = _add(query, NS_RSM, "set")
        if "max" in history:
            _add(rsm, NS_RSM, "max", str(history["max"]))
        for name in ("after", "before"):
            if name in history:
                _add(rsm, NS_RSM, name, history[name])
    return query


def _finishIq(r: _Reading) -> None:
    element = r.element
    if r.type is None:
        raise FrameError("payload.type: missing (get, set, result or error)")
    if not element.getAttribute("id"):
        raise FrameError("payload.id: missing (every iq needs an id)")
    _checkError(r)
    if r.history is not None:
        if r.type != "set":
            raise FrameError("payload.history: only in an iq of type set")
        query = _historyQuery(r.history, element.attributes["id"])
        element.children.append(query)
    roster = r.roster
    if roster:
        if "query" not in roster:
            extra = "ver" if "ver" in roster else "item"
            raise FrameError(f'payload.{extra}: only with "query": "{NS_ROSTER}"')
        query = _add(element, NS_ROSTER, "query")
        if "ver" in roster:
            query.attributes["ver"] = roster["ver"]
        items = roster.get("items", ())
        if r.type == "set" and len(items) != 1:
            raise FrameError("payload.item: a roster set carries exactly one item")
        if r.type == "get" and items:
            raise FrameError("payload.item: a roster get carries no item")
        for item in items:
            query.children.append(item)
        r.payloads += 1
    if r.type in ("get", "set"):
        if r.payloads != 1:
            raise FrameError(
                f"payload: an iq {r.type} carries exactly one payload (roster query, ping or"
                f" one xml element), this one has {r.payloads}"
            )
    elif r.payloads > 1:
        raise FrameError(f"payload: an iq {r.type} carries at most one payload")


_COMMON: dict[str, _Handler] = {
    "from": _inIgnored,
    "to": _inTo,
    "id": _inId,
    "lang": _inLang,
    "error": _inError,
    "xml": _inXml,
    "delay": _inIgnored,
    "stanza_id": _inIgnored,
}

_MESSAGE_IN: dict[str, _Handler] = {
    **_COMMON,
    "type": _inMessageType,
    "name": _inIgnored,
    "body": _inBody,
    "subject": _textHandler(LIMIT_SUBJECT),
    "thread": _textHandler(LIMIT_THREAD),
    **{state: _inChatState for state in CHAT_STATES},
}

_PRESENCE_IN: dict[str, _Handler] = {
    **_COMMON,
    "type": _inPresenceType,
    "show": _inShow,
    "status": _textHandler(LIMIT_STATUS),
    "priority": _inPriority,
}

_IQ_IN: dict[str, _Handler] = {
    **_COMMON,
    "type": _inIqType,
    "query": _inQuery,
    "query-roster": _inQuery,
    "ver": _inVer,
    "item": _inItem,
    "items": _inItems,
    "ping": _inPing,
    "history": _inHistory,
}


def _reader(
    name: str, handlers: dict[str, _Handler], finish: Callable[[_Reading], None]
) -> Callable[[dict], domish.Element]:
    def read(payload: dict) -> domish.Element:
        r = _Reading(name)
        for key, value in payload.items():
            handler = handlers.get(key)
            if handler is None:
                raise _unknownKey(key, "payload", handlers)
            handler(r, value, key)
        finish(r)
        return r.element

    read.__name__ = f"read_{name}"
    return read


_READERS: dict[str, Callable[[dict], domish.Element]] = {
    "message": _reader("message", _MESSAGE_IN, _finishMessage),
    "presence": _reader("presence", _PRESENCE_IN, _finishPresence),
    "iq": _reader("iq", _IQ_IN, _finishIq),
}


# ---------------------------------------------------------------------------------------------
# Input: the fast path
# ---------------------------------------------------------------------------------------------
#
# Most frames a web client sends are a chat message (to, type, body, id, maybe a chat state), a
# chat state alone, or a presence (show, status, priority).  For these the general reader's
# per-key handler calls, its _Reading and the checks of what was read cost more than the
# reading itself.  The readers below accept only such frames, with only values that the
# general reader accepts too and reads the same way, and build the same element (same
# attributes in the same order, same children in the same order).  For anything else, an
# unknown key, a value of another type, one that the general reader would refuse, a value
# nested deeper than a flat chat-state object (so no depth check is needed), they return None
# and parseFrame starts over with the general reader, which alone words refusals.  The
# hypothesis tests in tests/test_jsonstanza.py compare both readers on random frames.

_FAST_MESSAGE_TYPES = MESSAGE_TYPES - {"error"}  # an error message needs the error key
_FAST_PRESENCE_TYPES = PRESENCE_TYPES - {"error"}
_CHAT_STATE_KEYS = frozenset(CHAT_STATES)
_UNLIMITED = sys.maxsize  # a body is bounded by the frame size only


def _fastText(value: Any, limit: int) -> bool:
    """Whether C{_string(value, path, limit)} would return C{value}."""
    return (
        type(value) is str
        and len(value) <= limit
        and (value.isprintable() or _NOT_XML.isdisjoint(value))
    )


def _fastCommon(attributes: dict, key: str, value: Any) -> bool:
    """
    Read C{to}, C{id} or C{from} as L{_inTo}, L{_inId} and L{_inIgnored} do; C{False} for any
    other key, and for a value to leave to them.
    """
    if key == "to":
        if type(value) is not str:
            return False
        if value:
            # _jid's memo is for strings of up to 256 characters; longer ones go the general way.
            if len(value) > 256 or not value.isprintable():
                return False
            to = _prepJIDCached(value)
            if to is None:
                return False
            attributes["to"] = to
    elif key == "id":
        if not _fastText(value, LIMIT_ID):
            return False
        if value:
            attributes["id"] = value
    elif key == "from":
        return type(value) is not dict and type(value) is not list
    else:
        return False
    return True


def _flatObject(value: Any) -> bool:
    """An object whose values are not containers: nesting stays within three levels."""
    if type(value) is not dict:
        return False
    for item in value.values():
        if type(item) is dict or type(item) is list:
            return False
    return True


def _fastMessage(payload: dict, frame: str | None = None) -> domish.Element | None:
    """
    What the general reader makes of a message payload, or C{None} (see above).

    With C{frame}, the frame's text (the JSON this payload was read from, whole), the message
    keeps it, with its children and attribute values as read, as C{_frame}: the archive
    stores that text rather than serialising the message as XML, while the message is still
    what was read (L{archiveText}; docs/performance.md, item 24).
    """
    element = Element((NS_CLIENT, "message"), NS_CLIENT)
    attributes = element.attributes
    for key, value in payload.items():
        if key == "body":
            if not _fastText(value, _UNLIMITED):
                return None
            if value:
                _add(element, NS_CLIENT, "body", value)
        elif key == "type":
            if type(value) is not str or value not in _FAST_MESSAGE_TYPES:
                return None
            attributes["type"] = value
        elif key in _CHAT_STATE_KEYS:
            if not _flatObject(value):
                return None
            _add(element, NS_CHATSTATES, key)
        elif key == "name":
            if type(value) is dict or type(value) is list:
                return None
        elif not _fastCommon(attributes, key, value):
            return None
    if frame is not None:
        element._frame = (  # type: ignore[attr-defined]
            tuple(element.children), tuple(attributes.values()), frame)
    return element


#: How an archived message kept as its frame begins (XML begins with "<").
_ARCHIVED_FRAME = '{"from":'


def archiveText(message: domish.Element, children: list[Any], added: int) -> str | None:
    """
    What the archive stores for a message the JSON door's fast reader read (L{_fastMessage}):
    the frame it was read from, whole, with the C{from} the core gave it, as
    C{{"from": ..., "frame": <the frame>}}; L{archivedFrame} reads it back.  Only while the
    message is still what was read: the same children (the same objects, none taken away),
    followed by the C{added} the core appended (its stanza-id, which the caller checked), and
    the same attributes, followed by C{from}.  Else C{None}, and the archive serialises the
    message.
    """
    # The instance's own dict: domish's elements would answer a child named "_frame".
    made = message.__dict__.get("_frame")
    if made is None:
        return None
    read, values, frame = made
    if len(read) + added != len(children):
        return None
    # (children is the longer when added: zip stops at the children read.)
    for child, kept in zip(read, children, strict=False):
        if child is not kept:
            return None
    attributes = message.attributes
    if len(attributes) != len(values) + 1:
        return None
    sender = attributes.get("from")
    # from is the one attribute added, and the last: the others are as read.
    if type(sender) is not str or tuple(attributes.values())[:-1] != values:
        return None
    return _ARCHIVED_FRAME + _encodeString(sender) + ',"frame":' + frame + "}"


def isArchivedFrame(text: str) -> bool:
    """Whether an archived message's text is one L{archiveText} made (else it is XML)."""
    return text.startswith(_ARCHIVED_FRAME)


def archivedFrame(text: str) -> domish.Element:
    """
    The message L{archiveText} stored: its frame read again (the same reader makes the same
    message), with its C{from}.

    @raise ValueError: C{text} is not such a record.
    @raise FrameError: its frame cannot be read (any more).
    """
    stored = _decoder.decode(text)
    if type(stored) is not dict or type(stored.get("from")) is not str \
            or type(stored.get("frame")) is not dict:
        raise ValueError("not an archived frame")
    # The size limit was the door's when it was read; the frame is stored whole.
    message = parseFrame(_encode(stored["frame"]), sys.maxsize)
    message["from"] = stored["from"]
    return message


def _fastPresence(payload: dict) -> domish.Element | None:
    """What the general reader makes of a presence payload, or C{None} (see above)."""
    element = Element((NS_CLIENT, "presence"), NS_CLIENT)
    attributes = element.attributes
    for key, value in payload.items():
        if key == "show":
            if type(value) is str and value in SHOWS:
                _add(element, NS_CLIENT, "show", value)
            elif value != "" and value != "av":
                return None
        elif key == "status":
            if not _fastText(value, LIMIT_STATUS):
                return None
            _add(element, NS_CLIENT, "status", value)
        elif key == "priority":
            if type(value) is not int or not -128 <= value <= 127:
                return None
            _add(element, NS_CLIENT, "priority", str(value))
        elif key == "type":
            if type(value) is str and value in _FAST_PRESENCE_TYPES:
                attributes["type"] = value
            elif value != "" and value != "available":
                return None
        elif not _fastCommon(attributes, key, value):
            return None
    return element


# ---------------------------------------------------------------------------------------------
# Output: XML strings
# ---------------------------------------------------------------------------------------------


def _escapeText(text: str) -> str:
    # CR must be a reference, or the reader's end-of-line handling turns it into LF.
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _escapeAttr(text: str) -> str:
    # TAB, LF and CR must be references, or attribute-value normalisation turns them into spaces.
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&apos;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def _writeXml(
    element: domish.Element, uri: str, inherited: str, scope: str | None, out: list[str]
) -> None:
    """
    Write C{element} (whose namespace, resolved the way domish resolves it, is C{uri}).

    @param inherited: domish's default namespace for children of the parent, which resolves
        C{None} namespaces.
    @param scope: the default namespace declared in the text written so far (C{None} at the
        root, where nothing is declared yet, so the root always declares its namespace).
    """
    name = element.name
    out.append("<" + name)
    if uri != scope:
        out.append(f" xmlns='{_escapeAttr(uri)}'")
    prefixCount = 0
    for key, value in element.attributes.items():
        if type(key) is tuple:
            attrUri, attrName = key
            if attrUri == NS_XML:
                out.append(f" xml:{attrName}='{_escapeAttr(value)}'")
            elif attrUri:
                # A prefix of our own, declared right here: always in scope, never clashing
                # with a declaration further up (we write none).
                prefix = f"ns{prefixCount}"
                prefixCount += 1
                out.append(
                    f" xmlns:{prefix}='{_escapeAttr(attrUri)}' {prefix}:{attrName}="
                    f"'{_escapeAttr(value)}'"
                )
            else:
                out.append(f" {attrName}='{_escapeAttr(value)}'")
        else:
            out.append(f" {key}='{_escapeAttr(value)}'")
    out.append(">")
    mark = len(out)
    default = element.defaultUri if element.defaultUri is not None else inherited
    for child in element.children:
        if isinstance(child, str):
            if isinstance(child, domish.SerializedXML):
                out.append(child)  # raw XML placed by server code; written as domish would
            elif child:
                out.append(_escapeText(child))
        else:
            childDefault = child.defaultUri if child.defaultUri is not None else default
            childUri = child.uri if child.uri is not None else childDefault
            _writeXml(child, childUri, default, uri, out)
    if len(out) == mark:  # no children, or only empty text: one canonical form, <x/>
        out[-1] = "/>"
    else:
        out.append(f"</{name}>")


def _xmlString(child: domish.Element, uri: str) -> str:
    out: list[str] = []
    _writeXml(child, uri, NS_CLIENT, None, out)
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Output: stanzas
# ---------------------------------------------------------------------------------------------


def _simpleText(element: domish.Element) -> str | None:
    """
    The text of an element that is nothing but text (no attributes, no child elements), which is
    what a plain JSON string can represent exactly; else C{None}.
    """
    if element.attributes:
        return None
    children = element.children
    if not children:
        return ""
    if len(children) == 1:
        child = children[0]
        return child if type(child) is str else None
    if all(type(c) is str for c in children):
        return "".join(children)
    return None


def _isEmpty(element: domish.Element) -> bool:
    return not element.attributes and not element.children


# An output handler gets the payload being built and one child; it returns True if it put the
# child in a key, False to have the child serialised into "xml".
_OutHandler = Callable[[dict, domish.Element], bool]


def _outBody(payload: dict, child: domish.Element) -> bool:
    # Only a non-empty body can use the key: "" on the key means "no body", so an empty <body/>
    # (or a second body, or one with xml:lang) travels in xml instead.
    if payload["body"]:
        return False
    text = _simpleText(child)
    if not text:
        return False
    payload["body"] = text
    return True


def _outText(key: str) -> _OutHandler:
    def handler(payload: dict, child: domish.Element) -> bool:
        if key in payload:
            return False
        text = _simpleText(child)
        if text is None:
            return False
        payload[key] = text
        return True

    return handler


def _outShow(payload: dict, child: domish.Element) -> bool:
    if "show" in payload:
        return False
    text = _simpleText(child)
    if text not in SHOWS:
        return False
    payload["show"] = text
    return True


def _outPriority(payload: dict, child: domish.Element) -> bool:
    if "priority" in payload:
        return False
    value = _priorityValue(child)
    if value is None:
        return False
    payload["priority"] = value
    return True


def _priorityValue(child: domish.Element) -> int | None:
    text = _simpleText(child)
    if not text or len(text) > 4:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    # Only the canonical spelling, so that JSON -> XML gives back exactly the same text.
    if not -128 <= value <= 127 or str(value) != text:
        return None
    return value


def _outChatState(payload: dict, child: domish.Element) -> bool:
    name = child.name
    if name in payload or not _isEmpty(child):
        return False
    # The original API shows composing as {"ID": ""}; clients test for it, so it is kept.
    payload[name] = {"ID": ""} if name == "composing" else {}
    return True


def _outDelay(payload: dict, child: domish.Element) -> bool:
    if "delay" in payload:
        return False
    delay = _delayObject(child)
    if delay is None:
        return False
    payload["delay"] = delay
    return True


def _delayObject(child: domish.Element) -> dict[str, Any] | None:
    attrs = child.attributes
    stamp = attrs.get("stamp")
    if stamp is None or any(k not in ("stamp", "from") for k in attrs):
        return None
    if any(type(c) is not str for c in child.children):
        return None
    delay: dict[str, Any] = {"stamp": stamp, "from": attrs.get("from")}
    text = "".join(child.children)
    if text:
        delay["text"] = text  # XEP-0203's optional natural-language reason
    return delay


def _outStanzaId(payload: dict, child: domish.Element) -> bool:
    stanzaId = child.attributes.get("id")
    if "stanza_id" in payload or stanzaId is None or child.children:
        return False
    payload["stanza_id"] = stanzaId
    return True


def _outError(payload: dict, child: domish.Element) -> bool:
    if "error" in payload:
        return False
    error = _errorObject(child)
    if error is None:
        return False
    payload["error"] = error
    return True


def _errorObject(element: domish.Element) -> dict[str, Any] | None:
    """The error object of an C{<error/>}, or C{None} when the object cannot represent it."""
    attrs = element.attributes
    errorType = attrs.get("type")
    # "code" is XEP-0086's legacy number, which Twisted's StanzaError adds to every error it
    # builds: obsolete, implied by the condition, and left out rather than let it push every
    # server error into "xml".
    if errorType not in ERROR_TYPES or any(k not in ("type", "by", "code") for k in attrs):
        return None
    condition = None
    uri = None
    text = None
    extra = []
    default = element.defaultUri if element.defaultUri is not None else NS_CLIENT
    for child in element.children:
        if isinstance(child, str):
            if isinstance(child, domish.SerializedXML) or child.strip():
                return None
            continue
        childUri = child.uri if child.uri is not None else default
        if childUri == NS_STANZAS:
            if child.name == "text":
                if text is not None:
                    return None
                # xml:lang of the text is the one thing dropped here (documented).
                if any(k != _XML_LANG for k in child.attributes):
                    return None
                if any(type(c) is not str for c in child.children):
                    return None
                text = "".join(child.children)
            else:
                if condition is not None or child.name not in ERROR_CONDITIONS:
                    return None
                content = _simpleText(child)
                if content is None or (content and child.name not in _URI_CONDITIONS):
                    return None
                condition = child.name
                uri = content or None
        else:
            extra.append(_xmlString(child, childUri))
    if condition is None:
        return None
    error: dict[str, Any] = {"type": errorType, "condition": condition}
    if text:
        error["text"] = text
    if "by" in attrs:
        error["by"] = attrs["by"]
    if uri:
        error["uri"] = uri
    if extra:
        error["xml"] = extra
    return error


def _outPing(payload: dict, child: domish.Element) -> bool:
    if "ping" in payload or not _isEmpty(child):
        return False
    payload["ping"] = {}
    return True


def _resolved(node: domish.Element, default: str | None) -> str | None:
    """The namespace of C{node} as domish resolves it under a parent whose default is C{default}."""
    if node.uri is not None:
        return node.uri
    return node.defaultUri if node.defaultUri is not None else default


def _elementsOnly(parent: domish.Element) -> list[domish.Element] | None:
    """The child elements, or C{None} if there is text (other than whitespace) among them."""
    elements = []
    for node in parent.children:
        if isinstance(node, str):
            if isinstance(node, domish.SerializedXML) or node.strip():
                return None
        else:
            elements.append(node)
    return elements


def _outMamResult(payload: dict, child: domish.Element) -> bool:
    """
    A XEP-0313 result, C{<result queryid id><forwarded><delay/><message/></forwarded></result>},
    as C{"result": {"queryid", "id", "delay", "message": {...}}}, the archived message in the
    same shape as any message.  Anything else in it: the whole result goes to "xml".
    """
    attrs = child.attributes
    if "result" in payload or "id" not in attrs or any(k not in ("id", "queryid") for k in attrs):
        return False
    elements = _elementsOnly(child)
    default = child.defaultUri if child.defaultUri is not None else NS_MAM
    if not elements or len(elements) != 1:
        return False
    forwarded = elements[0]
    if forwarded.name != "forwarded" or _resolved(forwarded, default) != NS_FORWARD:
        return False
    inner = _elementsOnly(forwarded)
    if forwarded.attributes or not inner or len(inner) > 2:
        return False
    *delays, message = inner
    fdefault = forwarded.defaultUri if forwarded.defaultUri is not None else NS_FORWARD
    if message.name != "message" or _resolved(message, fdefault) != NS_CLIENT:
        return False
    result: dict[str, Any] = {}
    if "queryid" in attrs:
        result["queryid"] = attrs["queryid"]
    result["id"] = attrs["id"]
    if delays:
        delay = delays[0]
        if delay.name != "delay" or _resolved(delay, fdefault) != NS_DELAY:
            return False
        if not _outDelay(result, delay):
            return False
    result["message"] = _messagePayload(message)
    payload["result"] = result
    return True


def _outCarbon(payload: dict, child: domish.Element) -> bool:
    """
    A XEP-0280 carbon copy, C{<received|sent><forwarded><message/></forwarded></received|sent>},
    as C{"carbon": {"direction": "received" | "sent", "message": {...}}}, the copied message in
    the same shape as any message.  Anything else in it: the carbon goes to "xml".  Only the
    server sends carbons: on input the key is refused like any unknown key.
    """
    if "carbon" in payload or child.attributes:
        return False
    elements = _elementsOnly(child)
    if not elements or len(elements) != 1:
        return False
    forwarded = elements[0]
    default = child.defaultUri if child.defaultUri is not None else NS_CARBONS
    if forwarded.name != "forwarded" or _resolved(forwarded, default) != NS_FORWARD:
        return False
    inner = _elementsOnly(forwarded)
    if forwarded.attributes or not inner or len(inner) != 1:
        return False
    message = inner[0]
    fdefault = forwarded.defaultUri if forwarded.defaultUri is not None else NS_FORWARD
    if message.name != "message" or _resolved(message, fdefault) != NS_CLIENT:
        return False
    payload["carbon"] = {"direction": child.name, "message": _messagePayload(message)}
    return True


_FIN_PARTS = frozenset({"first", "last", "count"})


def _outMamFin(payload: dict, child: domish.Element) -> bool:
    """
    The C{<fin complete='true|false'><set>first, last, count</set></fin>} ending a XEP-0313
    query, as C{"history": {"first", "last", "complete", "count", "index"}} (C{null} for what
    the set does not have).  Anything else in it: the fin goes to "xml".
    """
    attrs = child.attributes
    if "history" in payload or list(attrs) != ["complete"] or attrs["complete"] not in (
        "true", "false"
    ):
        return False
    elements = _elementsOnly(child)
    default = child.defaultUri if child.defaultUri is not None else NS_MAM
    if not elements or len(elements) != 1:
        return False
    rsm = elements[0]
    if rsm.name != "set" or _resolved(rsm, default) != NS_RSM or rsm.attributes:
        return False
    parts: dict[str, str] = {}
    index = None
    sdefault = rsm.defaultUri if rsm.defaultUri is not None else NS_RSM
    nodes = _elementsOnly(rsm)
    if nodes is None:
        return False
    for node in nodes:
        if (node.name not in _FIN_PARTS or node.name in parts
                or _resolved(node, sdefault) != NS_RSM
                or any(type(c) is not str for c in node.children)):
            return False
        text = "".join(node.children)
        if node.name == "first" and node.attributes:
            index = node.attributes.get("index")
            if list(node.attributes) != ["index"] or not index.isdigit():
                return False
        elif node.attributes:
            return False
        if node.name == "count" and not text.isdigit():
            return False
        parts[node.name] = text
    payload["history"] = {
        "first": parts.get("first"),
        "last": parts.get("last"),
        "complete": attrs["complete"] == "true",
        "count": int(parts["count"]) if "count" in parts else None,
        "index": int(index) if index is not None else None,
    }
    return True


def _outRoster(payload: dict, child: domish.Element) -> bool:
    if "query" in payload or any(k != "ver" for k in child.attributes):
        return False
    items = []
    for node in child.children:
        if isinstance(node, str):
            if isinstance(node, domish.SerializedXML) or node.strip():
                return False
            continue
        item = _rosterItemObject(node, child)
        if item is None:
            return False
        items.append(item)
    payload["query"] = NS_ROSTER
    if "ver" in child.attributes:
        payload["ver"] = child.attributes["ver"]
    payload["items"] = items
    return True


def _rosterItemObject(node: domish.Element, query: domish.Element) -> dict[str, Any] | None:
    default = query.defaultUri if query.defaultUri is not None else NS_ROSTER
    if node.name != "item" or (node.uri if node.uri is not None else default) != NS_ROSTER:
        return None
    attrs = node.attributes
    if "jid" not in attrs or any(k not in _ITEM_ATTRIBUTES for k in attrs):
        return None
    groups: list[str] = []
    itemDefault = node.defaultUri if node.defaultUri is not None else default
    for group in node.children:
        if isinstance(group, str):
            if isinstance(group, domish.SerializedXML) or group.strip():
                return None
            continue
        groupUri = group.uri if group.uri is not None else itemDefault
        if group.name != "group" or groupUri != NS_ROSTER:
            return None
        name = _simpleText(group)
        # An empty or repeated group cannot come back through the input rules: keep it in xml.
        if not name or name in groups:
            return None
        groups.append(name)
    return {
        "jid": attrs["jid"],
        "name": attrs.get("name"),
        "subscription": attrs.get("subscription"),
        "ask": attrs.get("ask"),
        "groups": groups,
    }


_MESSAGE_OUT: dict[tuple[str, str], _OutHandler] = {
    (NS_CLIENT, "body"): _outBody,
    (NS_CLIENT, "subject"): _outText("subject"),
    (NS_CLIENT, "thread"): _outText("thread"),
    (NS_CLIENT, "error"): _outError,
    (NS_DELAY, "delay"): _outDelay,
    (NS_SID, "stanza-id"): _outStanzaId,
    (NS_MAM, "result"): _outMamResult,
    (NS_CARBONS, "received"): _outCarbon,
    (NS_CARBONS, "sent"): _outCarbon,
    **{(NS_CHATSTATES, state): _outChatState for state in CHAT_STATES},
}

_PRESENCE_OUT: dict[tuple[str, str], _OutHandler] = {
    (NS_CLIENT, "show"): _outShow,
    (NS_CLIENT, "status"): _outText("status"),
    (NS_CLIENT, "priority"): _outPriority,
    (NS_CLIENT, "error"): _outError,
    (NS_DELAY, "delay"): _outDelay,
    (NS_SID, "stanza-id"): _outStanzaId,
}

_IQ_OUT: dict[tuple[str, str], _OutHandler] = {
    (NS_CLIENT, "error"): _outError,
    (NS_ROSTER, "query"): _outRoster,
    (NS_PING, "ping"): _outPing,
    (NS_MAM, "fin"): _outMamFin,
}


def _children(element: domish.Element, payload: dict, handlers: dict) -> None:
    """Put every child element of a stanza in its key, or else in "xml"."""
    xml = None
    # A stanza built as Element((None, ...)) or (("", ...)) is in jabber:client, and so are its
    # children that inherit that namespace.
    stanzaDefault = element.defaultUri or NS_CLIENT
    for child in element.children:
        if isinstance(child, str):
            # Whitespace between children of a pretty-printed stanza carries nothing; raw XML
            # put there by server code does.
            if isinstance(child, domish.SerializedXML):
                if xml is None:
                    xml = []
                xml.append(str(child))
            continue
        uri = child.uri
        if uri is None:
            uri = child.defaultUri if child.defaultUri is not None else stanzaDefault
        elif not uri and not element.uri:
            uri = NS_CLIENT
        handler = handlers.get((uri, child.name))
        if handler is not None and handler(payload, child):
            continue
        if xml is None:
            xml = []
        xml.append(_xmlString(child, uri))
    lang = element.attributes.get(_XML_LANG) or element.attributes.get("xml:lang")
    if lang:
        payload["lang"] = lang
    if xml:
        payload["xml"] = xml


def _messagePayload(element: domish.Element) -> dict[str, Any]:
    attrs = element.attributes
    # from, id, to, type, body always, in this order: the original API's clients rely on it.
    payload = {
        "from": attrs.get("from", ""),
        "id": attrs.get("id", ""),
        "to": attrs.get("to", ""),
        "type": attrs.get("type") or "normal",
        "body": "",
    }
    _children(element, payload, _MESSAGE_OUT)
    return payload


def _presencePayload(element: domish.Element) -> dict[str, Any]:
    attrs = element.attributes
    payload: dict[str, Any] = {"from": attrs.get("from", "")}
    for key in ("type", "to", "id"):
        value = attrs.get(key)
        if value:
            payload[key] = value
    _children(element, payload, _PRESENCE_OUT)
    return payload


def _iqPayload(element: domish.Element) -> dict[str, Any]:
    attrs = element.attributes
    payload: dict[str, Any] = {"type": attrs.get("type", ""), "id": attrs.get("id", "")}
    for key in ("from", "to"):
        value = attrs.get(key)
        if value:
            payload[key] = value
    _children(element, payload, _IQ_OUT)
    return payload


_WRITERS: dict[str, Callable[[domish.Element], dict[str, Any]]] = {
    "message": _messagePayload,
    "presence": _presencePayload,
    "iq": _iqPayload,
}


def toFrame(element: domish.Element) -> dict[str, Any]:
    """
    Translate a stanza, as routed (C{from} and C{to} set), to a frame
    C{{"type": "message" | "presence" | "iq", "payload": {...}}}.

    @raise ValueError: C{element} is not a message, presence or iq.
    """
    writer = _WRITERS.get(element.name)
    if writer is None:
        raise ValueError(f"not a stanza: <{element.name}/>")
    return {"type": element.name, "payload": writer(element)}


# ---------------------------------------------------------------------------------------------
# Output: the fast path
# ---------------------------------------------------------------------------------------------
#
# What the router delivers to web sessions is mostly a message with a body, a chat state and
# the server's stanza-id (and a delay when it was stored offline), or a presence with show,
# status and priority.  For these, serialize writes the JSON text directly, the same text
# _encode(toFrame(element)) gives (same keys in the same order, compact separators,
# ensure_ascii=False), without the payload dict, the handler tables and the encoder.  At the
# first child it does not know, or one whose key the general path would not use (a second
# body, a chat state with attributes, a presence show outside the four...), it gives up; so
# does it at a value that is not a string where a string is expected (encodeString raises
# TypeError).  Tests compare both paths on random stanzas.
#
# A presence is written as its head (from, type, to, id: what differs between the copies of
# one broadcast) and its rest (the keys of its children, lang, xml).  The copies a broadcast
# delivers to each contact (stanzas.retarget) share one children list, which is never changed
# once routed, so the rest of the last presence written is kept and reused as long as the
# next presence has the same list holding the same children (and the same namespace and
# lang): a broadcast to N web sessions writes its children once, and a presence the fast
# path cannot write (entity capabilities, say) is written by the general path once.

_STATE_FRAGMENTS = {
    state: f',"{state}":{{"ID":""}}' if state == "composing" else f',"{state}":{{}}'
    for state in CHAT_STATES
}


def _fragmentChatState(child: domish.Element) -> str | None:
    if child.attributes or child.children:
        return None
    return _STATE_FRAGMENTS[child.name]


def _fragmentStanzaId(child: domish.Element) -> str | None:
    stanzaId = child.attributes.get("id")
    if stanzaId is None or child.children:
        return None
    return ',"stanza_id":' + _encodeString(stanzaId)


def _fragmentDelay(child: domish.Element) -> str | None:
    delay = _delayObject(child)
    if delay is None:
        return None
    origin = delay["from"]
    text = delay.get("text")
    return (
        ',"delay":{"stamp":' + _encodeString(delay["stamp"])
        + ',"from":' + ("null" if origin is None else _encodeString(origin))
        + ("" if text is None else ',"text":' + _encodeString(text))
        + "}"
    )


def _fragmentShow(child: domish.Element) -> str | None:
    text = _simpleText(child)
    return ',"show":' + _encodeString(text) if text in SHOWS else None


def _fragmentStatus(child: domish.Element) -> str | None:
    text = _simpleText(child)
    return None if text is None else ',"status":' + _encodeString(text)


def _fragmentPriority(child: domish.Element) -> str | None:
    value = _priorityValue(child)
    return None if value is None else f',"priority":{value}'


_Fragment = Callable[[domish.Element], "str | None"]

# By child name: the namespace the child must be in, and what writes its key (None for the
# body, whose key is always the fifth of a message, wherever its element is).
_FAST_MESSAGE_OUT: dict[str, tuple[str, _Fragment | None]] = {
    "body": (NS_CLIENT, None),
    "stanza-id": (NS_SID, _fragmentStanzaId),
    "delay": (NS_DELAY, _fragmentDelay),
    **{state: (NS_CHATSTATES, _fragmentChatState) for state in CHAT_STATES},
}

_FAST_PRESENCE_OUT: dict[str, tuple[str, _Fragment | None]] = {
    "show": (NS_CLIENT, _fragmentShow),
    "status": (NS_CLIENT, _fragmentStatus),
    "priority": (NS_CLIENT, _fragmentPriority),
    "stanza-id": (NS_SID, _fragmentStanzaId),
    "delay": (NS_DELAY, _fragmentDelay),
}


def _fragments(
    element: domish.Element, table: dict[str, tuple[str, _Fragment | None]], lang: str | None
) -> tuple[str, list[str]] | None:
    """
    The body (as a JSON string, C{""} if none) and the JSON text of the other keys of the
    children of C{element}, in order, then of C{lang}; or C{None} if a child has no key in
    C{table} or cannot use it.
    """
    stanzaUri = element.uri
    stanzaDefault = element.defaultUri or NS_CLIENT  # as _children resolves namespaces
    body = '""'
    parts = []
    seen = set()
    for child in element.children:
        if isinstance(child, str):
            if type(child) is not str:  # raw XML (SerializedXML) goes to "xml"
                return None
            continue
        name = child.name
        entry = table.get(name)
        if entry is None:
            return None
        uri = child.uri
        if uri is None:
            uri = child.defaultUri if child.defaultUri is not None else stanzaDefault
        elif not uri and not stanzaUri:
            uri = NS_CLIENT
        # A second child of a kind has no key of its own left: it would go to "xml".
        if uri != entry[0] or name in seen:
            return None
        seen.add(name)
        write = entry[1]
        if write is None:
            text = _simpleText(child)
            if not text:  # only a non-empty body has the key (see _outBody)
                return None
            body = _encodeString(text)
            continue
        part = write(child)
        if part is None:
            return None
        parts.append(part)
    if lang:
        parts.append(',"lang":' + _encodeString(lang))
    return body, parts


def _messageFrame(element: domish.Element) -> str | None:
    """The frame of a plain message as JSON text, or C{None} for L{toFrame} (see above)."""
    attrs = element.attributes
    found = _fragments(element, _FAST_MESSAGE_OUT, attrs.get(_XML_LANG) or attrs.get("xml:lang"))
    if found is None:
        return None
    body, parts = found
    encode = _encodeString
    # One join at the end: concatenating as it goes would copy the body for every key after it.
    return "".join([
        '{"type":"message","payload":{"from":', encode(attrs.get("from", "")),
        ',"id":', encode(attrs.get("id", "")),
        ',"to":', encode(attrs.get("to", "")),
        ',"type":', encode(attrs.get("type") or "normal"),
        ',"body":', body, *parts, "}}",
    ])


_lastPresence: tuple[Any, Any, str] = (None, None, "")


def _presenceFrame(element: domish.Element) -> str:
    """The frame of a presence as JSON text (see above)."""
    global _lastPresence
    attrs = element.attributes
    encode = _encodeString
    head = '{"type":"presence","payload":{"from":' + encode(attrs.get("from", ""))
    for name in ("type", "to", "id"):
        value = attrs.get(name)
        if value:
            head += f',"{name}":' + encode(value)
    children = element.children
    lang = attrs.get(_XML_LANG) or attrs.get("xml:lang")
    state = (tuple(children), element.uri, element.defaultUri, lang)
    last = _lastPresence
    if last[0] is children and last[1] == state:
        return head + last[2]
    found = _fragments(element, _FAST_PRESENCE_OUT, lang)
    if found is not None:
        rest = "".join(found[1]) + "}}"
    else:
        # The general path's keys for the children: those of a payload holding nothing else
        # (no child key is from, type, to or id, so none is refused for being taken).
        payload: dict[str, Any] = {}
        _children(element, payload, _PRESENCE_OUT)
        rest = ("," + _encode(payload)[1:-1] if payload else "") + "}}"
    _lastPresence = (children, state, rest)
    return head + rest
