"""Log lines for repeating conditions (disk full, outbox full, rejected input), at most once a minute.

``RateLimitedLog(log).warning(key, msg, *args)`` logs the first occurrence of ``key``, then
stays quiet for ``interval`` seconds and says how many it swallowed when it speaks again.
"""
from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """One line per ``key`` per ``interval`` seconds (monotonic clock); thread-safe."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0):
        self.logger, self.interval = logger, interval
        self._next: dict[str, float] = {}
        self._swallowed: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log now if ``key`` was quiet for ``interval``; True when it was logged."""
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(key, 0.0):
                self._swallowed[key] = self._swallowed.get(key, 0) + 1
                return False
            self._next[key] = now + self.interval
            swallowed = self._swallowed.pop(key, 0)
        if swallowed:
            msg += f" (and {swallowed} more like it in the last {self.interval:.0f} s)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)
