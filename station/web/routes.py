"""The dashboard's pages, downloads and the one write endpoint.

Pages take their statistics from the running aggregates (:mod:`leafscout.station.web.aggregates`)
and their lists from index-backed queries, so they stay fast with 100,000 plants.

Survey and record ids travel through the ``anyid`` convertor (:class:`IdConvertor`), so
an id holding ``/``, ``?``, ``#``, ``%`` or only dots (stored before ids were validated
at ingestion) still has working pages, links and exports. The field page's route is
declared last: it would otherwise swallow ``<id>/gallery`` and the exports.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from leafscout.link.records import PlantRecord, RecordError, parse_record_id, record_from_dict
from leafscout.station.db import StationDB, read_robots
from leafscout.station.report import csv_lines, geojson_chunks, render_report
from leafscout.station.sql import Connection

from . import queries, svg, views
from .access import Forbidden, asset_viewer, principal, station_state, writer
from .aggregates import filtered_summary
from .auth import Principal
from .pages import link, render

MAX_WRITE_BODY = 256 * 1024
MAX_THUMBNAIL = 64 * 1024
GALLERY_PAGE = 48
SURVEYS_PAGE = 50
MAP_POINTS = 3000  # plants one map view may load



class IdConvertor(Convertor):
    """Any id as a path segment: percent-encoded, with ``~`` put in front of an id that
    starts with ``~`` or is only dots (clients resolve ``.`` and ``..`` away, even encoded)."""

    regex = ".+"

    def convert(self, value: str) -> str:
        return value[1:] if value.startswith("~") else value

    def to_string(self, value: str) -> str:
        text = str(value)
        if text.startswith("~") or not text.strip("."):
            text = "~" + text
        return quote(text, safe="")


register_url_convertor("anyid", IdConvertor())
router = APIRouter()


class NotFound(Exception):
    """An unknown survey or thumbnail."""


class BadFilter(Exception):
    """A filter parameter that cannot be used (422)."""


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"request body larger than {limit} bytes")


def _known_survey(request: Request, survey_id: str) -> Connection:
    state = station_state(request)
    conn = state.readers.get()
    # Records are never deleted: a survey the aggregates have seen needs no query.
    if not state.aggregates.knows(survey_id) and not queries.survey_exists(conn, survey_id):
        raise NotFound(f"unknown survey {survey_id!r}")
    return conn


@dataclass(frozen=True)
class _SurveyRow:
    survey_id: str
    plants: int
    diseased: int
    incidence: float | None
    last_text: str


# -- pages ---------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse, name="index")
def index(request: Request, page: int = Query(0, ge=0, le=1_000_000), q: str = Query("", max_length=200),
          who: Principal = Depends(principal)) -> Response:
    state = station_state(request)
    conn = state.readers.get()
    totals = state.aggregates.all_totals(conn)
    ids = [sid for sid in totals if q.lower() in sid.lower()] if q else list(totals)
    shown = ids[page * SURVEYS_PAGE:(page + 1) * SURVEYS_PAGE]
    surveys = [_SurveyRow(sid, t.plants, t.diseased, t.incidence, views.utc_text(t.t_last) + " UTC" if t.t_last else "")
               for sid in shown for t in (totals[sid],)]
    return render(request, "index.html", principal=who, surveys=surveys, page=page, q=q, matching=len(ids),
                  pages=max(1, -(-len(ids) // SURVEYS_PAGE)), robots=views.robot_views(read_robots(conn)),
                  now=time.time(), insecure=state.db.flags().get("insecure", False), rejected=state.db.rejected(),
                  drops={r: n for r, n in state.db.robot_drops().items() if n})


def _plant_filter(request: Request) -> queries.PlantFilter:
    try:
        return queries.PlantFilter.from_query(request.query_params)
    except queries.FilterError as e:
        raise BadFilter(str(e)) from e


@router.get("/surveys/{survey_id:anyid}/gallery", response_class=HTMLResponse, name="gallery_page")
def gallery_page(request: Request, survey_id: str, page: int = Query(0, ge=0, le=100_000),
                 who: Principal = Depends(principal)) -> Response:
    conn = _known_survey(request, survey_id)
    where, params = _plant_filter(request).sql()
    items = queries.flagged(conn, survey_id, limit=GALLERY_PAGE + 1, offset=page * GALLERY_PAGE, where=where,
                            params=params)
    keep = {k: v for k, v in request.query_params.items() if k != "page"}
    return render(request, "gallery.html", principal=who, survey_id=survey_id, items=items[:GALLERY_PAGE],
                  page=page, more=len(items) > GALLERY_PAGE, keep=urlencode(keep))


@router.get("/thumbnails/{record_id:anyid}", name="thumbnail")
def thumbnail(request: Request, record_id: str, who: Principal = Depends(asset_viewer)) -> Response:
    jpeg = station_state(request).db.thumbnail(record_id)
    if jpeg is None:
        raise NotFound(f"no thumbnail for record {record_id!r}")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/basemap", name="basemap")
def basemap(request: Request, who: Principal = Depends(asset_viewer)) -> Response:
    chosen = station_state(request).basemap
    if chosen is None:
        raise NotFound("this station has no basemap (leafscout station --basemap IMAGE --basemap-bounds W,S,E,N)")
    return FileResponse(chosen.path, media_type=chosen.media_type, headers={"Cache-Control": "private, max-age=3600"})


def _basemap(request: Request, inline: bool = False) -> svg.Basemap | None:
    chosen = station_state(request).basemap
    if chosen is None:
        return None
    return svg.Basemap(chosen.data_url() if inline else link(request, "basemap"), chosen.bounds)


# -- exports -------------------------------------------------------------------------
def _attachment(survey_id: str, suffix: str) -> dict[str, str]:
    return {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(survey_id + suffix)}"}


def _streamed(db: StationDB, chunks, survey_id: str):
    """Run an export generator on its own connection (the response outlives the request thread)."""
    conn = db.reader()
    try:
        yield from chunks(conn, survey_id)
    finally:
        conn.close()


@router.get("/surveys/{survey_id:anyid}/plants.csv", name="plants_csv")
def plants_csv(request: Request, survey_id: str, who: Principal = Depends(principal)) -> Response:
    _known_survey(request, survey_id)
    return StreamingResponse(_streamed(station_state(request).db, csv_lines, survey_id),
                             media_type="text/csv; charset=utf-8", headers=_attachment(survey_id, "_plants.csv"))


@router.get("/surveys/{survey_id:anyid}/observations.geojson", name="observations_geojson")
def observations_geojson(request: Request, survey_id: str, who: Principal = Depends(principal)) -> Response:
    _known_survey(request, survey_id)
    return StreamingResponse(_streamed(station_state(request).db, geojson_chunks, survey_id),
                             media_type="application/geo+json",
                             headers=_attachment(survey_id, "_observations.geojson"))


@router.get("/surveys/{survey_id:anyid}/farmos.json", name="farmos_json")
def farmos_json(request: Request, survey_id: str, who: Principal = Depends(principal)) -> Response:
    """The survey as farmOS JSON:API records (what ``leafscout farmos export`` writes)."""
    from leafscout.station.farmos import farmos_document

    doc = farmos_document(_known_survey(request, survey_id), survey_id)
    return JSONResponse(doc, media_type="application/vnd.api+json", headers=_attachment(survey_id, "_farmos.json"))


@router.get("/surveys/{survey_id:anyid}/report.html", name="report_html")
def report_html(request: Request, survey_id: str, who: Principal = Depends(principal)) -> Response:
    state = station_state(request)
    conn = _known_survey(request, survey_id)
    html = render_report(conn, read_robots(conn), survey_id, state.db.thumbnail, summary=state.summary(conn, survey_id),
                         basemap=_basemap(request, inline=True))
    return HTMLResponse(html, headers=_attachment(survey_id, "_report.html"))


@router.get("/api/surveys/{survey_id:anyid}/summary", name="summary_json")
def summary_json(request: Request, survey_id: str, who: Principal = Depends(principal)) -> Response:
    state = station_state(request)
    body = state.rendering(state.summary(_known_survey(request, survey_id), survey_id), "json", _summary_json)
    return Response(body, media_type="application/json")


def _summary_json(summary) -> bytes:
    return json.dumps(asdict(summary), separators=(",", ":")).encode()


@router.get("/api/surveys/{survey_id:anyid}/plants", name="plants_json")
def plants_json(request: Request, survey_id: str, row_min: int | None = Query(None, ge=0),
                row_max: int | None = Query(None, ge=0), metre_min: float | None = None,
                metre_max: float | None = None, lat_min: float | None = None, lat_max: float | None = None,
                lon_min: float | None = None, lon_max: float | None = None,
                limit: int = Query(MAP_POINTS, ge=1, le=MAP_POINTS), who: Principal = Depends(principal)) -> dict:
    """The plants in a stretch of rows (``row_*``, ``metre_*``) or a GPS box (``lat_*``, ``lon_*``):
    what ``map.js`` draws when zoomed in, filtered like the page."""
    conn = _known_survey(request, survey_id)
    where, params = _plant_filter(request).sql()
    rows_box, gps_box = (row_min, row_max, metre_min, metre_max), (lat_min, lat_max, lon_min, lon_max)
    if None not in rows_box:
        plants = queries.plants_in_view(conn, survey_id, row_min=row_min, row_max=row_max, metre_min=metre_min,
                                        metre_max=metre_max, where=where, params=params, limit=limit + 1)
    elif None not in gps_box:
        plants = queries.plants_in_area(conn, survey_id, lat_min=lat_min, lat_max=lat_max, lon_min=lon_min,
                                        lon_max=lon_max, where=where, params=params, limit=limit + 1)
    else:
        raise BadFilter("give row_min, row_max, metre_min and metre_max, or lat_min, lat_max, lon_min and lon_max")
    for p in plants:
        p["thumbnail_url"] = link(request, "thumbnail", record_id=p["record_id"]) if p["thumbnail"] else None
    return {"plants": plants[:limit], "truncated": len(plants) > limit}


@router.get("/api/robots", name="robots_json")
def robots_json(request: Request, survey: str | None = None, who: Principal = Depends(principal)) -> dict:
    """Robot status rows (what the pages' robot tables show), for ``map.js`` to refresh them."""
    robots = read_robots(station_state(request).readers.get())
    if survey is not None:
        robots = [r for r in robots if r.survey_id == survey] or robots
    return {"robots": [asdict(r) for r in views.robot_views(robots)], "now": time.time()}


@router.get("/surveys/{survey_id:anyid}", response_class=HTMLResponse, name="field_page")
def field_page(request: Request, survey_id: str, who: Principal = Depends(principal)) -> Response:
    state = station_state(request)
    conn = _known_survey(request, survey_id)
    chosen = _plant_filter(request)
    summary = everything = state.summary(conn, survey_id)
    if chosen:
        where, params = chosen.sql()
        tracks = {k: v for k, v in summary.tracks.items() if chosen.robot in (None, k)}
        summary = filtered_summary(conn, survey_id, where, params, tracks)
        field_map_svg = svg.survey_map(summary, basemap=_basemap(request))
        timeline_svg = svg.incidence_over_time(summary.timeline)
    else:
        field_map_svg = state.rendering(summary, "map", lambda s: svg.survey_map(s, basemap=_basemap(request)))
        timeline_svg = state.rendering(summary, "timeline", lambda s: svg.incidence_over_time(s.timeline))
    robots = read_robots(conn)
    robots = [r for r in robots if r.survey_id == survey_id] or robots
    return render(request, "field.html", principal=who, survey_id=survey_id, s=summary, filters=chosen,
                  filter_query=urlencode(chosen.query()), robot_ids=everything.robot_ids,
                  labels=sorted(c.label for c in everything.classes), field_map_svg=field_map_svg,
                  timeline_svg=timeline_svg, robots=views.robot_views(robots), now=time.time())


# -- writing (robots and admins only) -----------------------------------------------
@router.post("/api/records", status_code=201, name="post_record")
async def post_record(request: Request, who: Principal = Depends(writer)) -> Response:
    """Store one record: ``{"record_id": "<robot_id>:<seq>", "record": {...}, "thumbnail_jpeg_b64": str?}``."""
    body = await _read_capped(request, MAX_WRITE_BODY)
    try:
        msg = json.loads(body)
        if not isinstance(msg, dict) or not isinstance(msg.get("record_id"), str):
            raise RecordError('expected {"record_id": "<robot_id>:<seq>", "record": {...}}')
        record = record_from_dict(msg.get("record"))
        # The one documented id shape, with the record's own robot (ids are the duplicate filter).
        parse_record_id(msg["record_id"], record.robot_id)
        thumb = _thumbnail(msg.get("thumbnail_jpeg_b64"), record)
    except (ValueError, RecordError) as e:
        return JSONResponse({"detail": f"bad record: {e}"}, 422)
    if who.role == "robot" and record.robot_id != who.name:
        raise Forbidden(f"robot {who.name!r} may only post its own records, not {record.robot_id!r}'s")
    db = station_state(request).db
    stored = await run_in_threadpool(db.insert_record, msg["record_id"], record, thumb, "http")
    return JSONResponse({"stored": stored, "duplicate": not stored}, 201 if stored else 200)


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _thumbnail(b64: Any, record: Any) -> bytes | None:
    if b64 is None:
        return None
    if not isinstance(record, PlantRecord):
        raise ValueError("only plant records carry a thumbnail")
    if not isinstance(b64, str):
        raise ValueError("thumbnail_jpeg_b64 must be a base64 string")
    jpeg = base64.b64decode(b64, validate=True)
    if len(jpeg) > MAX_THUMBNAIL or not jpeg.startswith(b"\xff\xd8"):
        raise ValueError(f"thumbnail must be a JPEG of at most {MAX_THUMBNAIL} bytes")
    return jpeg
