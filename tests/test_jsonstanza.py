"""
Tests for L{xmppjson.jsonstanza}: the JSON dialect, both directions.

Three kinds of test:
 - the examples: every example of the original web API (copied below from C{webApi.md}) and
   every marked example of C{docs/json-dialect.md} (read from the file, so page and code cannot
   drift) is read or produced exactly;
 - one test per rule and per refusal, each asserting the exact error text and frame id;
 - properties (hypothesis): XML -> JSON -> XML keeps every child element of random stanzas, and
   no input whatsoever makes L{parseFrame} raise anything but L{FrameError}.

Run C{python -m tests.test_jsonstanza} for the timings quoted in the module's docstring.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber import error as jerror
from twisted.words.xish import domish

from tests.helpers import child
from xmppjson import error as xerror
from xmppjson import jsonstanza, xmltext
from xmppjson.im.stanzas import retarget
from xmppjson.jsonstanza import (
    FrameError,
    FrameTooBig,
    errorFrame,
    parseFrame,
    serialize,
    sessionFrame,
    toFrame,
)

NS_CLIENT = "jabber:client"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "json-dialect.md")

# Hypothesis: no example database in the work tree, no deadline (the first JID of a run pays for
# stringprep), and example counts that keep this module well under 20 seconds.  For a deeper run:
# JSONSTANZA_EXAMPLES=5000 python -m twisted.trial tests.test_jsonstanza
_EXAMPLES = int(os.environ.get("JSONSTANZA_EXAMPLES", "0"))
PROPERTY = settings(
    database=None,
    deadline=None,
    max_examples=_EXAMPLES or 120,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FUZZ = settings(PROPERTY, max_examples=_EXAMPLES or 150)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def parseXml(text: str) -> domish.Element:
    """
    Parse one stanza with Twisted's own stream parser, inside a C{jabber:client} stream as the
    c2s door would: an independent reference, not the module under test.
    """
    found: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = found.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'>"
    )
    stream.parse(text)
    stream.parse("</stream:stream>")
    assert len(found) == 1, found
    return found[0]


def canonical(element: domish.Element, inherited: str = NS_CLIENT, top: bool = True) -> Any:
    """
    A comparable form of an element: resolved namespace, name, attributes, children.

    At the top (the stanza): C{from} is left out (the server sets it), a message without a
    type is C{normal} (as the dialect shows it), whitespace between children is dropped and the
    children are compared as a multiset (keyed children come back in key order).  Below the
    top everything counts, in order.
    """
    default = element.defaultUri if element.defaultUri is not None else inherited
    uri = element.uri if element.uri is not None else default
    if top and not uri:
        uri = NS_CLIENT
    attributes = {}
    for key, value in element.attributes.items():
        if key == "xml:lang":
            key = (NS_XML, "lang")
        elif isinstance(key, tuple) and not key[0]:
            key = key[1]
        attributes[key] = value
    if top:
        attributes.pop("from", None)
        if element.name == "message":
            attributes.setdefault("type", "normal")
    children: list[Any] = []
    for child in element.children:
        if isinstance(child, str):
            if top and not child.strip():
                continue
            if children and isinstance(children[-1], str):
                children[-1] += child
            elif child:
                children.append(str(child))
        else:
            children.append(canonical(child, default, top=False))
    if top:
        children.sort(key=repr)
    return (uri, element.name, sorted(attributes.items(), key=repr), children)


def readError(frame: Any, **kwargs: Any) -> FrameError:
    """Parse a frame (a dict is JSON-encoded first) that must be refused, and return the error."""
    text = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
    try:
        element = parseFrame(text, **kwargs)
    except FrameError as e:
        return e
    raise AssertionError(f"accepted: {element.toXml()}")


def docExamples() -> list[tuple[str, list[tuple[str, str]]]]:
    """
    The marked examples of docs/json-dialect.md: each C{<!-- in|out|both|bad -->} marker and the
    two fenced blocks after it, as (kind, [(info, text), (info, text)]).
    """
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    examples = []
    for match in re.finditer(r"<!-- (in|out|both|bad) -->\n", text):
        blocks = re.findall(r"```(\w*)\n(.*?)\n```", text[match.end() :], re.DOTALL)[:2]
        examples.append((match.group(1), blocks))
    return examples


# ---------------------------------------------------------------------------------------------
# the examples
# ---------------------------------------------------------------------------------------------

# Verbatim from the original web API (webApi.md, "STREAM").
SPEC_MESSAGE = """
    {
      "type": "message",
      "payload": {
        "name": "message",
        "from": "szymon@localhost",
        "id": "as12da11",
        "to": "alicja@localhost",
        "type": "chat",
        "body": "Test wiadomości z Webscoketów"
      }
    }
"""
SPEC_TYPING = """
    {
      "type": "message",
      "payload": {
        "from": "alicja@localhost/dom",
        "id": "purplee0d70390",
        "to": "szymon@localhost",
        "type": "chat",
        "body": "",
        "composing": {
          "ID": ""
        }
      }
    }
"""
SPEC_PAUSED = """
    {
      "type": "message",
      "payload": {
        "from": "alicja@localhost/dom",
        "id": "purplee0d70391",
        "to": "szymon@localhost",
        "type": "chat",
        "body": "",
        "paused": {}
      }
    }
"""
SPEC_ACTIVE = """
    {
      "type": "message",
      "payload": {
        "from": "alicja@localhost/dom",
        "id": "purplee0d70391",
        "to": "szymon@localhost",
        "type": "chat",
        "body": "",
        "active": {}
      }
    }
"""
SPEC_PRESENCE = """
    {
      "type": "presence",
      "payload": {
        "from": "alicja@localhost",
        "show": "away",
        "status": "Mam  na imię alicja"
      }
    }
"""
SPEC_ROSTER_GET = """
    {
      "type": "iq",
      "payload": {
        "type": "get",
        "id": "12345",
        "query": {"jabber:iq:roster"}
      }
    }
"""


class SpecExamplesTests(SynchronousTestCase):
    """
    The original web API's frames: each one a client sends is read, each one a client receives
    is produced exactly, keys in the same order.
    """

    def assertProduces(self, xml: str, frameText: str) -> None:
        produced = toFrame(parseXml(xml))
        expected = json.loads(frameText)
        self.assertEqual(produced, expected)
        # json.dumps keeps insertion order, so this also compares the order of every key.
        self.assertEqual(json.dumps(produced), json.dumps(expected))

    def test_message(self) -> None:
        """The message example is read; its C{name} and C{from} are ignored."""
        self.assertEqual(
            canonical(parseFrame(SPEC_MESSAGE)),
            canonical(
                parseXml(
                    "<message id='as12da11' to='alicja@localhost' type='chat'>"
                    "<body>Test wiadomości z Webscoketów</body></message>"
                )
            ),
        )
        self.assertNotIn("from", parseFrame(SPEC_MESSAGE).attributes)

    def test_messageKeyOrder(self) -> None:
        """A message payload starts with from, id, to, type, body, always."""
        frame = toFrame(
            parseXml("<message from='a@localhost/x' to='b@localhost'><body>hi</body></message>")
        )
        self.assertEqual(list(frame["payload"]), ["from", "id", "to", "type", "body"])
        self.assertEqual(frame["payload"]["id"], "")
        self.assertEqual(frame["payload"]["type"], "normal")

    def test_typing(self) -> None:
        xml = (
            "<message from='alicja@localhost/dom' id='purplee0d70390' to='szymon@localhost'"
            " type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )
        self.assertProduces(xml, SPEC_TYPING)
        self.assertEqual(canonical(parseFrame(SPEC_TYPING)), canonical(parseXml(xml)))

    def test_paused(self) -> None:
        xml = (
            "<message from='alicja@localhost/dom' id='purplee0d70391' to='szymon@localhost'"
            " type='chat'><paused xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )
        self.assertProduces(xml, SPEC_PAUSED)
        self.assertEqual(canonical(parseFrame(SPEC_PAUSED)), canonical(parseXml(xml)))

    def test_active(self) -> None:
        xml = (
            "<message from='alicja@localhost/dom' id='purplee0d70391' to='szymon@localhost'"
            " type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )
        self.assertProduces(xml, SPEC_ACTIVE)
        self.assertEqual(canonical(parseFrame(SPEC_ACTIVE)), canonical(parseXml(xml)))

    def test_presence(self) -> None:
        xml = (
            "<presence from='alicja@localhost'><show>away</show>"
            "<status>Mam  na imię alicja</status></presence>"
        )
        self.assertProduces(xml, SPEC_PRESENCE)
        self.assertEqual(canonical(parseFrame(SPEC_PRESENCE)), canonical(parseXml(xml)))

    def test_rosterGet(self) -> None:
        """The roster request, which is not valid JSON, is read as written in the spec."""
        with self.assertRaises(ValueError):
            json.loads(SPEC_ROSTER_GET)
        self.assertEqual(
            canonical(parseFrame(SPEC_ROSTER_GET)),
            canonical(parseXml("<iq type='get' id='12345'><query xmlns='jabber:iq:roster'/></iq>")),
        )


class DocExamplesTests(SynchronousTestCase):
    """
    Every marked example of docs/json-dialect.md holds, exactly as printed.
    """

    def setUp(self) -> None:
        self.examples = docExamples()

    def run_examples(self, kinds: tuple[str, ...]) -> int:
        failures = []
        count = 0
        for index, (kind, blocks) in enumerate(self.examples):
            if kind not in kinds:
                continue
            count += 1
            self.assertEqual(len(blocks), 2, f"example {index} ({kind}) needs two blocks")
            (_, first), (_, second) = blocks
            try:
                if kind == "in":
                    self.assertEqual(canonical(parseFrame(first)), canonical(parseXml(second)))
                elif kind == "out":
                    produced = json.dumps(toFrame(parseXml(first)), ensure_ascii=False)
                    expected = json.dumps(json.loads(second), ensure_ascii=False)
                    self.assertEqual(produced, expected)
                elif kind == "both":
                    self.assertEqual(canonical(parseFrame(first)), canonical(parseXml(second)))
                    produced = json.dumps(toFrame(parseXml(second)), ensure_ascii=False)
                    expected = json.dumps(json.loads(first), ensure_ascii=False)
                    self.assertEqual(produced, expected)
                else:
                    e = readError(first)
                    self.assertEqual(
                        json.loads(errorFrame(e.condition, e.text, e.frameId)), json.loads(second)
                    )
            except Exception as e:  # noqa: BLE001 - collect them all, one report per example
                failures.append(f"example {index} ({kind}):\n{first}\n{e}")
        self.assertEqual(failures, [], "\n\n".join(failures))
        return count

    def test_clientToServer(self) -> None:
        self.assertGreaterEqual(self.run_examples(("in",)), 15)

    def test_serverToClient(self) -> None:
        self.assertGreaterEqual(self.run_examples(("out",)), 10)

    def test_bothWays(self) -> None:
        self.assertGreaterEqual(self.run_examples(("both",)), 5)

    def test_errorFrames(self) -> None:
        self.assertGreaterEqual(self.run_examples(("bad",)), 8)

    def test_sessionFrame(self) -> None:
        """The session frame of the page, compact."""
        self.assertEqual(
            sessionFrame("szymon@localhost/web-3f2a9c01"),
            '{"type":"session","payload":{"jid":"szymon@localhost/web-3f2a9c01","version":1}}',
        )


# ---------------------------------------------------------------------------------------------
# input
# ---------------------------------------------------------------------------------------------


def message(**payload: Any) -> dict:
    return {"type": "message", "payload": payload}


def presence(**payload: Any) -> dict:
    return {"type": "presence", "payload": payload}


def iq(**payload: Any) -> dict:
    return {"type": "iq", "payload": payload}


def read(frame: dict) -> domish.Element:
    return parseFrame(json.dumps(frame))


class ParseMessageTests(SynchronousTestCase):
    def test_stanzaShape(self) -> None:
        """The result is a jabber:client stanza without from, whatever the client said."""
        element = read(message(**{"from": "mallory@localhost/x", "to": "a@localhost"}))
        self.assertEqual((element.uri, element.name), (NS_CLIENT, "message"))
        self.assertNotIn("from", element.attributes)

    def test_fromIgnoredWhateverItIs(self) -> None:
        self.assertNotIn("from", read(message(**{"from": ["not", "a", "jid"]})).attributes)

    def test_bytes(self) -> None:
        """UTF-8 bytes, as Autobahn hands them over, are read like text."""
        element = parseFrame(json.dumps(message(body="zażółć 😀"), ensure_ascii=False).encode())
        self.assertEqual(str(child(element, "body")), "zażółć 😀")

    def test_jidNormalised(self) -> None:
        self.assertEqual(read(message(to="Alicja@LocalHost/Dom"))["to"], "alicja@localhost/Dom")

    def test_emptyMeansAbsent(self) -> None:
        """Our output shows a missing id or to as "", so "" on input means none."""
        element = read(message(to="", id="", body="", lang=""))
        self.assertEqual(element.attributes, {})
        self.assertEqual(element.children, [])

    def test_bodySubjectThread(self) -> None:
        element = read(message(body="b", subject="", thread="t1"))
        self.assertEqual(
            [(c.uri, c.name, str(c)) for c in element.elements()],
            [(NS_CLIENT, "body", "b"), (NS_CLIENT, "subject", ""), (NS_CLIENT, "thread", "t1")],
        )

    def test_chatStatesAnyObject(self) -> None:
        for state in ("active", "composing", "gone", "inactive", "paused"):
            element = read(message(**{state: {"ID": ""}}))
            [child] = element.elements()
            self.assertEqual((child.uri, child.name, child.children), (NS_CHATSTATES, state, []))

    def test_chatStateNotObject(self) -> None:
        self.assertEqual(readError(message(composing=True)).text, "payload.composing: must be an object")

    def test_lang(self) -> None:
        self.assertEqual(read(message(lang="pl")).attributes, {(NS_XML, "lang"): "pl"})

    def test_toleratedKeys(self) -> None:
        """name, delay and stanza_id, which clients copy from what they received, are ignored."""
        element = read(
            message(name="message", delay={"stamp": "x"}, stanza_id="abc", body="hi")
        )
        self.assertEqual([c.name for c in element.elements()], ["body"])

    def test_types(self) -> None:
        for kind in ("chat", "error", "groupchat", "headline", "normal"):
            frame = message(type=kind)
            if kind == "error":
                frame["payload"]["error"] = {"condition": "item-not-found"}
            self.assertEqual(read(frame)["type"], kind)
        self.assertEqual(
            readError(message(type="private")).text,
            "payload.type: must be one of chat, error, groupchat, headline, normal",
        )

    def test_xmlChildren(self) -> None:
        """Each xml string becomes one child, namespaces resolved as on an XMPP stream."""
        element = read(
            message(
                xml=[
                    "<request xmlns='urn:xmpp:receipts'/>",
                    "<x xmlns:f='urn:f'><f:y f:a='1' xml:lang='en'>t</f:y><z/></x>",
                    "<nons xmlns=''/>",
                ]
            )
        )
        request, x, nons = element.elements()
        self.assertEqual((request.uri, request.name), ("urn:xmpp:receipts", "request"))
        self.assertEqual((x.uri, x.name), (NS_CLIENT, "x"))
        y, z = x.elements()
        self.assertEqual((y.uri, y.attributes), ("urn:f", {("urn:f", "a"): "1", (NS_XML, "lang"): "en"}))
        self.assertEqual(z.uri, NS_CLIENT)
        self.assertEqual(nons.uri, "")
        # No links to parents: the core frees received stanzas without the collector.
        self.assertIsNone(y.parent)
        self.assertIsNone(x.parent)
        # And the c2s door can write it the way Twisted writes what it parsed itself.
        self.assertEqual(canonical(parseXml(element.toXml())), canonical(element))

    def test_xmlEntitiesAndCdata(self) -> None:
        element = read(message(xml=["<x xmlns='urn:x'>a &amp; &#x1F600; <![CDATA[<b>]]></x>"]))
        self.assertEqual(str(child(element, "x")), "a & 😀 <b>")

    def test_xmlCommentsDropped(self) -> None:
        element = read(message(xml=["<!-- hi --><x xmlns='urn:x'><!-- there --></x> "]))
        self.assertEqual(child(element, "x").children, [])


class ParsePresenceTests(SynchronousTestCase):
    def test_showAvailableSpellings(self) -> None:
        """Missing, "" and "av" all mean available: no show element."""
        for frame in (presence(), presence(show=""), presence(show="av")):
            self.assertEqual(list(read(frame).elements()), [])
        for show in ("away", "chat", "dnd", "xa"):
            self.assertEqual(str(child(read(presence(show=show)), "show")), show)

    def test_showInvalid(self) -> None:
        for show in ("online", 1, None, "AWAY"):
            self.assertEqual(
                readError(presence(show=show)).text,
                'payload.show: must be one of away, chat, dnd, xa (or "", "av")',
            )

    def test_priority(self) -> None:
        for value in (-128, 0, 127):
            self.assertEqual(str(child(read(presence(priority=value)), "priority")), str(value))
        bad: tuple[Any, ...] = (-129, 128, 1.0, "5", True, None, 10**30)
        for value in bad:
            self.assertEqual(
                readError(presence(priority=value)).text,
                "payload.priority: must be an integer from -128 to 127",
            )

    def test_types(self) -> None:
        for kind in ("unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"):
            self.assertEqual(read(presence(type=kind))["type"], kind)
        for kind in ("", "available"):
            self.assertNotIn("type", read(presence(type=kind)).attributes)
        self.assertIn("must be one of unavailable", readError(presence(type="away")).text)

    def test_status(self) -> None:
        self.assertEqual(str(child(read(presence(status="Mam  na imię")), "status")), "Mam  na imię")
        self.assertEqual(
            readError(presence(status="x" * 4097)).text,
            "payload.status: longer than 4096 characters",
        )


class ParseIqTests(SynchronousTestCase):
    ROSTER_GET = "<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>"

    def assertReads(self, frame: Any, xml: str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self.assertEqual(canonical(parseFrame(text)), canonical(parseXml(xml)))

    def test_rosterGetForms(self) -> None:
        """The four tolerated forms of the roster request read the same."""
        self.assertReads('{"type":"iq","payload":{"type":"get","id":"1","query":{"jabber:iq:roster"}}}', self.ROSTER_GET)
        self.assertReads('{"type":"iq","payload":{"id":"1","query":{ "jabber:iq:roster" },"type":"get"}}', self.ROSTER_GET)
        self.assertReads(iq(type="get", id="1", query="jabber:iq:roster"), self.ROSTER_GET)
        self.assertReads(iq(type="get", id="1", query={"jabber:iq:roster": {}}), self.ROSTER_GET)
        self.assertReads(iq(type="get", id="1", **{"query-roster": {}}), self.ROSTER_GET)

    def test_setLiteralRepairIsTargeted(self) -> None:
        """
        Only the query value is repaired, and only when JSON parsing failed: the same shape
        elsewhere is still invalid JSON, and a body quoting it is left alone.
        """
        e = readError('{"type":"message","payload":{"body":"x","thread":{"jabber:iq:roster"}}}')
        self.assertTrue(e.text.startswith("frame: not valid JSON ("), e.text)
        body = '{"query": {"jabber:iq:roster"}}'
        self.assertEqual(str(child(read(message(body=body)), "body")), body)
        # Another namespace in the same shape is repaired to a string, then refused clearly.
        e = readError('{"type":"iq","payload":{"type":"get","id":"9","query":{"jabber:iq:version"}}}')
        self.assertEqual(
            (e.text, e.frameId),
            (
                (
                    "payload.query: unknown namespace 'jabber:iq:version' (only jabber:iq:roster"
                    " has a key; send other queries in xml)"
                ),
                "9",
            ),
        )

    def test_queryBadForms(self) -> None:
        for query in ({}, {"jabber:iq:roster": {}, "x": 1}, ["jabber:iq:roster"], None):
            self.assertEqual(
                readError(iq(type="get", id="1", query=query)).text,
                'payload.query: must be "jabber:iq:roster"',
            )
        self.assertEqual(
            readError(iq(type="get", id="1", query={"jabber:iq:roster": {"a": 1}})).text,
            "payload.query.jabber:iq:roster: must be {}",
        )
        self.assertEqual(
            readError(iq(type="get", id="1", query="jabber:iq:roster", **{"query-roster": {}})).text,
            "payload: give the roster query once (query or query-roster)",
        )

    def test_rosterVer(self) -> None:
        self.assertReads(
            iq(type="get", id="1", query="jabber:iq:roster", ver=""),
            "<iq type='get' id='1'><query xmlns='jabber:iq:roster' ver=''/></iq>",
        )
        self.assertEqual(
            readError(iq(type="get", id="1", ver="v1", ping={})).text,
            'payload.ver: only with "query": "jabber:iq:roster"',
        )

    def test_rosterSet(self) -> None:
        self.assertReads(
            iq(type="set", id="r", query="jabber:iq:roster",
               item={"jid": "Alicja@localhost", "name": None, "groups": ["A", "B"], "ask": None,
                     "subscription": None}),
            "<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='alicja@localhost'>"
            "<group>A</group><group>B</group></item></query></iq>",
        )

    def test_rosterSetRefusals(self) -> None:
        def text(item: Any = None, **extra: Any) -> str:
            payload = dict(type="set", id="r", query="jabber:iq:roster", **extra)
            if item is not None:
                payload["item"] = item
            return readError(iq(**payload)).text

        self.assertEqual(text(), "payload.item: a roster set carries exactly one item")
        self.assertEqual(text(items=[]), "payload.item: a roster set carries exactly one item")
        self.assertEqual(
            text(items=[{"jid": "a@localhost"}, {"jid": "b@localhost"}]),
            "payload.item: a roster set carries exactly one item",
        )
        self.assertEqual(
            text({"jid": "a@localhost"}, items=[{"jid": "b@localhost"}]),
            "payload: give either item or items, not both",
        )
        self.assertEqual(text({"name": "A"}), "payload.item.jid: missing")
        self.assertEqual(text({"jid": "@localhost"}), "payload.item.jid: not a valid JID")
        self.assertEqual(
            text({"jid": "a@localhost", "subscription": "both"}),
            'payload.item.subscription: only "remove" can be sent',
        )
        self.assertEqual(
            text({"jid": "a@localhost", "ask": "subscribe"}), "payload.item.ask: set by the server only"
        )
        self.assertEqual(
            text({"jid": "a@localhost", "groups": ["A", "A"]}),
            "payload.item.groups[1]: duplicate group 'A'",
        )
        self.assertEqual(
            text({"jid": "a@localhost", "groups": [""]}), "payload.item.groups[0]: must not be empty"
        )
        self.assertEqual(
            text({"jid": "a@localhost", "groups": "A"}), "payload.item.groups: must be a list of strings"
        )
        self.assertEqual(
            text({"jid": "a@localhost", "groups": [1]}), "payload.item.groups[0]: must be a string"
        )
        self.assertEqual(
            text({"jid": "a@localhost", "groups": [str(i) for i in range(129)]}),
            "payload.item.groups: more than 128 groups",
        )
        self.assertEqual(
            text({"jid": "a@localhost", "nick": "A"}),
            "payload.item: unknown key 'nick' (known: ask, groups, jid, name, subscription)",
        )
        self.assertEqual(text("a@localhost"), "payload.item: must be an object")
        self.assertEqual(
            readError(iq(type="set", id="r", query="jabber:iq:roster", items={"jid": "a@localhost"})).text,
            "payload.items: must be a list of objects",
        )
        self.assertEqual(
            readError(iq(type="set", id="r", item={"jid": "a@localhost"})).text,
            'payload.item: only with "query": "jabber:iq:roster"',
        )
        self.assertEqual(
            readError(iq(type="get", id="r", query="jabber:iq:roster", item={"jid": "a@localhost"})).text,
            "payload.item: a roster get carries no item",
        )

    def test_idAndTypeRequired(self) -> None:
        self.assertEqual(readError(iq(type="get", ping={})).text, "payload.id: missing (every iq needs an id)")
        self.assertEqual(readError(iq(type="result", id="")).text, "payload.id: missing (every iq needs an id)")
        self.assertEqual(readError(iq(id="1", ping={})).text, "payload.type: missing (get, set, result or error)")
        self.assertEqual(
            readError(iq(type="query", id="1")).text, "payload.type: must be one of get, set, result, error"
        )

    def test_payloadCount(self) -> None:
        """get/set exactly one payload; result at most one; error the error and at most one."""
        self.assertEqual(
            readError(iq(type="get", id="1")).text,
            "payload: an iq get carries exactly one payload (roster query, ping or one xml"
            " element), this one has 0",
        )
        self.assertEqual(
            readError(iq(type="set", id="1", ping={}, xml=["<q xmlns='urn:q'/>"])).text,
            "payload: an iq set carries exactly one payload (roster query, ping or one xml"
            " element), this one has 2",
        )
        self.assertEqual(
            readError(iq(type="get", id="1", xml=["<a xmlns='urn:q'/>", "<b xmlns='urn:q'/>"])).text,
            "payload: an iq get carries exactly one payload (roster query, ping or one xml"
            " element), this one has 2",
        )
        self.assertEqual(
            readError(iq(type="result", id="1", ping={}, query="jabber:iq:roster")).text,
            "payload: an iq result carries at most one payload",
        )
        self.assertReads(iq(type="result", id="1", to="a@localhost/x"),
                         "<iq type='result' id='1' to='a@localhost/x'/>")
        self.assertReads(
            iq(type="error", id="1", error={"condition": "bad-request"}, xml=["<q xmlns='urn:q'/>"]),
            "<iq type='error' id='1'><error type='modify'><bad-request"
            " xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error><q xmlns='urn:q'/></iq>",
        )

    def test_ping(self) -> None:
        self.assertReads(iq(type="get", id="p", ping={}),
                         "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertEqual(readError(iq(type="get", id="p", ping={"x": 1})).text, "payload.ping: must be {}")
        self.assertEqual(readError(iq(type="get", id="p", ping=True)).text, "payload.ping: must be {}")


class ParseErrorObjectTests(SynchronousTestCase):
    def errorText(self, error: Any, kind: str = "error") -> str:
        return readError(message(type=kind, id="e1", error=error)).text

    def test_defaultType(self) -> None:
        """Every RFC 6120 condition is accepted, with its usual type when none is given."""
        for condition, errorType in jsonstanza.ERROR_CONDITIONS.items():
            element = read(message(type="error", error={"condition": condition}))
            error = child(element, "error")
            self.assertEqual(error["type"], errorType)
            [conditionElement] = error.elements()
            self.assertEqual((conditionElement.uri, conditionElement.name), (NS_STANZAS, condition))
        self.assertEqual(len(jsonstanza.ERROR_CONDITIONS), 22)

    def test_refusals(self) -> None:
        self.assertEqual(self.errorText({}), "payload.error.condition: missing")
        self.assertEqual(
            self.errorText({"condition": "no-such"}),
            "payload.error.condition: not an RFC 6120 stanza error condition",
        )
        self.assertEqual(
            self.errorText({"condition": "conflict", "type": "fatal"}),
            "payload.error.type: must be one of auth, cancel, continue, modify, wait",
        )
        self.assertEqual(
            self.errorText({"condition": "conflict", "uri": "xmpp:x"}),
            "payload.error.uri: only for the conditions gone and redirect",
        )
        self.assertEqual(
            self.errorText({"condition": "conflict", "code": 409}),
            "payload.error: unknown key 'code' (known: by, condition, text, type, uri, xml)",
        )
        self.assertEqual(self.errorText("conflict"), "payload.error: must be an object")
        self.assertEqual(
            readError(message(type="error")).text, "payload.error: required when type is 'error'"
        )
        self.assertEqual(
            self.errorText({"condition": "conflict"}, kind="chat"),
            "payload.error: only allowed when type is 'error'",
        )
        self.assertEqual(
            readError(presence(type="error")).text, "payload.error: required when type is 'error'"
        )


class RefusalTests(SynchronousTestCase):
    """Every way a frame can be unreadable, each with its text and the frame id when known."""

    def test_isBadRequest(self) -> None:
        e = readError("nope")
        self.assertIsInstance(e, xerror.BadRequest)
        self.assertEqual((e.condition, e.errorType, e.tooBig), ("bad-request", "modify", False))
        self.assertEqual(e.toJSON(), {"error": "bad-request", "description": e.text})

    def test_tooBig(self) -> None:
        frame = json.dumps(message(id="big", body="x" * 300))
        e = readError(frame, maxSize=100)
        self.assertIsInstance(e, FrameTooBig)
        self.assertEqual((e.condition, e.tooBig, e.frameId), ("policy-violation", True, None))
        self.assertEqual(e.text, f"frame: too big ({len(frame)} bytes, the limit is 100)")
        self.assertIsInstance(readError(frame.encode(), maxSize=100), FrameTooBig)
        # Exactly at the limit is fine.
        parseFrame(frame, maxSize=len(frame))
        parseFrame(frame.encode(), maxSize=len(frame))

    def test_tooBigCountsUTF8Bytes(self) -> None:
        """The limit is in bytes: 30 emoji are 30 characters but 120 bytes."""
        frame = json.dumps(message(body="😀" * 30), ensure_ascii=False)
        size = len(frame.encode())
        self.assertEqual(readError(frame, maxSize=size - 1).text,
                         f"frame: too big ({size} bytes, the limit is {size - 1})")
        parseFrame(frame, maxSize=size)

    def test_defaultLimit(self) -> None:
        self.assertEqual(jsonstanza.MAX_FRAME_SIZE, 256 * 1024)
        self.assertIsInstance(readError(json.dumps(message(body="x" * 256 * 1024))), FrameTooBig)

    def test_badUTF8(self) -> None:
        frame = b'{"type": "message", "payload": {"id": "u", "body": "\xc3\x28"}}'
        e = readError(frame)
        position = frame.index(b"\xc3")
        self.assertEqual((e.text, e.frameId), (f"frame: not valid UTF-8 (at byte {position})", None))

    def test_notJSON(self) -> None:
        for text in ("", "{", "{'type': 'message'}", "[1,]", '{"a": NaN}', '{"a": Infinity}', "\ufeff{}"):
            e = readError(text)
            self.assertTrue(e.text.startswith("frame: not valid JSON ("), (text, e.text))
            self.assertIsNone(e.frameId)

    def test_hugeNumber(self) -> None:
        e = readError('{"type":"presence","payload":{"priority":' + "9" * 5000 + "}}")
        self.assertTrue(e.text.startswith("frame: not valid JSON ("), e.text)

    def test_deepNesting(self) -> None:
        nested: dict[str, Any] = {"type": "message", "payload": {"id": "deep", "composing": {}}}
        inner = nested["payload"]["composing"]
        for _ in range(40):
            inner["x"] = {}
            inner = inner["x"]
        e = readError(nested)
        self.assertEqual((e.text, e.frameId), ("frame: nested deeper than 32 levels", "deep"))
        self.assertEqual(readError("[" * 100000).text, "frame: nested deeper than 32 levels")
        self.assertEqual(readError('{"a":' * 50000).text, "frame: nested deeper than 32 levels")

    def test_manyBracketsInStringsAreNotDepth(self) -> None:
        """The bracket count is only a shortcut: braces inside strings do not count as depth."""
        self.assertEqual(str(child(read(message(body="{[" * 100)), "body")), "{[" * 100)

    def test_notAnObject(self) -> None:
        for frame in ("[]", "1", '"message"', "null"):
            self.assertEqual(
                readError(frame).text, 'frame: must be a JSON object {"type": ..., "payload": {...}}'
            )

    def test_frameKeys(self) -> None:
        self.assertEqual(readError({"payload": {"id": "a"}}).text, "type: missing")
        e = readError({"type": "message", "payload": {"id": "k"}, "extra": 1})
        self.assertEqual(
            (e.text, e.frameId), ("frame: unknown key 'extra' (a frame has only type and payload)", "k")
        )
        self.assertEqual(readError({"type": "message"}).text, "payload: missing")
        self.assertEqual(readError({"type": 1, "payload": {}}).text, "type: must be a string")

    def test_payloadNotObject(self) -> None:
        payloads: tuple[Any, ...] = ([], "hi", None, 1)
        for payload in payloads:
            self.assertEqual(
                readError({"type": "message", "payload": payload}).text, "payload: must be an object"
            )

    def test_unknownType(self) -> None:
        e = readError({"type": "chat", "payload": {"id": 7}})
        self.assertEqual(
            (e.text, e.frameId), ("type: unknown frame type 'chat' (message, presence or iq)", 7)
        )
        for kind in ("error", "session"):
            self.assertEqual(
                readError({"type": kind, "payload": {}}).text,
                f"type: {kind!r} frames are sent by the server only",
            )

    def test_unknownKey(self) -> None:
        e = readError(message(id="m", bdy="hi"))
        self.assertEqual(e.frameId, "m")
        self.assertTrue(e.text.startswith("payload: unknown key 'bdy' (known: active, body,"), e.text)
        self.assertTrue(readError(presence(body="x")).text.startswith("payload: unknown key 'body'"))
        self.assertTrue(readError(presence(name="x")).text.startswith("payload: unknown key 'name'"))

    def test_frameId(self) -> None:
        """The id is echoed when readable: a string or an integer, not too long."""
        self.assertEqual(readError(message(id="a", to=1)).frameId, "a")
        self.assertEqual(readError(message(id=12, to=1)).frameId, 12)
        self.assertIsNone(readError(message(id=["a"], to=1)).frameId)
        self.assertIsNone(readError(message(id="x" * 1025, to=1)).frameId)
        self.assertEqual(readError(message(id=12)).text, "payload.id: must be a string")

    def test_invalidJIDs(self) -> None:
        for to in ("@localhost", "a@localhost/", "a@@localhost", "a@b@c", "a b@localhost",
                   "a@b..c", "a@[::1", "/res", "a@" + "x" * 1024, "x" * 1024 + "@localhost"):
            e = readError(message(id="j", to=to))
            self.assertEqual((e.text, e.frameId), ("payload.to: not a valid JID", "j"), to)
        self.assertEqual(readError(message(to=5)).text, "payload.to: must be a string")
        self.assertEqual(readError(message(to="a" * 4000)).text, "payload.to: longer than 3071 characters")

    def test_validJIDs(self) -> None:
        for to in ("localhost", "a@localhost", "a@localhost/r/with/slash", "a@localhost/r@x",
                   "żółw@localhost", "a@127.0.0.1", "a@localhost/" + "r" * 1023):
            read(message(to=to))

    def test_charactersXMLCannotCarry(self) -> None:
        for body in ("a\x00b", "\x1b[31m", "\ud800", "a\udfffb", "\ufffe", "\uffff"):
            self.assertEqual(
                readError(message(body=body)).text, "payload.body: contains a character XML cannot carry"
            )
        # Allowed: TAB, LF, CR, non-BMP, format characters (ZWJ in emoji sequences).
        self.assertEqual(str(child(read(message(body="\t\n\r👩‍👩‍👧")), "body")), "\t\n\r👩‍👩‍👧")
        self.assertEqual(
            readError(iq(type="get", id="a\x01", ping={})).text,
            "payload.id: contains a character XML cannot carry",
        )

    def test_xmlRefusals(self) -> None:
        cases = {
            "<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>": "DTDs are not allowed",
            "<!DOCTYPE a SYSTEM 'file:///etc/passwd'><a/>": "DTDs are not allowed",
            "<?xml version='1.0'?><a/>": "an XML declaration is not allowed",
            "<?php echo 1 ?><a/>": "processing instructions are not allowed",
            "<a><?pi x?></a>": "processing instructions are not allowed",
            "<a/><b/>": "must hold exactly one element",
            "<a/>text": "must hold exactly one element",
            "": "must hold exactly one element",
            "   ": "must hold exactly one element",
            "text<a/>": "must hold exactly one element",
            "<a>": "not well-formed XML (no element found, column 3)",
            "<a>&x;</a>": "not well-formed XML (undefined entity, column 3)",
            "<p:a/>": "not well-formed XML (unbound prefix, column 0)",
            "<a>\x00</a>": "not well-formed XML (not well-formed (invalid token), column 3)",
            "<a>\ud800</a>": "contains a character XML cannot carry",
            "<a>" * 33 + "</a>" * 33: "elements nested deeper than 32 levels",
        }
        for xml, text in cases.items():
            e = readError(message(id="x", xml=[xml]))
            self.assertEqual((e.text, e.frameId), (f"payload.xml[0]: {text}", "x"), xml)
        self.assertEqual(readError(message(xml="<a/>")).text,
                         "payload.xml: must be a list of strings, each one XML element")
        self.assertEqual(readError(message(xml=["<a/>", 1])).text,
                         "payload.xml[1]: must be a string holding one XML element")
        self.assertEqual(readError(message(xml=["<a/>"] * 65)).text, "payload.xml: more than 64 elements")
        self.assertEqual(
            readError(message(xml=["<a>" + "<b/>" * 600 + "</a>"] * 2)).text,
            "payload.xml[1]: more than 1000 elements in one frame",
        )
        self.assertEqual(
            readError(message(type="error", error={"condition": "conflict", "xml": ["<a/><b/>"]})).text,
            "payload.error.xml[0]: must hold exactly one element",
        )

    def test_billionLaughs(self) -> None:
        """The classic entity bomb is refused at its DOCTYPE, before any expansion."""
        bomb = (
            "<!DOCTYPE lolz [<!ENTITY lol 'lol'>"
            + "".join(f"<!ENTITY lol{i} '{('&lol' + str(i - 1) + ';') * 10 if i else '&lol;' * 10}'>" for i in range(9))
            + "]><lolz>&lol8;</lolz>"
        )
        self.assertEqual(readError(message(xml=[bomb])).text, "payload.xml[0]: DTDs are not allowed")


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


class ToFrameTests(SynchronousTestCase):
    def payload(self, xml: str) -> dict:
        return toFrame(parseXml(xml))["payload"]

    def test_serializeCompact(self) -> None:
        text = serialize(parseXml("<message from='a@localhost/x' to='b@localhost' id='1'><body>zażółć</body></message>"))
        self.assertEqual(
            text,
            '{"type":"message","payload":{"from":"a@localhost/x","id":"1","to":"b@localhost",'
            '"type":"normal","body":"zażółć"}}',
        )

    def test_errorFrame(self) -> None:
        self.assertEqual(
            errorFrame("bad-request", "payload.to: not a valid JID", "as12da11"),
            '{"type":"error","payload":{"condition":"bad-request","text":"payload.to: not a valid'
            ' JID","id":"as12da11"}}',
        )
        self.assertEqual(
            json.loads(errorFrame("policy-violation", "zażółć", None)),
            {"type": "error", "payload": {"condition": "policy-violation", "text": "zażółć", "id": None}},
        )

    def test_notAStanza(self) -> None:
        self.assertRaises(ValueError, toFrame, domish.Element((NS_CLIENT, "stream")))

    def test_chatStates(self) -> None:
        for state in ("active", "composing", "gone", "inactive", "paused"):
            payload = self.payload(f"<message><{state} xmlns='{NS_CHATSTATES}'/></message>")
            self.assertEqual(payload[state], {"ID": ""} if state == "composing" else {})
            self.assertEqual(payload["body"], "")

    def test_whatKeysCannotHoldGoesToXml(self) -> None:
        """A child whose key would lose something travels whole in xml."""
        payload = self.payload(
            "<message><body/><body xml:lang='de'>Hallo</body><body>hi</body><body>again</body>"
            f"<composing xmlns='{NS_CHATSTATES}' x='1'/><thread parent='p'>t</thread></message>"
        )
        self.assertEqual(payload["body"], "hi")
        self.assertEqual(
            payload["xml"],
            [
                "<body xmlns='jabber:client'/>",
                "<body xmlns='jabber:client' xml:lang='de'>Hallo</body>",
                "<body xmlns='jabber:client'>again</body>",
                f"<composing xmlns='{NS_CHATSTATES}' x='1'/>",
                "<thread xmlns='jabber:client' parent='p'>t</thread>",
            ],
        )
        self.assertNotIn("composing", payload)
        self.assertNotIn("thread", payload)

    def test_presenceValuesKeptExactly(self) -> None:
        payload = self.payload("<presence from='a@localhost/x'><show>online</show><priority>+5</priority></presence>")
        self.assertEqual(
            payload,
            {"from": "a@localhost/x",
             "xml": ["<show xmlns='jabber:client'>online</show>", "<priority xmlns='jabber:client'>+5</priority>"]},
        )
        payload = self.payload("<presence><priority>-128</priority><priority>1</priority></presence>")
        self.assertEqual(payload["priority"], -128)
        self.assertEqual(payload["xml"], ["<priority xmlns='jabber:client'>1</priority>"])

    def test_presenceKeys(self) -> None:
        self.assertEqual(
            list(self.payload(
                "<presence from='a@localhost/x' to='b@localhost' id='p1' type='unavailable'>"
                "<status>bye</status></presence>")),
            ["from", "type", "to", "id", "status"],
        )
        self.assertEqual(self.payload("<presence/>"), {"from": ""})

    def test_rosterNotRepresentable(self) -> None:
        """An item with an attribute or child the item object lacks keeps the query in xml."""
        for query in (
            "<query xmlns='jabber:iq:roster'><item jid='a@localhost' approved='true'/></query>",
            "<query xmlns='jabber:iq:roster'><item jid='a@localhost'><group/></item></query>",
            "<query xmlns='jabber:iq:roster'><item jid='a@localhost'><group>A</group><group>A</group></item></query>",
            "<query xmlns='jabber:iq:roster'><item name='no jid'/></query>",
            "<query xmlns='jabber:iq:roster' foo='bar'/>",
            "<query xmlns='jabber:iq:roster'><x xmlns='urn:x'/></query>",
        ):
            payload = self.payload(f"<iq type='result' id='1'>{query}</iq>")
            self.assertNotIn("query", payload)
            self.assertEqual(len(payload["xml"]), 1)

    def test_rosterPrettyPrinted(self) -> None:
        payload = self.payload(
            "<iq type='result' id='1'>\n <query xmlns='jabber:iq:roster'>\n  <item jid='a@localhost'>\n"
            "   <group>A</group>\n  </item>\n </query>\n</iq>"
        )
        self.assertEqual(payload["items"], [{"jid": "a@localhost", "name": None, "subscription": None,
                                             "ask": None, "groups": ["A"]}])
        self.assertNotIn("ver", payload)

    def test_errorNotRepresentable(self) -> None:
        for error in (
            "<error type='cancel' x='1'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
            "<error><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
            "<error type='cancel'/>",
            "<error type='cancel'><made-up xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
            "<error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>x</conflict></error>",
        ):
            payload = self.payload(f"<message type='error'>{error}</message>")
            self.assertNotIn("error", payload)
            self.assertEqual(len(payload["xml"]), 1)

    def test_twistedStanzaError(self) -> None:
        """
        The errors the core builds with Twisted's StanzaError read as error objects; their legacy
        XEP-0086 code is left out.
        """
        request = parseXml("<message from='a@localhost/x' to='nobody@localhost' id='m1'><body>hi</body></message>")
        response = jerror.StanzaError("service-unavailable", text="no such user").toResponse(request)
        self.assertEqual(response.error["code"], "503")
        self.assertEqual(
            toFrame(response)["payload"],
            {"from": "nobody@localhost", "id": "m1", "to": "a@localhost/x", "type": "error",
             "body": "hi", "error": {"type": "cancel", "condition": "service-unavailable",
                                     "text": "no such user"}},
        )
        iqError = jerror.StanzaError("feature-not-implemented").toResponse(
            parseXml("<iq type='get' id='v' from='a@localhost/x' to='localhost'><query xmlns='urn:q'/></iq>")
        )
        self.assertEqual(
            toFrame(iqError)["payload"]["error"], {"type": "cancel", "condition": "feature-not-implemented"}
        )

    def test_errorTextLang(self) -> None:
        payload = self.payload(
            "<iq type='error' id='1'><error type='wait'><resource-constraint"
            " xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text"
            " xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>busy</text></error></iq>"
        )
        self.assertEqual(payload["error"], {"type": "wait", "condition": "resource-constraint", "text": "busy"})

    def test_delayAndStanzaId(self) -> None:
        payload = self.payload(
            "<message><delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>"
            "<delay xmlns='urn:xmpp:delay' stamp='2026-01-02T00:00:00Z' from='localhost'/>"
            "<stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='a@localhost'/>"
            "<stanza-id xmlns='urn:xmpp:sid:0' id='s2' by='room@muc.localhost'/></message>"
        )
        self.assertEqual(payload["delay"], {"stamp": "2026-01-01T00:00:00Z", "from": None})
        self.assertEqual(payload["stanza_id"], "s1")
        self.assertEqual(len(payload["xml"]), 2)

    def test_stanzasBuiltInCode(self) -> None:
        """Stanzas built by server code with Element((None, ...)) or (("", ...)) read the same."""
        for uri in (None, "", NS_CLIENT):
            m = domish.Element((uri, "message"))
            m["from"] = "a@localhost/x"
            m.addElement("body", content="hi")
            m.addElement("subject", content="s")
            m.addElement(("urn:xmpp:receipts", "request"))
            x = m.addElement("x")
            x.addElement(("urn:y", "y")).addElement("z")
            payload = toFrame(m)["payload"]
            self.assertEqual(payload["body"], "hi", uri)
            self.assertEqual(payload["subject"], "s", uri)
            self.assertEqual(
                payload["xml"],
                ["<request xmlns='urn:xmpp:receipts'/>",
                 "<x xmlns='jabber:client'><y xmlns='urn:y'><z/></y></x>"],
                uri,
            )

    def test_xmlDeclaresEveryNamespace(self) -> None:
        """
        Children whose namespace came from a prefix declared on the stanza, children in
        jabber:client with foreign grandchildren, namespaced attributes: each string stands alone.
        """
        stanza = parseXml(
            "<message xmlns:r='urn:xmpp:receipts' xmlns:f='urn:f'><r:request/>"
            "<x f:a='1'><f:y><z xmlns='urn:z'><w/></z><v/></f:y><u/></x><ns xmlns=''><q/></ns></message>"
        )
        self.assertEqual(
            toFrame(stanza)["payload"]["xml"],
            [
                "<request xmlns='urn:xmpp:receipts'/>",
                (
                    "<x xmlns='jabber:client' xmlns:ns0='urn:f' ns0:a='1'><y xmlns='urn:f'><z"
                    " xmlns='urn:z'><w/></z><v xmlns='jabber:client'/></y><u/></x>"
                ),
                "<ns xmlns=''><q/></ns>",
            ],
        )
        # and they read back as the same elements
        again = read(message(xml=toFrame(stanza)["payload"]["xml"]))
        self.assertEqual(canonical(again), canonical(stanza))

    def test_xmlEscaping(self) -> None:
        """CR in text, TAB/LF/CR in attributes survive a real XML parser."""
        x = domish.Element(("urn:x", "x"))
        x["a"] = "1\t2\n3\r4 '\"<&>"
        x.addContent("a\r\nb <&> ]]>")
        m = domish.Element((NS_CLIENT, "message"))
        m.addChild(x)
        [text] = toFrame(m)["payload"]["xml"]
        self.assertEqual(
            text,
            "<x xmlns='urn:x' a='1&#9;2&#10;3&#13;4 &apos;&quot;&lt;&amp;&gt;'>a&#13;\nb &lt;&amp;&gt; ]]&gt;</x>",
        )
        back = child(read(message(xml=[text])), "x")
        self.assertEqual(back["a"], x["a"])
        self.assertEqual(str(back), str(x))

    def test_serializedXmlChild(self) -> None:
        m = domish.Element((NS_CLIENT, "message"))
        m.addRawXml("<raw xmlns='urn:raw'/>")
        self.assertEqual(toFrame(m)["payload"]["xml"], ["<raw xmlns='urn:raw'/>"])

    def test_lang(self) -> None:
        m = domish.Element((NS_CLIENT, "presence"))
        m["xml:lang"] = "de"
        self.assertEqual(toFrame(m)["payload"], {"from": "", "lang": "de"})


# ---------------------------------------------------------------------------------------------
# history (XEP-0313)
# ---------------------------------------------------------------------------------------------

MAM_RESULT = (
    "<message from='szymon@localhost' to='szymon@localhost/web-1'>"
    "<result xmlns='urn:xmpp:mam:2' queryid='q' id='A1'><forwarded xmlns='urn:xmpp:forward:0'>"
    "<delay xmlns='urn:xmpp:delay' stamp='2026-11-27T12:00:00Z'/>"
    "<message xmlns='jabber:client' from='alicja@localhost/dom' type='chat'><body>x</body>"
    "<request xmlns='urn:xmpp:receipts'/></message></forwarded></result></message>"
)


class HistoryTests(SynchronousTestCase):
    """The C{history} iq key (input) and the translation of XEP-0313 results (output)."""

    def test_queryOnlyWhatIsGiven(self) -> None:
        self.assertEqual(
            canonical(read(iq(type="set", id="q1", history={}))),
            canonical(parseXml("<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='q1'/></iq>")),
        )
        self.assertEqual(
            canonical(read(iq(type="set", id="q2", history={"max": 0, "after": "A"}))),
            canonical(parseXml(
                "<iq type='set' id='q2'><query xmlns='urn:xmpp:mam:2' queryid='q2'>"
                "<set xmlns='http://jabber.org/protocol/rsm'><max>0</max><after>A</after></set>"
                "</query></iq>")),
        )

    def test_everyField(self) -> None:
        element = read(iq(id="q3", type="set", history={
            "ids": ["A", "B"], "end": "2026-11-27T00:00:00Z", "before_id": "X",
            "after_id": "W", "with": "Alicja@LOCALHOST/Dom", "start": "2026-11-01T00:00:00Z"}))
        self.assertEqual(canonical(element), canonical(parseXml(
            "<iq type='set' id='q3'><query xmlns='urn:xmpp:mam:2' queryid='q3'>"
            "<x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>"
            "<field var='with'><value>alicja@localhost/Dom</value></field>"
            "<field var='start'><value>2026-11-01T00:00:00Z</value></field>"
            "<field var='end'><value>2026-11-27T00:00:00Z</value></field>"
            "<field var='after-id'><value>W</value></field>"
            "<field var='before-id'><value>X</value></field>"
            "<field var='ids'><value>A</value><value>B</value></field></x></query></iq>")))

    def test_refused(self) -> None:
        cases = [
            (iq(type="get", id="r", history={}), "payload.history: only in an iq of type set"),
            (iq(type="set", id="r", history=[]), "payload.history: must be an object"),
            (iq(type="set", id="r", history={"colour": 1}), "payload.history: unknown key"),
            (iq(type="set", id="r", history={"with": "a@b@c"}),
             "payload.history.with: not a valid JID"),
            (iq(type="set", id="r", history={"max": True}), "payload.history.max: must be"),
            (iq(type="set", id="r", history={"max": "5"}), "payload.history.max: must be"),
            (iq(type="set", id="r", history={"after": ""}),
             "payload.history.after: must not be empty"),
            (iq(type="set", id="r", history={"ids": "A"}), "payload.history.ids: must be a list"),
            (iq(type="set", id="r", history={"ids": ["A", ""]}),
             "payload.history.ids: ids must not be empty"),
            (iq(type="set", id="r", history={"ids": ["x"] * 251}), "payload.history.ids: must be"),
            (iq(type="set", id="r", history={}, ping={}), "payload: an iq set carries exactly one"),
        ]
        for frame, text in cases:
            self.assertTrue(readError(frame).text.startswith(text), (frame, readError(frame).text))

    def test_resultKeepsEverything(self) -> None:
        """The archived message has the keys of any message, its xml list included."""
        payload = toFrame(parseXml(MAM_RESULT))["payload"]
        self.assertEqual(payload["result"], {
            "queryid": "q", "id": "A1",
            "delay": {"stamp": "2026-11-27T12:00:00Z", "from": None},
            "message": {"from": "alicja@localhost/dom", "id": "", "to": "", "type": "chat",
                        "body": "x", "xml": ["<request xmlns='urn:xmpp:receipts'/>"]},
        })
        self.assertNotIn("xml", payload)

    def test_resultNotRepresentable(self) -> None:
        """A result with anything the key cannot hold travels whole in xml."""
        for old, new in (
            ("queryid='q' id='A1'", "queryid='q'"),  # no id
            ("queryid='q' id='A1'", "queryid='q' id='A1' extra='1'"),
            ("<delay xmlns='urn:xmpp:delay' stamp='2026-11-27T12:00:00Z'/>", ""),
            ("<forwarded xmlns='urn:xmpp:forward:0'>",
             "<forwarded xmlns='urn:xmpp:forward:0'><x xmlns='urn:example'/>"),
            ("<message xmlns='jabber:client' from",
             "<message xmlns='urn:example' from"),
            ("</forwarded></result>", "</forwarded><forwarded xmlns='urn:xmpp:forward:0'/></result>"),
            ("<delay xmlns='urn:xmpp:delay' stamp='2026-11-27T12:00:00Z'/>",
             "<delay xmlns='urn:xmpp:delay' stamp='2026-11-27T12:00:00Z' by='x'/>"),
        ):
            xml = MAM_RESULT.replace(old, new, 1)
            payload = toFrame(parseXml(xml))["payload"]
            if new == "":
                # no delay is fine: the result simply has none
                self.assertNotIn("delay", payload["result"])
                continue
            self.assertNotIn("result", payload, xml)
            [kept] = payload["xml"]
            self.assertTrue(kept.startswith("<result xmlns='urn:xmpp:mam:2'"), kept)

    def test_fin(self) -> None:
        frame = toFrame(parseXml(
            "<iq type='result' id='h'><fin xmlns='urn:xmpp:mam:2' complete='true'>"
            "<set xmlns='http://jabber.org/protocol/rsm'><first index='3'>F</first>"
            "<last>L</last><count>9</count></set></fin></iq>"))
        self.assertEqual(frame["payload"]["history"],
                         {"first": "F", "last": "L", "complete": True, "count": 9, "index": 3})
        empty = toFrame(parseXml(
            "<iq type='result' id='h'><fin xmlns='urn:xmpp:mam:2' complete='false'>"
            "<set xmlns='http://jabber.org/protocol/rsm'/></fin></iq>"))
        self.assertEqual(empty["payload"]["history"],
                         {"first": None, "last": None, "complete": False, "count": None,
                          "index": None})

    def test_finNotRepresentable(self) -> None:
        base = ("<iq type='result' id='h'><fin xmlns='urn:xmpp:mam:2' complete='true'>"
                "<set xmlns='http://jabber.org/protocol/rsm'><first index='3'>F</first>"
                "<count>9</count></set></fin></iq>")
        for old, new in (
            (" complete='true'", ""),
            (" complete='true'", " complete='yes'"),
            (" complete='true'", " complete='true' stable='false'"),
            ("<count>9</count>", "<count>many</count>"),
            ("<count>9</count>", "<count>9</count><count>9</count>"),
            ("index='3'", "index='x'"),
            ("<count>9</count>", "<count>9</count><max>3</max>"),
            ("</set></fin>", "</set><set xmlns='http://jabber.org/protocol/rsm'/></fin>"),
            ("<set xmlns='http://jabber.org/protocol/rsm'><first index='3'>F</first><count>9</count></set>", ""),
        ):
            xml = base.replace(old, new, 1)
            payload = toFrame(parseXml(xml))["payload"]
            self.assertNotIn("history", payload, xml)
            [kept] = payload["xml"]
            self.assertTrue(kept.startswith("<fin xmlns='urn:xmpp:mam:2'"), kept)



# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------

_NOT_XML = [chr(c) for c in range(0x20) if c not in (9, 10, 13)] + ["\ufffe", "\uffff"]
xmlText = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=_NOT_XML), max_size=40
)
someText = st.one_of(
    xmlText,
    st.sampled_from(["Zażółć gęślą jaźń", "😀👩‍👩‍👧", "a\r\nb", " \t ", "<&>'\"]]>", "日本語"]),
)
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"


def _word(first: str, rest: str, maxSize: int) -> Any:
    # st.text over a small alphabet is much faster to draw than st.from_regex.
    return st.builds(operator.add, st.sampled_from(first), st.text(alphabet=rest, max_size=maxSize))


# XML names; "xml..." is reserved, so such names get another first letter.
names = _word(_LOWER, _LOWER + _DIGITS + "_.-", 7).map(lambda n: "n" + n if n.startswith("xml") else n)
namespaces = st.one_of(
    st.sampled_from(
        ["urn:xmpp:receipts", "jabber:client", "urn:xmpp:chat-markers:0", "jabber:x:oob",
         "http://jabber.org/protocol/xhtml-im", NS_CHATSTATES, NS_STANZAS, "urn:xmpp:ping",
         "jabber:iq:roster", ""]
    ),
    _word(_LOWER, _LOWER + _DIGITS + ":", 8).map(lambda w: "urn:" + w),
)
attrNames = st.one_of(
    names,
    st.tuples(_word(_LOWER, _LOWER, 4).map(lambda w: "urn:" + w), names),
    st.just((NS_XML, "lang")),
)
localparts = _word(_LOWER + _DIGITS, _LOWER + _DIGITS + "._-", 7)
domains = st.sampled_from(["localhost", "example.org", "muc.localhost"])
resources = _word(_LOWER + _LOWER.upper() + _DIGITS, _LOWER + _LOWER.upper() + _DIGITS + " ._-", 7)


bareJIDs = st.builds("{}@{}".format, localparts, domains)
fullJIDs = st.builds("{}/{}".format, bareJIDs, resources)
jids = st.one_of(bareJIDs, fullJIDs, domains)
ids = _word(_LOWER + _DIGITS, _LOWER + _LOWER.upper() + _DIGITS + "_-", 11)


# Every strategy below is built once, at import: strategies made inside a draw cost hypothesis
# a validation each time, which made this module ten times slower.
_attrLists = st.lists(attrNames, max_size=3, unique=True)
_nonEmptyText = someText.filter(bool)
_maybeJID = st.none() | jids
_maybeId = st.none() | ids
_maybeBody = st.none() | _nonEmptyText
_maybeState = st.none() | st.sampled_from(["active", "composing", "gone", "inactive", "paused"])
_oneInFour = st.integers(0, 3).map(lambda n: n == 0)
_upToThree = st.integers(0, 3)
_upToTwo = st.integers(0, 2)
_langs = st.sampled_from(["en", "pl", "de-CH"])
_shows = st.sampled_from(["away", "chat", "dnd", "xa"])
_priorities = st.integers(-128, 127).map(str)
_groups = st.lists(_nonEmptyText, max_size=3, unique=True)
_vers = st.text(alphabet=_LOWER + _DIGITS, max_size=6)
_conditions = st.sampled_from(sorted(jsonstanza.ERROR_CONDITIONS))
_errorTypes = st.sampled_from(["auth", "cancel", "continue", "modify", "wait"])
_messageTypes = st.sampled_from([None, "chat", "normal", "groupchat", "headline", "error"])
_presenceTypes = st.sampled_from(
    [None, "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "error"]
)
_iqTypes = st.sampled_from(["get", "set", "result", "error"])
_iqPayloads = st.sampled_from(["roster", "ping", "xml", "none"])
errorNamespaces = _word(_LOWER, _LOWER, 4).map(lambda w: f"urn:{w}:errors")


def _elements(depth: int, children: Any) -> Any:
    """Random elements in random namespaces, with random attributes, text and children."""

    @st.composite
    def build(draw: Any) -> domish.Element:
        uri = draw(namespaces)
        element = domish.Element((uri, draw(names)), uri)
        for key in draw(_attrLists):
            element[key] = draw(someText)
        for _ in range(draw(_upToThree) if depth else 0):
            if draw(st.booleans()):
                element.addContent(draw(someText))
            else:
                element.addChild(draw(children))
        return element

    return build()


extraElements = _elements(0, st.nothing())
for _depth in (1, 2, 3):
    extraElements = _elements(_depth, extraElements)
_extraLists = st.lists(extraElements, max_size=3)

# What the generators must not produce: server-set children the input ignores by design.
_SERVER_SET = {"urn:xmpp:delay", "urn:xmpp:sid:0"}


def stanza(name: str, attributes: dict[str, str | None]) -> domish.Element:
    element = domish.Element((NS_CLIENT, name))
    for key, value in attributes.items():
        if value is not None:
            element[key] = value
    return element


@st.composite
def errors(draw: Any) -> domish.Element:
    condition = draw(_conditions)
    error = domish.Element((NS_CLIENT, "error"))
    error["type"] = draw(_errorTypes)
    if draw(st.booleans()):
        error["by"] = draw(bareJIDs)
    element = error.addElement((NS_STANZAS, condition))
    if condition in ("gone", "redirect") and draw(st.booleans()):
        element.addContent("xmpp:" + draw(bareJIDs))
    if draw(st.booleans()):
        error.addElement((NS_STANZAS, "text"), content=draw(_nonEmptyText))
    for _ in range(draw(_upToTwo)):
        error.addElement((draw(errorNamespaces), draw(names)))
    return error


errorElements = errors()


@st.composite
def messages(draw: Any) -> domish.Element:
    kind = draw(_messageTypes)
    m = stanza("message", {"from": draw(fullJIDs), "to": draw(_maybeJID),
                           "id": draw(_maybeId), "type": kind})
    if draw(st.booleans()):
        m[(NS_XML, "lang")] = draw(_langs)
    body = draw(_maybeBody)
    if body is not None:
        m.addElement("body", content=body)
    for key in ("subject", "thread"):
        if draw(_oneInFour):
            m.addElement(key, content=draw(someText))
    state = draw(_maybeState)
    if state:
        m.addElement((NS_CHATSTATES, state))
    if kind == "error":
        m.addChild(draw(errorElements))
    for extra in draw(_extraLists):
        m.addChild(extra)
    return m


@st.composite
def presences(draw: Any) -> domish.Element:
    kind = draw(_presenceTypes)
    p = stanza("presence", {"from": draw(fullJIDs), "to": draw(_maybeJID),
                            "id": draw(_maybeId), "type": kind})
    if draw(st.booleans()):
        p.addElement("show", content=draw(_shows))
    if draw(st.booleans()):
        p.addElement("status", content=draw(someText))
    if draw(st.booleans()):
        p.addElement("priority", content=draw(_priorities))
    if kind == "error":
        p.addChild(draw(errorElements))
    for extra in draw(_extraLists):
        p.addChild(extra)
    return p


@st.composite
def rosterItems(draw: Any) -> domish.Element:
    """Roster items as a client may send them (no subscription state but "remove", no ask)."""
    item = domish.Element(("jabber:iq:roster", "item"))
    item["jid"] = draw(bareJIDs)
    if draw(st.booleans()):
        item["name"] = draw(someText)
    if draw(_oneInFour):
        item["subscription"] = "remove"
    for group in draw(_groups):
        item.addElement("group", content=group)
    return item


rosterItemElements = rosterItems()


@st.composite
def iqs(draw: Any) -> domish.Element:
    kind = draw(_iqTypes)
    q = stanza("iq", {"from": draw(fullJIDs), "to": draw(_maybeJID), "id": draw(ids), "type": kind})
    payload = draw(_iqPayloads)
    if payload == "none" and kind in ("get", "set"):
        payload = "ping"
    if payload == "roster":
        query = q.addElement(("jabber:iq:roster", "query"))
        if draw(st.booleans()):
            query["ver"] = draw(_vers)
        count = {"get": 0, "set": 1}.get(kind) if kind in ("get", "set") else draw(_upToThree)
        for _ in range(count or 0):
            query.addChild(draw(rosterItemElements))
    elif payload == "ping":
        q.addElement(("urn:xmpp:ping", "ping"))
    elif payload == "xml":
        q.addChild(draw(extraElements))
    if kind == "error":
        q.addChild(draw(errorElements))
    return q


stanzas = st.one_of(messages(), presences(), iqs())


def withoutServerSet(element: domish.Element) -> bool:
    return not any(
        getattr(child, "uri", None) in _SERVER_SET for child in element.children
    )


class PropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(stanzas.filter(withoutServerSet))
    def test_xmlJsonXmlKeepsEverything(self, element: domish.Element) -> None:
        """XML -> JSON text -> XML gives the same stanza, every child element included."""
        text = serialize(element)
        back = parseFrame(text)
        self.assertEqual(canonical(back), canonical(element), text)

    @PROPERTY
    @given(stanzas.filter(withoutServerSet))
    def test_jsonXmlJsonIsStable(self, element: domish.Element) -> None:
        """The frame of a stanza read back from its own frame is the same frame (from aside)."""
        frame = toFrame(element)
        back = parseFrame(json.dumps(frame))
        back["from"] = element["from"]
        again = toFrame(back)
        # Keyed children come back in key order, so compare payloads as dicts, xml as multisets.
        for payload in (frame["payload"], again["payload"]):
            payload["xml"] = sorted(payload.get("xml", []))
            payload.setdefault("type", "normal")
            if "items" in payload:
                payload["items"] = sorted(payload["items"], key=repr)
        self.assertEqual(again, frame)


# Values likely to reach deep into the validation.
_jsonScalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20), jids, st.sampled_from(
        ["", "av", "away", "chat", "get", "set", "result", "error", "remove", "jabber:iq:roster",
         "<a/>", "<!DOCTYPE a><a/>", "<a xmlns:p='u'><p:b/></a>", "\ud800", "@localhost",
         "bad-request", "redirect", "cancel", "a@b/"]
    ),
)
_jsonValues = st.recursive(
    _jsonScalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["type", "id", "to", "from", "body", "subject", "thread", "composing", "active", "show",
     "status", "priority", "query", "query-roster", "ver", "item", "items", "ping", "error", "xml",
     "lang", "name", "delay", "stanza_id", "condition", "jid", "groups", "subscription", "ask",
     "text", "by", "uri", "jabber:iq:roster"]
)
_structured = st.recursive(
    _jsonScalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=15,
)
_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "presence", "iq", "error", "x"]),
     "payload": st.dictionaries(_keys, _structured, max_size=6)}
)
_xmlish = st.lists(
    st.sampled_from(["<", ">", "/", "a", "b", "p:", "xmlns", "=", "'", "'u'", " ", "&", ";", "amp",
                     "<!DOCTYPE", "<?", "?>", "<![CDATA[", "]]>", "--", "!", "[", "]", "ENTITY",
                     "\x00", "\ud800", "é", "xml:lang", "xmlns:p"]),
    max_size=20,
).map("".join)


class FuzzTests(SynchronousTestCase):
    """Whatever arrives, parseFrame answers with a stanza or a FrameError, never anything else."""

    def check(self, frame: Any) -> None:
        try:
            element = parseFrame(frame)
        except FrameError as e:
            self.assertTrue(e.text)
            self.assertIsInstance(e.frameId, (str, int, type(None)))
            # and the error frame for it can always be written
            json.loads(errorFrame(e.condition, e.text, e.frameId))
            return
        self.assertIn(element.name, ("message", "presence", "iq"))
        self.assertNotIn("from", element.attributes)
        # Anything accepted is a stanza the c2s door can write as well-formed XML, and the web
        # door can send back.
        parseXml(element.toXml())
        serialize(element)

    @FUZZ
    @given(_jsonValues)
    def test_anyJSON(self, value: Any) -> None:
        self.check(json.dumps(value))

    @FUZZ
    @given(_frames)
    def test_frameShapedJSON(self, frame: Any) -> None:
        self.check(json.dumps(frame))

    @FUZZ
    @given(st.lists(_xmlish, min_size=1, max_size=3), st.sampled_from(["message", "presence", "iq"]))
    def test_anyXmlStrings(self, xml: list[str], kind: str) -> None:
        payload: dict[str, Any] = {"xml": xml}
        if kind == "iq":
            payload.update(type="result", id="1")
        self.check(json.dumps({"type": kind, "payload": payload}))

    @FUZZ
    @given(st.text(max_size=60))
    def test_anyText(self, text: str) -> None:
        self.check(text)

    @FUZZ
    @given(st.binary(max_size=60))
    def test_anyBytes(self, data: bytes) -> None:
        self.check(data)

    @FUZZ
    @given(stanzas, st.data())
    def test_mutatedFrames(self, element: domish.Element, data: Any) -> None:
        """A valid frame with one value replaced by anything at all."""
        frame = toFrame(element)
        payload = frame["payload"]
        key = data.draw(st.sampled_from(sorted(payload)))
        payload[key] = data.draw(_structured)
        self.check(json.dumps(frame))


# ---------------------------------------------------------------------------------------------
# the fast paths: same result as the general ones, and a fall-back to them for anything else
# ---------------------------------------------------------------------------------------------


def shape(element: domish.Element) -> Any:
    """Everything of an element, in order (attribute order included): what must not differ."""
    children = []
    for child in element.children:
        if isinstance(child, str):
            children.append((type(child).__name__, str(child)))
        else:
            assert child.parent is None  # no reference cycles (IMServer.receive)
            children.append(shape(child))
    return (element.uri, element.name, element.defaultUri, element.localPrefixes,
            list(element.attributes.items()), children)


def _noScan(text: str, index: int) -> Any:
    raise StopIteration(index)


def _notWritten(element: domish.Element) -> str:
    raise TypeError("as if the fast path could not write it")


@contextlib.contextmanager
def generalPathsOnly() -> Any:
    """parseFrame and serialize as they were before the fast paths: decode, readers, toFrame."""
    names = ("_scanOnce", "_fastMessage", "_fastPresence", "_messageFrame", "_presenceFrame")
    saved = [getattr(jsonstanza, name) for name in names]
    replacements = (_noScan, lambda payload, frame=None: None, lambda payload: None,
                    lambda element: None, _notWritten)
    for name, replacement in zip(names, replacements):
        setattr(jsonstanza, name, replacement)
    try:
        yield
    finally:
        for name, original in zip(names, saved):
            setattr(jsonstanza, name, original)


def readOutcome(frame: str | bytes) -> Any:
    """What parseFrame makes of a frame: the element's shape, or the error it raises."""
    try:
        element = parseFrame(frame)
    except FrameError as e:
        return (type(e), e.condition, e.text, e.frameId)
    return shape(element)


def generalSerialize(element: domish.Element) -> str:
    """The definition of serialize before the fast path: the json module's encoder on toFrame."""
    return jsonstanza._encoder.encode(toFrame(element))


def fastWritten(element: domish.Element) -> bool:
    """Whether serialize writes the children of C{element} itself rather than by toFrame."""
    table = {"message": jsonstanza._FAST_MESSAGE_OUT, "presence": jsonstanza._FAST_PRESENCE_OUT}
    return element.name in table and jsonstanza._fragments(element, table[element.name], None) is not None


# Payload values that the fast readers take and some that they must leave to the general one.
_fastValues = st.one_of(
    jids, ids, someText, st.sampled_from(
        ["", "chat", "normal", "headline", "groupchat", "error", "away", "av", "dnd", "available",
         "unavailable", "subscribe", "probe", "\x00", "\ud800", "a\tb", "@localhost", "a@b/",
         "x" * 257, "x" * 1025, "ALICJA@LOCALHOST", "alicja@localhost/\u00e9"]
    ),
    st.integers(-130, 130), st.booleans(), st.none(),
    st.sampled_from([{}, {"ID": ""}, {"a": 1, "b": None}, {"a": {}}, {"a": [1]}, [], ["x"]]),
)
_messageKeys = st.sampled_from(
    ["to", "type", "body", "id", "from", "name", "active", "composing", "paused", "gone",
     "inactive", "subject", "lang", "delay", "xml", "bdy"]
)
_presenceKeys = st.sampled_from(
    ["to", "type", "id", "from", "show", "status", "priority", "lang", "error", "name"]
)
_validFastValues = {
    "to": st.one_of(jids, st.just("")),
    "body": someText, "status": someText, "subject": someText,
    "id": st.one_of(ids, st.just("")),
    "from": jids, "name": st.just("message"),
    "show": st.sampled_from(["away", "chat", "dnd", "xa", "", "av"]),
    "priority": st.integers(-128, 127),
    **{state: st.sampled_from([{}, {"ID": ""}]) for state in jsonstanza.CHAT_STATES},
}
_validTypes = {
    "message": st.sampled_from(["chat", "normal", "headline", "groupchat"]),
    "presence": st.sampled_from(["", "available", "unavailable", "subscribe", "probe"]),
}


@st.composite
def fastFrames(draw: Any) -> dict:
    """Frames of the shapes the fast readers take, now and then with a key or value they do not."""
    kind = draw(st.sampled_from(["message", "presence"]))
    odd = draw(st.booleans())  # else only keys and values the fast readers take
    keys = draw(st.lists(_messageKeys if kind == "message" else _presenceKeys, unique=True, max_size=6))
    payload = {}
    for key in keys:
        valid = _validTypes[kind] if key == "type" else _validFastValues.get(key)
        if valid is None or key == "subject":
            if not odd:
                continue
            valid = _fastValues
        payload[key] = draw(_fastValues if odd and draw(_oneInFour) else valid)
    return {"type": kind, "payload": payload}


_fastFrames = fastFrames()
_spacing = st.sampled_from(["", "", "", " ", "\n", "\t ", "x", "]"])


def _fastChild(draw: Any, kind: str, odd: bool) -> Any:
    """
    A child a fast writer takes, or (if C{odd}) now and then one just beside it, which it must
    leave alone.
    """
    if odd:
        choice = draw(st.sampled_from(
            ["body", "body", "state", "sid", "sid", "delay", "show", "status", "priority", "other",
             "text", "raw"]
        ))
        uri = draw(st.sampled_from([NS_CLIENT, NS_CLIENT, NS_CLIENT, None, "", "urn:other"]))
    else:
        choices = ["body", "state", "sid", "delay"] if kind == "message" else [
            "show", "status", "priority", "sid", "delay"]
        choice = draw(st.sampled_from(choices))
        uri = NS_CLIENT
    if choice == "text":
        return draw(st.sampled_from([" ", "\n  ", "stray text"]))
    if choice == "raw":
        return domish.SerializedXML("<x xmlns='urn:raw'/>")
    if choice == "other":
        child = domish.Element((draw(namespaces), draw(names)))
    elif choice == "state":
        state = draw(st.sampled_from(jsonstanza.CHAT_STATES))
        child = domish.Element((draw(st.sampled_from([NS_CHATSTATES, NS_CHATSTATES, "urn:x"])), state))
    elif choice == "sid":
        child = domish.Element((draw(st.sampled_from(["urn:xmpp:sid:0", "urn:xmpp:sid:0", "urn:x"])), "stanza-id"))
        child["by"] = draw(bareJIDs)
        if draw(st.integers(0, 5)):
            child["id"] = draw(ids)
    elif choice == "delay":
        child = domish.Element((draw(st.sampled_from(["urn:xmpp:delay", "urn:xmpp:delay", "urn:x"])), "delay"))
        if draw(st.integers(0, 5)):
            child["stamp"] = "2026-11-27T12:00:00.000000Z"
        if draw(st.booleans()):
            child["from"] = draw(domains)
    else:
        child = domish.Element((uri, choice), uri if uri is not None else None)
        if choice == "show":
            child.addContent(draw(st.sampled_from(["away", "chat", "dnd", "xa", "", "busy"])))
        elif choice == "priority":
            child.addContent(draw(st.sampled_from(["5", "-128", "127", "128", "05", "+1", "x", ""])))
        elif choice in ("body", "status"):
            text = draw(st.one_of(st.just(""), someText))
            if text:
                child.addContent(text)
    if odd and draw(_oneInFour):
        if draw(st.booleans()):
            child[draw(attrNames)] = draw(someText)
        elif draw(st.booleans()):
            child.addContent(draw(someText))
        else:
            child.addElement(("urn:inner", "inner"))
    return child


@st.composite
def fastStanzas(draw: Any) -> domish.Element:
    """Messages and presences as the router delivers them, with now and then something odd."""
    kind = draw(st.sampled_from(["message", "presence"]))
    odd = draw(st.booleans())
    uri = draw(st.sampled_from([NS_CLIENT, NS_CLIENT, NS_CLIENT, None, ""]))
    element = domish.Element((uri, kind))
    attributes = {"from": draw(_maybeJID), "to": draw(_maybeJID), "id": draw(_maybeId),
                  "type": draw(_messageTypes if kind == "message" else _presenceTypes)}
    for key, value in attributes.items():
        if value is not None:
            element[key] = value if draw(st.integers(0, 9)) else ""
    if draw(_oneInFour):
        element[draw(st.sampled_from([(NS_XML, "lang"), "xml:lang", "other"]))] = draw(_langs)
    if odd and draw(_oneInFour):
        element["id"] = 5  # type: ignore[assignment]  # not a string: only toFrame writes it
    for _ in range(draw(st.integers(0, 4))):
        element.addChild(_fastChild(draw, kind, odd))
    return element


class FastPathTests(SynchronousTestCase):
    """
    parseFrame and serialize have fast paths for the frames that are the traffic; they must
    give exactly what the general paths give (down to attribute and key order), and leave
    everything else to them.
    """

    typical = (
        message(to="alicja@localhost", type="chat", body="Cześć 👋", id="m1"),
        message(to="alicja@localhost", type="chat", body="Cześć", id="m1", active={}),
        message(to="Alicja@LOCALHOST/Dom", type="chat", body="", composing={"ID": ""}),
        message(name="message", **{"from": "x"}, id="as12da11", to="alicja@localhost",
                type="chat", body="a\r\nb\tc"),
        message(body="no to, no type"),
        message(to="", id="", body="x", type="normal"),
        presence(show="away", status="Mam  na imię alicja", priority=5),
        presence(),
        presence(type="unavailable", status=""),
        presence(type="subscribed", to="szymon@localhost", id="s1"),
        presence(show="", type="available", priority=-128),
        presence(to="", id="", type=""),
    )

    def test_fastReadersTakeTheTraffic(self) -> None:
        for frame in self.typical:
            fast = jsonstanza._fastMessage if frame["type"] == "message" else jsonstanza._fastPresence
            element = fast(frame["payload"])
            assert element is not None, frame
            text = json.dumps(frame)
            with generalPathsOnly():
                expected = readOutcome(text)
            self.assertEqual(shape(element), expected)
            self.assertEqual(readOutcome(text), expected)

    def test_fastReadersFallBack(self) -> None:
        """Anything else is left to the general reader, which reads or refuses it."""
        refused = [
            message(subject="s"), message(thread="t"), message(lang="pl"), message(type="error"),
            message(xml=["<a xmlns='urn:a'/>"]), message(delay={}), message(stanza_id="x"),
            message(bdy="typo"), message(body=5), message(body="\x00"), message(id=7),
            message(id="x" * 1025), message(to="not a jid@@"), message(to="x" * 257 + "@localhost"),
            message(to="a@localhost\n"), message(to=5), message(type="x"), message(type=["chat"]),
            message(active=[]), message(active={"a": {"b": {}}}), message(composing=None),
            message(**{"from": {"a": 1}}), message(name=[1]),
            presence(show="busy"), presence(show=None), presence(type="error"),
            presence(type="x"), presence(type={}), presence(status=5), presence(status="x" * 4097),
            presence(priority=True), presence(priority=128), presence(priority="5"),
            presence(lang="pl"), presence(name="presence"), presence(**{"from": []}),
            presence(xml=["<c xmlns='urn:c'/>"]),
        ]
        for frame in refused:
            fast = jsonstanza._fastMessage if frame["type"] == "message" else jsonstanza._fastPresence
            self.assertIsNone(fast(frame["payload"]), frame)
            text = json.dumps(frame)
            with generalPathsOnly():
                expected = readOutcome(text)
            self.assertEqual(readOutcome(text), expected, frame)

    def test_frameLevelLeftToTheGeneralReader(self) -> None:
        """Frames with other keys, other types, or not a payload object never take a fast path."""
        for frame in [
            '{"type":"message","payload":{"body":"x"},"extra":1}', '{"type":"message"}',
            '{"type":"message","payload":[]}', '{"type":"iq","payload":{"type":"get","id":"1"}}',
            '{"type":["message"],"payload":{}}', ' {"type":"message","payload":{}}',
            '{"type":"message","payload":{}} ', '{"type":"message","payload":{}}x',
            '{"type":"message","payload":{"priority":NaN}}', '[' * 40 + ']' * 40, '',
            '{"type":"iq","payload":{"type":"get","id":"1","query":{"jabber:iq:roster"}}}',
        ]:
            with generalPathsOnly():
                expected = readOutcome(frame)
            self.assertEqual(readOutcome(frame), expected, frame)
            self.assertEqual(readOutcome(frame.encode()), expected, frame)

    @PROPERTY
    @given(_fastFrames, _spacing, _spacing)
    def test_fastReadersAsGeneral(self, frame: dict, before: str, after: str) -> None:
        text = before + json.dumps(frame, ensure_ascii=False) + after
        with generalPathsOnly():
            expected = readOutcome(text)
        self.assertEqual(readOutcome(text), expected)

    @PROPERTY
    @given(_fastFrames, st.sampled_from(["szymon@localhost/web", "a'b@localhost/r \"&<>\u00e9"]))
    def test_archivedFrameIsTheMessage(self, frame: dict, sender: str) -> None:
        """
        A message the fast reader read is archived as its frame (with its from), which reads
        back as the same message: same attributes in the same order, same children.
        """
        if frame["type"] != "message":
            return
        try:
            element = parseFrame(json.dumps(frame, ensure_ascii=False))
        except FrameError:
            return
        if "_frame" not in element.__dict__:
            return  # the general reader took it
        element["from"] = sender
        stanzaId = element.addElement(("urn:xmpp:sid:0", "stanza-id"))
        stored = jsonstanza.archiveText(element, element.children, 1)
        assert stored is not None
        self.assertTrue(jsonstanza.isArchivedFrame(stored))
        element.children.remove(stanzaId)
        self.assertEqual(shape(jsonstanza.archivedFrame(stored)), shape(element))

    def test_archiveTextOnlyOfTheMessageRead(self) -> None:
        """
        Once the message is not what the reader read, plus the core's from and one appended
        child, the frame is not its text: None (and the archive serialises it).
        """
        def read() -> domish.Element:
            element = parseFrame(json.dumps(message(to="a@localhost", body="x", active={})))
            element["from"] = "b@localhost/r"
            return element
        element = read()
        body, active = element.children
        mark = xmltext.Element(("urn:xmpp:sid:0", "stanza-id"))
        self.assertIsNotNone(jsonstanza.archiveText(element, [body, active, mark], 1))
        self.assertIsNotNone(jsonstanza.archiveText(element, [body, active], 0))
        self.assertIsNone(jsonstanza.archiveText(element, [body, active], 1))
        self.assertIsNone(jsonstanza.archiveText(element, [body, mark], 1))
        self.assertIsNone(jsonstanza.archiveText(element, [active, body, mark], 1))
        self.assertIsNone(jsonstanza.archiveText(element, [body, read().children[1], mark], 1))
        # an attribute changed, added, or without the core's from
        for change in (lambda e: e.attributes.__setitem__("to", "c@localhost"),
                       lambda e: e.attributes.__setitem__("id", "x"),
                       lambda e: e.attributes.pop("from")):
            changed = read()
            change(changed)
            self.assertIsNone(jsonstanza.archiveText(changed, changed.children, 0))
        # from set before the reader's attributes (not the one added last)
        moved = read()
        moved.attributes = {"from": "b@localhost/r", **{k: v for k, v in moved.attributes.items()
                                                         if k != "from"}}
        self.assertIsNone(jsonstanza.archiveText(moved, moved.children, 0))
        # the general reader keeps no frame, nor does a frame read with space around it or
        # repaired (its text is not the JSON that was read)
        for text in (json.dumps(message(body="x", xml=["<a xmlns='urn:a'/>"])),
                     " " + json.dumps(message(to="a@localhost", body="x"))):
            general = parseFrame(text)
            general["from"] = "b@localhost/r"
            self.assertIsNone(jsonstanza.archiveText(general, general.children, 0))
        # domish's child lookup would answer a child named like the attribute: not read
        odd = domish.Element((None, "message"))
        odd["from"] = "b@localhost/r"
        odd.addElement("_frame")
        self.assertIsNone(jsonstanza.archiveText(odd, odd.children, 0))

    def test_archivedFrameRefusesOtherText(self) -> None:
        """What is not a record archiveText made is refused, not misread."""
        for text in ('{"from": 1, "frame": {}}', '{"from": "a@localhost"}', '[]',
                     '{"from": "a@localhost", "frame": "x"}'):
            self.assertRaises(ValueError, jsonstanza.archivedFrame, text)
        self.assertRaises(FrameError, jsonstanza.archivedFrame,
                          '{"from": "a@localhost", "frame": {"type": "nope"}}')
        self.assertFalse(jsonstanza.isArchivedFrame("<message/>"))

    @given(st.one_of(_jsonValues.map(json.dumps), st.text(max_size=40)))
    def test_decodingAsGeneral(self, text: str) -> None:
        with generalPathsOnly():
            expected = readOutcome(text)
        self.assertEqual(readOutcome(text), expected)

    def test_fastWriterTakesTheTraffic(self) -> None:
        sid = "<stanza-id xmlns='urn:xmpp:sid:0' by='alicja@localhost' id='kX3l0b9Q'/>"
        for xml in [
            f"<message from='s@localhost/w' to='alicja@localhost' id='m1' type='chat'><body>Cześć 👋 \"quoted\" \\</body>{sid}</message>",
            f"<message from='s@localhost/w' to='alicja@localhost' type='chat'><body>x</body><active xmlns='{NS_CHATSTATES}'/>{sid}</message>",
            f"<message from='s@localhost/w' to='alicja@localhost' type='chat'><composing xmlns='{NS_CHATSTATES}'/><paused xmlns='{NS_CHATSTATES}'/>{sid}</message>",
            f"<message from='s@localhost/w' type='chat'>{sid}<active xmlns='{NS_CHATSTATES}'/><body>body last, key fifth</body></message>",
            f"<message from='a@localhost/d' to='s@localhost' id='m7' type='chat'><body>Are you there?</body><delay xmlns='urn:xmpp:delay' from='localhost' stamp='2026-11-27T12:00:00.000000Z'/>{sid}</message>",
            "<message to='s@localhost' xml:lang='pl'><delay xmlns='urn:xmpp:delay' stamp='2026'>Offline</delay></message>",
            "<message/>",
            "<presence from='a@localhost/d' to='s@localhost'><show>away</show><status>Mam  na imię alicja</status><priority>5</priority></presence>",
            "<presence from='a@localhost/d' type='unavailable'/>",
            "<presence from='a@localhost/d' to='s@localhost' id='p1'>\n  <status/>\n  <priority>-1</priority>\n</presence>",
        ]:
            element = parseXml(xml)
            self.assertTrue(fastWritten(element), xml)
            self.assertEqual(serialize(element), generalSerialize(element))

    def test_fastWriterFallsBack(self) -> None:
        """Whatever has no key of the fast writer is left to toFrame: xml, error, lang..."""
        for xml in [
            "<message><body/></message>",
            "<message><body>a</body><body>b</body></message>",
            "<message><body xml:lang='pl'>a</body></message>",
            "<message><subject>s</subject></message>",
            f"<message><active xmlns='{NS_CHATSTATES}' x='1'/></message>",
            f"<message><active xmlns='{NS_CHATSTATES}'/><active xmlns='{NS_CHATSTATES}'/></message>",
            "<message><stanza-id xmlns='urn:xmpp:sid:0' by='a@localhost'/></message>",
            "<message><stanza-id xmlns='urn:xmpp:sid:0' id='1'><x/></stanza-id></message>",
            "<message><delay xmlns='urn:xmpp:delay' stamp='1' other='2'/></message>",
            "<message><delay xmlns='urn:xmpp:delay' from='localhost'/></message>",
            "<message><request xmlns='urn:xmpp:receipts'/></message>",
            "<message type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
            "<message><show>away</show></message>",
            "<presence><show>busy</show></presence>",
            "<presence><priority>+5</priority></presence>",
            "<presence><status>a</status><status>b</status></presence>",
            "<presence><body>x</body></presence>",
            "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/></presence>",
            "<iq type='result' id='1'/>",
        ]:
            element = parseXml(xml)
            self.assertFalse(fastWritten(element), xml)
            self.assertEqual(serialize(element), generalSerialize(element))
        raw = parseXml("<message><body>x</body></message>")
        raw.addRawXml("<x xmlns='urn:raw'/>")
        self.assertFalse(fastWritten(raw))
        self.assertEqual(serialize(raw), generalSerialize(raw))

    def test_notAStringLeftToTheGeneralPath(self) -> None:
        """A value that is not a string (put there by server code) is written as toFrame has it."""
        element = parseXml("<message><body>x</body></message>")
        element["id"] = 5  # type: ignore[assignment]
        self.assertRaises(TypeError, jsonstanza._messageFrame, element)
        self.assertEqual(serialize(element), generalSerialize(element))
        self.assertIn('"id":5', serialize(element))
        element = parseXml("<presence><show>away</show></presence>")
        element["to"] = ["a@localhost"]  # type: ignore[assignment]
        self.assertRaises(TypeError, jsonstanza._presenceFrame, element)
        self.assertEqual(serialize(element), generalSerialize(element))

    @PROPERTY
    @given(fastStanzas())
    def test_fastWriterAsGeneral(self, element: domish.Element) -> None:
        self.assertEqual(serialize(element), generalSerialize(element))

    @PROPERTY
    @given(stanzas)
    def test_serializeAsGeneral(self, element: domish.Element) -> None:
        self.assertEqual(serialize(element), generalSerialize(element))

    def test_presenceFanOut(self) -> None:
        """The copies of one broadcast share their children: written once, each with its to."""
        for xml in [
            "<presence from='a@localhost/d'><show>away</show><status>Zaraz wracam</status></presence>",
            ("<presence from='a@localhost/d' xml:lang='pl'><c xmlns='http://jabber.org/protocol/caps'"
             " hash='sha-1' node='n' ver='v'/><priority>1</priority></presence>"),
        ]:
            presence = parseXml(xml)
            for to in ("b@localhost", "c@localhost/x", None, "b@localhost"):
                copy = retarget(presence, to)
                self.assertEqual(serialize(copy), generalSerialize(copy))
                self.assertIs(jsonstanza._lastPresence[0], presence.children)

    def test_presenceCacheNotFooled(self) -> None:
        """Another list, the same list changed, another namespace or lang: written anew."""
        presence = parseXml("<presence from='a@localhost/d'><show>away</show></presence>")
        self.assertIn('"show":"away"', serialize(presence))
        same = parseXml("<presence from='a@localhost/d'><show>dnd</show></presence>")
        self.assertIn('"show":"dnd"', serialize(same))
        presence.children.append(domish.Element((NS_CLIENT, "status")))
        self.assertEqual(serialize(presence), generalSerialize(presence))
        self.assertIn('"status":""', serialize(presence))
        presence.children[0] = parseXml("<show>xa</show>")
        self.assertIn('"show":"xa"', serialize(presence))
        presence[(NS_XML, "lang")] = "pl"
        self.assertIn('"lang":"pl"', serialize(presence))
        bare = domish.Element(("", "presence"))  # children in "" are in jabber:client...
        bare.addElement(("", "show"), content="away")
        self.assertIn('"show":"away"', serialize(bare))
        bare.uri = "urn:other"  # ...unless the stanza has a namespace
        self.assertEqual(serialize(bare), generalSerialize(bare))
        self.assertNotIn('"show"', serialize(bare))

    @PROPERTY
    @given(st.one_of(fastStanzas(), presences()), st.lists(st.one_of(st.none(), jids), max_size=3))
    def test_presenceCopiesAsGeneral(self, element: domish.Element, targets: list[str | None]) -> None:
        for to in targets:
            copy = retarget(element, to)
            self.assertEqual(serialize(copy), generalSerialize(copy))
        self.assertEqual(serialize(element), generalSerialize(element))


# ---------------------------------------------------------------------------------------------
# timings (python -m tests.test_jsonstanza)
# ---------------------------------------------------------------------------------------------


def timings() -> None:
    import timeit

    m = parseXml(
        "<message from='alicja@localhost/dom' to='szymon@localhost' id='purplee0d70390'"
        " type='chat'><body>" + "Cześć, jak się masz? " * 4 + "</body>"
        f"<active xmlns='{NS_CHATSTATES}'/></message>"
    )
    frame = serialize(m)
    print(f"stanza: {len(m.toXml().encode())} bytes of XML, frame: {len(frame.encode())} bytes")

    def best(f: Any, n: int = 20000) -> float:
        return min(timeit.repeat(f, number=n, repeat=15)) / n * 1e6

    print(f"toFrame          {best(lambda: toFrame(m)):6.2f} us")
    print(f"serialize        {best(lambda: serialize(m)):6.2f} us")
    print(f"element.toXml()  {best(lambda: m.toXml()):6.2f} us")
    print(f"parseFrame       {best(lambda: parseFrame(frame)):6.2f} us (JID cache warm)")
    print(f"JID check, cold  {best(lambda: jsonstanza._prepJID('szymon@localhost'), 2000):6.2f} us")


if __name__ == "__main__":
    timings()
