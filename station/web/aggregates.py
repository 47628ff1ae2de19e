"""Running survey statistics, updated from the records stored since the last look.

A page must answer in well under 200 ms with 100,000 plants in the database, while
robots keep reporting. Re-aggregating every plant per request (even from covering
indexes) costs hundreds of milliseconds on a small station computer, so the dashboard
keeps, per survey, the counts per row, per class and per 10-second time slot plus a
thinned track per robot, and on each request reads only rows whose ``rowid`` is above the
last one it saw (the station only appends: records are never updated or deleted; on
PostgreSQL ``rowid`` is a column that grows in commit order, see :mod:`leafscout.station.sql`).
Each stored row is read once in the life of the process, never once per request.

The same class builds a report offline: a fresh instance reads everything once.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from leafscout.link.stats import wilson_interval
from leafscout.station.sql import Connection, stream

SLOT_S = 10.0  # time resolution kept for "incidence over time"
CELL_M = 10.0  # GPS grid for plants without a row number
ROW_CELL_M = 1.0  # cells along a crop row, for hotspots within the row
MAX_CELLS_PER_ROW = 60  # longer rows get longer cells (page size); zoomed in, the map shows each plant
# The time chart is built around the middle of the records (all but this share at each
# end); records further from it than its own span (clock errors, a backlog sent days
# later) get an "early" or "late" bucket of their own.
TIME_TAIL = 0.1
METRES_PER_DEGREE = 111_320.0
MAX_TIME_BUCKETS = 48
MAX_TRACK_POINTS = 2000
_FETCH = 5000
# The newest row of each table read by ``SurveyAggregates.refresh`` (in ``_last``'s order).
_NEWEST = ("SELECT (SELECT max(rowid) FROM plants), (SELECT max(rowid) FROM thumbnails), "
           "(SELECT max(rowid) FROM heartbeats)")


def _interval(k: int, n: int) -> tuple[float | None, float | None, float | None]:
    if n <= 0:
        return None, None, None
    lo, hi = wilson_interval(k, n)
    return k / n, lo, hi


class _Decided:
    """Plants with a label other than "uncertain": the denominator of incidence."""

    plants: int
    uncertain: int

    @property
    def decided(self) -> int:
        return self.plants - self.uncertain


@dataclass(frozen=True)
class RowStat(_Decided):
    row: int
    plants: int
    diseased: int
    uncertain: int
    metre_min: float | None
    metre_max: float | None
    incidence: float | None
    ci_lo: float | None
    ci_hi: float | None
    from_summary: bool = False  # counts from the robot's row summary, not plant records


@dataclass(frozen=True)
class RowCellStat(_Decided):
    """A stretch of one crop row, ``ROW_CELL_M`` long, from ``start_m`` along the row."""

    row: int
    start_m: float
    end_m: float
    plants: int
    diseased: int
    uncertain: int
    incidence: float | None
    ci_lo: float | None
    ci_hi: float | None


@dataclass(frozen=True)
class CellStat(_Decided):
    """One square of the GPS grid (``CELL_M`` on a side), for plants recorded without a row."""

    north: int  # cell index northwards from the equator
    east: int  # cell index eastwards, in the survey's local scale
    lat: float  # south-west corner
    lon: float
    lat_size: float
    lon_size: float
    plants: int
    diseased: int
    uncertain: int
    incidence: float | None
    ci_lo: float | None
    ci_hi: float | None

    @property
    def key(self) -> str:
        return f"{self.north}:{self.east}"


@dataclass(frozen=True)
class ClassStat:
    """One label: how many plants got it, and that share of all plants with its interval."""

    label: str
    plants: int
    diseased: bool
    share: float | None
    ci_lo: float | None
    ci_hi: float | None


@dataclass(frozen=True)
class TimeBucket(_Decided):
    t_start: float
    t_end: float
    plants: int
    diseased: int
    uncertain: int
    incidence: float | None
    ci_lo: float | None
    ci_hi: float | None
    cumulative: float | None  # incidence of everything up to the end of this bucket
    tail: str | None = None  # "early" / "late": the few records far outside the survey's main span


@dataclass(frozen=True)
class TrackPoint:
    t: float
    row: int | None
    metre: float | None
    lat: float | None
    lon: float | None


@dataclass(frozen=True)
class Totals(_Decided):
    plants: int
    diseased: int
    uncertain: int
    unassigned: int  # plants with no row
    t_first: float | None
    t_last: float | None
    incidence: float | None
    ci_lo: float | None
    ci_hi: float | None


@dataclass(frozen=True)
class SurveySummary:
    survey_id: str
    totals: Totals
    rows: list[RowStat]
    cells: list[CellStat]  # plants with a GPS position but no row
    row_cells: list[RowCellStat]  # stretches of each row (plants with a row and a metre)
    classes: list[ClassStat]
    timeline: list[TimeBucket]
    tracks: dict[str, list[TrackPoint]]  # robot id -> its path, oldest first
    flagged: int
    robot_ids: tuple[str, ...] = ()  # robots that recorded plants in this survey
    row_cell_m: float = ROW_CELL_M  # length of the ``row_cells``

    @property
    def span_text(self) -> str:
        from .views import span_text

        return span_text(self.totals.t_first, self.totals.t_last)


@dataclass
class _Counts:
    plants: int = 0
    diseased: int = 0
    uncertain: int = 0

    def add(self, diseased: int, uncertain: int) -> None:
        self.plants += 1
        self.diseased += diseased
        self.uncertain += uncertain


@dataclass
class _RowCounts(_Counts):
    metre_min: float | None = None
    metre_max: float | None = None


class ThinnedTrack:
    """Every ``stride``-th heartbeat; the stride doubles whenever the list gets too long."""

    def __init__(self, max_points: int):
        self.max_points, self.stride, self.seen = max_points, 1, 0
        self.points: list[TrackPoint] = []
        self.last: TrackPoint | None = None

    def add(self, p: TrackPoint) -> None:
        if self.seen % self.stride == 0:
            self.points.append(p)
            if len(self.points) > self.max_points:
                self.points = self.points[::2]
                self.stride *= 2
        self.seen += 1
        self.last = p

    def snapshot(self) -> list[TrackPoint]:
        if self.last is not None and (not self.points or self.points[-1] is not self.last):
            return [*self.points, self.last]  # always end where the robot is now
        return list(self.points)


@dataclass
class _Survey:
    total: _Counts = field(default_factory=_Counts)
    rows: dict[int, _RowCounts] = field(default_factory=dict)
    row_cells: dict[tuple[int, int], _Counts] = field(default_factory=dict)
    cells: dict[tuple[int, int], _Counts] = field(default_factory=dict)
    cos_lat: float | None = None  # longitude scale, fixed by the survey's first position
    labels: dict[str, _Counts] = field(default_factory=dict)
    slots: dict[int, _Counts] = field(default_factory=dict)
    unassigned: int = 0
    t_first: float = math.inf
    t_last: float = -math.inf
    flagged: int = 0
    tracks: dict[str, ThinnedTrack] = field(default_factory=dict)
    version: int = 0  # bumped by every record folded in
    built_version: int = -1
    summary: SurveySummary | None = None
    robots: set[str] = field(default_factory=set)
    # The summary completed by row summaries, for as long as neither changes (pages cache by identity).
    with_rows: tuple[tuple, SurveySummary] | None = None


class SurveyAggregates:
    """All surveys' running statistics for one station database; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._surveys: dict[str, _Survey] = {}
        self._last = {"plants": 0, "thumbnails": 0, "heartbeats": 0}
        self._read_plants = True  # False once ``folding`` has been given the plants
        self._all_totals: tuple[tuple, dict[str, Totals]] | None = None

    def _survey(self, survey_id: str) -> _Survey:
        s = self._surveys.get(survey_id)
        if s is None:
            s = self._surveys[survey_id] = _Survey()
        return s

    def refresh(self, conn: Connection) -> None:
        """Fold in every plant, thumbnail and heartbeat stored since the last call."""
        # One round trip (and no lock) when nothing is new: what most page views find, and
        # what keeps 50 viewers from queueing behind each other on a PostgreSQL station.
        newest = conn.execute(_NEWEST).fetchone()
        with self._lock:
            if self._read_plants and all((n or 0) <= self._last[table] for table, n in zip(self._last, newest)):
                return
            if self._read_plants:
                self._read(conn, "plants", "SELECT rowid, survey_id, row, label, diseased, uncertain, metre, t, lat, "
                                           "lon, robot_id FROM plants WHERE rowid > ? ORDER BY rowid LIMIT ?",
                           self._add_plant)
            self._read(conn, "thumbnails", "SELECT th.rowid, p.survey_id, p.diseased, p.uncertain FROM thumbnails th "
                                           "JOIN plants p ON p.record_id = th.record_id WHERE th.rowid > ? "
                                           "ORDER BY th.rowid LIMIT ?", self._add_thumbnail)
            self._read(conn, "heartbeats", "SELECT rowid, robot_id, survey_id, t, row, metre, lat, lon FROM heartbeats "
                                           "WHERE rowid > ? ORDER BY rowid LIMIT ?",
                       self._add_heartbeat)

    def knows(self, survey_id: str) -> bool:
        """Whether a plant or heartbeat of this survey has been folded in already."""
        with self._lock:
            return survey_id in self._surveys

    def folding(self, plants: Iterable[Mapping]) -> Iterator[Mapping]:
        """Yield ``plants`` (rows of :func:`leafscout.station.web.queries.iter_plants`, one survey's)
        after folding each in: an offline report reads the plants once for its exports
        and its statistics. Plants are then never read from the database."""
        self._read_plants = False
        for p in plants:
            self._add_plant((None, p["survey_id"], p["row"], p["label"], p["diseased"], p["uncertain"], p["metre"],
                             p["t"], p["lat"], p["lon"], p["robot_id"]))
            yield p

    def _read(self, conn: Connection, table: str, sql: str, add) -> None:
        # Batches of _FETCH rows in rowid order (bounded memory on either database); rows
        # are numbered in commit order, so none committed later can appear behind the last.
        while True:
            batch = conn.execute(sql, (self._last[table], _FETCH)).fetchall()
            for r in batch:
                add(r)
            if batch:
                self._last[table] = batch[-1][0]
            if len(batch) < _FETCH:
                return

    def _add_plant(self, r) -> None:
        _, survey_id, row, label, diseased, uncertain, metre, t, lat, lon, robot_id = r
        s = self._survey(survey_id)
        if robot_id not in s.robots:
            s.robots.add(robot_id)
        s.total.add(diseased, uncertain)
        if row is None:
            s.unassigned += 1
            if lat is not None and lon is not None:
                cc = s.cells.get(key := _cell(s, lat, lon)) or s.cells.setdefault(key, _Counts())
                cc.add(diseased, uncertain)
        else:
            rc = s.rows.get(row) or s.rows.setdefault(row, _RowCounts())
            rc.add(diseased, uncertain)
            if metre is not None:
                rc.metre_min = metre if rc.metre_min is None else min(rc.metre_min, metre)
                rc.metre_max = metre if rc.metre_max is None else max(rc.metre_max, metre)
                key = (row, math.floor(metre / ROW_CELL_M))
                (s.row_cells.get(key) or s.row_cells.setdefault(key, _Counts())).add(diseased, uncertain)
        lc = s.labels.get(label) or s.labels.setdefault(label, _Counts())
        lc.add(diseased, uncertain)
        slot = int(t // SLOT_S)
        sc = s.slots.get(slot) or s.slots.setdefault(slot, _Counts())
        sc.add(diseased, uncertain)
        s.t_first, s.t_last = min(s.t_first, t), max(s.t_last, t)
        s.version += 1

    def _add_thumbnail(self, r) -> None:
        _, survey_id, diseased, uncertain = r
        if diseased or uncertain:
            s = self._survey(survey_id)
            s.flagged += 1
            s.version += 1

    def _add_heartbeat(self, r) -> None:
        _, robot_id, survey_id, t, row, metre, lat, lon = r
        if survey_id is None:  # a robot between surveys: no track to draw
            return
        s = self._survey(survey_id)
        track = s.tracks.get(robot_id) or s.tracks.setdefault(robot_id, ThinnedTrack(MAX_TRACK_POINTS))
        track.add(TrackPoint(t, row, metre, lat, lon))
        s.version += 1

    def all_totals(self, conn: Connection) -> dict[str, Totals]:
        """Totals of every survey with plants or heartbeats, newest first."""
        self.refresh(conn)
        with self._lock:
            # The list changes only when records arrive: 20,000 surveys are not re-sorted per page view.
            stamp = (len(self._surveys), sum(s.version for s in self._surveys.values()))
            if self._all_totals is None or self._all_totals[0] != stamp:
                totals = {sid: _totals(s) for sid, s in self._surveys.items()}
                self._all_totals = stamp, dict(sorted(totals.items(), key=lambda kv: -(kv[1].t_last or 0)))
            return self._all_totals[1]

    def summary(self, conn: Connection, survey_id: str, row_summaries: list = ()) -> SurveySummary:
        """The survey's statistics including everything stored so far (empty if none yet),
        with rows completed from the robots' ``row_summaries`` (see :func:`with_row_summaries`)."""
        self.refresh(conn)
        with self._lock:
            s = self._surveys.get(survey_id) or _Survey()
            if s.built_version != s.version:
                s.summary, s.built_version = _build(survey_id, s), s.version
            if not row_summaries:
                return s.summary
            key = (s.version, tuple(row_summaries))
            if s.with_rows is None or s.with_rows[0] != key:
                s.with_rows = key, replace(s.summary, rows=with_row_summaries(s.summary.rows, row_summaries))
            return s.with_rows[1]


def _totals(s: _Survey) -> Totals:
    t = s.total
    return Totals(t.plants, t.diseased, t.uncertain, s.unassigned,
                  s.t_first if t.plants else None, s.t_last if t.plants else None,
                  *_interval(t.diseased, t.plants - t.uncertain))


def _build(survey_id: str, s: _Survey) -> SurveySummary:
    t, totals = s.total, _totals(s)
    rows = [_row_stat(row, c.plants, c.diseased, c.uncertain, c.metre_min, c.metre_max)
            for row, c in sorted(s.rows.items())]
    cells = [_cell_stat(s, key, c) for key, c in sorted(s.cells.items())]
    row_cell_m, row_cells = _row_cells(s)
    classes = sorted((ClassStat(label, c.plants, c.diseased > 0, *_interval(c.plants, t.plants))
                      for label, c in s.labels.items()), key=lambda c: (-c.plants, c.label))
    return SurveySummary(survey_id, totals, rows, cells, row_cells, classes, _timeline(s.slots),
                         {robot: track.snapshot() for robot, track in sorted(s.tracks.items())}, s.flagged,
                         tuple(sorted(s.robots)), row_cell_m)


def map_cell_length(m0: float, m1: float) -> float:
    """``ROW_CELL_M``, or a multiple of it so that a row from ``m0`` to ``m1`` metres has at
    most ``MAX_CELLS_PER_ROW`` cells."""
    return ROW_CELL_M * max(1, math.ceil((m1 - m0) / ROW_CELL_M / MAX_CELLS_PER_ROW))


def _row_cells(s: _Survey) -> tuple[float, list[RowCellStat]]:
    """The 1 m counts merged into cells of the map's length, with their intervals."""
    if not s.row_cells:
        return ROW_CELL_M, []
    m0 = min(c.metre_min for c in s.rows.values() if c.metre_min is not None)
    m1 = max(c.metre_max for c in s.rows.values() if c.metre_max is not None)
    cell_m = map_cell_length(m0, m1 + ROW_CELL_M)
    per = round(cell_m / ROW_CELL_M)
    merged: dict[tuple[int, int], list[int]] = {}
    for (row, i), c in s.row_cells.items():
        acc = merged.get(key := (row, i // per)) or merged.setdefault(key, [0, 0, 0])
        acc[0] += c.plants
        acc[1] += c.diseased
        acc[2] += c.uncertain
    return cell_m, [RowCellStat(row, j * cell_m, (j + 1) * cell_m, n, d, u, *_interval(d, n - u))
                    for (row, j), (n, d, u) in sorted(merged.items())]


def _cell(s: _Survey, lat: float, lon: float) -> tuple[int, int]:
    if s.cos_lat is None:
        s.cos_lat = max(0.01, math.cos(math.radians(lat)))
    return (math.floor(lat * METRES_PER_DEGREE / CELL_M),
            math.floor(lon * METRES_PER_DEGREE * s.cos_lat / CELL_M))


def _cell_stat(s: _Survey, key: tuple[int, int], c: _Counts) -> CellStat:
    lat_size = CELL_M / METRES_PER_DEGREE
    lon_size = CELL_M / (METRES_PER_DEGREE * s.cos_lat)
    return CellStat(key[0], key[1], key[0] * lat_size, key[1] * lon_size, lat_size, lon_size,
                    c.plants, c.diseased, c.uncertain, *_interval(c.diseased, c.plants - c.uncertain))


def _row_stat(row: int, plants: int, diseased: int, uncertain: int, metre_min: float | None = None,
              metre_max: float | None = None, from_summary: bool = False) -> RowStat:
    return RowStat(row, plants, diseased, uncertain, metre_min, metre_max,
                   *_interval(diseased, plants - uncertain), from_summary)


def with_row_summaries(rows: list[RowStat], summaries: list) -> list[RowStat]:
    """Rows counted from plant records, completed by the robots' own row summaries.

    Over a slow serial link only row summaries arrive, so plant records undercount such
    rows. Per row, the source that counted more plants wins; summaries of several
    robots for the same row add up. ``summaries`` are ``station.db.StoredRow`` items.
    """
    summed: dict[int, list[int]] = {}
    for s in summaries:
        acc = summed.setdefault(s.row, [0, 0, 0])
        acc[0], acc[1], acc[2] = acc[0] + s.plants, acc[1] + s.diseased, acc[2] + s.uncertain
    by_row = {r.row: r for r in rows}
    for row, (plants, diseased, uncertain) in summed.items():
        if row >= 0 and plants > (by_row[row].plants if row in by_row else 0):
            by_row[row] = _row_stat(row, plants, diseased, uncertain, from_summary=True)
    return [by_row[row] for row in sorted(by_row)]


def _timeline(slots: dict[int, _Counts], max_buckets: int = MAX_TIME_BUCKETS) -> list[TimeBucket]:
    """Slots merged into at most ``max_buckets`` equal buckets, with a running incidence.

    The buckets span the records around the middle ones (all but ``TIME_TAIL`` at each
    end), extended over every gap no longer than that middle span, so a few records
    stamped days away (a wrong clock, a robot that sends its backlog late) do not
    squeeze the survey into one bucket; they get an "early"/"late" bucket each.
    """
    if not slots:
        return []
    ordered = sorted(slots)
    total = sum(c.plants for c in slots.values())
    first, last = _quantile_slot(ordered, slots, total, TIME_TAIL), _quantile_slot(ordered, slots, total,
                                                                                   1 - TIME_TAIL)
    # Records close to the middle span join it: only far-off ones make a tail bucket.
    reach = max(2, last - first + 1)
    for slot in reversed([s for s in ordered if s < first]):
        if first - slot > reach:
            break
        first = slot
    for slot in [s for s in ordered if s > last]:
        if slot - last > reach:
            break
        last = slot
    per_bucket = max(1, math.ceil((last - first + 1) / max_buckets))
    merged: dict[int, _Counts] = {}
    early, late = _Counts(), _Counts()
    for slot in ordered:
        c = slots[slot]
        m = early if slot < first else late if slot > last else merged.setdefault((slot - first) // per_bucket,
                                                                                  _Counts())
        m.plants, m.diseased, m.uncertain = m.plants + c.plants, m.diseased + c.diseased, m.uncertain + c.uncertain
    width = per_bucket * SLOT_S
    spans = [((first + b * per_bucket) * SLOT_S, (first + b * per_bucket) * SLOT_S + width, merged[b], None)
             for b in sorted(merged)]
    if early.plants:
        spans.insert(0, (ordered[0] * SLOT_S, first * SLOT_S, early, "early"))
    if late.plants:
        spans.append(((last + 1) * SLOT_S, (ordered[-1] + 1) * SLOT_S, late, "late"))
    out, cum_k, cum_decided = [], 0, 0
    for start, end, c, tail in spans:
        cum_k, cum_decided = cum_k + c.diseased, cum_decided + c.plants - c.uncertain
        out.append(TimeBucket(start, end, c.plants, c.diseased, c.uncertain,
                              *_interval(c.diseased, c.plants - c.uncertain),
                              cum_k / cum_decided if cum_decided else None, tail))
    return out


def _quantile_slot(ordered: list[int], slots: dict[int, _Counts], total: int, q: float) -> int:
    """The first slot by which a share ``q`` of the plants have been seen."""
    need, seen = q * total, 0
    for slot in ordered:
        seen += slots[slot].plants
        if seen >= need and seen > 0:
            return slot
    return ordered[-1]


def filtered_summary(conn: Connection, survey_id: str, where: str, params: tuple,
                     tracks: dict[str, list[TrackPoint]] | None = None) -> SurveySummary:
    """Statistics of the survey's plants that match ``where`` (an SQL condition on
    ``plants``, from :class:`leafscout.station.web.queries.PlantFilter`), computed now in one pass."""
    s = _Survey()
    agg = SurveyAggregates()
    agg._surveys[survey_id] = s
    for r in stream(conn, "SELECT rowid, survey_id, row, label, diseased, uncertain, metre, t, lat, lon, robot_id "
                    f"FROM plants WHERE survey_id = ? AND {where}", (survey_id, *params)):
        agg._add_plant(r)
    s.flagged = conn.execute("SELECT count(*) FROM plants JOIN thumbnails USING (record_id) "
                             f"WHERE survey_id = ? AND (diseased = 1 OR uncertain = 1) AND {where}",
                             (survey_id, *params)).fetchone()[0]
    summary = _build(survey_id, s)
    return replace(summary, tracks=tracks or {})
