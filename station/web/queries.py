"""SQL the pages and exports run on the station database (see :mod:`station.db`).

Statistics come from :mod:`leafscout.station.web.aggregates`; what is here either stops after
one page of rows (the gallery, through an index) or streams (the exports). The same
statements run on SQLite and PostgreSQL (:mod:`leafscout.station.sql`).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime, timezone

from leafscout.station.sql import Connection, connect_readonly, stream

__all__ = ["INDEXES", "Connection", "connect_readonly", "survey_exists", "flagged", "iter_plants", "FilterError",
           "PlantFilter", "plants_in_view", "plants_in_area", "flagged_points"]

# The gallery lists a survey's flagged plants newest first: walk this index backwards
# and stop after one page, instead of sorting the survey.
# (``StationDB.ensure_indexes`` adds it to an existing database.)
INDEXES = ("CREATE INDEX IF NOT EXISTS web_plants_time ON plants(survey_id, t, diseased, uncertain)",)
# "No condition" in a form both databases take (PostgreSQL has no integer truth values).
ALL = "1=1"


def survey_exists(conn: Connection, survey_id: str) -> bool:
    """Whether any plant, row summary or heartbeat names this survey (three index lookups)."""
    return conn.execute(
        "SELECT EXISTS(SELECT 1 FROM plants WHERE survey_id = ?) OR EXISTS(SELECT 1 FROM row_summaries "
        "WHERE survey_id = ?) OR EXISTS(SELECT 1 FROM heartbeats WHERE survey_id = ?)",
        (survey_id, survey_id, survey_id),
    ).fetchone()[0] == 1


def flagged(conn: Connection, survey_id: str, *, limit: int = 60, offset: int = 0,
            where: str = ALL, params: tuple = ()) -> list:
    """Diseased and uncertain plants that came with a thumbnail, newest first (``where``:
    a :class:`PlantFilter` condition)."""
    return conn.execute(
        "SELECT p.record_id, p.plant_id, p.label, p.confidence, p.row, p.metre, p.lat, p.lon, p.t, p.uncertain "
        "FROM plants p JOIN thumbnails th ON th.record_id = p.record_id "
        f"WHERE p.survey_id = ? AND (p.diseased = 1 OR p.uncertain = 1) AND {where} ORDER BY p.t DESC LIMIT ? OFFSET ?",
        (survey_id, *params, limit, offset),
    ).fetchall()


def iter_plants(conn: Connection, survey_id: str) -> Iterator:
    """Every plant of a survey in survey order, streamed (exports, not pages)."""
    yield from stream(conn, 
        "SELECT record_id, robot_id, survey_id, plant_id, t, label, class_index, confidence, diseased, "
        "uncertain, row, metre, lat, lon, frames FROM plants WHERE survey_id = ? ORDER BY t, plant_id, record_id",
        (survey_id,),
    )


class FilterError(ValueError):
    """A filter value that cannot be used (names the parameter and the value)."""


@dataclass(frozen=True)
class PlantFilter:
    """What the field page, its plant points and the gallery show: plants recorded from
    ``date_from`` to ``date_to`` (UTC days, inclusive), by one robot, with one label, in rows
    ``row_min``..``row_max``, with confidence at least ``confidence_min``."""

    date_from: date | None = None
    date_to: date | None = None
    robot: str | None = None
    label: str | None = None
    row_min: int | None = None
    row_max: int | None = None
    confidence_min: float | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> "PlantFilter":
        """From URL query parameters of the same names; empty values mean no filter."""
        values = {}
        for f in fields(cls):
            text = (query.get(f.name) or "").strip()
            if not text:
                continue
            try:
                if f.name.startswith("date"):
                    values[f.name] = date.fromisoformat(text)
                elif f.name.startswith("row"):
                    values[f.name] = int(text)
                elif f.name == "confidence_min":
                    values[f.name] = float(text)
                    if not 0.0 <= values[f.name] <= 1.0:
                        raise ValueError("outside [0, 1]")
                else:
                    values[f.name] = text
            except ValueError as e:
                raise FilterError(f"bad filter {f.name}={text!r}: {e}") from e
        return cls(**values)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def query(self) -> dict[str, str]:
        """The filter as URL query parameters (for links that keep it)."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    def sql(self) -> tuple[str, tuple]:
        """An SQL condition on ``plants`` and its parameters (``ALL`` when nothing is filtered)."""
        terms, params = [], []

        def day_start(d: date) -> float:
            return datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()

        if self.date_from is not None:
            terms.append("t >= ?"), params.append(day_start(self.date_from))
        if self.date_to is not None:
            terms.append("t < ?"), params.append(day_start(self.date_to) + 86400.0)
        for column, value in (("robot_id", self.robot), ("label", self.label)):
            if value is not None:
                terms.append(f"{column} = ?"), params.append(value)
        if self.row_min is not None:
            terms.append("row >= ?"), params.append(self.row_min)
        if self.row_max is not None:
            terms.append("row <= ?"), params.append(self.row_max)
        if self.confidence_min is not None:
            terms.append("confidence >= ?"), params.append(self.confidence_min)
        return (" AND ".join(terms) or ALL), tuple(params)


def plants_in_view(conn: Connection, survey_id: str, *, row_min: int, row_max: int, metre_min: float,
                   metre_max: float, where: str = ALL, params: tuple = (), limit: int = 2000) -> list[dict]:
    """The plants of rows ``row_min``..``row_max`` between two metres (the map's view), at most
    ``limit`` (the survey index ``plants_survey`` covers the range)."""
    return _points(conn, f"p.row BETWEEN ? AND ? AND p.metre BETWEEN ? AND ? AND {where}",
                   (survey_id, row_min, row_max, metre_min, metre_max, *params), limit)


def plants_in_area(conn: Connection, survey_id: str, *, lat_min: float, lat_max: float, lon_min: float,
                   lon_max: float, where: str = ALL, params: tuple = (), limit: int = 2000) -> list[dict]:
    """The plants inside a latitude/longitude box (the GPS map's view), at most ``limit``."""
    return _points(conn, f"p.lat BETWEEN ? AND ? AND p.lon BETWEEN ? AND ? AND {where}",
                   (survey_id, lat_min, lat_max, lon_min, lon_max, *params), limit)


def flagged_points(conn: Connection, survey_id: str, *, limit: int = 5000) -> list[dict]:
    """Diseased and uncertain plants with a place in a row (the report's map points)."""
    return _points(conn, "(p.diseased = 1 OR p.uncertain = 1) AND p.row IS NOT NULL AND p.metre IS NOT NULL",
                   (survey_id,), limit)


def _points(conn: Connection, where: str, params: tuple, limit: int) -> list[dict]:
    rows = conn.execute(
        "SELECT p.record_id, p.plant_id, p.robot_id, p.t, p.label, p.confidence, p.diseased, p.uncertain, p.row, "
        "p.metre, p.lat, p.lon, EXISTS(SELECT 1 FROM thumbnails th WHERE th.record_id = p.record_id) AS thumbnail FROM plants p "
        f"WHERE p.survey_id = ? AND {where} LIMIT ?", (*params, limit),
    ).fetchall()
    return [{**dict(r), "thumbnail": bool(r["thumbnail"]), "diseased": bool(r["diseased"]),
             "uncertain": bool(r["uncertain"])} for r in rows]
