"""Inline SVG plots for the dashboard and the report: the field map and incidence over time.

Plain SVG strings, built from the aggregates in :mod:`leafscout.station.web.queries`: they cost
microseconds per request, need no JavaScript or map tiles, and embed unchanged in the
self-contained HTML report. Every shape carries ``data-*`` attributes with its numbers
so tests (and people with a DOM inspector) read the values, not the colours.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from .aggregates import CELL_M, ROW_CELL_M, CellStat, RowCellStat, RowStat, SurveySummary, TimeBucket, TrackPoint
from .views import utc_text

NO_DATA_COLOUR = "#c8c8c8"
# Green (no disease) -> yellow -> red (all diseased): readable and printable in greyscale.
_STOPS = ((0.0, (26, 152, 80)), (0.5, (254, 224, 139)), (1.0, (215, 48, 39)))


def incidence_colour(incidence: float | None) -> str:
    """Fill colour for an incidence in [0, 1]; grey when nothing was decided there."""
    if incidence is None:
        return NO_DATA_COLOUR
    x = min(1.0, max(0.0, incidence))
    for (x0, c0), (x1, c1) in zip(_STOPS, _STOPS[1:]):
        if x <= x1:
            f = (x - x0) / (x1 - x0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#%02x%02x%02x" % _STOPS[-1][1]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


@dataclass(frozen=True)
class Basemap:
    """A north-up image of the field (drone orthophoto, exported map) under the GPS map:
    ``href`` (a URL or a data: URL) and its ``bounds`` (west, south, east, north) in degrees."""

    href: str
    bounds: tuple[float, float, float, float]


def survey_map(summary: SurveySummary, points: Sequence[Mapping] = (), basemap: Basemap | None = None) -> str:
    """The survey's field map: crop rows when plants have row numbers, else GPS cells.

    ``points`` (plants as :func:`leafscout.station.web.queries.plants_in_view` returns them) are
    drawn on the rows from the start (the report); the dashboard loads them when zoomed.
    """
    if summary.rows or not summary.cells:
        plants = summary.totals.plants
        empty = "No plants recorded yet." if plants == 0 else (
            f"None of the {plants} plants has a row number or a GPS position, so there is nothing to draw.")
        return field_map(summary.rows, summary.tracks, empty_text=empty, row_cells=summary.row_cells,
                         cell_m=summary.row_cell_m, points=points)
    return cell_map(summary.cells, summary.tracks, basemap=basemap)


def cell_map(cells: Sequence[CellStat], tracks: Mapping[str, Sequence[TrackPoint]] | None = None, *,
             width: int = 760, max_height: int = 560, basemap: Basemap | None = None) -> str:
    """GPS grid squares coloured by incidence (north up, equal scale both ways), with the
    tracks, over an optional georeferenced image (``basemap``). ``map.js`` loads the plants
    of a zoomed-in view by latitude and longitude (``data-*`` attributes of the ``svg``)."""
    pad = 24
    cos_lat = cells[0].lat_size / cells[0].lon_size  # cells are square on the ground
    lat0, lat1 = min(c.lat for c in cells), max(c.lat + c.lat_size for c in cells)
    lon0, lon1 = min(c.lon for c in cells), max(c.lon + c.lon_size for c in cells)
    east_m, north_m = (lon1 - lon0) * cos_lat, lat1 - lat0
    scale = min((width - 2 * pad) / east_m, (max_height - 2 * pad) / north_m)
    height = round(north_m * scale + 2 * pad)

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return pad + (lon - lon0) * cos_lat * scale, pad + (lat1 - lat) * scale

    out = [f'<svg class="field-map cells" xmlns="http://www.w3.org/2000/svg" width="100%" '
           f'viewBox="0 0 {width} {height}" role="img" data-geo="gps" data-pad="{pad}" data-lat1="{lat1:.9f}" '
           f'data-lon0="{lon0:.9f}" data-coslat="{cos_lat:.9f}" data-scale="{scale:.6f}" '
           f'aria-label="field map, GPS cells coloured by incidence">']
    if basemap is not None:
        west, south, east, north = basemap.bounds
        (x0, y0), (x1, y1) = xy(north, west), xy(south, east)
        out.append(f'<image class="basemap" href="{escape(basemap.href)}" x="{x0:.1f}" y="{y0:.1f}" '
                   f'width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" preserveAspectRatio="none"/>')
    opacity = ' fill-opacity="0.7"' if basemap is not None else ""
    for c in cells:
        x, y = xy(c.lat + c.lat_size, c.lon)
        title = (f"cell {c.key} ({c.lat:.6f}, {c.lon:.6f}): incidence {_pct(c.incidence)} "
                 f"({c.diseased}/{c.decided} decided, {c.uncertain} uncertain), "
                 f"95% CI {_pct(c.ci_lo)}-{_pct(c.ci_hi)}")
        out.append(f'<rect class="cell" data-cell="{c.key}" data-incidence="{_fmt(c.incidence)}" '
                   f'data-plants="{c.plants}" data-diseased="{c.diseased}" data-uncertain="{c.uncertain}" '
                   f'x="{x:.1f}" y="{y:.1f}" width="{c.lon_size * cos_lat * scale:.1f}" '
                   f'height="{c.lat_size * scale:.1f}" fill="{incidence_colour(c.incidence)}"{opacity} stroke="#fff">'
                   f"<title>{escape(title)}</title></rect>")
    for robot, track in (tracks or {}).items():
        on_map = [xy(p.lat, p.lon) for p in track if p.lat is not None and p.lon is not None]
        if len(on_map) >= 2:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in on_map)
            out.append(f'<g class="tracks"><polyline class="track" data-robot="{escape(robot)}" '
                       f'data-points="{len(on_map)}" points="{pts}" fill="none" stroke="#1f3b73" stroke-width="1" '
                       f'stroke-opacity="0.45" vector-effect="non-scaling-stroke">'
                       f"<title>track of {escape(robot)}</title></polyline></g>")
    out.append('<g class="plants"></g>')
    out.append(f'<text x="{pad}" y="{height - 6}" class="axis">grid {CELL_M:.0f} m, north up</text></svg>')
    return "".join(out)


def _outcome(p: Mapping) -> str:
    return "uncertain" if p["uncertain"] else "diseased" if p["diseased"] else "healthy"


def field_map(rows: Sequence[RowStat], tracks: Mapping[str, Sequence[TrackPoint]] | None = None, *,
              width: int = 760, empty_text: str = "No plants recorded yet.",
              row_cells: Sequence[RowCellStat] = (), cell_m: float = ROW_CELL_M,
              points: Sequence[Mapping] = ()) -> str:
    """Each crop row as cells along its length coloured by incidence (title: the 95%
    interval), over a lane outline carrying the row's own numbers; plant points and the
    robots' tracks (thin, under the points) on top. ``static/map.js`` adds pan, zoom and
    click-through; the numbers its needs are ``data-*`` attributes of the ``svg``."""
    tracks = tracks or {}
    if not rows:
        return (f'<svg class="field-map" xmlns="http://www.w3.org/2000/svg" width="100%" height="40" role="img" '
                f'aria-label="field map: no rows"><text x="10" y="25">{escape(empty_text)}</text></svg>')
    # Lanes shrink for big fields so the map stays about one screen high; labels thin out to match.
    left, right, top, bottom = 64, 16, 12, 34
    lane = max(6.0, min(26.0, 560 / len({r.row for r in rows})))
    label_every = max(1, round(14 / lane))
    metres = [m for r in rows for m in (r.metre_min, r.metre_max) if m is not None]
    metres += [p.metre for track in tracks.values() for p in track if p.metre is not None]
    m0, m1 = (min(metres), max(metres)) if metres else (0.0, 1.0)
    if row_cells:
        m0, m1 = min(m0, min(c.start_m for c in row_cells)), max(m1, max(c.end_m for c in row_cells))
    if m1 - m0 < 1e-6:
        m1 = m0 + 1.0
    row_ids = sorted({r.row for r in rows})
    slot = {row: i for i, row in enumerate(row_ids)}
    height = round(top + lane * len(row_ids) + bottom)
    span = width - left - right

    def x_of(metre: float | None) -> float:
        return left + ((m0 if metre is None else metre) - m0) / (m1 - m0) * span

    def y_of(row: int) -> float:
        return top + lane * slot[row] + lane / 2

    out = [f'<svg class="field-map" xmlns="http://www.w3.org/2000/svg" width="100%" '
           f'viewBox="0 0 {width} {height}" role="img" data-m0="{m0:.3f}" data-m1="{m1:.3f}" data-left="{left}" '
           f'data-span="{span}" data-top="{top}" data-lane="{lane:.3f}" data-cell-m="{cell_m:g}" '
           f'data-rows="{",".join(map(str, row_ids))}" '
           f'aria-label="field map: each row as {cell_m:g} m cells coloured by incidence">']
    out.append('<g class="lanes">')
    for r in rows:
        # A row known only from its summary has no positions: draw it across the field.
        x0 = left if r.metre_min is None else x_of(r.metre_min)
        x1 = width - right if r.metre_max is None else x_of(r.metre_max)
        if x1 - x0 < 4:  # a row with one plant still shows up
            x0, x1 = x0 - 2, x0 + 2
        y = y_of(r.row)
        source = " (from the robot's row summary)" if r.from_summary else ""
        title = (f"Row {r.row}{source}: incidence {_pct(r.incidence)} ({r.diseased}/{r.decided} decided, "
                 f"{r.uncertain} uncertain), 95% CI {_pct(r.ci_lo)}-{_pct(r.ci_hi)}")
        # Rows without cells (counts from a summary only) are filled; others are an outline under their cells.
        fill = incidence_colour(r.incidence) if r.from_summary or r.metre_min is None else "#f4f4f4"
        out.append(
            f'<rect class="row" data-row="{r.row}" data-incidence="{_fmt(r.incidence)}" data-plants="{r.plants}" '
            f'data-diseased="{r.diseased}" data-uncertain="{r.uncertain}" data-ci-lo="{_fmt(r.ci_lo)}" '
            f'data-ci-hi="{_fmt(r.ci_hi)}" '
            f'data-source="{"row summary" if r.from_summary else "plants"}" x="{x0:.1f}" y="{y - lane * 0.4:.1f}" '
            f'width="{x1 - x0:.1f}" height="{lane * 0.8:.1f}" rx="2" fill="{fill}" stroke="#bbb" '
            f'stroke-width="0.5"><title>{escape(title)}</title></rect>'
        )
        if slot[r.row] % label_every == 0:
            out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" class="axis">row {r.row}</text>')
    out.append('</g><g class="cells">')
    # Kept short (a big field has thousands of cells on the page): map.js makes each
    # cell's tooltip from these numbers when the pointer first reaches it.
    height_attr = f'height="{lane * 0.7:.1f}"'
    for c in row_cells:
        if c.row not in slot:
            continue
        out.append(f'<rect class="row-cell" data-row="{c.row}" data-start="{c.start_m:g}" data-end="{c.end_m:g}" '
                   f'data-plants="{c.plants}" data-diseased="{c.diseased}" data-uncertain="{c.uncertain}" '
                   f'data-incidence="{_fmt(c.incidence)}" data-ci-lo="{_fmt(c.ci_lo)}" data-ci-hi="{_fmt(c.ci_hi)}" '
                   f'x="{x_of(c.start_m):.1f}" y="{y_of(c.row) - lane * 0.35:.1f}" '
                   f'width="{max(0.5, x_of(c.end_m) - x_of(c.start_m)):.2f}" {height_attr} '
                   f'fill="{incidence_colour(c.incidence)}"/>')
    out.append('</g><g class="tracks">')
    for robot, track in tracks.items():
        on_map = [p for p in track if p.row in slot and p.metre is not None]
        if not on_map:
            continue
        name = escape(robot)
        if len(on_map) >= 2:
            pts = " ".join(f"{x_of(p.metre):.1f},{y_of(p.row):.1f}" for p in on_map)
            out.append(f'<polyline class="track" data-robot="{name}" data-points="{len(on_map)}" points="{pts}" '
                       f'fill="none" stroke="#1f3b73" stroke-width="1" stroke-opacity="0.45" '
                       f'vector-effect="non-scaling-stroke"><title>track of {name}</title></polyline>')
        last = on_map[-1]
        out.append(f'<circle class="robot" data-robot="{name}" cx="{x_of(last.metre):.1f}" cy="{y_of(last.row):.1f}" '
                   f'r="4" fill="#1f3b73"><title>{name}: row {last.row}, {last.metre:.1f} m</title></circle>')
    out.append('</g><g class="plants">')
    for p in points:
        if p["row"] not in slot or p["metre"] is None:
            continue
        outcome = _outcome(p)
        out.append(f'<circle class="plant {outcome}" data-record="{escape(p["record_id"])}" '
                   f'data-thumbnail="{1 if p.get("thumbnail") else 0}" cx="{x_of(p["metre"]):.2f}" '
                   f'cy="{y_of(p["row"]):.2f}" r="{max(1.0, lane * 0.15):.2f}">'
                   f'<title>plant {p["plant_id"]}: {escape(p["label"])} ({outcome}, confidence '
                   f'{p["confidence"]:.2f}), row {p["row"]}, {p["metre"]:.1f} m</title></circle>')
    out.append("</g>")
    axis_y = height - bottom + 16
    decimals = 1 if m1 - m0 < 20 else 0
    for i in range(5):
        metre = m0 + (m1 - m0) * i / 4
        out.append(f'<text x="{x_of(metre):.1f}" y="{axis_y}" text-anchor="middle" class="axis">'
                   f'{metre:.{decimals}f} m</text>')
    out.append("</svg>")
    return "".join(out)


def incidence_over_time(buckets: Sequence[TimeBucket], *, width: int = 760, height: int = 220) -> str:
    """Incidence per time bucket with its 95% interval as a band, and the running total."""
    if not buckets:
        return ('<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="100%" height="40" role="img" '
                'aria-label="incidence over time: no data"><text x="10" y="25">No plants recorded yet.</text></svg>')
    left, right, top, bottom = 48, 16, 10, 30
    main = [b for b in buckets if b.tail is None] or list(buckets)
    # Far-off records ("early"/"late" buckets) sit at the edges, beyond a break in the axis.
    tail_w = 44
    x_lo = left + (tail_w if buckets[0].tail == "early" else 0)
    x_hi = width - right - (tail_w if buckets[-1].tail == "late" else 0)
    t0, t1 = main[0].t_start, main[-1].t_end
    span_t = max(t1 - t0, 1e-6)

    def x_at(t: float) -> float:
        return x_lo + (t - t0) / span_t * (x_hi - x_lo)

    def x_mid(b: TimeBucket) -> float:
        if b.tail == "early":
            return left + tail_w / 2 - 6
        if b.tail == "late":
            return width - right - tail_w / 2 + 6
        return x_at((b.t_start + b.t_end) / 2)

    def y_of(p: float) -> float:
        return top + (1.0 - p) * (height - top - bottom)

    decided = [b for b in buckets if b.incidence is not None]
    out = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="100%" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="incidence over time">']
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y_of(p):.1f}" y2="{y_of(p):.1f}" stroke="#e3e3e3"/>'
                   f'<text x="{left - 6}" y="{y_of(p) + 4:.1f}" text-anchor="end" class="axis">{p:.0%}</text>')
    if decided:
        mid = [(x_mid(b), b) for b in decided]
        band = [f"{x:.1f},{y_of(b.ci_hi):.1f}" for x, b in mid]
        band += [f"{x:.1f},{y_of(b.ci_lo):.1f}" for x, b in reversed(mid)]
        out.append(f'<polygon class="ci-band" points="{" ".join(band)}" fill="#d73027" fill-opacity="0.15"/>')
        line = " ".join(f"{x:.1f},{y_of(b.incidence):.1f}" for x, b in mid)
        out.append(f'<polyline class="incidence" points="{line}" fill="none" stroke="#d73027" stroke-width="2"/>')
        running = " ".join(f"{x:.1f},{y_of(b.cumulative):.1f}" for x, b in mid if b.cumulative is not None)
        out.append(f'<polyline class="cumulative" points="{running}" fill="none" stroke="#1f3b73" '
                   f'stroke-width="1.5" stroke-dasharray="4 3"/>')
        for x, b in mid:
            tail = f' data-tail="{b.tail}"' if b.tail else ""
            when = f"{b.tail} records, {utc_text(b.t_start)[:16]} to {utc_text(b.t_end)[:16]} UTC: " if b.tail else ""
            out.append(f'<circle class="bucket" cx="{x:.1f}" cy="{y_of(b.incidence):.1f}" r="2.5" fill="#d73027" '
                       f'data-incidence="{_fmt(b.incidence)}"{tail}><title>{when}{b.diseased}/{b.decided} '
                       f'({_pct(b.incidence)}, 95% CI {_pct(b.ci_lo)}-{_pct(b.ci_hi)})</title></circle>')
    for b in (buckets[0], buckets[-1]):
        if b.tail:
            x = (x_lo - 8) if b.tail == "early" else (x_hi + 8)
            out.append(f'<line class="axis-break" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" '
                       f'stroke="#999" stroke-dasharray="2 2"/>')
    out.append(f'<text x="{x_lo}" y="{height - 8}" class="axis">{utc_text(t0)[:16]} UTC</text>'
               f'<text x="{x_hi}" y="{height - 8}" text-anchor="end" class="axis">'
               f"{utc_text(t1)[:16]} UTC</text>")
    out.append("</svg>")
    return "".join(out)

