"""The robot's survey on disk: SQLite in WAL mode, so a restarted robot continues where it stopped.

Every counted plant is one row in ``plants``, committed as it is counted (WAL with
synchronous=NORMAL makes that cheap, and a power cut loses at most the last plant).
Reopening a survey restores its statistics and continues its plant ids.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from leafscout.link.records import PlantRecord

from .field_stats import FieldStats

__all__ = ["SurveyStore", "SurveyState", "SurveyStoreError"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS surveys (
    survey_id TEXT PRIMARY KEY,
    robot_id TEXT NOT NULL,
    created REAL NOT NULL,
    sessions INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS plants (
    survey_id TEXT NOT NULL REFERENCES surveys(survey_id),
    plant_id INTEGER NOT NULL,
    robot_id TEXT NOT NULL,
    t REAL NOT NULL,
    label TEXT NOT NULL,
    class_index INTEGER NOT NULL,
    confidence REAL NOT NULL,
    frames INTEGER NOT NULL,
    row INTEGER,
    metre REAL,
    lat REAL,
    lon REAL,
    health TEXT,
    fix TEXT,
    fix_quality INTEGER,
    PRIMARY KEY (survey_id, plant_id)
);
"""
_PLANT_COLUMNS = [f.name for f in fields(PlantRecord)]


class SurveyStoreError(RuntimeError):
    """A survey database that cannot be opened or written."""


@dataclass
class SurveyState:
    survey_id: str
    next_plant_id: int
    stats: FieldStats
    sessions: int
    resumed: bool


class SurveyStore:
    """``with SurveyStore("survey.db") as store: state = store.open_survey("field-7", "robot-1")``.

    ``path=None`` keeps the survey in memory (nothing survives the process).
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else Path(path)
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(":memory:" if self.path is None else str(self.path))
            if self.path is not None:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise SurveyStoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(plants)")}
            # a survey database from before health came from the taxonomy, or before GPS fix flags
            for name, kind in (("health", "TEXT"), ("fix", "TEXT"), ("fix_quality", "INTEGER")):
                if name not in columns:
                    with self._db:
                        self._db.execute(f"ALTER TABLE plants ADD COLUMN {name} {kind}")
        except sqlite3.Error as e:
            raise SurveyStoreError(f"cannot open survey database {self.path}: {e}") from e

    def open_survey(self, survey_id: str, robot_id: str) -> SurveyState:
        """Create the survey, or continue it: its counts and the next plant id come back."""
        if not survey_id or len(survey_id) > 128:
            raise SurveyStoreError(f"survey id must be 1-128 characters, got {survey_id!r}")
        with self._db:
            row = self._db.execute("SELECT sessions FROM surveys WHERE survey_id = ?", (survey_id,)).fetchone()
            if row is None:
                self._db.execute("INSERT INTO surveys VALUES (?, ?, ?, 1)", (survey_id, robot_id, time.time()))
                sessions = 1
            else:
                sessions = row[0] + 1
                self._db.execute("UPDATE surveys SET sessions = ? WHERE survey_id = ?", (sessions, survey_id))
        stats = FieldStats()
        for r, label, health, n in self._db.execute(
            "SELECT row, label, health, COUNT(*) FROM plants WHERE survey_id = ? GROUP BY row, label, health "
            "ORDER BY row, label, health",
            (survey_id,),
        ):
            stats.add_label(r, label, n, health)
        last = self._db.execute("SELECT MAX(plant_id) FROM plants WHERE survey_id = ?", (survey_id,)).fetchone()[0]
        if row is not None:
            log.info("continuing survey %s (session %d, %d plants so far)", survey_id, sessions, stats.total().plants)
        return SurveyState(survey_id, 0 if last is None else last + 1, stats, sessions, row is not None)

    def add_plant(self, record: PlantRecord) -> None:
        cols = ", ".join(_PLANT_COLUMNS)
        marks = ", ".join("?" for _ in _PLANT_COLUMNS)
        try:
            with self._db:
                self._db.execute(f"INSERT INTO plants ({cols}) VALUES ({marks})", astuple(record))
        except sqlite3.IntegrityError as e:
            raise SurveyStoreError(f"plant {record.plant_id} of survey {record.survey_id!r} is already stored") from e

    def plants(self, survey_id: str) -> list[PlantRecord]:
        cols = ", ".join(_PLANT_COLUMNS)
        cur = self._db.execute(f"SELECT {cols} FROM plants WHERE survey_id = ? ORDER BY plant_id", (survey_id,))
        return [PlantRecord(*r) for r in cur]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SurveyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
