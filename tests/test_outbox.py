"""The durable outbox and the telemetry sink in front of it."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from telemetry_faults import wait_for

from leafscout.link.records import Heartbeat, PlantRecord, RecordError, RowSummary, record_id
from leafscout.robot.outbox import Outbox, OutboxError
from leafscout.robot.telemetry import Telemetry, TelemetryError


def plant(i: int) -> PlantRecord:
    return PlantRecord("r1", "s1", i, 1000.0 + i, "Tomato___healthy", 0, 0.9, 3, row=1, metre=i * 0.3)


def row(r: int, plants: int) -> RowSummary:
    return RowSummary("r1", "s1", r, plants, 1, 0, 1 / plants, 0.0, 0.5, 1000.0 + plants)


def beat(i: int) -> Heartbeat:
    return Heartbeat("r1", 1000.0 + i, i, i, 10.0)


def test_fifo_with_stable_ids_and_sequence_never_reused(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        seqs = ob.put_many([(plant(i), None) for i in range(5)])
        assert seqs == [1, 2, 3, 4, 5]
        items = ob.pending(limit=3)
        assert [i.seq for i in items] == [1, 2, 3] and items[0].record == plant(0)
        assert items[0].record_id == record_id("r1", ob.outbox_id, 1) == f"r1:{ob.outbox_id}:1"
        assert ob.remove([1, 2, 99]) == 2
        assert [i.seq for i in ob.pending()] == [3, 4, 5]
        assert [i.seq for i in ob.pending(exclude={3, 4})] == [5]
        ob.remove([3, 4, 5])
    with Outbox(path) as ob:  # reopened empty: the counter still moves on
        assert ob.put(plant(9), thumbnail=b"\xff\xd8jpg") == 6
        assert ob.pending()[0].thumbnail == b"\xff\xd8jpg"
        assert ob.next_seq() == 7 and ob.put(plant(10)) == 8


def test_bound_drops_heartbeats_then_plants_and_row_summaries_last(tmp_path):
    with Outbox(tmp_path / "o.db", max_records=6) as ob:
        ob.put_many([(row(r, 10), None) for r in range(3)])
        ob.put_many([(beat(0), None), (plant(0), None), (plant(1), None)])
        assert ob.depth() == 6
        ob.put(plant(2))  # one too many: the heartbeat goes
        ob.put(plant(3))  # then the oldest plant
        s = ob.stats()
        assert s.queued == {"plant": 3, "row": 3, "heartbeat": 0}
        assert s.dropped == {"plant": 1, "row": 0, "heartbeat": 1, "unreadable": 0}
        assert [i.record.plant_id for i in ob.pending(["plant"])] == [1, 2, 3]
        ob.put_many([(row(r, 10), None) for r in range(3, 7)])  # rows push out all plants, then old rows
        s = ob.stats()
        assert s.queued == {"plant": 0, "row": 6, "heartbeat": 0}
        assert s.dropped == {"plant": 4, "row": 1, "heartbeat": 1, "unreadable": 0} and s.depth == 6


def test_newer_row_summary_supersedes_the_pending_one(tmp_path):
    with Outbox(tmp_path / "o.db") as ob:
        ob.put(row(1, 10))
        ob.put(row(2, 10))
        ob.put(row(1, 20))
        rows = [(i.record.row, i.record.plants) for i in ob.pending(["row"])]
        assert rows == [(2, 10), (1, 20)] and ob.stats().superseded == 1


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(OutboxError, match="max_records must be a positive integer, got 0"):
        Outbox(tmp_path / "o.db", max_records=0)
    with Outbox(tmp_path / "o.db") as ob:
        with pytest.raises(OutboxError, match=r"unknown record kind\(s\) \['plants'\]"):
            ob.pending(["plants"])
    (tmp_path / "bad.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(tmp_path / "bad.db")


def test_outbox_uses_wal_and_full_sync(tmp_path):
    with Outbox(tmp_path / "o.db") as ob:
        assert ob._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_submit_queues_while_the_disk_stalls(tmp_path):
    committed: list[int] = []
    with Telemetry(Outbox(tmp_path / "o.db")).start() as sink:
        sink.on_commit.append(committed.extend)
        with sink.outbox._lock:  # a stalled disk: the writer thread cannot commit
            for i in range(2000):
                sink.submit(plant(i))  # returns: the queue has room (a deadlock here fails the test)
            assert not committed
            assert sink.queue_depth >= 1999  # the heartbeat metric counts what waits in memory too
        assert sink.flush(10)
        assert committed == list(range(1, 2001)) and sink.outbox.depth() == 2000
        wait_for(lambda: sink.queue_depth == 2000, 5, "the cached queue depth")
    with pytest.raises(TelemetryError, match="after close"):
        sink.submit(plant(0))


def test_full_queue_waits_for_room_instead_of_dropping(tmp_path):
    """Before: a burst over the queue size was dropped before it was committed."""
    sink = Telemetry(Outbox(tmp_path / "o.db"), max_queue=10).start()
    stall = threading.Thread(target=lambda: (sink.outbox._lock.acquire(), threading.Event().wait(0.5),
                                             sink.outbox._lock.release()))
    try:
        stall.start()
        for i in range(50):
            sink.submit(plant(i))
        assert sink.flush(10)
        assert sink.queue_overflows > 0 and sink.dropped == 0
    finally:
        stall.join()
        sink.close()
    with Outbox(tmp_path / "o.db") as ob:
        assert ob.depth() == 50
        assert [i.record.plant_id for i in ob.pending(limit=50)] == list(range(50))  # in order


def test_commit_is_durable_when_it_returns_and_remembers_counted_plants(tmp_path):
    with Telemetry(Outbox(tmp_path / "o.db")).start() as sink:
        seqs = sink.commit([(plant(i), None) for i in range(3)])
        assert seqs == [1, 2, 3]
        with Outbox(tmp_path / "o.db") as other:  # another connection sees them: committed
            assert other.seqs() == {1, 2, 3}
        sink.outbox.remove(seqs)  # delivered: still remembered for the survey database's repair
        assert [r.plant_id for r in sink.counted_since("s1", 1)] == [1, 2]


def test_outbox_limit_drops_are_counted_for_heartbeats(tmp_path):
    with Telemetry(Outbox(tmp_path / "o.db", max_records=5)).start() as sink:
        sink.commit([(plant(i), None) for i in range(8)])
        assert sink.dropped == 3 and sink.outbox.stats().dropped["plant"] == 3


def test_concurrent_readers_see_only_committed_rows(tmp_path):
    path = tmp_path / "o.db"
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        conn = sqlite3.connect(path)
        while not stop.is_set():
            seen.append(conn.execute("SELECT count(*) FROM outbox").fetchone()[0] % 100)
        conn.close()

    with Outbox(path) as ob:
        th = threading.Thread(target=reader)
        th.start()
        for _ in range(20):
            ob.put_many([(plant(i), None) for i in range(100)])
        stop.set()
        th.join()
    assert seen and set(seen) == {0}  # batches of 100 appear all at once or not at all


def test_undeliverable_records_are_dropped_and_counted_never_blocking_the_queue(tmp_path):
    nan = PlantRecord("r1", "s1", 1, 1000.0, "Tomato___healthy", 0, float("nan"), 3)
    with Outbox(tmp_path / "direct.db") as ob:
        with pytest.raises(RecordError, match="confidence: not a finite number"):
            ob.put_many([(plant(1), None), (nan, None)])
        assert ob.depth() == 0  # nothing of the batch was stored
    with Telemetry(Outbox(tmp_path / "o.db")).start() as sink:
        sink.submit(plant(1))
        sink.submit(nan)  # same batch as its neighbours
        sink.submit(plant(2))
        assert sink.flush()
        assert sink.invalid_records == 1 and sink.outbox.depth() == 2
        # a row written by some older version that the parser now refuses
        with sink.outbox._lock:
            sink.outbox._conn.execute(
                "INSERT INTO outbox VALUES (1000, 'plant', '{\"kind\": \"plant\"}', NULL, NULL, 0)")
        assert [i.record for i in sink.outbox.pending()] == [plant(1), plant(2)]
        assert sink.outbox.stats().dropped["unreadable"] == 1


def test_outbox_limit_and_state_dir_come_from_robot_toml():
    from leafscout.robot.config import parse_config

    cfg = parse_config({"mqtt": {"outbox_limit": 500, "state_dir": "/var/lib/leafscout/r1",
                                 "password_file": "r1.password"}})
    assert cfg.run_flags() == {"outbox_limit": 500, "state_dir": "/var/lib/leafscout/r1",
                               "password_file": "r1.password"}


def test_a_clock_set_back_does_not_make_queued_records_unreadable(tmp_path, monkeypatch):
    """Records are checked (time within a day of now) when queued, not again when read back."""
    import leafscout.link.records

    with Outbox(tmp_path / "o.db") as ob:
        now = time.time()
        ob.put(PlantRecord("r1", "s1", 1, now, "Tomato___healthy", 0, 0.9, 3))
        monkeypatch.setattr(leafscout.link.records.time, "time", lambda: now - 3 * 86400)  # the clock jumps back 3 days
        assert [i.record.plant_id for i in ob.pending()] == [1]
        assert ob.stats().dropped["unreadable"] == 0
