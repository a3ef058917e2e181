"""
Tests for L{xmppjson.router}: the routing table and RFC 6121 target selection.
"""

from twisted.trial import unittest
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from xmppjson.router import Router
from xmppjson.session import Session


class _Session(Session):
    def __init__(self, full: str, priority: int = 0, messages: bool = True, available: bool = True):
        super().__init__(JID(full))
        self.priority = priority
        self.receivesMessages = messages
        if available:
            self.presence = domish.Element(("jabber:client", "presence"))


class RouterTests(unittest.TestCase):
    def setUp(self) -> None:
        self.router = Router()

    def test_addAndLookup(self) -> None:
        s = _Session("a@x/1")
        self.assertIsNone(self.router.add(s))
        self.assertIs(self.router.session("a@x", "1"), s)
        self.assertEqual(self.router.sessionsOf("a@x"), [s])
        self.assertTrue(self.router.hasSessions("a@x"))
        self.assertEqual(len(self.router), 1)

    def test_replaceSameResource(self) -> None:
        old, new = _Session("a@x/1"), _Session("a@x/1")
        self.router.add(old)
        self.assertIs(self.router.add(new), old)
        self.assertIs(self.router.session("a@x", "1"), new)
        # Removing the replaced session must not remove its successor.
        self.assertFalse(self.router.remove(old))
        self.assertIs(self.router.session("a@x", "1"), new)

    def test_removeLastForgetsUser(self) -> None:
        s = _Session("a@x/1")
        self.router.add(s)
        self.assertTrue(self.router.remove(s))
        self.assertFalse(self.router.hasSessions("a@x"))
        self.assertEqual(self.router.sessionsOf("a@x"), [])
        self.assertEqual(len(self.router), 0)

    def test_highestPriorityWins(self) -> None:
        low, high = _Session("a@x/low", 1), _Session("a@x/high", 5)
        self.router.add(low)
        self.router.add(high)
        self.assertEqual(self.router.messageTargets("a@x"), [high])

    def test_tiesAllReceive(self) -> None:
        one, two = _Session("a@x/1", 3), _Session("a@x/2", 3)
        self.router.add(one)
        self.router.add(two)
        self.assertEqual(set(self.router.messageTargets("a@x")), {one, two})

    def test_negativePriorityNeverReceivesBareMessages(self) -> None:
        self.router.add(_Session("a@x/neg", -1))
        self.assertEqual(self.router.messageTargets("a@x"), [])

    def test_ineligibleSessionsSkipped(self) -> None:
        self.router.add(_Session("a@x/quiet", 10, messages=False))
        eligible = _Session("a@x/ok", 0)
        self.router.add(eligible)
        self.assertEqual(self.router.messageTargets("a@x"), [eligible])

    def test_availableSessions(self) -> None:
        on, off = _Session("a@x/on"), _Session("a@x/off", available=False)
        self.router.add(on)
        self.router.add(off)
        self.assertEqual(self.router.availableSessionsOf("a@x"), [on])
        self.assertEqual(self.router.availableSessionsOf("nobody@x"), [])
