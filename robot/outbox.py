"""The robot's durable outbox: every record waits here until a link confirms delivery.

SQLite, WAL, ``synchronous=FULL``: once ``put_many`` returns, the records survive a
SIGKILL or a power cut ("accepted").  Each outbox file draws a random 128-bit id
(``outbox_id``, 32 hex digits) when it is created, and each record gets a sequence
number that is never reused in that file (the counter lives in the same transaction),
so ``"<robot_id>:<outbox_id>:<seq>"`` is a record id that stays the same across
retransmissions and never collides with one from another outbox file (a deleted file,
a swapped SD card, another working directory): the station drops duplicates by it.
The links read pending items in order and ``remove`` them only when the station
confirmed it stored them (or rejected them for good: counted in ``rejected``).

The file lives in a fixed per-robot state directory (``state_dir``): ``--state-dir``,
else ``$LEAFSCOUT_STATE_DIR/<robot>``, else ``$XDG_STATE_HOME/leafscout/<robot>``
(``~/.local/state/leafscout/<robot>``), never the working directory.

``put_many`` also remembers the latest plants counted per survey (``counted``), so a
robot killed between queueing a plant and writing its survey database gets that plant
back into the survey database on restart (``Runtime``): the outbox is the source of truth.

The size is bounded (``max_records``).  When full, the oldest heartbeat goes first,
then the oldest plant record; row summaries are the last to go.  A newer row summary
for the same survey and row supersedes a pending older one (the station keeps only
the latest per row anyway).  Every drop is counted in the file itself (``stats()``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from leafscout.link.ratelimit import RateLimitedLog
from leafscout.link.records import Heartbeat, PlantRecord, RowSummary, record_from_dict, record_id
from leafscout.link.sqlite import connect_wal

log = logging.getLogger(__name__)

Record = PlantRecord | RowSummary | Heartbeat

KINDS = ("plant", "row", "heartbeat")
# Drop order when the outbox is full: first kind first. Row summaries are the last to go.
DROP_ORDER = ("heartbeat", "plant", "row")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL, thumbnail BLOB,
    row_key TEXT, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox(kind, seq);
CREATE INDEX IF NOT EXISTS outbox_row_key ON outbox(row_key) WHERE row_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('next_seq', 1);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counted (
    survey_id TEXT NOT NULL, plant_id INTEGER NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (survey_id, plant_id)
);
"""
COUNTED_KEEP = 1024  # plants remembered per survey for recovery (far more than one frame counts)


class OutboxError(RuntimeError):
    """The outbox file cannot be used, or an argument is out of range."""


@dataclass(frozen=True)
class OutboxItem:
    """One pending record, as read back from the outbox."""

    seq: int
    record: Record
    thumbnail: bytes | None = None
    outbox_id: str = ""

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def record_id(self) -> str:
        return record_id(self.record.robot_id, self.outbox_id, self.seq)


@dataclass(frozen=True)
class OutboxStats:
    """What is queued (per kind), what was dropped (per kind) and superseded."""

    queued: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    superseded: int = 0
    rejected: int = 0  # records the station refused for good (invalid); removed, never resent
    next_seq: int = 1

    @property
    def depth(self) -> int:
        return sum(self.queued.values())


def validate(record: Record) -> dict:
    """The record's JSON form, checked by the same parser the station uses."""
    d = record.to_dict()
    record_from_dict(d)
    return d


def default_state_dir(robot_id: str) -> Path:
    """Where a robot keeps its outbox: ``$LEAFSCOUT_STATE_DIR/<robot>``, else
    ``$XDG_STATE_HOME/leafscout/<robot>`` (default ``~/.local/state/leafscout/<robot>``)."""
    root = os.environ.get("LEAFSCOUT_STATE_DIR")
    if root:
        return Path(root) / robot_id
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "leafscout" / robot_id


def outbox_path(robot_id: str, state_dir: str | Path | None = None) -> Path:
    """The outbox file of ``robot_id`` in its state directory (created if missing)."""
    d = Path(state_dir) if state_dir is not None else default_state_dir(robot_id)
    d.mkdir(parents=True, exist_ok=True)
    return d / "outbox.db"


class Outbox:
    """A bounded, durable FIFO of records; thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path, max_records: int = 100_000):
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise OutboxError(f"max_records must be a positive integer, got {max_records!r}")
        self.path = Path(path)
        self.max_records = max_records
        self._limited = RateLimitedLog(log)  # per outbox: one robot's full outbox is its own condition
        # Two connections: the links read (WAL snapshot) while the writer waits for its fsync.
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            self._conn = connect_wal(self.path, _SCHEMA)
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('outbox_id', ?)", (secrets.token_hex(16),))
            self.outbox_id: str = self._conn.execute("SELECT value FROM meta WHERE name='outbox_id'").fetchone()[0]
            self._reader = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._reader.execute("PRAGMA busy_timeout=5000")
        except sqlite3.DatabaseError as e:
            raise OutboxError(f"cannot open outbox {str(path)!r}: {e}") from e

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._conn.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------
    def put(self, record: Record, thumbnail: bytes | None = None) -> int:
        """Store one record durably; returns its sequence number."""
        return self.put_many([(record, thumbnail)])[0]

    def put_many(self, items: Sequence[tuple[Record, bytes | None]]) -> list[int]:
        """Store records in one transaction (one fsync); returns their sequence numbers.

        Raises ``RecordError`` (nothing stored) when a record would fail the station's
        schema check: such a record could never be delivered and would block the queue.
        """
        bodies = [json.dumps(validate(record)) for record, _ in items]
        now = time.time()
        seqs: list[int] = []
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                seq = c.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()[0]
                for (record, thumbnail), body in zip(items, bodies):
                    row_key = None
                    if isinstance(record, RowSummary):
                        row_key = f"{record.robot_id}\x1f{record.survey_id}\x1f{record.row}"
                        n = c.execute("DELETE FROM outbox WHERE row_key=?", (row_key,)).rowcount
                        if n:
                            _bump(c, "superseded", n)
                    c.execute(
                        "INSERT INTO outbox VALUES (?,?,?,?,?,?)",
                        (seq, record.kind, body, thumbnail, row_key, now),
                    )
                    if isinstance(record, PlantRecord):
                        _remember_counted(c, record, seq, body)
                    seqs.append(seq)
                    seq += 1
                c.execute("UPDATE counters SET value=? WHERE name='next_seq'", (seq,))
                self._enforce_bound(c)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return seqs

    def _enforce_bound(self, c: sqlite3.Connection) -> None:
        excess = c.execute("SELECT count(*) FROM outbox").fetchone()[0] - self.max_records
        for kind in DROP_ORDER:
            if excess <= 0:
                return
            n = c.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind=? ORDER BY seq LIMIT ?)",
                (kind, excess),
            ).rowcount
            if n:
                _bump(c, f"dropped_{kind}", n)
                self._limited.warning(f"full-{kind}", "outbox full (%d records): dropped %d oldest %s record(s)",
                                 self.max_records, n, kind)
                excess -= n

    def next_seq(self) -> int:
        """Take a sequence number for a frame that is not a record (serial control frames)."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            seq = c.execute("SELECT value FROM counters WHERE name='next_seq'").fetchone()[0]
            c.execute("UPDATE counters SET value=? WHERE name='next_seq'", (seq + 1,))
            c.execute("COMMIT")
        return seq

    def counted_since(self, survey_id: str, plant_id: int) -> list[tuple[int, PlantRecord]]:
        """Plants of ``survey_id`` with id >= ``plant_id`` queued here (delivered or not), as
        (seq, record): what a survey database killed mid-count may lack."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT seq, body FROM counted WHERE survey_id=? AND plant_id>=? ORDER BY plant_id",
                (survey_id, plant_id)).fetchall()
        return [(seq, record_from_dict(json.loads(body), now=math.inf)) for seq, body in rows]

    def count_rejected(self, n: int) -> None:
        """Records the station refused for good (they were removed with ``remove``)."""
        if n:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                _bump(self._conn, "rejected", n)
                self._conn.execute("COMMIT")

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete delivered records; returns how many were still pending.

        Without an fsync: if a power cut undoes a removal, the record is sent again and
        the station drops the duplicate. Only insertions must be durable.
        """
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._lock:
            c = self._conn
            c.execute("PRAGMA synchronous=NORMAL")
            try:
                c.execute("BEGIN IMMEDIATE")
                n = 0
                for i in range(0, len(seqs), 500):
                    chunk = seqs[i:i + 500]
                    n += c.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})",
                                   chunk).rowcount
                c.execute("COMMIT")
            finally:
                c.execute("PRAGMA synchronous=FULL")
        return n

    # -- reading -------------------------------------------------------------------
    def pending(self, kinds: Iterable[str] | None = None, after: int = 0, limit: int = 100,
                exclude: Iterable[int] = ()) -> list[OutboxItem]:
        """Oldest pending items first (of ``kinds`` if given) with seq > ``after``."""
        sql = "SELECT seq, body, thumbnail FROM outbox WHERE seq > ?"
        args: list = [after]
        if kinds is not None:
            kinds = list(kinds)
            bad = set(kinds) - set(KINDS)
            if bad:
                raise OutboxError(f"unknown record kind(s) {sorted(bad)}; expected some of {list(KINDS)}")
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += kinds
        exclude = set(exclude)
        with self._read_lock:
            rows = self._reader.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit + len(exclude))).fetchall()
        items, bad = [], []
        for seq, body, thumb in rows:
            if seq in exclude:
                continue
            try:
                # checked when it was put; the clock may have been set back since
                items.append(OutboxItem(seq, record_from_dict(json.loads(body), now=math.inf), thumb, self.outbox_id))
            except (ValueError, TypeError) as e:  # written by an older, laxer version: never deliverable
                log.error("outbox record %d is unreadable (%s); dropping it", seq, e)
                bad.append(seq)
        if bad:
            self._drop_unreadable(bad)
        return items[:limit]

    def _drop_unreadable(self, seqs: list[int]) -> None:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            for seq in seqs:
                c.execute("DELETE FROM outbox WHERE seq=?", (seq,))
            _bump(c, "dropped_unreadable", len(seqs))
            c.execute("COMMIT")

    def depth(self, kind: str | None = None) -> int:
        with self._read_lock:
            if kind is None:
                return self._reader.execute("SELECT count(*) FROM outbox").fetchone()[0]
            return self._reader.execute("SELECT count(*) FROM outbox WHERE kind=?", (kind,)).fetchone()[0]

    def seqs(self) -> set[int]:
        """Sequence numbers still pending (tests, crash checks)."""
        with self._read_lock:
            return {r[0] for r in self._reader.execute("SELECT seq FROM outbox")}

    def stats(self) -> OutboxStats:
        """The queue metric: depth per kind, drops per kind, supersessions."""
        with self._read_lock:
            queued = dict(self._reader.execute("SELECT kind, count(*) FROM outbox GROUP BY kind"))
            counters = dict(self._reader.execute("SELECT name, value FROM counters"))
        return OutboxStats(
            queued={k: queued.get(k, 0) for k in KINDS},
            dropped={k: counters.get(f"dropped_{k}", 0) for k in (*KINDS, "unreadable")},
            superseded=counters.get("superseded", 0),
            rejected=counters.get("rejected", 0),
            next_seq=counters["next_seq"],
        )

    def integrity_check(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]


def _remember_counted(c: sqlite3.Connection, record: PlantRecord, seq: int, body: str) -> None:
    c.execute("INSERT OR REPLACE INTO counted VALUES (?,?,?,?)", (record.survey_id, record.plant_id, seq, body))
    c.execute("DELETE FROM counted WHERE survey_id=? AND plant_id<=?",
              (record.survey_id, record.plant_id - COUNTED_KEEP))


def _bump(c: sqlite3.Connection, name: str, n: int) -> None:
    c.execute(
        "INSERT INTO counters VALUES (?,?) ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
        (name, n),
    )
