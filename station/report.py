"""Survey exports: one self-contained HTML report, a CSV of plant records, farmOS-shaped GeoJSON.

Everything streams: ``leafscout report`` on a 100,000-plant survey takes seconds and
bounded memory (``benchmarks/dashboard_bench.py``).

The same functions serve the dashboard's download links (streamed) and the offline
``leafscout report`` command (written to a folder).

GeoJSON follows RFC 7946 (WGS 84, ``[lon, lat]``): one Point feature per plant whose
properties are shaped like a farmOS observation log (``log_type``, ``name``,
``timestamp`` in ISO 8601, ``status``, ``flag``, ``notes``) plus the survey fields
(``crop``, ``disease``, ``label``, ``confidence``, ``plant_id``, ``row``, ``metre``).
Plants recorded without a GPS position cannot be placed in WGS 84, so they are left out
of the GeoJSON and counted in the collection's ``leafscout.skipped_without_position``
member; they are still in the CSV (with their row and metre) and in every statistic.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import functools
import io
import json
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from leafscout.link.records import UNCERTAIN
from leafscout.station.sql import Connection

log = logging.getLogger(__name__)

CSV_COLUMNS = ("record_id", "robot_id", "survey_id", "plant_id", "timestamp", "t", "label", "class_index",
               "confidence", "diseased", "uncertain", "row", "metre", "lat", "lon", "frames")
GALLERY_IN_REPORT = 24


class ReportError(Exception):
    """A report cannot be made (unknown survey, unreadable database, invalid export)."""


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    csv: Path
    geojson: Path
    plants: int
    features: int
    skipped_without_position: int
    problems: tuple[str, ...] = ()  # what the check of the observations found (empty: valid)


def iso_time(t: float) -> str:
    """Unix seconds as ISO 8601 UTC with a 'Z' (what farmOS and most GIS tools parse)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@functools.lru_cache(maxsize=4096)
def crop_and_disease(label: str) -> tuple[str | None, str | None]:
    """PlantVillage-style 'Crop___Disease' to ('Crop', 'Disease'); healthy -> disease None."""
    if label == UNCERTAIN:
        return None, None
    crop, sep, disease = label.partition("___")
    if not sep:
        return None, label.replace("_", " ")
    crop = crop.replace("_", " ").replace(",", "").strip()
    disease = disease.replace("_", " ").strip()
    return crop, None if "healthy" in disease.lower() else disease


# -- CSV -----------------------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet will not run: one starting like a formula (``=``, ``+``,
    ``-``, ``@``, tab, CR) gets a leading ``'`` (OWASP's advice). Numbers are written as
    numbers and left alone, so negative coordinates stay numeric."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def csv_lines(conn: Connection, survey_id: str) -> Iterator[str]:
    """The survey's plant records as CSV text, one line at a time (streams 100k rows)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")

    def flush() -> str:
        text = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield flush()
    from leafscout.station.web.queries import iter_plants

    for p in iter_plants(conn, survey_id):
        writer.writerow(csv_row(p))
        if buf.tell() > 64 * 1024:
            yield flush()
    yield flush()


def csv_row(p: Mapping) -> tuple:
    """One plant (a row of ``iter_plants``) as the values of ``CSV_COLUMNS``."""
    return (csv_text(p["record_id"]), csv_text(p["robot_id"]), csv_text(p["survey_id"]), p["plant_id"],
            iso_time(p["t"]), p["t"], csv_text(p["label"]), p["class_index"], p["confidence"], p["diseased"],
            p["uncertain"], p["row"], p["metre"], p["lat"], p["lon"], p["frames"])


# -- GeoJSON -------------------------------------------------------------------------
def observation_feature(p: Mapping) -> dict[str, Any]:
    """One plant as a GeoJSON Point feature with farmOS observation-log properties."""
    crop, disease = crop_and_disease(p["label"])
    where = f"row {p['row']}, {p['metre']:.1f} m" if p["row"] is not None and p["metre"] is not None else "no row"
    outcome = "uncertain" if p["uncertain"] else ("diseased" if p["diseased"] else "healthy")
    flags = ["review"] if p["uncertain"] else (["monitor"] if p["diseased"] else [])
    return {
        "type": "Feature",
        "id": p["record_id"],
        "geometry": {"type": "Point", "coordinates": [round(p["lon"], 8), round(p["lat"], 8)]},
        "properties": {
            "log_type": "observation",
            "name": f"Plant {p['plant_id']}: {p['label']} ({outcome})",
            "timestamp": iso_time(p["t"]),
            "status": "done",
            "flag": flags,
            "notes": f"leafscout survey {p['survey_id']}, robot {p['robot_id']}, {where}; seen in {p['frames']} frames",
            "crop": crop,
            "disease": disease,
            "label": p["label"],
            "outcome": outcome,
            "confidence": round(float(p["confidence"]), 4),
            "plant_id": p["plant_id"],
            "row": p["row"],
            "metre": p["metre"],
            "survey_id": p["survey_id"],
            "robot_id": p["robot_id"],
        },
    }


def _has_position(p: Mapping) -> bool:
    return p["lat"] is not None and p["lon"] is not None and math.isfinite(p["lat"]) and math.isfinite(p["lon"])


GEOJSON_HEAD = '{"type": "FeatureCollection", "features": ['


def geojson_feature_text(feature: dict[str, Any], first: bool) -> str:
    return ("\n" if first else ",\n") + json.dumps(feature, separators=(",", ":"))


def geojson_tail(survey_id: str, features: int, skipped: int) -> str:
    """The end of the collection, with the ``leafscout`` member counting what was left out."""
    meta = {"survey_id": survey_id, "features": features, "skipped_without_position": skipped,
            "crs": "WGS 84 (RFC 7946)"}
    return f'\n], "leafscout": {json.dumps(meta)}}}\n'


def geojson_chunks(conn: Connection, survey_id: str) -> Iterator[str]:
    """The survey as a GeoJSON FeatureCollection, streamed as text chunks."""
    from leafscout.station.web.queries import iter_plants

    yield GEOJSON_HEAD
    n = skipped = 0
    parts: list[str] = []
    for p in iter_plants(conn, survey_id):
        if not _has_position(p):
            skipped += 1
            continue
        parts.append(geojson_feature_text(observation_feature(p), n == 0))
        n += 1
        if len(parts) >= 500:
            yield "".join(parts)
            parts.clear()
    yield "".join(parts) + geojson_tail(survey_id, n, skipped)


# The properties a farmOS import needs on every observation; checked by validate_observations.
OBSERVATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["log_type", "name", "timestamp", "status", "crop", "disease", "confidence", "plant_id"],
    "properties": {
        "log_type": {"const": "observation"},
        "name": {"type": "string", "minLength": 1},
        "timestamp": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"},
        "status": {"enum": ["done", "pending"]},
        "flag": {"type": "array", "items": {"enum": ["monitor", "review", "priority"]}},
        "crop": {"type": ["string", "null"]},
        "disease": {"type": ["string", "null"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "plant_id": {"type": "integer"},
        "row": {"type": ["integer", "null"]},
    },
}


def validate_observations(text: str) -> list[str]:
    """Problems with an observations file: GeoJSON validity (the ``geojson`` library) and
    farmOS-shaped properties (JSON Schema). An empty list means valid."""
    import geojson
    import jsonschema

    try:
        doc = geojson.loads(text)
    except ValueError as e:
        return [f"not JSON: {e}"]
    if not isinstance(doc, geojson.FeatureCollection):
        return [f"expected a FeatureCollection, got {type(doc).__name__}"]
    problems = [f"GeoJSON: {e}" for e in _as_list(doc.errors())]
    validator = jsonschema.Draft202012Validator(OBSERVATION_SCHEMA)
    for i, feature in enumerate(doc["features"]):
        problems += _geometry_problems(i, feature.get("geometry"))
        problems += [f"feature {i}: {e.message}" for e in validator.iter_errors(feature.get("properties") or {})]
        if len(problems) > 20:
            break
    return problems


def _geometry_problems(i: int, geometry: Any) -> list[str]:
    geometry = geometry or {}
    if geometry.get("type") != "Point":
        return [f"feature {i}: geometry must be a Point, got {geometry.get('type')!r}"]
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, list) or len(coordinates) not in (2, 3):
        return [f"feature {i}: a Point needs exactly 2 or 3 values, got {coordinates!r}"]
    lon, lat = coordinates[:2]
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        return [f"feature {i}: [lon, lat] = [{lon}, {lat}] is outside WGS 84"]
    return []


class ObservationChecker:
    """Checks observations while they are written, in bounded time and memory.

    Every feature: its geometry (a Point inside WGS 84), timestamp, status and
    confidence. The whole :data:`OBSERVATION_SCHEMA` (jsonschema, ~50 us a feature):
    on the first feature of each label and every ``sample_every``-th, so 100,000
    plants are checked in well under a second instead of ten.
    """

    def __init__(self, sample_every: int = 1000, max_problems: int = 20):
        import jsonschema

        self.validator = jsonschema.Draft202012Validator(OBSERVATION_SCHEMA)
        self.sample_every, self.max_problems = sample_every, max_problems
        self.timestamp = re.compile(OBSERVATION_SCHEMA["properties"]["timestamp"]["pattern"])
        self.labels: set = set()
        self.checked = 0
        self.problems: list[str] = []

    def check(self, feature: dict[str, Any]) -> None:
        i = self.checked
        self.checked += 1
        if len(self.problems) >= self.max_problems:
            return
        props = feature.get("properties") or {}
        problems = _geometry_problems(i, feature.get("geometry"))
        if props.get("label") not in self.labels or i % self.sample_every == 0:
            self.labels.add(props.get("label"))
            problems += [f"feature {i}: {e.message}" for e in self.validator.iter_errors(props)]
        elif not (isinstance(props.get("timestamp"), str) and self.timestamp.match(props["timestamp"])
                  and props.get("status") in ("done", "pending") and 0 <= props.get("confidence", -1) <= 1):
            problems.append(f"feature {i}: timestamp, status or confidence is not what farmOS takes: "
                            f"{props.get('timestamp')!r}, {props.get('status')!r}, {props.get('confidence')!r}")
        self.problems += problems


def _as_list(errors: Any) -> list:
    if not errors:
        return []
    return list(errors) if isinstance(errors, list) else [errors]


# -- HTML report ---------------------------------------------------------------------
MAP_POINTS_IN_REPORT = 5000  # diseased and uncertain plants drawn on the report's map


def render_report(conn: Connection, robots: list, survey_id: str, thumbnail=None, *,
                  row_summaries: list = (), summary=None, basemap=None) -> str:
    """The survey as one HTML document with inline CSS, the field map (with its pan and
    zoom script and the flagged plants as points), the time chart and thumbnails.

    ``robots`` are ``station.db.RobotInfo`` items, ``row_summaries`` the survey's
    ``StationDB.rows``; ``thumbnail(record_id)`` returns JPEG bytes
    (``StationDB.thumbnail``), or is None to leave the gallery out. ``summary`` may be
    passed by a caller that keeps running aggregates (the dashboard); otherwise the
    survey is aggregated once here. ``basemap`` (a ``leafscout.station.web.svg.Basemap`` with a
    data: URL) is drawn under a GPS map.
    """
    from leafscout import __version__
    from leafscout.station.web import queries, rendering, svg, views
    from leafscout.station.web.aggregates import SurveyAggregates

    if summary is None:
        summary = SurveyAggregates().summary(conn, survey_id, row_summaries)
    gallery = []
    if thumbnail is not None:
        for p in queries.flagged(conn, survey_id, limit=GALLERY_IN_REPORT):
            jpeg = thumbnail(p["record_id"])
            if jpeg:
                gallery.append({**dict(p), "jpeg_b64": base64.b64encode(jpeg).decode("ascii")})
    points = queries.flagged_points(conn, survey_id, limit=MAP_POINTS_IN_REPORT)
    in_survey = {r.robot_id for r in robots if r.survey_id == survey_id} | _survey_robots(conn, survey_id)
    return rendering.environment().get_template("report.html").render(
        survey_id=survey_id,
        s=summary,
        version=__version__,
        generated=views.utc_text(datetime.now(timezone.utc).timestamp()) + " UTC",
        css=rendering.stylesheet(),
        map_js=rendering.map_script(),
        field_map_svg=svg.survey_map(summary, points, basemap),
        map_points=len(points),
        timeline_svg=svg.incidence_over_time(summary.timeline),
        robots=views.robot_views([r for r in robots if r.robot_id in in_survey]),
        now=None,
        gallery=gallery,
    )


def _survey_robots(conn: Connection, survey_id: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT robot_id FROM plants WHERE survey_id = ?", (survey_id,))}


def write_report(db: Any, survey_id: str, out_dir: str | Path, *, basemap=None) -> ReportPaths:
    """Write ``report.html``, ``plants.csv`` and ``observations.geojson`` for one survey,
    streaming: memory stays bounded however many plants the survey has, and the
    observations are checked while they are written (``ReportPaths.problems``).

    ``db`` is a ``station.db.StationDB``, the path of a SQLite station database or a
    ``postgresql://`` URL (a primary or a replica); ``basemap`` a
    ``leafscout.station.web.app.BasemapFile`` to draw under a GPS map.
    """
    from leafscout.station.db import StationDBError, open_db
    from leafscout.station.sql import is_postgres
    from leafscout.station.web import queries
    from leafscout.station.web.aggregates import SurveyAggregates
    from leafscout.station.web.svg import Basemap

    with contextlib.ExitStack() as stack:
        if isinstance(db, (str, Path)):
            if not is_postgres(db) and not Path(db).is_file():
                raise ReportError(f"no station database at {str(db)!r}")
            try:
                db = stack.enter_context(open_db(db))
            except StationDBError as e:
                raise ReportError(str(e)) from e
        conn = stack.enter_context(contextlib.closing(db.reader()))
        if not queries.survey_exists(conn, survey_id):
            known = [s.survey_id for s in db.surveys()]
            raise ReportError(f"survey {survey_id!r} is not in {db.name}; known surveys: {known or 'none'}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = out / "report.html", out / "plants.csv", out / "observations.geojson"
        # One pass over the plants writes both exports and folds the statistics for the page.
        aggregates, checker = SurveyAggregates(), ObservationChecker()
        features = skipped = 0
        with paths[1].open("w", encoding="utf-8", newline="") as csv_file, \
                paths[2].open("w", encoding="utf-8") as geo_file:
            writer = csv.writer(csv_file, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            geo_file.write(GEOJSON_HEAD)
            for p in aggregates.folding(queries.iter_plants(conn, survey_id)):
                writer.writerow(csv_row(p))
                if not _has_position(p):
                    skipped += 1
                    continue
                feature = observation_feature(p)
                checker.check(feature)
                geo_file.write(geojson_feature_text(feature, features == 0))
                features += 1
            geo_file.write(geojson_tail(survey_id, features, skipped))
        summary = aggregates.summary(conn, survey_id, db.rows(survey_id))
        inline = Basemap(basemap.data_url(), basemap.bounds) if basemap is not None else None
        html = render_report(conn, db.robots(), survey_id, db.thumbnail, summary=summary, basemap=inline)
        paths[0].write_text(html, encoding="utf-8")
    log.info("survey %s: %d plants, %d observations (%d without position) -> %s",
             survey_id, features + skipped, features, skipped, out)
    return ReportPaths(*paths, features + skipped, features, skipped, tuple(checker.problems))
