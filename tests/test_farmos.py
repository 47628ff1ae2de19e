"""farmOS export and push: the records checked field by field against farmOS's documented
JSON:API attributes, pushed with farmOS.py to a local HTTP server that records requests
(farmOS itself cannot run here)."""
from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from leafscout.station.db import open_db
from leafscout.station.web.sample_data import fill_survey
from test_report import _cli  # the leafscout commands registered by station.report_cli

# From farmOS's data model (farmOS 2.x/3.x: docs "Logs", "Quantities", "Assets", and the
# JSON:API schema at /api/log/observation/resource/schema on a farmOS server).
LOG_ATTRIBUTES = {"name", "timestamp", "status", "notes", "geometry", "is_movement", "flag", "data",
                  "is_group_assignment"}
LOG_RELATIONSHIPS = {"asset", "location", "quantity", "category", "owner", "equipment", "file", "image"}
QUANTITY_ATTRIBUTES = {"measure", "value", "label", "inventory_adjustment"}
MEASURES = {"count", "length", "weight", "area", "volume", "time", "temperature", "pressure", "water_content",
            "value", "rate", "rating", "ratio", "probability", "speed"}
LAND_ATTRIBUTES = {"name", "status", "land_type", "is_location", "is_fixed", "intrinsic_geometry", "notes", "flag",
                   "id_tag", "data"}
LAND_TYPES = {"property", "field", "bed", "paddock", "landmark", "other"}
FLAGS = {"priority", "monitor", "review"}
WKT = re.compile(r"^(POINT \(-?\d+\.\d+ -?\d+\.\d+\)|LINESTRING \((-?\d+\.\d+ -?\d+\.\d+)(, -?\d+\.\d+ -?\d+\.\d+)+\)"
                 r"|POLYGON \(\((-?\d+\.\d+ -?\d+\.\d+)(, -?\d+\.\d+ -?\d+\.\d+){3,}\)\))$")
ROW_INCIDENCE = (0.0, 0.25, 0.5)


class RecordingFarm:
    """Answers like farmOS's OAuth2 token endpoint and JSON:API create endpoints, and keeps every request."""

    def __init__(self, refuse: str | None = None):
        self.requests: list[dict] = []
        self.refuse = refuse  # a resource type to answer 422 for
        farm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                entry = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                farm.requests.append(entry)
                if self.path == "/oauth/token":
                    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                    entry["form"] = form
                    if form.get("grant_type") != "password" or form.get("password") != "farm secret":
                        return self._json(400, {"error": "invalid_grant"})
                    return self._json(200, {"access_token": "tok-1", "token_type": "Bearer", "expires_in": 3600})
                if self.headers.get("authorization") != "Bearer tok-1":
                    return self._json(401, {"errors": [{"title": "Unauthorized"}]})
                doc = json.loads(body)
                entry["doc"] = doc
                if doc["data"]["type"] == farm.refuse:
                    return self._json(422, {"errors": [{"title": "Unprocessable", "detail": "measure: not allowed"}]})
                data = {**doc["data"], "id": str(uuid.uuid4())}
                entry["id"] = data["id"]
                return self._json(201, {"jsonapi": {"version": "1.0"}, "data": data})

            def _json(self, status, payload):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.api+json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def created(self, kind: str) -> list[dict]:
        return [r for r in self.requests if r.get("doc", {}).get("data", {}).get("type") == kind]


@pytest.fixture()
def survey(db_target):
    path = db_target
    with open_db(path) as db:
        truth = fill_survey(db, "north", row_incidence=ROW_INCIDENCE, plants_per_row=60, uncertain_per_row=4,
                            thumbnails=False)
    return path, truth


def _quantities(farm: RecordingFarm, log: dict) -> dict[str, str]:
    by_id = {r["id"]: r["doc"]["data"]["attributes"] for r in farm.created("quantity--standard")}
    return {by_id[q["id"]]["label"]: by_id[q["id"]]["value"]["decimal"]
            for q in log["relationships"]["quantity"]["data"]}


def test_push_creates_a_land_asset_and_observation_logs_farmos_accepts(survey, monkeypatch, capsys):
    db_path, truth = survey
    monkeypatch.setenv("LEAFSCOUT_FARMOS_PASSWORD", "farm secret")
    with RecordingFarm() as farm:
        assert _cli(["farmos", "push", "--url", farm.url, "--db", str(db_path), "--survey", "north",
                     "--user", "alice", "--cell-m", "5"]) == 0
    assert "observation logs" in capsys.readouterr().out
    token = farm.requests[0]
    assert token["path"] == "/oauth/token"
    assert token["form"] == {"grant_type": "password", "username": "alice", "password": "farm secret",
                             "client_id": "farm", "scope": "farm_manager"}

    posts = farm.requests[1:]
    assert [r["path"] for r in posts][0] == "/api/asset/land"
    for r in posts:
        kind = r["doc"]["data"]["type"]
        entity, bundle = kind.split("--")
        assert r["path"] == f"/api/{entity}/{bundle}"
        assert r["headers"]["content-type"] == "application/vnd.api+json"
        assert "id" not in r["doc"]["data"]  # creates, not updates: the server gives ids

    (land,) = farm.created("asset--land")
    attrs = land["doc"]["data"]["attributes"]
    assert set(attrs) <= LAND_ATTRIBUTES and attrs["land_type"] in LAND_TYPES and attrs["status"] == "active"
    assert WKT.match(attrs["intrinsic_geometry"]["value"]).group(0).startswith("POLYGON")

    for q in farm.created("quantity--standard"):
        qa = q["doc"]["data"]["attributes"]
        assert set(qa) <= QUANTITY_ATTRIBUTES and qa["measure"] in MEASURES
        assert set(qa["value"]) == {"decimal"} and float(qa["value"]["decimal"]) >= 0

    logs = [r["doc"]["data"] for r in farm.created("log--observation")]
    cells_with_disease = {(p.row, int(p.metre // 5)) for p in _plants(db_path) if p.diseased}
    assert len(logs) == 1 + len(ROW_INCIDENCE) + len(cells_with_disease)
    quantity_ids = {q["id"] for q in farm.created("quantity--standard")}
    for log in logs:
        a = log["attributes"]
        assert set(a) <= LOG_ATTRIBUTES and set(log["relationships"]) <= LOG_RELATIONSHIPS
        assert isinstance(a["name"], str) and a["name"] and a["status"] in ("done", "pending")
        assert datetime.fromisoformat(a["timestamp"]).utcoffset() is not None  # RFC 3339 with offset
        assert set(a["notes"]) == {"value", "format"} and a["notes"]["format"] == "default"
        assert WKT.match(a["geometry"]["value"]), a["geometry"]
        assert set(a["flag"]) <= FLAGS
        assert log["relationships"]["asset"]["data"] == [{"type": "asset--land", "id": land["id"]}]
        assert log["relationships"]["location"]["data"] == [{"type": "asset--land", "id": land["id"]}]
        assert {q["id"] for q in log["relationships"]["quantity"]["data"]} <= quantity_ids  # server ids

    survey_log = logs[0]
    assert _quantities(farm, survey_log) == {
        "plants": str(truth.plants), "diseased": str(truth.diseased), "uncertain": str(truth.uncertain),
        "incidence": str(round(truth.diseased / (truth.plants - truth.uncertain), 4))}
    for r in truth.rows:
        (row_log,) = [log for log in logs
                      if re.match(rf"leafscout survey north: row {r.row}, \d+ of", log["attributes"]["name"])]
        q = _quantities(farm, row_log)
        assert (int(q["plants"]), int(q["diseased"])) == (r.plants, r.diseased)
        assert float(q["incidence"]) == pytest.approx(r.incidence, abs=1e-4)
        assert row_log["attributes"]["geometry"]["value"].startswith("LINESTRING")
        assert row_log["attributes"]["flag"] == (["monitor"] if r.diseased else [])


def _plants(db_path):
    with open_db(db_path) as db:
        return db.plants("north")


def test_export_file_pushes_the_same_records(survey, tmp_path, monkeypatch):
    db_path, _ = survey
    out = tmp_path / "farmos.json"
    assert _cli(["farmos", "export", "--db", str(db_path), "--survey", "north", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["jsonapi"] == {"version": "1.0"} and doc["data"][0]["type"] == "asset--land"
    monkeypatch.setenv("LEAFSCOUT_FARMOS_PASSWORD", "farm secret")
    with RecordingFarm() as farm:
        assert _cli(["farmos", "push", "--url", farm.url, "--file", str(out), "--user", "alice"]) == 0
    sent = [r["doc"]["data"] for r in farm.requests[1:]]
    assert [s["type"] for s in sent] == [d["type"] for d in doc["data"]]
    assert [s["attributes"] for s in sent] == [d["attributes"] for d in doc["data"]]


def test_existing_land_asset_and_refusals(survey, monkeypatch, capsys):
    db_path, _ = survey
    monkeypatch.setenv("LEAFSCOUT_FARMOS_PASSWORD", "farm secret")
    land = str(uuid.uuid4())
    with RecordingFarm(refuse="log--observation") as farm:
        assert _cli(["farmos", "push", "--url", farm.url, "--db", str(db_path), "--survey", "north",
                     "--user", "alice", "--asset-id", land]) == 1
    err = capsys.readouterr().err
    assert "refused log--observation #" in err and "measure: not allowed" in err
    assert not farm.created("asset--land")  # the named asset is used, none is made
    assert farm.created("log--observation")[0]["doc"]["data"]["relationships"]["asset"]["data"][0]["id"] == land
    monkeypatch.setenv("LEAFSCOUT_FARMOS_PASSWORD", "wrong")
    with RecordingFarm() as farm:
        assert _cli(["farmos", "push", "--url", farm.url, "--db", str(db_path), "--survey", "north",
                     "--user", "alice"]) == 1
    assert "cannot push" in capsys.readouterr().err and len(farm.requests) == 1


def test_dashboard_offers_the_farmos_file(survey, tmp_path):
    from fastapi.testclient import TestClient

    from leafscout.station.web.app import create_app
    from leafscout.station.web.auth import add_user
    from test_web_auth import _basic

    db_path, truth = survey
    token = add_user(tmp_path / "users.json", "v", "viewer")
    with open_db(db_path) as db, TestClient(create_app(db, tmp_path / "users.json")) as c:
        page = c.get("/surveys/north", headers=_basic("v", token)).text
        assert 'href="/surveys/north/farmos.json"' in page
        r = c.get("/surveys/north/farmos.json", headers=_basic("v", token))
    assert r.headers["content-type"] == "application/vnd.api+json"
    logs = [d for d in r.json()["data"] if d["type"] == "log--observation"]
    assert logs[0]["attributes"]["name"].endswith(f"{truth.diseased} of {truth.plants} plants diseased")
