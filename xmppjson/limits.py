"""
Rate limits shared by every door: token buckets for per-session stanza rates, failure throttles
for logins and registrations, and per-address connection counts.  All take an injected clock
(anything with C{seconds()}), so tests drive them with C{task.Clock}.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable


class TokenBucket:
    """
    C{rate} tokens per second, at most C{burst} saved up.  A door takes one token per stanza or
    frame and, when the bucket runs dry, stops reading from that client for the time the deficit
    takes to refill: the client is slowed down, nothing it sent is dropped.
    """

    __slots__ = ("rate", "burst", "clock", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, clock: Any):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock.seconds()

    def take(self, n: float = 1.0) -> float:
        """
        Spend C{n} tokens.  Returns 0 when they were there, else how many seconds the caller
        should pause before it reads more.
        """
        now = self.clock.seconds()
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        tokens -= n
        self.tokens = tokens
        if tokens >= 0:
            return 0.0
        return -tokens / self.rate


class FailureThrottle:
    """
    Counts failures per key (an account, an address) in a sliding window; a key with C{limit}
    failures within C{window} seconds is blocked until the oldest of them leaves the window.
    Memory is bounded: at most C{maxKeys} keys are tracked, the stalest forgotten first.
    """

    def __init__(self, limit: int, window: float, clock: Any, maxKeys: int = 100_000):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.maxKeys = maxKeys
        self._failures: dict[Hashable, deque[float]] = {}

    def _recent(self, key: Hashable) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self.clock.seconds() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def blocked(self, key: Hashable) -> bool:
        """Whether C{key} must wait before trying again."""
        if self.limit <= 0:
            return False
        times = self._recent(key)
        return times is not None and len(times) >= self.limit

    def retryAfter(self, key: Hashable) -> float:
        """Seconds until C{key} is no longer blocked (0 if it is not)."""
        times = self._recent(key)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - self.clock.seconds())

    def failed(self, key: Hashable) -> None:
        if self.limit <= 0:
            return
        times = self._recent(key)
        if times is None:
            if len(self._failures) >= self.maxKeys:
                # Forget the key inserted first: dicts keep insertion order.
                del self._failures[next(iter(self._failures))]
            times = self._failures[key] = deque()
        times.append(self.clock.seconds())

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)


class ConnectionCounter:
    """Open connections per address, with a cap (0 = no cap)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Count a new connection; C{False} (and nothing counted) when over the cap."""
        count = self._open.get(address, 0)
        if self.limit and count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def __len__(self) -> int:
        return sum(self._open.values())
