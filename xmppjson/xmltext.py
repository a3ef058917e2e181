"""
Stanzas as XML text, the way every part of the server writes them (L{serialize}: the c2s door
for its streams, the archive for what it stores, the cluster for what it passes between nodes)
and reads them (L{StanzaParser}: the c2s door, the cluster).
"""

from __future__ import annotations

import pyexpat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish
from zope.interface import implementer

NS_CLIENT = "jabber:client"
NS_STREAMS = xmlstream.NS_STREAMS
NS_XML = "http://www.w3.org/XML/1998/namespace"


if TYPE_CHECKING:
    # To a type checker it is domish's Element, whose interface it has.
    Element = domish.Element
else:

    @implementer(domish.IElement)
    class Element:
        """
        An XML element as the server makes them: domish's L{domish.Element}, its methods and
        attributes, but not its child lookup by attribute name (C{message.body}).

        Every element a door's reader makes is one of these (L{StanzaParser}, the JSON
        door's reader), as are the stanza-ids the core adds.  The reason is speed: a class
        with a C{__getattr__} (domish's child lookup) has every attribute read (C{name},
        C{uri}, C{children}, C{attributes}) go through the generic lookup, which Python
        3.11 cannot specialise; without it, the server runs ~10 % fewer instructions per
        chat message (docs/performance.md, item 20).  The server's code never looks a child
        up by attribute name (L{xmppjson.im.stanzas.firstChild} does).

        It is not a subclass (a subclass would inherit the C{__getattr__}): test for an
        element with L{isElement}, not C{isinstance(x, domish.Element)}.  domish itself
        tests with L{domish.IElement}, which this class provides.
        """

        __init__ = domish.Element.__init__
        __getitem__ = domish.Element.__getitem__
        __setitem__ = domish.Element.__setitem__
        __delitem__ = domish.Element.__delitem__
        __str__ = domish.Element.__str__
        __bytes__ = domish.Element.__bytes__
        __unicode__ = domish.Element.__unicode__
        _dqa = domish.Element._dqa
        getAttribute = domish.Element.getAttribute
        hasAttribute = domish.Element.hasAttribute
        compareAttribute = domish.Element.compareAttribute
        swapAttributeValues = domish.Element.swapAttributeValues
        addChild = domish.Element.addChild
        addContent = domish.Element.addContent
        addElement = domish.Element.addElement
        addRawXml = domish.Element.addRawXml
        addUniqueId = domish.Element.addUniqueId
        elements = domish.Element.elements
        firstChildElement = domish.Element.firstChildElement
        toXml = domish.Element.toXml


#: What an element is: domish's, or the server's own (L{Element}).
ELEMENT_TYPES = (domish.Element, Element)


def isElement(node: object) -> bool:
    """Whether C{node} (a child, a handler's answer) is an element, domish's or L{Element}."""
    return isinstance(node, ELEMENT_TYPES)


class _NotSimple(Exception):
    """The element needs domish's full namespace-prefix machinery (see L{serialize})."""


_SerializedXML = domish.SerializedXML


def escapeText(text: str) -> str:
    """C{text} as character data, as L{serialize} writes it."""
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def _escapeAttribute(value: str) -> str:
    return escapeText(value).replace("'", "&apos;").replace('"', "&quot;")


def _serializeInto(element: domish.Element, parentNamespace: str, out: list[str],
                   children: list[Any] | None = None) -> None:
    if element.localPrefixes:
        raise _NotSimple()
    namespace = element.defaultUri
    if namespace is None:
        namespace = parentNamespace
    uri = element.uri
    if (uri is not None and uri != namespace) or namespace == NS_STREAMS:
        # Stream-level elements must carry the header's "stream:" prefix: clients that match
        # tag names rather than namespaces (Conversations, for one) look for <stream:features>.
        raise _NotSimple()
    name = element.name
    if namespace != parentNamespace:
        tag = f"<{name} xmlns='{_escapeAttribute(namespace)}'"
    else:
        tag = "<" + name
    for key, value in element.attributes.items():
        if "&" in value or "<" in value or ">" in value or "'" in value or '"' in value:
            value = _escapeAttribute(value)
        if key.__class__ is str:
            tag += f" {key}='{value}'"
        elif key[0] == NS_XML:
            tag += f" xml:{key[1]}='{value}'"
        else:
            raise _NotSimple()
    if children is None:
        children = element.children
    if not children:
        out.append(tag + "/>")
        return
    out.append(tag + ">")
    for child in children:
        kind = child.__class__
        if kind is str:
            if "&" in child or "<" in child or ">" in child:
                child = escapeText(child)
            out.append(child)
        elif kind is _SerializedXML:
            out.append(child)
        elif isinstance(child, str):
            out.append(escapeText(child))
        else:
            _serializeInto(child, namespace, out)
    out.append(f"</{name}>")


def serialize(element: domish.Element, children: list[Any] | None = None) -> str:
    """
    A stanza as XML text for a stream whose content namespace is C{jabber:client}.

    The same text as C{element.toXml(defaultUri="jabber:client")}, about twice as fast: this is
    the one step of the per-message path that is ours to speed up.  Stanzas that use namespace
    prefixes (other than C{xml:}) take domish's general serialiser.

    @param children: the children to write instead of C{element}'s own (the archive leaves
        the server's marks out without copying the stanza).
    """
    out: list[str] = []
    try:
        _serializeInto(element, NS_CLIENT, out, children)
    except _NotSimple:
        if children is not None:
            copy = Element((element.uri, element.name), element.defaultUri,
                                  element.attributes, element.localPrefixes)
            copy.children = children
            element = copy
        return element.toXml(
            prefixes={NS_STREAMS: "stream"}, defaultUri=NS_CLIENT, prefixesInScope=["stream"]
        )
    return "".join(out)


_newElement = object.__new__


class StanzaParser:
    """
    An XML stream's elements, with the interface of L{domish.ExpatElementStream} (C{parser},
    the three events, C{currElem}, C{elementCount}, C{maxElementCount}) and the same trees,
    except that they are made of L{Element}s and no element links to its parent: the parser
    keeps its own stack instead.

    Every child/parent link is a reference cycle, which only the cyclic collector can free:
    without them a stanza goes as soon as its last reference does, and nothing has to walk
    each received stanza to cut them (as the core did before).  The handlers also
    do less per element than domish's (it costs 8.7 against 10.1 µs to parse a chat message
    and cut its links, docs/performance.md item 18): they run for every element every client
    sends.
    """

    maxElementCount = 100000

    def __init__(self) -> None:
        self.DocumentStartEvent: Callable[[domish.Element], None] | None = None
        self.ElementEvent: Callable[[domish.Element], None] | None = None
        self.DocumentEndEvent: Callable[[], None] | None = None
        parser = self.parser = pyexpat.ParserCreate("UTF-8", " ")
        parser.StartElementHandler = self._onStartElement
        parser.EndElementHandler = self._onEndElement
        parser.CharacterDataHandler = self._onCdata
        parser.StartNamespaceDeclHandler = self._onStartNamespace
        parser.EndNamespaceDeclHandler = self._onEndNamespace
        self.currElem: domish.Element | None = None
        self.defaultNsStack = [""]
        self.documentStarted = False
        self.localPrefixes: dict[str, str] = {}
        self.elementCount = 0
        self._open: list[domish.Element] = []  # the ancestors of currElem in the stanza

    def parse(self, data: bytes) -> None:
        """Feed C{data}; raises L{pyexpat.error} for XML that is not well-formed."""
        self.parser.Parse(data)

    def _onStartElement(self, name: str, attrs: dict[Any, str]) -> None:
        # expat gives "uri local" for a qualified name, "local" for one in no namespace.
        uri, _, local = name.rpartition(" ")
        for key in attrs:
            if " " in key:
                # Qualified attributes (xml:lang, ...) as (uri, name) keys after the others,
                # as domish orders them.
                qualified = {}
                for key, value in list(attrs.items()):
                    if " " in key:
                        del attrs[key]
                        space, _, attribute = key.rpartition(" ")
                        qualified[(space, attribute)] = value
                attrs.update(qualified)
                break
        prefixes = self.localPrefixes
        if prefixes:
            self.localPrefixes = {}
        else:
            prefixes = {}
        # What domish.Element.__init__ sets, in its order, without its checks.  One attribute
        # at a time: Python then keeps them in the instance's inline values, which the core's
        # every attribute read is specialised for; assigning a dict to __dict__ instead made
        # each read of those elements ~50 ns slower (docs/performance.md item 19).
        element = _newElement(Element)
        element.localPrefixes = prefixes
        element.uri = uri
        element.name = local
        element.defaultUri = self.defaultNsStack[-1]
        element.attributes = attrs
        element.children = []
        element.parent = None
        if not self.documentStarted:
            self.documentStarted = True
            self.DocumentStartEvent(element)  # type: ignore[misc]
            return
        self.elementCount += 1
        if self.elementCount > self.maxElementCount:
            raise domish.ParserError("Maximum element count exceeded")
        current = self.currElem
        if current is not None:
            current.children.append(element)
            self._open.append(current)
        self.currElem = element

    def _onEndElement(self, name: str) -> None:
        current = self.currElem
        if current is None:
            self.DocumentEndEvent()  # type: ignore[misc]
        elif self._open:
            self.currElem = self._open.pop()
        else:
            # As domish does: during the event the stanza is still the current element and
            # elementCount its size.
            self.ElementEvent(current)  # type: ignore[misc]
            self.currElem = None
            self.elementCount = 0

    def _onCdata(self, data: str) -> None:
        current = self.currElem
        if current is not None:
            children = current.children
            if children and children[-1].__class__ is str:
                children[-1] += data
            else:
                children.append(data)

    def _onStartNamespace(self, prefix: str | None, uri: str) -> None:
        if prefix is None:
            self.defaultNsStack.append(uri)
        else:
            self.localPrefixes[prefix] = uri

    def _onEndNamespace(self, prefix: str | None) -> None:
        if prefix is None:
            self.defaultNsStack.pop()
