"""The telemetry sink: records go into the durable outbox, links drain it to the station.

``Telemetry.submit(record, thumbnail)`` is what the runtime calls from the camera loop
for row summaries and heartbeats.  It puts the record on an in-memory queue
(microseconds); a writer thread commits batches to the outbox (one fsync per batch) and
then wakes the links.  When the queue is full (the disk stalls) ``submit`` waits for room
instead of dropping, with one log line a minute.  A record counts as *accepted* once its
batch is committed: ``on_commit`` callbacks get its sequence number at that moment, and
``flush()`` waits for it.

``Telemetry.commit(items)`` is for counted plants: it writes them to the outbox in the
caller's thread and returns once the transaction committed, so the runtime stores a
plant in its survey database only after its record is queued for good (a SIGKILL in
between is repaired from the outbox on restart: ``counted_since``).

``build_sinks(serial=..., mqtt=..., outbox_path=..., robot_id=...)`` builds the sink
with its links; ``open_sinks`` is the same as a context manager.  ``python -m
robot.telemetry`` runs the links on their own (drain an outbox, or feed synthetic
records for the demo, the benchmarks and the crash test).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import queue
import random
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol

from leafscout.link.credentials import PASSWORD_ENV, read_key, read_password
from leafscout.link.ratelimit import RateLimitedLog
from leafscout.link.records import Heartbeat, PlantRecord, RecordError, RowSummary
from leafscout.robot.outbox import Outbox, OutboxStats, validate
from leafscout.robot.outbox import outbox_path as default_outbox_path

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

Record = PlantRecord | RowSummary | Heartbeat


class TelemetryError(RuntimeError):
    """Telemetry settings that cannot work, or a sink used after close."""


class Link(Protocol):
    name: str

    def start(self) -> object: ...
    def close(self) -> None: ...
    def wake(self) -> None: ...


class LinkWorker:
    """Plumbing shared by the links: a sender thread, woken by events posted from other threads."""

    def __init__(self, thread_name: str):
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """New records are in the outbox."""
        self._wake.set()

    def _post(self, kind: str, value: object) -> None:
        self._events.put((kind, value))
        self._wake.set()

    def _take_events(self) -> list[tuple[str, object]]:
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def _idle(self, timeout: float) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def _stop_worker(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class Telemetry:
    """A sink backed by the outbox; owns the writer thread and the links."""

    def __init__(self, outbox: Outbox, links: list[Link] | None = None, max_queue: int = 10_000,
                 batch: int = 500):
        self.outbox = outbox
        self.links = list(links or [])
        self.on_commit: list[Callable[[list[int]], None]] = []
        self.queue_overflows = 0  # submits that had to wait for room (nothing is dropped)
        self.write_failures = 0  # records the outbox could not store (disk full, I/O error)
        self.invalid_records = 0
        self._batch = batch
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._closed = threading.Event()
        self._depth = 0
        self._committing = 0
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)

    def start(self) -> "Telemetry":
        self._writer.start()
        for link in self.links:
            link.start()
        return self

    def submit(self, record: Record, thumbnail: bytes | None = None) -> None:
        """Queue a record for the outbox; waits for room when the queue is full (never drops).

        The writer thread checks each record against the station's schema; one that would
        be refused (e.g. a NaN confidence) is logged, counted in ``invalid_records`` and
        dropped, so it can never block the outbox.
        """
        if self._closed.is_set():
            raise TelemetryError("submit() after close()")
        try:
            self._queue.put_nowait((record, thumbnail))
        except queue.Full:
            self.queue_overflows += 1
            _limited.error("queue-full", "telemetry queue full (%d records): waiting for the outbox to catch up "
                           "(%d waits so far); is the disk stalled?", self._queue.maxsize, self.queue_overflows)
            self._queue.put((record, thumbnail))

    def commit(self, items: list[tuple[Record, bytes | None]]) -> list[int]:
        """Write records to the outbox now, in this thread; their seqs once committed ([] on failure)."""
        if self._closed.is_set():
            raise TelemetryError("commit() after close()")
        return self._commit(list(items))

    def counted_since(self, survey_id: str, plant_id: int) -> list[PlantRecord]:
        """Plants of ``survey_id`` with id >= ``plant_id`` this outbox queued (restart repair)."""
        return [r for _, r in self.outbox.counted_since(survey_id, plant_id)]

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed to the outbox."""
        done = threading.Event()
        try:
            self._queue.put((None, done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def stats(self) -> OutboxStats:
        return self.outbox.stats()

    @property
    def dropped(self) -> int:
        """Records lost so far: dropped by the outbox bound or unreadable, refused by the schema
        check, or not written (disk full).  Heartbeats carry it to the station."""
        try:
            outbox_drops = sum(self.outbox.stats().dropped.values())
        except Exception:  # noqa: BLE001 - a metric must not stop the camera loop
            outbox_drops = 0
        return outbox_drops + self.invalid_records + self.write_failures

    @property
    def queue_depth(self) -> int:
        """Records not yet confirmed by the station (outbox + not yet committed); for heartbeats.

        A cached value the writer thread refreshes every 0.1 s: reading it costs the camera loop nothing.
        """
        return self._depth + self._committing + self._queue.qsize()

    def close(self) -> None:
        """Commit what is queued, stop the links, close the outbox."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._writer.is_alive():
            self._writer.join(timeout=30)
        for link in self.links:
            link.close()
        self.outbox.close()

    def __enter__(self) -> "Telemetry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_loop(self) -> None:
        while True:
            try:
                items = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                if self._closed.is_set():
                    return
                self._refresh_depth()
                continue
            while len(items) < self._batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [(r, thumb) for r, thumb in items if r is not None]
            if records:
                self._committing = len(records)
                self._commit(records)
                self._refresh_depth()
                self._committing = 0
            for r, marker in items:
                if r is None:  # a flush() marker: everything before it is committed now
                    marker.set()

    def _valid(self, record: Record) -> bool:
        try:
            validate(record)
            return True
        except RecordError as e:
            self.invalid_records += 1
            log.error("dropping a record the station would refuse: %s (%r)", e, record)
            return False

    def _refresh_depth(self) -> None:
        try:
            self._depth = self.outbox.depth()
        except Exception:  # noqa: BLE001 - a metric must not stop the writer
            log.debug("outbox depth unavailable", exc_info=True)

    def _commit(self, items: list[tuple[Record, bytes | None]]) -> list[int]:
        try:
            try:
                seqs = self.outbox.put_many(items)
            except RecordError:  # rare: find the bad ones, keep the rest
                items = [item for item in items if self._valid(item[0])]
                seqs = self.outbox.put_many(items)
        except Exception as e:  # noqa: BLE001 - a broken disk must not kill the camera loop
            self.write_failures += len(items)
            _limited.error("write-failed", "outbox write failed (%s: %s); %d record(s) lost so far",
                           type(e).__name__, e, self.write_failures)
            return []
        for callback in self.on_commit:
            callback(seqs)
        for link in self.links:
            link.wake()
        return seqs


def build_sinks(serial: str | None = None, mqtt: str | None = None, outbox_path: str | Path | None = None,
                robot_id: str = "robot", hmac_key: bytes | None = None, baudrate: int = 115200,
                max_records: int = 100_000, start: bool = True, state_dir: str | Path | None = None,
                mqtt_password: str | None = None) -> list[Telemetry]:
    """The robot's telemetry sinks: one outbox-backed ``Telemetry`` with the requested links.

    The outbox is ``outbox_path`` if given, else ``outbox.db`` in the robot's state directory
    (``state_dir``, default ``leafscout.robot.outbox.default_state_dir(robot_id)``).
    """
    from leafscout.robot.mqtt_link import MqttLink
    from leafscout.robot.serial_link import SerialLink

    outbox = Outbox(outbox_path if outbox_path is not None else default_outbox_path(robot_id, state_dir),
                    max_records=max_records)
    links: list[Link] = []
    try:
        network = MqttLink(mqtt, robot_id, outbox, key=hmac_key, password=mqtt_password) if mqtt else None
        if network is not None:
            links.append(network)
        if serial:
            links.append(SerialLink(serial, robot_id, outbox, baudrate=baudrate, key=hmac_key, other_link=network))
    except Exception:
        outbox.close()
        raise
    sink = Telemetry(outbox, links)
    return [sink.start() if start else sink]


@contextlib.contextmanager
def open_sinks(**kwargs: object) -> Iterator[list[Telemetry]]:
    """``with open_sinks(serial=..., mqtt=..., ...) as sinks:``; closes them on exit."""
    sinks = build_sinks(**kwargs)
    try:
        yield sinks
    finally:
        for s in sinks:
            s.close()


def synthetic_records(robot_id: str, survey_id: str, n: int, seed: int = 0, t0: float | None = None,
                      summaries: bool = True) -> Iterator[Record]:
    """Plausible records for demos and tests: plants along rows, every 50 a row summary
    (unless ``summaries`` is False: a newer one supersedes a pending one) and a heartbeat."""
    rng = random.Random(seed)
    t = time.time() if t0 is None else t0
    classes = ["Tomato___healthy", "Tomato___Early_blight", "Tomato___Late_blight"]
    diseased = 0
    for i in range(n):
        row, k = divmod(i, 200)
        cls = rng.randrange(len(classes))
        uncertain = rng.random() < 0.05
        diseased += cls > 0 and not uncertain
        yield PlantRecord(robot_id, survey_id, i, t + i * 0.1, "uncertain" if uncertain else classes[cls],
                          -1 if uncertain else cls, round(rng.uniform(0.5, 1.0), 3), rng.randint(1, 9),
                          row=row, metre=round(k * 0.3, 1), lat=48.1 + i * 1e-6, lon=11.5 + row * 1e-5)
        if i % 50 == 49:
            inc = diseased / (i + 1)
            if summaries:
                yield RowSummary(robot_id, survey_id, row, k + 1, diseased, 0, inc, max(0.0, inc - 0.05),
                                 min(1.0, inc + 0.05), t + i * 0.1)
            yield Heartbeat(robot_id, t + i * 0.1, 0, i, 10.0, survey_id=survey_id, lat=48.1 + i * 1e-6,
                            lon=11.5, row=row, metre=round(k * 0.3, 1))


def main(argv: list[str] | None = None) -> int:
    """Run the robot-side telemetry alone (demo, benchmarks, crash test)."""
    ap = argparse.ArgumentParser(prog="python -m leafscout.robot.telemetry", description=main.__doc__)
    ap.add_argument("--outbox", help="outbox SQLite file (default: outbox.db in the state directory)")
    ap.add_argument("--state-dir", help="the robot's state directory (default $LEAFSCOUT_STATE_DIR/<robot>)")
    ap.add_argument("--password-file", help=f"file with the MQTT password (else ${PASSWORD_ENV})")
    ap.add_argument("--robot-id", default="robot", help="this robot's id (MQTT user and topic)")
    ap.add_argument("--serial", help="serial port URL (/dev/ttyUSB0, socket://h:p, a pty path)")
    ap.add_argument("--baud", type=int, default=115200, help="serial baud rate the sender paces to")
    ap.add_argument("--mqtt", help="broker URL mqtt://user:pass@host:port")
    ap.add_argument("--hmac-key-file", help="file with the shared HMAC key")
    ap.add_argument("--max-records", type=int, default=100_000,
                    help="outbox bound; beyond it heartbeats, then plants, then row summaries are dropped")
    ap.add_argument("--synthetic", type=int, default=0, help="submit this many synthetic plant records")
    ap.add_argument("--rate", type=float, default=10.0,
                    help="synthetic records per second (0: as fast as possible)")
    ap.add_argument("--survey", default="demo", help="survey id of the synthetic records")
    ap.add_argument("--no-summaries", action="store_true",
                    help="no synthetic row summaries (they supersede each other in the outbox)")
    ap.add_argument("--print-committed", action="store_true",
                    help="print each sequence number once committed (crash test)")
    ap.add_argument("--linger", type=float, default=0.0, help="keep the links running this long after submitting")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (sink,) = build_sinks(serial=args.serial, mqtt=args.mqtt, outbox_path=args.outbox, robot_id=args.robot_id,
                          hmac_key=read_key(args.hmac_key_file), baudrate=args.baud, max_records=args.max_records,
                          state_dir=args.state_dir, mqtt_password=read_password(args.password_file))
    if args.print_committed:
        sink.on_commit.append(lambda seqs: print(*seqs, sep="\n", flush=True) if seqs else None)
    with sink:
        start = time.monotonic()
        for i, record in enumerate(synthetic_records(args.robot_id, args.survey, args.synthetic,
                                                             summaries=not args.no_summaries)):
            if args.rate > 0:
                time.sleep(max(0.0, start + i / args.rate - time.monotonic()))
            sink.submit(record)
        sink.flush()
        deadline = time.monotonic() + args.linger
        while time.monotonic() < deadline and sink.outbox.depth():
            time.sleep(0.2)
        log.info("outbox: %s", sink.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
