"""SQL the pages and exports run on the station database (see :mod:`station.db`).

Statistics come from :mod:`station.web.aggregates`; what is here either stops after
one page of rows (the gallery, through an index) or streams (the exports).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

# The gallery lists a survey's flagged plants newest first: walk this index backwards
# and stop after one page, instead of sorting the survey.
_INDEXES = ("CREATE INDEX IF NOT EXISTS web_plants_time ON plants(survey_id, t, diseased, uncertain)",)


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A connection for pages and exports: cannot write, waits briefly for a busy writer."""
    # Autocommit: no implicit transaction can pin an old snapshot and hide new records.
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def ensure_indexes(conn: sqlite3.Connection) -> None:
    """Add the dashboard's indexes to an existing station database (idempotent)."""
    with conn:
        for sql in _INDEXES:
            conn.execute(sql)


def survey_exists(conn: sqlite3.Connection, survey_id: str) -> bool:
    """Whether any plant, row summary or heartbeat names this survey (three index lookups)."""
    return conn.execute(
        "SELECT EXISTS(SELECT 1 FROM plants WHERE survey_id = ?) OR EXISTS(SELECT 1 FROM row_summaries "
        "WHERE survey_id = ?) OR EXISTS(SELECT 1 FROM heartbeats WHERE survey_id = ?)",
        (survey_id, survey_id, survey_id),
    ).fetchone()[0] == 1


def flagged(conn: sqlite3.Connection, survey_id: str, *, limit: int = 60, offset: int = 0) -> list[sqlite3.Row]:
    """Diseased and uncertain plants that came with a thumbnail, newest first."""
    return conn.execute(
        "SELECT p.record_id, p.plant_id, p.label, p.confidence, p.row, p.metre, p.t, p.uncertain "
        "FROM plants p JOIN thumbnails th ON th.record_id = p.record_id "
        "WHERE p.survey_id = ? AND (p.diseased OR p.uncertain) ORDER BY p.t DESC LIMIT ? OFFSET ?",
        (survey_id, limit, offset),
    ).fetchall()


def iter_plants(conn: sqlite3.Connection, survey_id: str) -> Iterator[sqlite3.Row]:
    """Every plant of a survey in survey order, streamed (exports, not pages)."""
    yield from conn.execute(
        "SELECT record_id, robot_id, survey_id, plant_id, t, label, class_index, confidence, diseased, "
        "uncertain, row, metre, lat, lon, frames FROM plants WHERE survey_id = ? ORDER BY t, plant_id",
        (survey_id,),
    )
