"""Per-token rate limits: one token bucket per signed-in user, session or client address.

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
