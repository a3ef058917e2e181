"""
Tests for L{xmppjson.xmltext}: L{StanzaParser} makes the same trees as domish's parser, without
parent links, of L{Element}s, which behave as domish's elements do but for the child lookup by
attribute name.
"""

from __future__ import annotations

import pyexpat
from typing import Any

from twisted.trial import unittest
from twisted.words.protocols.jabber import error as jerror
from twisted.words.xish import domish, xpath

from xmppjson import jsonstanza
from xmppjson.xmltext import Element, StanzaParser, isElement, serialize

HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
          b" to='localhost' version='1.0'>")

STANZAS = [
    (b"<message to='bench17@localhost/res' type='chat' id='m1'><body>A chat message.</body>"
     b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"),
    # xml:lang and other qualified attributes go after the plain ones, as (uri, name) keys
    (b"<message xml:lang='pl' xmlns:x='urn:x' x:a='1' to='a@b' type='chat'>"
     b"<body xml:lang='en'>hi &amp; &lt;there&gt; &#x17c;&#380;</body>"
     b"<x:foo xmlns='urn:y' b='2'><bar/>t<![CDATA[<raw & text>]]>u</x:foo></message>"),
    (b"<iq type='set' id='r1'><query xmlns='jabber:iq:roster' ver='v1'>\n  <item jid='a@b'"
     b" name='\xc5\xbc\xc3\xb3\xc5\x82w'>\n    <group>Przyjaciele</group>\n  </item>\n"
     b"</query></iq>"),
    (b"<presence><show>away</show><status>  spaces  kept  </status><priority>5</priority>"
     b"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/>"
     b"<x xmlns='vcard-temp:x:update'><photo/></x></presence>"),
    b"<presence/>",
    (b"<message to='a@b'><html xmlns='http://jabber.org/protocol/xhtml-im'>"
     b"<body xmlns='http://www.w3.org/1999/xhtml'><p>one <b>two</b> three</p></body></html>"
     b"</message>"),
    b"<r xmlns='urn:xmpp:sm:3'/>",
    b"<a:b xmlns:a='urn:a' xmlns:c='urn:c' c:d='e'><a:f><g xmlns='urn:g'/></a:f></a:b>",
]


def _shape(element: domish.Element) -> dict[str, Any]:
    """Everything a tree holds but parent links, attribute order included."""
    return {
        "uri": element.uri,
        "name": element.name,
        "defaultUri": element.defaultUri,
        "localPrefixes": element.localPrefixes,
        "attributes": list(element.attributes.items()),
        "children": [c if isinstance(c, str) else _shape(c) for c in element.children],
        "keys": sorted(vars(element)),
    }


def _elements(element: domish.Element) -> list[domish.Element]:
    found = [element]
    for child in element.elements():
        found.extend(_elements(child))
    return found


def _parse(stream: Any, chunks: list[bytes]) -> tuple[list[domish.Element], list[int]]:
    got: list[domish.Element] = []
    counts: list[int] = []
    stream.DocumentStartEvent = lambda root: None

    def element(e: domish.Element) -> None:
        counts.append(stream.elementCount)
        got.append(e)

    stream.ElementEvent = element
    stream.DocumentEndEvent = lambda: got.append("end")  # type: ignore[arg-type]
    for chunk in chunks:
        stream.parser.Parse(chunk)
    return got, counts


class StanzaParserTests(unittest.TestCase):
    def test_sameTreesAsDomish(self) -> None:
        """Stanza by stanza, in one read and a byte per read: domish's trees exactly."""
        data = HEADER + b"".join(STANZAS) + b"</stream:stream>"
        for chunks in ([data], [data[i:i + 1] for i in range(len(data))]):
            ours, ourCounts = _parse(StanzaParser(), chunks)
            theirs, theirCounts = _parse(domish.ExpatElementStream(), chunks)
            self.assertEqual(ours[-1], "end")
            self.assertEqual(len(ours), len(STANZAS) + 1)
            self.assertEqual([_shape(e) for e in ours[:-1]], [_shape(e) for e in theirs[:-1]])
            self.assertEqual([e.toXml() for e in ours[:-1]], [e.toXml() for e in theirs[:-1]])
            self.assertEqual(ourCounts, theirCounts)

    def test_noParentLinks(self) -> None:
        ours, _ = _parse(StanzaParser(), [HEADER + b"".join(STANZAS)])
        theirs, _ = _parse(domish.ExpatElementStream(), [HEADER + b"".join(STANZAS)])
        self.assertEqual([e.parent for s in ours for e in _elements(s)],
                         [None] * sum(len(_elements(s)) for s in ours))
        # (domish links them: this is the difference)
        self.assertTrue(any(e.parent is not None for s in theirs for e in _elements(s)))

    def test_elementCountLimit(self) -> None:
        """More elements in one stanza than C{maxElementCount}: domish's ParserError."""
        parser = StanzaParser()
        parser.maxElementCount = 3
        _parse(parser, [HEADER + b"<message><a/><b/></message>"])
        with self.assertRaises(domish.ParserError):
            parser.parser.Parse(b"<message><a/><b/><c/></message>")

    def test_currentElementDuringTheEvent(self) -> None:
        """As with domish, the stanza is still C{currElem} while its event runs, then None."""
        parser = StanzaParser()
        seen = []
        parser.DocumentStartEvent = lambda root: None
        parser.ElementEvent = lambda e: seen.append(parser.currElem is e)
        parser.parse(HEADER + b"<message><body>x</body></message>")
        self.assertEqual(seen, [True])
        self.assertIsNone(parser.currElem)

    def test_notWellFormed(self) -> None:
        parser = StanzaParser()
        parser.DocumentStartEvent = lambda root: None
        parser.ElementEvent = lambda e: None
        with self.assertRaises(pyexpat.error):
            parser.parse(HEADER + b"<message></presence>")


class SerializeChildrenTests(unittest.TestCase):
    """L{serialize} with other children than the element's own (the archive's marks left out)."""

    def _message(self, extra: bytes = b"") -> domish.Element:
        got: list[domish.Element] = []
        parser = StanzaParser()
        parser.DocumentStartEvent = lambda root: None
        parser.ElementEvent = got.append
        parser.parse(HEADER + b"<message to='a@b' type='chat'><body>x &amp; y</body>" + extra
                     + b"<stanza-id xmlns='urn:xmpp:sid:0' by='a@b' id='1'/></message>")
        return got[0]

    def test_childrenInsteadOfTheElements(self) -> None:
        message = self._message()
        kept = message.children[:-1]
        self.assertEqual(serialize(message, kept),
                         "<message to='a@b' type='chat'><body>x &amp; y</body></message>")
        # the element itself is left as it was
        self.assertEqual(len(message.children), 2)
        self.assertIn("stanza-id", serialize(message))

    def test_prefixesTakeDomishWithTheChildren(self) -> None:
        """A child with a namespace prefix goes through domish's serialiser, children and all."""
        message = self._message(b"<p:x xmlns:p='urn:p'/>")
        kept = message.children[:-1]
        text = serialize(message, kept)
        self.assertNotIn("stanza-id", text)
        self.assertIn("urn:p", text)
        again, _ = _parse(StanzaParser(), [HEADER + text.encode("utf-8")])
        self.assertEqual([c.name for c in again[0].elements()], ["body", "x"])


def _allElements(stanzas: list[domish.Element]) -> list[Any]:
    return [e for s in stanzas for e in _elements(s)]


class ElementTests(unittest.TestCase):
    """
    L{Element}: what the doors' readers make, domish's element less its child lookup by
    attribute name.
    """

    def _both(self, data: bytes) -> tuple[list[domish.Element], list[domish.Element]]:
        ours, _ = _parse(StanzaParser(), [HEADER + data])
        theirs, _ = _parse(domish.ExpatElementStream(), [HEADER + data])
        return ours, theirs

    def test_readersMakeThem(self) -> None:
        """The c2s door's parser and the JSON door's reader (both paths) make L{Element}s."""
        ours, theirs = self._both(b"".join(STANZAS))
        self.assertEqual({type(e) for e in _allElements(ours)}, {Element})
        self.assertEqual({type(e) for e in _allElements(theirs)}, {domish.Element})
        fast = jsonstanza.parseFrame('{"type":"message","payload":{"to":"a@b","body":"x",'
                                     '"active":{}}}')
        general = jsonstanza.parseFrame('{"type":"message","payload":{"to":"a@b","body":"x",'
                                        '"xml":["<x xmlns=\'urn:x\'><y/></x>"]}}')
        for element in (fast, general):
            self.assertEqual({type(e) for e in _elements(element)}, {Element})

    def test_noChildLookupByAttribute(self) -> None:
        """The one difference: C{message.body} is domish's child lookup, and not ours."""
        (ours,), (theirs,) = self._both(STANZAS[0])
        self.assertEqual(str(theirs.body), "A chat message.")
        self.assertRaises(AttributeError, getattr, ours, "body")
        self.assertFalse(hasattr(Element, "__getattr__"))

    def test_everyMethodOfDomish(self) -> None:
        """Every method and class attribute of domish's Element but the child lookup."""
        theirs = {name for name in vars(domish.Element)
                  if name not in ("__getattr__", "__dict__", "__weakref__", "__module__",
                                  "__doc__", "_idCounter")}
        self.assertEqual(theirs - set(dir(Element)), set())
        self.assertTrue(isElement(Element(("urn:x", "x"))))
        self.assertTrue(isElement(domish.Element(("urn:x", "x"))))
        self.assertFalse(isElement("text"))
        self.assertTrue(domish.IElement.providedBy(Element(("urn:x", "x"))))

    def test_behavesAsDomish(self) -> None:
        """
        domish's methods, its serialiser, XPath and Twisted's error parsing give the same on
        ours as on its own.
        """
        stanzas = STANZAS + [b"<message type='error' from='a@b'><error type='cancel'>"
                             b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                             b"</error></message>"]
        ours, theirs = self._both(b"".join(stanzas))
        queries = ["/message/body", "/presence[@type]", "/iq/query[@xmlns='jabber:iq:roster']",
                   "/message/error", "/*/html/body"]
        for mine, domishs in zip(ours, theirs, strict=True):
            self.assertEqual(mine.toXml(), domishs.toXml())
            self.assertEqual(str(mine), str(domishs))
            self.assertEqual([e.name for e in mine.elements()], [e.name for e in domishs.elements()])
            first = mine.firstChildElement()
            self.assertEqual(first and first.name, (domishs.firstChildElement() or None)
                             and domishs.firstChildElement().name)
            for key in ("to", "type", "id", "missing"):
                self.assertEqual(mine.getAttribute(key), domishs.getAttribute(key))
                self.assertEqual(mine.hasAttribute(key), domishs.hasAttribute(key))
            for query in queries:
                self.assertEqual(xpath.matches(query, mine), xpath.matches(query, domishs), query)
            for element in (mine, domishs):
                element.addElement("added", "urn:added", "t & u")
                element.addContent("tail")
                element["new"] = "v"
            self.assertEqual(mine.toXml(), domishs.toXml())
        failure = jerror.exceptionFromStanza(ours[-1])
        self.assertEqual((failure.condition, failure.type), ("item-not-found", "cancel"))
