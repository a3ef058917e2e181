"""
Hostile input on the XMPP door (issue 5): each named attack gets the right error, and a pair of
bystanders on the same IM core (alice and bob, logged in before the attack) can still exchange a
message afterwards.

Everything runs on L{StringTransport}s with a L{task.Clock} and the real core on
C{sqlite::memory:} (see L{tests.test_c2s.C2SFixture}).  The hypothesis tests log their attacker
in through a second listener on the same core whose accounts let anyone in at once, so that
each example binds a fresh session synchronously.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scramp import ScramClient
from twisted.trial import unittest
from twisted.words.xish import domish

from tests.test_c2s import (
    DOMAIN,
    HEADER,
    NS_BIND,
    NS_CLIENT,
    NS_SASL,
    C2SFixture,
    Wire,
    bodies,
    chat,
    failureCondition,
    saslText,
    stanzaErrorCondition,
)
from xmppjson.c2s.stream import MAX_AUTH_FAILURES, C2SFactory

NS_REGISTER = "jabber:iq:register"

BILLION_LAUGHS = (
    "<?xml version='1.0'?>"
    "<!DOCTYPE lolz ["
    "<!ENTITY lol 'lol'>"
    + "".join(
        f"<!ENTITY lol{n} '{('&lol' + (str(n - 1) if n > 1 else '') + ';') * 10}'>"
        for n in range(1, 10)
    )
    + "]>"
)

EXTERNAL_DTD = "<?xml version='1.0'?><!DOCTYPE stream SYSTEM 'file:///etc/passwd'>"


class _TrustingAccounts:
    """Accounts that let anyone in at once: the hypothesis attackers log in synchronously."""

    def nodeprep(self, localpart: str) -> str:
        return localpart.lower()

    def localpartOf(self, localpart: str) -> str:
        return localpart.lower()

    async def checkPassword(self, localpart: str, password: str) -> bool:
        return True

    async def getScramKeys(self, localpart: str, mechanism: str) -> None:
        return None

    async def changePassword(self, localpart: str, password: str) -> None:
        pass

    async def userExists(self, localpart: str) -> bool:
        return True  # so random input never reaches register()

    # Never throttled: the attackers must reach the stream parser every time.
    def loginRetryAfter(self, localpart: str | None, address: str | None) -> float:
        return 0.0

    def loginFailed(self, localpart: str | None, address: str | None) -> None:
        pass

    def loginSucceeded(self, localpart: str, address: str | None) -> None:
        pass


class Arena:
    """
    A fixture with two bystanders bound on the core, and a check that they still talk.

    @ivar alice: alice's wire (resource C{a}).
    @ivar bob: bob's wire (resource C{b}).
    """

    def __init__(self, fx: C2SFixture, alice: Wire, bob: Wire):
        self.fx = fx
        self.alice = alice
        self.bob = bob
        self._serial = 0

    @classmethod
    async def open(cls, testCase: unittest.TestCase, *users: str, **config: Any) -> Arena:
        settings: dict[str, Any] = {"allowPlaintext": True}
        settings.update(config)
        fx = await C2SFixture(testCase, **settings).start("alice", "bob", *users)
        alice = await fx.login("alice", "a")
        bob = await fx.login("bob", "b")
        return cls(fx, alice, bob)

    def assertAlive(self, testCase: unittest.TestCase) -> None:
        """alice's message reaches bob, at once, and neither stream was touched."""
        self._serial += 1
        body = f"still here {self._serial}"
        self.bob.take()
        self.alice.send(chat("bob@localhost/b", body))
        testCase.assertEqual(bodies(self.bob.take()), [body])
        testCase.assertFalse(self.alice.closed or self.bob.closed)

    def trustingFactory(self) -> C2SFactory:
        """A second listener on the same core, whose accounts let anyone in."""
        fx = self.fx
        return C2SFactory(fx.config, _TrustingAccounts(), fx.im, fx.clock, None)


def plain(user: str, password: str) -> str:
    payload = base64.b64encode(f"\x00{user}\x00{password}".encode()).decode()
    return f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>"


def bindNow(factory: C2SFactory, user: str, resource: str) -> Wire:
    """Log in and bind on C{factory} (a trusting one), synchronously."""
    wire = Wire(factory)
    wire.send(HEADER.format(to=DOMAIN))
    wire.send(plain(user, "whatever"))
    wire.restart()
    wire.send(HEADER.format(to=DOMAIN))
    wire.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>")
    elements = wire.take()
    assert elements and elements[-1].getAttribute("type") == "result", [e.toXml() for e in elements]
    return wire


class NamedAttackTests(unittest.TestCase):
    """One test per attack: the error it gets, and the bystanders unharmed."""

    async def test_billionLaughsBeforeTheHeader(self) -> None:
        arena = await Arena.open(self)
        wire = arena.fx.connect()
        wire.send(BILLION_LAUGHS + HEADER.format(to=DOMAIN)[len("<?xml version='1.0'?>"):] + "&lol9;")
        self.assertEqual(wire.streamError(), "restricted-xml")
        self.assertTrue(wire.closed)
        arena.assertAlive(self)

    async def test_billionLaughsInsideTheStream(self) -> None:
        arena = await Arena.open(self)
        wire, _ = arena.fx.open()
        wire.send(BILLION_LAUGHS.replace("<?xml version='1.0'?>", "") + "<message>&lol9;</message>")
        self.assertEqual(wire.streamError(), "not-well-formed")
        arena.assertAlive(self)

    async def test_nothingAfterTheStreamError(self) -> None:
        """
        Stanzas that arrive in the same read as the one that ended the stream are ignored:
        nothing is written after C{</stream:stream>} (here an ack for an C{<r/>}, found by
        the fuzz test below) and nothing is routed.
        """
        arena = await Arena.open(self)
        wire = await arena.fx.login("alice", "attacker")
        wire.send("<enable xmlns='urn:xmpp:sm:3'/>")
        wire.take()
        wire.send("<r xmlns='rn:xmpp:sm:3'/><r xmlns='urn:xmpp:sm:3'/>"
                  + chat("bob@localhost/b", "after the error"))
        # (streamError() parses what was written: anything after the footer fails it)
        self.assertEqual(wire.streamError(), "unsupported-stanza-type")
        self.assertTrue(wire.closed)
        self.assertEqual(bodies(arena.bob.take()), [])
        arena.assertAlive(self)

    async def test_entityReferenceWithoutDTD(self) -> None:
        arena = await Arena.open(self)
        wire = await arena.fx.login("alice", "attacker")
        wire.send("<message to='bob@localhost/b'><body>&lol9;</body></message>")
        self.assertEqual(wire.streamError(), "not-well-formed")
        self.assertEqual(bodies(arena.bob.take()), [])
        arena.assertAlive(self)

    async def test_externalDTD(self) -> None:
        arena = await Arena.open(self)
        wire = arena.fx.connect()
        wire.send(EXTERNAL_DTD + HEADER.format(to=DOMAIN)[len("<?xml version='1.0'?>"):])
        self.assertEqual(wire.streamError(), "restricted-xml")
        self.assertNotIn(b"root:", wire.transport.value())
        arena.assertAlive(self)

    async def test_internalSubsetAfterAuthentication(self) -> None:
        arena = await Arena.open(self)
        wire = await arena.fx.login("alice", "attacker")
        wire.send("<!DOCTYPE x [<!ENTITY a 'b'>]><message/>")
        self.assertIn(wire.streamError(), ("not-well-formed", "restricted-xml"))
        arena.assertAlive(self)

    async def test_tenMebibyteStanzaBeforeAuthentication(self) -> None:
        arena = await Arena.open(self)
        wire, _ = arena.fx.open()
        started = time.monotonic()
        self._sendHuge(wire, b"<message><body>")
        self.assertEqual(wire.streamError(), "policy-violation")
        self.assertLess(wire.protocol._fed, 2 * arena.fx.config.maxStanzaSizePreAuth + 65536)
        self.assertLess(time.monotonic() - started, 5)
        arena.assertAlive(self)

    async def test_tenMebibyteStanzaAfterAuthentication(self) -> None:
        arena = await Arena.open(self)
        wire = await arena.fx.login("alice", "attacker")
        self._sendHuge(wire, b"<message to='bob@localhost/b'><body>")
        self.assertEqual(wire.streamError(), "policy-violation")
        self.assertLess(wire.protocol._fed, 2 * arena.fx.config.maxStanzaSize + 65536)
        self.assertEqual(bodies(arena.bob.take()), [])
        arena.assertAlive(self)

    def _sendHuge(self, wire: Wire, head: bytes) -> None:
        chunk = b"A" * 65536
        wire.send(head)
        for _ in range(10 * 1024 * 1024 // len(chunk)):
            wire.send(chunk)

    async def test_deepNesting(self) -> None:
        arena = await Arena.open(self)
        wire = await arena.fx.login("alice", "attacker")
        depth = 100_000
        wire.send("<message to='bob@localhost/b'>" + "<x>" * depth + "</x>" * depth + "</message>")
        self.assertEqual(wire.streamError(), "policy-violation")
        arena.assertAlive(self)

    async def test_nestingJustTooDeep(self) -> None:
        """Small enough for the size limit, deeper than 64: refused before the core sees it."""
        arena = await Arena.open(self)
        wire = await arena.fx.login("alice", "attacker")
        wire.send("<message to='bob@localhost/b'><body>x</body>" + "<x>" * 70 + "</x>" * 70 + "</message>")
        self.assertEqual(wire.streamError(), "policy-violation")
        self.assertEqual(bodies(arena.bob.take()), [])
        arena.assertAlive(self)

    async def test_deepNestingBeforeAuthentication(self) -> None:
        arena = await Arena.open(self)
        wire, _ = arena.fx.open()
        wire.send("<iq type='get' id='x'>" + "<x>" * 70 + "</x>" * 70 + "</iq>")
        self.assertEqual(wire.streamError(), "policy-violation")
        arena.assertAlive(self)

    async def test_plainWithoutNULs(self) -> None:
        arena = await Arena.open(self)
        wire, _ = arena.fx.open()
        payload = base64.b64encode(b"alice wonderland1").decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        self.assertEqual(failureCondition(await wire.waitFor("failure", NS_SASL)), "malformed-request")
        self.assertFalse(wire.closed)
        arena.assertAlive(self)

    async def test_scramWithBadProofs(self) -> None:
        """Forged proofs fail like wrong passwords; a connection gets three, an address five."""
        arena = await Arena.open(self, "carol")
        results = []
        for attempt in range(7):
            wire, _ = arena.fx.open("10.6.6.6")
            results.append(await self._scramForged(wire, attempt))
            wire.lose()
        self.assertEqual(results[:5], ["not-authorized"] * 5)
        self.assertEqual(results[5:], ["temporary-auth-failure"] * 2)
        arena.assertAlive(self)

    async def _scramForged(self, wire: Wire, attempt: int) -> str:
        client = ScramClient(["SCRAM-SHA-256"], "carol", "secret123")
        first = base64.b64encode(client.get_client_first().encode()).decode()
        wire.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
        answer = await self._saslAnswer(wire)
        if answer.name == "failure":
            return failureCondition(answer)
        client.set_server_first(saslText(answer).decode())
        final = client.get_client_final()
        # Replace the proof with a forged one of the right length.
        head, proof = final.rsplit(",p=", 1)
        forged = base64.b64encode(bytes(32 - attempt % 2) + bytes(attempt % 2)).decode()
        assert forged != proof
        payload = base64.b64encode(f"{head},p={forged}".encode()).decode()
        wire.send(f"<response xmlns='{NS_SASL}'>{payload}</response>")
        return failureCondition(await self._saslAnswer(wire))

    async def _saslAnswer(self, wire: Wire) -> domish.Element:
        from tests.test_c2s import waitUntil

        found: list[domish.Element] = []

        def answered() -> bool:
            found.extend(e for e in wire.take() if e.uri == NS_SASL)
            return bool(found)

        await waitUntil(answered)
        return found[0]

    async def test_tooManyFailuresOnOneConnection(self) -> None:
        arena = await Arena.open(self)
        wire, _ = arena.fx.open("10.6.6.7")
        for _ in range(MAX_AUTH_FAILURES):
            wire.send(plain("alice", "wrong-password"))
            await wire.waitFor("failure", NS_SASL)
        self.assertEqual(wire.streamError(), "policy-violation")
        arena.assertAlive(self)

    async def test_invalidUTF8(self) -> None:
        arena = await Arena.open(self)
        wire = await arena.fx.login("alice", "attacker")
        wire.send(b"<message to='bob@localhost/b'><body>\xff\xfe\xc3\x28</body></message>")
        self.assertEqual(wire.streamError(), "not-well-formed")
        self.assertEqual(bodies(arena.bob.take()), [])
        arena.assertAlive(self)

    async def test_invalidUTF8BeforeAuthentication(self) -> None:
        arena = await Arena.open(self)
        wire = arena.fx.connect()
        wire.send(b"<?xml version='1.0'?><stream:stream to='\xc0\xaf'>")
        self.assertEqual(wire.streamError(), "not-well-formed")
        arena.assertAlive(self)

    async def test_forgedFrom(self) -> None:
        """A client cannot speak for anyone else: the server sets every C{from}."""
        arena = await Arena.open(self, "mallory")
        mallory = await arena.fx.login("mallory", "m")
        mallory.send(
            "<message from='alice@localhost/a' to='bob@localhost/b' type='chat'>"
            "<body>trust me</body></message>"
        )
        mallory.send("<presence from='alice@localhost/a' to='bob@localhost/b'/>")
        received = arena.bob.take()
        self.assertEqual([e["from"] for e in received], ["mallory@localhost/m"] * 2)
        arena.assertAlive(self)

    async def test_stanzasBeforeAuthentication(self) -> None:
        arena = await Arena.open(self)
        for stanza in (
            "<message to='bob@localhost/b'><body>sneaky</body></message>",
            "<presence to='bob@localhost/b'/>",
            "<iq type='get' id='r' to='localhost'><query xmlns='jabber:iq:roster'/></iq>",
        ):
            wire, _ = arena.fx.open()
            wire.send(stanza)
            self.assertEqual(wire.streamError(), "not-authorized")
        self.assertEqual(arena.bob.take(), [])
        arena.assertAlive(self)

    async def test_bindTwice(self) -> None:
        arena = await Arena.open(self)
        wire = await arena.fx.login("alice", "attacker")
        wire.send(f"<iq type='set' id='b2'><bind xmlns='{NS_BIND}'><resource>b</resource></bind></iq>")
        reply = wire.take()[0]
        self.assertEqual(stanzaErrorCondition(reply), "not-allowed")
        # The attempt to take bob's resource changed nothing.
        self.assertIs(
            arena.fx.im.router.session("alice@localhost", "attacker"), wire.protocol.session
        )
        self.assertIsNone(arena.fx.im.router.session("alice@localhost", "b"))
        self.assertFalse(wire.closed)
        arena.assertAlive(self)

    async def test_sqlMetacharacters(self) -> None:
        """Localparts and bodies made for SQL injection are data, nothing more."""
        arena = await Arena.open(self)
        fx = arena.fx
        names = {
            "robert);drop_table_users;--": "result",
            "1=1;select*from(users)": "result",
            "x%_\\;--": "result",
            "o'brien": "not-acceptable",  # ' is not allowed in a localpart (nodeprep)
            "a' or '1'='1": "not-acceptable",
            'bob"; --': "not-acceptable",
        }
        for name, expected in names.items():
            wire, _ = fx.open()
            escaped = name.replace("&", "&amp;").replace("'", "&apos;").replace('"', "&quot;")
            wire.send(
                f"<iq type='set' id='r'><query xmlns='{NS_REGISTER}'><username>{escaped}"
                "</username><password>secret123</password></query></iq>"
            )
            reply = await wire.waitFor("iq")
            got = reply["type"] if reply["type"] == "result" else stanzaErrorCondition(reply)
            self.assertEqual(got, expected, name)
        self.assertTrue(await fx.accounts.userExists("robert);drop_table_users;--"))
        self.assertTrue(await fx.accounts.checkPassword("x%_\\;--", "secret123"))
        self.assertTrue(await fx.accounts.userExists("alice"))
        # A body full of SQL goes through offline storage unchanged.
        body = "'); DELETE FROM offline_messages; DROP TABLE users; -- \" ` \\ %"
        xmlBody = body.replace("&", "&amp;").replace("<", "&lt;")
        arena.alice.send(
            "<message to='robert);drop_table_users;--@localhost' type='chat' id='s'>"
            f"<body>{xmlBody}</body></message>"
        )
        robert = await fx.login("robert);drop_table_users;--", "r")
        robert.send("<presence/>")
        message = await robert.waitFor("message")
        self.assertEqual(bodies([message]), [body])
        self.assertTrue(await fx.accounts.checkPassword("alice", "secret123"))
        arena.assertAlive(self)

    async def test_floodIsThrottledNotDropped(self) -> None:
        arena = await Arena.open(self, "mallory", stanzaRate=50, stanzaBurst=200)
        mallory = await arena.fx.login("mallory", "m")
        mallory.send("".join(chat("bob@localhost/b", f"spam {n}") for n in range(1000)))
        self.assertEqual(mallory.transport.producerState, "paused")
        self.assertEqual(len(bodies(arena.bob.take())), 1000)
        arena.assertAlive(self)
        arena.fx.clock.advance(16.1)
        self.assertEqual(mallory.transport.producerState, "producing")


_REAL_STANZAS = [
    ("<message to='bob@localhost/b' type='chat' id='m1'><body>hello &amp; &lt;bye&gt;</body>"
    "<request xmlns='urn:xmpp:receipts'/></message>"),
    "<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
    "<presence><show>away</show><status>zzz</status><priority>5</priority></presence>",
    "<presence to='bob@localhost' type='subscribe'/>",
    "<iq type='get' id='r1'><query xmlns='jabber:iq:roster' ver=''/></iq>",
    ("<iq type='set' id='r2'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='B'>"
    "<group>G</group></item></query></iq>"),
    "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    "<iq type='get' id='v1' to='bob@localhost/b'><query xmlns='jabber:iq:version'/></iq>",
    "<enable xmlns='urn:xmpp:sm:3' resume='true'/>",
    "<r xmlns='urn:xmpp:sm:3'/>",
    "<a xmlns='urn:xmpp:sm:3' h='0'/>",
    "<inactive xmlns='urn:xmpp:csi:0'/>",
    "<active xmlns='urn:xmpp:csi:0'/>",
    f"<iq type='set' id='c1'><query xmlns='{NS_REGISTER}'><password>new-password</password></query></iq>",
    "</stream:stream>",
]


@st.composite
def mutatedStanzas(draw: Any) -> bytes:
    """A few real stanzas, then cut, spliced, overwritten or padded with random bytes."""
    stanzas = draw(st.lists(st.sampled_from(_REAL_STANZAS), min_size=1, max_size=4))
    data = bytearray("".join(stanzas).encode())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "delete", "insert", "overwrite", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "overwrite" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


class FuzzTests(unittest.TestCase):
    """
    Random and mutated input (hypothesis) on fresh and on bound streams: the door never raises
    or logs an error, a closed stream always ends with its footer, and the bystanders on the
    same core are unharmed after every example.
    """

    def check(self, arena: Arena, wire: Wire) -> None:
        output = wire.transport.value()
        if wire.closed:
            self.assertTrue(output.endswith(b"</stream:stream>"), output[-200:])
        self.assertEqual(self.flushLoggedErrors(), [])
        if not wire.protocol.lost:
            wire.lose()
        session = wire.protocol.session
        if session is not None and session.sm is not None and session.sm.detached:
            # It enabled resumption: end it now rather than in 300 s of a clock that stands.
            session.finish()
        arena.assertAlive(self)

    async def test_randomBytesBeforeAuthentication(self) -> None:
        arena = await Arena.open(self)
        factory = arena.trustingFactory()

        @given(st.binary(max_size=512), st.booleans())
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        def attack(data: bytes, withHeader: bool) -> None:
            wire = Wire(factory)
            if withHeader:
                wire.send(HEADER.format(to=DOMAIN))
            wire.send(data)
            self.check(arena, wire)

        attack()

    async def test_randomBytesAfterBinding(self) -> None:
        arena = await Arena.open(self, "mallory")
        keeper = await arena.fx.login("mallory", "keeper")
        factory = arena.trustingFactory()
        serial = iter(range(10**6))

        @given(st.binary(min_size=1, max_size=512))
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        def attack(data: bytes) -> None:
            wire = bindNow(factory, "mallory", f"r{next(serial)}")
            wire.send(data)
            self.check(arena, wire)

        attack()
        self.assertFalse(keeper.closed)

    async def test_mutatedStanzasAfterBinding(self) -> None:
        arena = await Arena.open(self, "mallory")
        keeper = await arena.fx.login("mallory", "keeper")
        factory = arena.trustingFactory()
        serial = iter(range(10**6))

        @given(mutatedStanzas(), st.lists(st.integers(1, 64), min_size=1, max_size=4))
        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        def attack(data: bytes, cuts: list[int]) -> None:
            wire = bindNow(factory, "mallory", f"r{next(serial)}")
            position, index = 0, 0
            while position < len(data):
                size = cuts[index % len(cuts)]
                wire.protocol.dataReceived(data[position : position + size])
                position += size
                index += 1
            self.check(arena, wire)

        attack()
        self.assertFalse(keeper.closed)
        # What the core answered went to the attackers' own sessions: bob got only chat.
        self.assertTrue(all(e.uri == NS_CLIENT for e in arena.bob.take()))
