"""The base station's store: what the robots reported, deduplicated, queryable.

SQLite by default (``open_db("station.db")``): one file, WAL mode, ``synchronous=FULL``.
PostgreSQL for fleets (``open_db("postgresql://station@db-host/leafscout")``): the same
schema and queries through :mod:`leafscout.station.sql`, so several receivers (one per broker or
serial gateway, in other processes or on other hosts) write one database at once and
dashboards read from replicas. Either way a record is only acknowledged to a robot after
the transaction that stored it has committed, so an acknowledged record survives a power
cut of the station, and the ``received`` table's primary key stores each record id once
however many receivers got it.  Receivers (MQTT, serial) write; the dashboard reads.  A
``StationDB`` is safe to share between threads (one connection behind a lock); other
processes may read at the same time (WAL; PostgreSQL's MVCC).

Schema (all times are unix seconds as REAL; ``record_id`` is
``"<robot_id>:<outbox_id>:<seq>"``, unique per record, stable across retransmissions and
across outbox resets: the duplicate filter keys on it):

``robots``       robot_id PK, last_seen, queue_depth, frames, fps, status, survey_id,
                 link (link that delivered last: "mqtt" | "serial"), link_status
                 ("online" | "offline" | NULL, from the MQTT last will), heartbeat_t
                 (queue_depth..survey_id come from the newest heartbeat), dropped (records
                 the robot's outbox dropped so far, from its heartbeats)
``received``     record_id PK, robot_id, kind ("plant" | "row" | "heartbeat"), link,
                 received_at: every record ever stored; the duplicate filter
``plants``       record_id PK, robot_id, survey_id, plant_id, t, label, class_index
                 (-1 when uncertain), confidence, diseased (0/1), uncertain (0/1), row,
                 metre, lat, lon, frames (row/metre/lat/lon may be NULL)
``row_summaries`` (robot_id, survey_id, row) PK, record_id, plants, diseased, uncertain,
                 incidence, ci_lo, ci_hi, t: only the latest summary (largest t) per row
``heartbeats``   record_id PK, robot_id, survey_id, t, queue_depth, frames, fps, status,
                 lat, lon, row, metre: the full history (the robot's track)
``thumbnails``   record_id PK, jpeg BLOB (MQTT only; serial never carries images)
``rejected``     reason PK, count, last_at, last_detail: malformed, invalid or forged input
``station_flags`` name PK, value: how the station runs (``insecure`` = 1: started with --insecure)
``serial_robots`` number PK (uint16 in the serial header), robot_id: learnt from HELLO
``serial_boots``  (robot_id, boot) PK, hello_seq, current: the outbox ids a robot announced
                 in HELLO; ``current`` = 1 for the one its data frames belong to now
``serial_class_ctx`` (robot_id, boot, class_index) PK, name, seq: class table sent over serial
``serial_survey_ctx`` (robot_id, boot, ref) PK, survey_id, t0, lat0, lon0 (NULL: no origin), seq

``plants``, ``heartbeats`` and ``thumbnails`` are read by the dashboard in append order
(``rowid``): SQLite's implicit row number, a ``rowid`` identity column on PostgreSQL (the
``/*rowid*/`` mark in ``SCHEMA``; see :mod:`leafscout.station.sql` for why it grows in commit order).

Query helpers return small frozen dataclasses (``dataclasses.asdict`` gives JSON-ready
dicts): ``surveys()``, ``plants(survey_id)``, ``rows(survey_id)``, ``robots()``,
``track(survey_id)``, ``thumbnail(record_id)``, ``rejected()``.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from leafscout.link.records import Heartbeat, PlantRecord, RowSummary
from leafscout.link.sqlite import connect_wal
from leafscout.station import sql

log = logging.getLogger(__name__)

Record = PlantRecord | RowSummary | Heartbeat

SCHEMA = """
CREATE TABLE IF NOT EXISTS robots (
    robot_id TEXT PRIMARY KEY, last_seen REAL, queue_depth INTEGER, frames INTEGER,
    fps REAL, status TEXT, survey_id TEXT, link TEXT, link_status TEXT, heartbeat_t REAL,
    dropped INTEGER
);
CREATE TABLE IF NOT EXISTS received (
    record_id TEXT PRIMARY KEY, robot_id TEXT NOT NULL, kind TEXT NOT NULL,
    link TEXT NOT NULL, received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS plants (
    /*rowid*/ record_id TEXT PRIMARY KEY, robot_id TEXT NOT NULL, survey_id TEXT NOT NULL,
    plant_id INTEGER NOT NULL, t REAL NOT NULL, label TEXT NOT NULL,
    class_index INTEGER NOT NULL, confidence REAL NOT NULL, diseased INTEGER NOT NULL,
    uncertain INTEGER NOT NULL, row INTEGER, metre REAL, lat REAL, lon REAL,
    frames INTEGER NOT NULL, fix TEXT, fix_quality INTEGER
);
CREATE INDEX IF NOT EXISTS plants_survey ON plants(survey_id, row, metre);
CREATE TABLE IF NOT EXISTS row_summaries (
    robot_id TEXT NOT NULL, survey_id TEXT NOT NULL, row INTEGER NOT NULL,
    record_id TEXT NOT NULL, plants INTEGER NOT NULL, diseased INTEGER NOT NULL,
    uncertain INTEGER NOT NULL, incidence REAL NOT NULL, ci_lo REAL NOT NULL,
    ci_hi REAL NOT NULL, t REAL NOT NULL,
    PRIMARY KEY (robot_id, survey_id, row)
);
CREATE TABLE IF NOT EXISTS heartbeats (
    /*rowid*/ record_id TEXT PRIMARY KEY, robot_id TEXT NOT NULL, survey_id TEXT, t REAL NOT NULL,
    queue_depth INTEGER NOT NULL, frames INTEGER NOT NULL, fps REAL NOT NULL,
    status TEXT NOT NULL, lat REAL, lon REAL, row INTEGER, metre REAL
);
CREATE INDEX IF NOT EXISTS heartbeats_survey ON heartbeats(survey_id, t);
CREATE TABLE IF NOT EXISTS thumbnails (/*rowid*/ record_id TEXT PRIMARY KEY, jpeg BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    reason TEXT PRIMARY KEY, count INTEGER NOT NULL, last_at REAL NOT NULL, last_detail TEXT
);
CREATE TABLE IF NOT EXISTS station_flags (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS serial_robots (number INTEGER PRIMARY KEY, robot_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS serial_boots (
    robot_id TEXT NOT NULL, boot TEXT NOT NULL, hello_seq INTEGER NOT NULL, current INTEGER NOT NULL,
    PRIMARY KEY (robot_id, boot)
);
CREATE TABLE IF NOT EXISTS serial_class_ctx (
    robot_id TEXT NOT NULL, boot TEXT NOT NULL, class_index INTEGER NOT NULL, name TEXT NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (robot_id, boot, class_index)
);
CREATE TABLE IF NOT EXISTS serial_survey_ctx (
    robot_id TEXT NOT NULL, boot TEXT NOT NULL, ref INTEGER NOT NULL, survey_id TEXT NOT NULL,
    t0 REAL NOT NULL, lat0 REAL, lon0 REAL, seq INTEGER NOT NULL, PRIMARY KEY (robot_id, boot, ref)
);
"""


# Columns in the order of the INSERTs below (PostgreSQL's tables have a rowid column more).
PLANT_COLUMNS = ("record_id, robot_id, survey_id, plant_id, t, label, class_index, confidence, diseased, "
                 "uncertain, row, metre, lat, lon, frames, fix, fix_quality")
# Columns added after the first release: (table, column definition), added to older databases on open.
ADDED_COLUMNS = (("robots", "dropped INTEGER"), ("plants", "fix TEXT"), ("plants", "fix_quality INTEGER"))
HEARTBEAT_COLUMNS = "record_id, robot_id, survey_id, t, queue_depth, frames, fps, status, lat, lon, row, metre"


class StationDBError(RuntimeError):
    """The station database cannot be used (wrong file, corrupt, closed, unreachable)."""


@dataclass(frozen=True)
class SurveyInfo:
    survey_id: str
    robots: tuple[str, ...]
    plants: int
    diseased: int
    uncertain: int
    first_t: float | None
    last_t: float | None


@dataclass(frozen=True)
class StoredPlant:
    record_id: str
    robot_id: str
    survey_id: str
    plant_id: int
    t: float
    label: str
    class_index: int
    confidence: float
    diseased: bool
    uncertain: bool
    row: int | None
    metre: float | None
    lat: float | None
    lon: float | None
    frames: int
    has_thumbnail: bool
    fix: str | None = None  # how the position was known (link.records.FIX_VALUES); None without a GPS
    fix_quality: int | None = None  # GGA fix quality


# A stored row summary is exactly the record the robot sent (the latest one per row).
StoredRow = RowSummary


@dataclass(frozen=True)
class RobotInfo:
    robot_id: str
    last_seen: float | None
    queue_depth: int | None
    frames: int | None
    fps: float | None
    status: str | None
    survey_id: str | None
    link: str | None
    link_status: str | None
    dropped: int | None = None  # records the robot's outbox lost so far (its latest heartbeat)


@dataclass(frozen=True)
class TrackPoint:
    robot_id: str
    t: float
    lat: float | None
    lon: float | None
    row: int | None
    metre: float | None


class StationDB:
    """Thread-safe access to one station database (a SQLite file or a PostgreSQL URL).
    Use ``open_db``."""

    def __init__(self, target: str | Path, *, read_target: str | Path | None = None):
        self.postgres = sql.is_postgres(target)
        # ``path``: the SQLite file (None on PostgreSQL); ``name``: for messages (no password).
        self.path = None if self.postgres else Path(target)
        self.target, self.name = str(target), sql.redact(target)
        self.read_target = str(read_target) if read_target is not None else self.target
        self._lock = threading.RLock()
        try:
            self._conn = self._open_postgres() if self.postgres else self._open_sqlite()
        except (sqlite3.DatabaseError, ModuleNotFoundError, *self._pg_errors()) as e:
            raise StationDBError(f"cannot open station database {self.name!r}: {e}") from e
        # What a statement raises for database trouble (sqlite3.Error or psycopg.Error).
        self.errors = sql.db_errors(self._conn)
        self._begin = ("BEGIN", f"SELECT pg_advisory_xact_lock({sql.WRITE_LOCK})") if self.postgres \
            else ("BEGIN IMMEDIATE",)

    def _open_sqlite(self) -> sqlite3.Connection:
        conn = connect_wal(self.path, SCHEMA)
        for table, column in ADDED_COLUMNS:  # databases from before these columns
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            except sqlite3.OperationalError:  # already there
                pass
        return conn

    def _reconnect(self) -> None:
        """After the PostgreSQL server went away (restart, network), the next use opens a new
        connection; the batch that failed stays unacknowledged, so robots resend it."""
        if sql.is_broken(self._conn):
            log.warning("station database %s: connection lost; reconnecting", self.name)
            self._conn.close()
            self._conn = sql.PgConnection(self.target)

    def _open_postgres(self) -> sql.PgConnection:
        conn = sql.PgConnection(self.target)
        try:
            if not conn.in_recovery():  # a replica is read-only and has the primary's schema
                # Receivers starting together must not race to create the same tables.
                conn.execute("BEGIN")
                conn.execute(f"SELECT pg_advisory_xact_lock({sql.WRITE_LOCK})")
                conn.executescript(SCHEMA)
                for table, column in ADDED_COLUMNS:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}")
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _pg_errors() -> tuple[type[BaseException], ...]:
        try:
            import psycopg
        except ModuleNotFoundError:
            return ()
        return (psycopg.Error,)

    def reader(self) -> sql.Connection:
        """A new read-only connection (pages, exports, reports; ``read_target`` when given,
        e.g. a PostgreSQL replica). The caller closes it."""
        return sql.connect_readonly(self.read_target)

    def ensure_indexes(self, statements: Iterable[str]) -> None:
        """Run ``CREATE INDEX IF NOT EXISTS`` statements (the dashboard's own indexes)."""
        if self.postgres and self._conn.in_recovery():
            return
        with self._tx() as c:
            for statement in statements:
                c.execute(statement)

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "StationDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> "_Transaction":
        return _Transaction(self)

    # -- writing -------------------------------------------------------------------
    def insert_record(self, record_id: str, record: Record, thumbnail: bytes | None = None,
                      link: str = "mqtt") -> bool:
        """Store one record; False when ``record_id`` was stored before (a duplicate)."""
        return self.insert_records([(record_id, record, thumbnail)], link=link)[0]

    def insert_records(self, items: Iterable[tuple[str, Record, bytes | None]],
                       link: str = "mqtt") -> list[bool | None]:
        """Store many records in one transaction (one fsync).

        Per item: True = stored, False = duplicate, None = this record could not be stored
        (its own savepoint was rolled back; the others are kept).
        """
        now = time.time()
        out: list[bool | None] = []
        heard_from: set[str] = set()
        with self._tx() as c:
            for record_id, record, thumbnail in items:
                c.execute("SAVEPOINT one_record")
                try:
                    out.append(_insert_one(c, record_id, record, thumbnail, link, now))
                except (*self.errors, ValueError, TypeError, OverflowError, KeyError) as e:
                    # one record's problem (e.g. a value the database cannot hold) never sinks its batch
                    log.debug("record %r not stored: %s", record_id[:120], e)
                    c.execute("ROLLBACK TO SAVEPOINT one_record")
                    out.append(None)
                c.execute("RELEASE SAVEPOINT one_record")
                if out[-1]:
                    heard_from.add(record.robot_id)
            # Once per robot and batch, not per record (one statement, one round trip, less).
            for robot_id in sorted(heard_from):
                c.execute("INSERT INTO robots(robot_id, last_seen, link) VALUES (?,?,?) ON CONFLICT(robot_id) "
                          "DO UPDATE SET last_seen=excluded.last_seen, link=excluded.link", (robot_id, now, link))
        return out

    def set_flag(self, name: str, value: bool) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO station_flags VALUES (?,?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                      (name, int(value)))

    def flags(self) -> dict[str, bool]:
        """How the station runs, e.g. ``{"insecure": True}`` (the dashboard shows a banner)."""
        return {k: bool(v) for k, v in self._all("SELECT name, value FROM station_flags")}

    def robot_drops(self) -> dict[str, int]:
        """Records each robot's outbox dropped so far (its latest heartbeat says)."""
        return dict(self._all("SELECT robot_id, dropped FROM robots WHERE dropped IS NOT NULL ORDER BY robot_id"))

    def count_rejected(self, reason: str, detail: str = "", n: int = 1) -> None:
        """Count rejected input (malformed, forged, unknown robot, too large, duplicate...)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO rejected VALUES (?,?,?,?) ON CONFLICT(reason) DO UPDATE SET "
                "count=rejected.count+excluded.count, last_at=excluded.last_at, last_detail=excluded.last_detail",
                (reason, n, time.time(), detail[:500]),
            )

    def set_link_status(self, robot_id: str, status: str) -> None:
        """Record what the robot's MQTT last will / birth message says ("online"/"offline")."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO robots(robot_id, link_status) VALUES (?,?) "
                "ON CONFLICT(robot_id) DO UPDATE SET link_status=excluded.link_status",
                (robot_id, status),
            )

    # -- serial link context (the compact binary records refer to these) -----------
    # Context is versioned by the robot's outbox id ("boot"), announced in HELLO: a robot
    # whose outbox was replaced starts a new version, and never inherits the old one's.
    def bind_serial_robot(self, number: int, robot_id: str) -> str:
        """Bind a serial robot number to a name; returns the name already bound if any."""
        with self._tx() as c:
            c.execute("INSERT INTO serial_robots VALUES (?,?) ON CONFLICT DO NOTHING", (number, robot_id))
            return c.execute("SELECT robot_id FROM serial_robots WHERE number=?", (number,)).fetchone()[0]

    def serial_robot(self, number: int) -> str | None:
        row = self._one("SELECT robot_id FROM serial_robots WHERE number=?", (number,))
        return row[0] if row else None

    def serial_hello(self, robot_id: str, boot: str, seq: int) -> bool:
        """Make ``boot`` the robot's current outbox id; False for a stale HELLO (a replay:
        older than the last HELLO accepted for that boot, or that same HELLO once another
        boot took over). The current boot's last HELLO again is a retransmission: True."""
        with self._tx() as c:
            row = c.execute("SELECT hello_seq, current FROM serial_boots WHERE robot_id=? AND boot=?",
                            (robot_id, boot)).fetchone()
            if row is not None and (seq < row[0] or (seq == row[0] and not row[1])):
                return False
            if row is not None and seq == row[0]:
                return True
            c.execute("UPDATE serial_boots SET current=0 WHERE robot_id=?", (robot_id,))
            c.execute("INSERT INTO serial_boots VALUES (?,?,?,1) ON CONFLICT(robot_id, boot) DO UPDATE "
                      "SET hello_seq=excluded.hello_seq, current=1", (robot_id, boot, seq))
            return True

    def serial_boot(self, robot_id: str) -> str | None:
        """The outbox id of the robot's latest accepted HELLO."""
        row = self._one("SELECT boot FROM serial_boots WHERE robot_id=? AND current=1", (robot_id,))
        return row[0] if row else None

    def set_serial_class(self, robot_id: str, boot: str, index: int, name: str, seq: int) -> None:
        """Within one boot newer (larger seq) class names win, so a replayed old table changes nothing."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO serial_class_ctx VALUES (?,?,?,?,?) ON CONFLICT(robot_id, boot, class_index) "
                "DO UPDATE SET name=excluded.name, seq=excluded.seq WHERE excluded.seq > serial_class_ctx.seq",
                (robot_id, boot, index, name, seq),
            )

    def serial_class(self, robot_id: str, boot: str, index: int) -> str | None:
        row = self._one("SELECT name FROM serial_class_ctx WHERE robot_id=? AND boot=? AND class_index=?",
                        (robot_id, boot, index))
        return row[0] if row else None

    def set_serial_survey(self, robot_id: str, boot: str, ref: int, survey_id: str, t0: float,
                          lat0: float, lon0: float, seq: int) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO serial_survey_ctx VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(robot_id, boot, ref) DO UPDATE "
                "SET survey_id=excluded.survey_id, t0=excluded.t0, lat0=excluded.lat0, "
                "lon0=excluded.lon0, seq=excluded.seq WHERE excluded.seq > serial_survey_ctx.seq",
                (robot_id, boot, ref, survey_id, t0, lat0, lon0, seq),
            )

    def serial_survey(self, robot_id: str, boot: str, ref: int) -> tuple[str, float, float, float] | None:
        """(survey_id, t0, lat0, lon0) of a survey reference, or None if never announced."""
        row = self._one("SELECT survey_id, t0, lat0, lon0 FROM serial_survey_ctx WHERE robot_id=? AND boot=? "
                        "AND ref=?", (robot_id, boot, ref))
        if row is None:
            return None
        survey_id, t0, lat0, lon0 = row
        return survey_id, t0, math.nan if lat0 is None else lat0, math.nan if lon0 is None else lon0

    # -- reading -------------------------------------------------------------------
    def _one(self, query: str, args: tuple = ()) -> tuple | None:
        with self._lock:
            self._reconnect()
            return self._conn.execute(query, args).fetchone()

    def _all(self, query: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            self._reconnect()
            return self._conn.execute(query, args).fetchall()

    def has_record(self, record_id: str) -> bool:
        return self._one("SELECT 1 FROM received WHERE record_id=?", (record_id,)) is not None

    def record_count(self, kind: str | None = None) -> int:
        if kind is None:
            return self._one("SELECT count(*) FROM received")[0]
        return self._one("SELECT count(*) FROM received WHERE kind=?", (kind,))[0]

    def surveys(self) -> list[SurveyInfo]:
        """Every survey seen in plants, row summaries or heartbeats, newest first."""
        rows = self._all(
            """
            WITH s AS (
                SELECT survey_id, robot_id, t FROM plants
                UNION ALL SELECT survey_id, robot_id, t FROM row_summaries
                UNION ALL SELECT survey_id, robot_id, t FROM heartbeats WHERE survey_id IS NOT NULL
            )
            SELECT s.survey_id, group_concat(DISTINCT s.robot_id), min(s.t), max(s.t),
                   (SELECT count(*) FROM plants p WHERE p.survey_id = s.survey_id),
                   (SELECT coalesce(sum(diseased), 0) FROM plants p WHERE p.survey_id = s.survey_id),
                   (SELECT coalesce(sum(uncertain), 0) FROM plants p WHERE p.survey_id = s.survey_id)
            FROM s GROUP BY s.survey_id ORDER BY max(s.t) DESC
            """
        )
        return [
            SurveyInfo(sid, tuple(sorted(robots.split(","))), int(n), int(dis), int(unc), t0, t1)
            for sid, robots, t0, t1, n, dis, unc in rows
        ]

    def plants(self, survey_id: str, robot_id: str | None = None) -> list[StoredPlant]:
        """Plants of a survey ordered by row, metre, time."""
        query = (
            f"SELECT {', '.join('p.' + c for c in PLANT_COLUMNS.split(', '))}, t.record_id IS NOT NULL "
            "FROM plants p LEFT JOIN thumbnails t ON t.record_id = p.record_id WHERE p.survey_id=?"
        )
        args: tuple = (survey_id,)
        if robot_id is not None:
            query += " AND p.robot_id=?"
            args += (robot_id,)
        rows = self._all(query + " ORDER BY p.row NULLS FIRST, p.metre NULLS FIRST, p.t", args)
        return [
            StoredPlant(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9]),
                        r[10], r[11], r[12], r[13], r[14], bool(r[17]), r[15], r[16])
            for r in rows
        ]

    def rows(self, survey_id: str) -> list[StoredRow]:
        """Latest row summary per robot and row of a survey."""
        with self._lock:
            self._reconnect()
            return read_rows(self._conn, survey_id)

    def robots(self) -> list[RobotInfo]:
        with self._lock:
            self._reconnect()
            return read_robots(self._conn)

    def track(self, survey_id: str, robot_id: str | None = None) -> list[TrackPoint]:
        """Heartbeat positions over time (the robot's path through the field)."""
        query = "SELECT robot_id, t, lat, lon, row, metre FROM heartbeats WHERE survey_id=?"
        args: tuple = (survey_id,)
        if robot_id is not None:
            query += " AND robot_id=?"
            args += (robot_id,)
        return [TrackPoint(*r) for r in self._all(query + " ORDER BY t", args)]

    def thumbnail(self, record_id: str) -> bytes | None:
        row = self._one("SELECT jpeg FROM thumbnails WHERE record_id=?", (record_id,))
        return bytes(row[0]) if row else None

    def rejected(self) -> dict[str, int]:
        """Rejected-input counters, reason -> count."""
        return dict(self._all("SELECT reason, count FROM rejected ORDER BY reason"))

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ("ok"); on PostgreSQL, which checks its own
        pages, "ok" when every table can be read to the end."""
        if not self.postgres:
            return self._one("PRAGMA integrity_check")[0]
        for table in ("robots", "received", "plants", "row_summaries", "heartbeats", "thumbnails", "rejected"):
            self._one(f"SELECT count(*) FROM {table}")
        return "ok"


# The dashboard runs these on its own read connections (no lock shared with the receivers).
def read_rows(conn: sql.Connection, survey_id: str) -> list[StoredRow]:
    """Latest row summary per robot and row of a survey."""
    return [RowSummary(*r) for r in conn.execute(
        "SELECT robot_id, survey_id, row, plants, diseased, uncertain, incidence, ci_lo, ci_hi, t "
        "FROM row_summaries WHERE survey_id=? ORDER BY row, robot_id", (survey_id,)).fetchall()]


def read_robots(conn: sql.Connection) -> list[RobotInfo]:
    """Every robot's latest status."""
    return [RobotInfo(*r) for r in conn.execute(
        "SELECT robot_id, last_seen, queue_depth, frames, fps, status, survey_id, link, link_status, dropped "
        "FROM robots ORDER BY robot_id").fetchall()]


class _Transaction:
    """``with db._tx() as c``: BEGIN IMMEDIATE (SQLite) or BEGIN and the writers' advisory
    lock (PostgreSQL) ... COMMIT, under the lock; ROLLBACK on error."""

    def __init__(self, db: StationDB):
        self.db = db

    def __enter__(self) -> sql.Connection:
        self.db._lock.acquire()
        try:
            self.db._reconnect()
            for statement in self.db._begin:
                self.db._conn.execute(statement)
        except BaseException:
            try:
                if self.db.postgres and not sql.is_broken(self.db._conn):  # BEGIN went through, not the rest
                    self.db._conn.execute("ROLLBACK")
            finally:
                self.db._lock.release()
            raise
        return self.db._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.db._conn.execute("COMMIT")
            elif not sql.is_broken(self.db._conn):  # a lost connection rolled back by itself
                self.db._conn.execute("ROLLBACK")
        finally:
            self.db._lock.release()


def _insert_one(c: sql.Connection, record_id: str, record: Record, thumbnail: bytes | None,
                link: str, now: float) -> bool:
    cur = c.execute("INSERT INTO received VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (record_id, record.robot_id, record.kind, link, now))
    if cur.rowcount == 0:
        return False
    _STORE[type(record)](c, record_id, record)
    if thumbnail is not None:
        c.execute("INSERT INTO thumbnails(record_id, jpeg) VALUES (?,?) ON CONFLICT(record_id) DO UPDATE "
                  "SET jpeg=excluded.jpeg", (record_id, thumbnail))
    return True


def _store_plant(c: sql.Connection, record_id: str, r: PlantRecord) -> None:
    c.execute(
        f"INSERT INTO plants({PLANT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (record_id, r.robot_id, r.survey_id, r.plant_id, r.t, r.label, r.class_index, r.confidence,
         int(r.diseased), int(r.uncertain), r.row, r.metre, r.lat, r.lon, r.frames, r.fix, r.fix_quality),
    )


def _store_row(c: sql.Connection, record_id: str, r: RowSummary) -> None:
    # Summaries may arrive out of order (two links): keep the one with the latest t.
    c.execute(
        "INSERT INTO row_summaries VALUES (?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(robot_id, survey_id, row) DO UPDATE SET record_id=excluded.record_id, "
        "plants=excluded.plants, diseased=excluded.diseased, uncertain=excluded.uncertain, "
        "incidence=excluded.incidence, ci_lo=excluded.ci_lo, ci_hi=excluded.ci_hi, t=excluded.t "
        "WHERE excluded.t >= row_summaries.t",
        (r.robot_id, r.survey_id, r.row, record_id, r.plants, r.diseased, r.uncertain, r.incidence,
         r.ci_lo, r.ci_hi, r.t),
    )


def _store_heartbeat(c: sql.Connection, record_id: str, r: Heartbeat) -> None:
    c.execute(
        f"INSERT INTO heartbeats({HEARTBEAT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (record_id, r.robot_id, r.survey_id, r.t, r.queue_depth, r.frames, r.fps, r.status,
         r.lat, r.lon, r.row, r.metre),
    )
    c.execute(
        "INSERT INTO robots(robot_id, queue_depth, frames, fps, status, survey_id, heartbeat_t, dropped) "
        "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(robot_id) DO UPDATE SET queue_depth=excluded.queue_depth, "
        "frames=excluded.frames, fps=excluded.fps, status=excluded.status, survey_id=excluded.survey_id, "
        "heartbeat_t=excluded.heartbeat_t, dropped=coalesce(excluded.dropped, robots.dropped) "
        "WHERE excluded.heartbeat_t >= coalesce(robots.heartbeat_t, 0)",
        (r.robot_id, r.queue_depth, r.frames, r.fps, r.status, r.survey_id, r.t, r.dropped),
    )


_STORE = {PlantRecord: _store_plant, RowSummary: _store_row, Heartbeat: _store_heartbeat}


def open_db(target: str | Path, *, read_target: str | Path | None = None) -> StationDB:
    """Open (creating the tables if needed) the station database: a SQLite file path or a
    ``postgresql://`` URL. ``read_target``: where :meth:`StationDB.reader` connects
    (a PostgreSQL replica for the dashboard; default: ``target``)."""
    return StationDB(target, read_target=read_target)
