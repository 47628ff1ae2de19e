"""Per-token rate limits (one token bucket per signed-in user or client address) and the
lockout of failed sign-ins (``LoginGuard``).

A bucket holds up to ``burst`` requests and refills at ``rate`` per second; a request
that finds it empty is refused with the seconds until the next token (HTTP 429 with
``Retry-After``). Time comes from ``time.monotonic`` so clock changes on the station
do not open or close the gate.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by an opaque string (a user name, session id or address)."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst, self.max_keys = float(rate), int(burst), max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float | None = None) -> float:
        """Take one token for ``key``; 0.0 when allowed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._forget_full(now)
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        # Buckets that have refilled carry no state worth keeping; drop them to bound memory.
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:  # everyone is busy: forget the oldest
            oldest = min(self._buckets, key=lambda k: self._buckets[k].updated)
            del self._buckets[oldest]


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` takes whole seconds; round up so a client that obeys it succeeds."""
    return str(max(1, math.ceil(wait_s)))


@dataclass
class _Failures:
    times: list[float]
    strikes: int = 0  # lockouts so far; each one lasts twice as long as the one before
    locked_until: float = 0.0
    last: float = 0.0


class LoginGuard:
    """Failed sign-ins per key (an account, a client address), with exponential lockout.

    ``free`` failures within ``window_s`` are allowed; the one that reaches ``free``
    locks the key for ``lockout_s``, the next lockout for twice that, up to
    ``max_lockout_s``. A key that has not failed for ``max_lockout_s`` starts afresh.
    Callers ask ``wait`` *before* checking a password, so a locked key costs no scrypt.
    """

    def __init__(self, free: int = 5, window_s: float = 60.0, lockout_s: float = 60.0,
                 max_lockout_s: float = 3600.0, *, max_keys: int = 10_000):
        if free < 1 or window_s <= 0 or lockout_s <= 0 or max_lockout_s < lockout_s:
            raise ValueError(f"login guard needs free >= 1, window_s > 0 and 0 < lockout_s <= max_lockout_s; got "
                             f"free={free}, window_s={window_s}, lockout_s={lockout_s}, max_lockout_s={max_lockout_s}")
        self.free, self.window_s, self.lockout_s, self.max_lockout_s = free, window_s, lockout_s, max_lockout_s
        self.max_keys = max_keys
        self._keys: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def wait(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again (0.0: it may try now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            f = self._keys.get(key)
            return 0.0 if f is None else max(0.0, f.locked_until - now)

    def failed(self, key: str, now: float | None = None) -> float:
        """Count a failure for ``key``; the lockout it starts now (0.0: none)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            f = self._keys.get(key)
            if f is None or now - f.last > self.max_lockout_s:
                if len(self._keys) >= self.max_keys:
                    self._forget_quiet(now)
                f = self._keys[key] = _Failures([])
            f.last = now
            f.times = [t for t in f.times if now - t < self.window_s] + [now]
            if len(f.times) < self.free:
                return 0.0
            f.times.clear()
            lockout = min(self.max_lockout_s, self.lockout_s * 2 ** f.strikes)
            f.strikes += 1
            f.locked_until = now + lockout
            return lockout

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def _forget_quiet(self, now: float) -> None:
        quiet = [k for k, f in self._keys.items() if f.locked_until <= now and now - f.last > self.window_s]
        for k in quiet:
            del self._keys[k]
        if len(self._keys) >= self.max_keys:
            del self._keys[min(self._keys, key=lambda k: self._keys[k].last)]
