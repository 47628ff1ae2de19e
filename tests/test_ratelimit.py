"""Repeating conditions (disk full, outbox full, rejected input) log once a minute, not 10,000 times."""
from __future__ import annotations

import logging

from robot.outbox import Outbox
from robot.ratelimit import RateLimitedLog
from robot.records import PlantRecord


def test_one_line_per_key_per_interval(caplog):
    limited = RateLimitedLog(logging.getLogger("t"), interval=60)
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(1000):
            limited.warning("disk", "disk full")
        limited.warning("other", "another condition")
    assert [r.getMessage() for r in caplog.records] == ["disk full", "another condition"]
    limited._next["disk"] = 0.0  # a minute later: one line that says how many were swallowed
    with caplog.at_level(logging.WARNING, logger="t"):
        limited.warning("disk", "disk full")
    assert "999 more like it" in caplog.records[-1].getMessage()


def test_a_full_outbox_does_not_flood_the_log(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="robot.outbox"), Outbox(tmp_path / "o.db", max_records=2) as ob:
        for i in range(200):
            ob.put(PlantRecord("r1", "s1", i, 1000.0 + i, "Tomato___healthy", 0, 0.9, 3))
        assert ob.stats().dropped["plant"] == 198
    assert len([r for r in caplog.records if "outbox full" in r.getMessage()]) == 1
