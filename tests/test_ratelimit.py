"""Repeating conditions (disk full, outbox full, rejected input) log once a minute, not 10,000 times."""
from __future__ import annotations

import logging

from leafscout.link.ratelimit import RateLimitedLog
from leafscout.link.records import PlantRecord
from leafscout.robot.outbox import Outbox


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
    with caplog.at_level(logging.WARNING, logger="leafscout.robot.outbox"), Outbox(tmp_path / "o.db", max_records=2) as ob:
        for i in range(200):
            ob.put(PlantRecord("r1", "s1", i, 1000.0 + i, "Tomato___healthy", 0, 0.9, 3))
        assert ob.stats().dropped["plant"] == 198
    assert len([r for r in caplog.records if "outbox full" in r.getMessage()]) == 1


def _disk_full(*args, **kwargs):
    import sqlite3

    raise sqlite3.OperationalError("database or disk is full")


def test_disk_full_on_the_robot_logs_once_and_counts_the_loss(tmp_path, caplog):
    from leafscout.robot.telemetry import Telemetry

    with Telemetry(Outbox(tmp_path / "o.db")).start() as sink, caplog.at_level(logging.ERROR):
        sink.outbox.put_many = _disk_full
        for i in range(100):
            assert sink.commit([(PlantRecord("r1", "s1", i, 1000.0 + i, "Tomato___healthy", 0, 0.9, 3), None)]) == []
        assert sink.write_failures == 100 and sink.dropped == 100  # heartbeats report it
    assert len([r for r in caplog.records if "outbox write failed" in r.getMessage()]) == 1


def test_disk_full_at_the_station_logs_once(tmp_path, caplog):
    import json
    import threading

    from leafscout.station.db import open_db
    from leafscout.station.receiver import MqttReceiver

    db = open_db(tmp_path / "s.db")
    r = MqttReceiver(db, "mqtt://station@127.0.0.1:1")
    db.insert_records = _disk_full
    body = json.dumps({"id": "r1:" + "0" * 32 + ":1",
                       "record": PlantRecord("r1", "s1", 1, 1000.0, "Tomato___healthy", 0, 0.9, 3).to_dict()})
    with caplog.at_level(logging.ERROR, logger="leafscout.station.receiver"):
        r._thread.start()
        for _ in range(30):  # 30 batches, each failing: the records stay unacknowledged on the robot
            r._queue.put(("leafscout/r1/plant", body.encode()))
            tick = threading.Event()
            while r._queue.qsize():
                tick.wait(0.01)
        r._stop.set()
        r._thread.join(5)
    db.close()
    assert len([x for x in caplog.records if "storing a batch" in x.getMessage()]) == 1
