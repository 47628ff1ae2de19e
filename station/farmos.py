"""A survey as farmOS records: observation logs with quantities, tied to a land asset.

farmOS (https://farmos.org, 2.x and 3.x) takes records over its JSON:API. What this
module makes, in creation order, each a JSON:API resource object with a local ``id``
that later resources' relationships point to:

* one ``asset--land`` for the field (``land_type`` "field", ``intrinsic_geometry`` the
  plants' bounding box as WKT), unless the push names an existing one;
* one ``log--observation`` for the whole survey, one per crop row and one per stretch of
  a row (``cell_m`` long) with at least one diseased plant. Each log has ``name``,
  ``timestamp`` (RFC 3339), ``status`` "done", ``notes`` as ``{value, format}``,
  ``geometry`` as ``{value: WKT}`` (a LINESTRING along the row, or a POINT), ``flag``
  ["monitor"] where disease was seen, and relationships ``asset`` and ``location`` to the
  land asset and ``quantity`` to its counts;
* per log, ``quantity--standard`` items: ``measure`` "count" (plants, diseased,
  uncertain) or "ratio" (incidence = diseased / decided plants), ``value`` as
  ``{decimal}``, ``label``.

One log per plant is what the old GeoJSON export implied; at 100,000 plants that is
unusable in farmOS, so plants stay in ``plants.csv`` and ``observations.geojson``.

``write_farmos_file`` writes these resources as one JSON:API document (``data`` is the
list) for a user to import or push later; ``push`` sends them to a farmOS server with
the maintained client (PyPI ``farmOS``, OAuth2 password grant), replacing each local id
by the id the server gave.
"""
from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leafscout.link.stats import wilson_interval
from leafscout.station.sql import Connection

log = logging.getLogger(__name__)

DEFAULT_CELL_M = 10.0
NOTES_FORMAT = "default"  # farmOS's default text format
_NAMESPACE = uuid.UUID("1c0f5c7e-8a55-4a55-9d1e-6c65616673a1")  # local ids: stable per survey and stretch


class FarmOSError(Exception):
    """The export cannot be made, or the farmOS server refused a record (its message included)."""


@dataclass
class _Stretch:
    """Counts and extent of some plants of one survey (the survey, a row, or part of a row)."""

    plants: int = 0
    diseased: int = 0
    uncertain: int = 0
    t_last: float = -math.inf
    first: tuple[float, float, float] | None = None  # (metre, lon, lat) of the plant nearest the row start
    last: tuple[float, float, float] | None = None
    lons: list[float] = field(default_factory=lambda: [math.inf, -math.inf])
    lats: list[float] = field(default_factory=lambda: [math.inf, -math.inf])

    def add(self, p: Mapping) -> None:
        self.plants += 1
        self.diseased += p["diseased"]
        self.uncertain += p["uncertain"]
        self.t_last = max(self.t_last, p["t"])
        lon, lat = p["lon"], p["lat"]
        if lon is None or lat is None:
            return
        self.lons[0], self.lons[1] = min(self.lons[0], lon), max(self.lons[1], lon)
        self.lats[0], self.lats[1] = min(self.lats[0], lat), max(self.lats[1], lat)
        metre = p["metre"] if p["metre"] is not None else 0.0
        if self.first is None or metre < self.first[0]:
            self.first = (metre, lon, lat)
        if self.last is None or metre >= self.last[0]:
            self.last = (metre, lon, lat)

    @property
    def decided(self) -> int:
        return self.plants - self.uncertain

    @property
    def incidence(self) -> float | None:
        return self.diseased / self.decided if self.decided else None


def _wkt_line(s: _Stretch) -> str | None:
    if s.first is None:
        return None
    (_, lon0, lat0), (_, lon1, lat1) = s.first, s.last
    if (lon0, lat0) == (lon1, lat1):
        return f"POINT ({lon0:.8f} {lat0:.8f})"
    return f"LINESTRING ({lon0:.8f} {lat0:.8f}, {lon1:.8f} {lat1:.8f})"


def _wkt_box(s: _Stretch) -> str | None:
    if s.first is None:
        return None
    (x0, x1), (y0, y1) = s.lons, s.lats
    if x0 == x1 or y0 == y1:  # one line of plants: a box needs some width
        pad = 1e-5
        x0, x1, y0, y1 = x0 - pad, x1 + pad, y0 - pad, y1 + pad
    ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return "POLYGON ((" + ", ".join(f"{x:.8f} {y:.8f}" for x, y in ring) + "))"


def _rfc3339(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _local_id(survey_id: str, key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{survey_id}\0{key}"))


def _quantities(survey_id: str, key: str, s: _Stretch) -> list[dict[str, Any]]:
    items = [("count", "plants", s.plants), ("count", "diseased", s.diseased), ("count", "uncertain", s.uncertain)]
    if s.incidence is not None:
        items.append(("ratio", "incidence", round(s.incidence, 4)))
    return [{"type": "quantity--standard", "id": _local_id(survey_id, f"{key}/q/{label}"),
             "attributes": {"measure": measure, "value": {"decimal": str(value)}, "label": label}}
            for measure, label, value in items]


def _observation(survey_id: str, key: str, name: str, s: _Stretch, geometry: str | None, land_id: str,
                 quantities: list[dict]) -> dict[str, Any]:
    lo_hi = ""
    if s.decided:
        lo, hi = wilson_interval(s.diseased, s.decided)
        lo_hi = f" (95% interval {100 * lo:.1f}-{100 * hi:.1f}%)"
    incidence = "n/a" if s.incidence is None else f"{100 * s.incidence:.1f}%"
    notes = (f"leafscout survey {survey_id}: {s.plants} plants, {s.diseased} diseased, {s.uncertain} uncertain; "
             f"incidence {incidence}{lo_hi} = diseased / decided plants.")
    attributes: dict[str, Any] = {
        "name": name, "timestamp": _rfc3339(s.t_last), "status": "done",
        "notes": {"value": notes, "format": NOTES_FORMAT},
        "flag": ["monitor"] if s.diseased else [],
        "is_movement": False,
    }
    if geometry:
        attributes["geometry"] = {"value": geometry}
    land = [{"type": "asset--land", "id": land_id}]
    return {"type": "log--observation", "id": _local_id(survey_id, key), "attributes": attributes,
            "relationships": {"asset": {"data": land}, "location": {"data": land},
                              "quantity": {"data": [{"type": q["type"], "id": q["id"]} for q in quantities]}}}


def farmos_resources(conn: Connection, survey_id: str, *, cell_m: float = DEFAULT_CELL_M,
                     field_name: str | None = None, land_id: str | None = None) -> list[dict[str, Any]]:
    """The survey's farmOS resources in creation order (see the module docstring).

    ``land_id`` names an existing land asset on the server: then none is created.
    """
    from leafscout.station.web.queries import iter_plants

    if not cell_m > 0:
        raise FarmOSError(f"cell length must be > 0 m, got {cell_m}")
    survey, rows, cells = _Stretch(), {}, {}
    for p in iter_plants(conn, survey_id):
        survey.add(p)
        if p["row"] is None:
            continue
        rows.setdefault(p["row"], _Stretch()).add(p)
        if p["metre"] is not None:
            cells.setdefault((p["row"], math.floor(p["metre"] / cell_m)), _Stretch()).add(p)
    if survey.plants == 0:
        raise FarmOSError(f"survey {survey_id!r} has no plant records to export")
    out: list[dict[str, Any]] = []
    if land_id is None:
        land_id = _local_id(survey_id, "land")
        land = {"name": field_name or f"leafscout field {survey_id}", "status": "active", "land_type": "field",
                "is_location": True, "is_fixed": True}
        if (box := _wkt_box(survey)) is not None:
            land["intrinsic_geometry"] = {"value": box}
        out.append({"type": "asset--land", "id": land_id, "attributes": land})

    def add(key: str, name: str, s: _Stretch, geometry: str | None) -> None:
        quantities = _quantities(survey_id, key, s)
        out.extend(quantities)
        out.append(_observation(survey_id, key, name, s, geometry, land_id, quantities))

    add("survey", f"leafscout survey {survey_id}: {survey.diseased} of {survey.plants} plants diseased", survey,
        _wkt_box(survey))
    for row, s in sorted(rows.items()):
        add(f"row/{row}", f"leafscout survey {survey_id}: row {row}, {s.diseased} of {s.plants} plants diseased",
            s, _wkt_line(s))
    for (row, i), s in sorted(cells.items()):
        if s.diseased:
            add(f"cell/{row}/{i}", f"leafscout survey {survey_id}: row {row}, {i * cell_m:g}-{(i + 1) * cell_m:g} m, "
                f"{s.diseased} of {s.plants} plants diseased", s, _wkt_line(s))
    return out


def farmos_document(conn: Connection, survey_id: str, resources: list[dict[str, Any]] | None = None,
                    **options: Any) -> dict[str, Any]:
    """The resources (made here unless given) as one JSON:API document: ``data`` lists
    them in creation order."""
    if resources is None:
        resources = farmos_resources(conn, survey_id, **options)
    return {"jsonapi": {"version": "1.0"},
            "meta": {"leafscout": {"survey_id": survey_id, "resources": len(resources),
                                   "order": "create in this order; relationships use the local ids"}},
            "data": resources}


def write_farmos_file(resources: list[dict[str, Any]], path: str | Path, survey_id: str) -> Path:
    """Write :func:`farmos_document` for these resources."""
    path = Path(path)
    path.write_text(json.dumps(farmos_document(None, survey_id, resources), indent=1) + "\n", encoding="utf-8")
    return path


def read_farmos_file(path: str | Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        resources = doc["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FarmOSError(f"{path} is not a leafscout farmOS file: {e}") from e
    if not isinstance(resources, list) or not all(isinstance(r, dict) and "type" in r for r in resources):
        raise FarmOSError(f"{path}: 'data' must be a list of JSON:API resource objects")
    return resources


def _remap(relationships: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    out = {}
    for name, rel in relationships.items():
        data = rel["data"]
        items = data if isinstance(data, list) else [data]
        mapped = [{**item, "id": ids.get(item["id"], item["id"])} for item in items]
        out[name] = {"data": mapped if isinstance(data, list) else mapped[0]}
    return out


def push(resources: Iterable[dict[str, Any]], url: str, *, auth: Any = None, client: Any = None) -> dict[str, str]:
    """Create the resources on the farmOS server at ``url``, in order; local id -> server id.

    ``auth`` is an httpx auth (e.g. :func:`password_auth`); ``client`` an open
    ``farmOS.FarmClient`` to use instead (tests).
    """
    from farmOS import FarmClient

    ids: dict[str, str] = {}
    owns = client is None
    farm = client if client is not None else FarmClient(hostname=url.rstrip("/"), auth=auth, timeout=60.0)
    try:
        for n, resource in enumerate(resources):
            entity, _, bundle = resource["type"].partition("--")
            payload = {"attributes": resource.get("attributes", {})}
            if resource.get("relationships"):
                payload["relationships"] = _remap(resource["relationships"], ids)
            try:
                answer = farm.resource.send(entity, bundle, payload)
            except ValueError as e:  # not JSON: a proxy's error page, a wrong URL
                raise FarmOSError(f"{url}: no JSON:API answer creating {resource['type']} #{n}: {e}") from e
            if "errors" in answer or "data" not in answer:
                detail = "; ".join(str(e.get("detail") or e.get("title")) for e in answer.get("errors", []))
                name = resource.get("attributes", {}).get("name", "")
                raise FarmOSError(f"{url} refused {resource['type']} #{n} {name!r}: {detail or str(answer)[:300]}")
            ids[resource["id"]] = answer["data"]["id"]
    finally:
        if owns:
            farm.close()
    log.info("farmOS %s: created %d records", url, len(ids))
    return ids


def password_auth(url: str, username: str, password: str, *, client_id: str = "farm",
                  scope: str = "farm_manager"):
    """OAuth2 password grant against farmOS's ``/oauth/token`` (what farmOS.py documents)."""
    from httpx_auth import OAuth2ResourceOwnerPasswordCredentials

    return OAuth2ResourceOwnerPasswordCredentials(token_url=url.rstrip("/") + "/oauth/token", username=username,
                                                  password=password, client_id=client_id, scope=scope)
