"""Tests for L{xmppjson.limits}."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from xmppjson.limits import ConnectionCounter, FailureThrottle, TokenBucket


class TokenBucketTests(unittest.TestCase):
    def test_burstThenPause(self) -> None:
        clock = Clock()
        bucket = TokenBucket(rate=10, burst=3, clock=clock)
        self.assertEqual([bucket.take() for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertAlmostEqual(bucket.take(), 0.1)
        clock.advance(0.1)
        self.assertAlmostEqual(bucket.take(), 0.1)

    def test_refillCapsAtBurst(self) -> None:
        clock = Clock()
        bucket = TokenBucket(rate=100, burst=2, clock=clock)
        clock.advance(1000)
        self.assertEqual(bucket.take(2), 0.0)
        self.assertGreater(bucket.take(), 0.0)


class FailureThrottleTests(unittest.TestCase):
    def test_blocksAfterLimitWithinWindow(self) -> None:
        clock = Clock()
        throttle = FailureThrottle(limit=3, window=60, clock=clock)
        for _ in range(2):
            throttle.failed("ewa")
        self.assertFalse(throttle.blocked("ewa"))
        throttle.failed("ewa")
        self.assertTrue(throttle.blocked("ewa"))
        self.assertFalse(throttle.blocked("other"))
        self.assertAlmostEqual(throttle.retryAfter("ewa"), 60)
        clock.advance(61)
        self.assertFalse(throttle.blocked("ewa"))

    def test_successResets(self) -> None:
        throttle = FailureThrottle(limit=1, window=60, clock=Clock())
        throttle.failed("k")
        throttle.succeeded("k")
        self.assertFalse(throttle.blocked("k"))

    def test_memoryIsBounded(self) -> None:
        throttle = FailureThrottle(limit=5, window=60, clock=Clock(), maxKeys=10)
        for i in range(100):
            throttle.failed(i)
        self.assertEqual(len(throttle._failures), 10)

    def test_zeroLimitDisables(self) -> None:
        throttle = FailureThrottle(limit=0, window=60, clock=Clock())
        throttle.failed("k")
        self.assertFalse(throttle.blocked("k"))


class ConnectionCounterTests(unittest.TestCase):
    def test_cap(self) -> None:
        counter = ConnectionCounter(2)
        self.assertTrue(counter.acquire("a"))
        self.assertTrue(counter.acquire("a"))
        self.assertFalse(counter.acquire("a"))
        self.assertTrue(counter.acquire("b"))
        counter.release("a")
        self.assertTrue(counter.acquire("a"))
        self.assertEqual(len(counter), 3)

    def test_unlimited(self) -> None:
        counter = ConnectionCounter(0)
        for _ in range(1000):
            self.assertTrue(counter.acquire("a"))
