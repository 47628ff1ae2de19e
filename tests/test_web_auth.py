"""Access to the dashboard: hashed secrets, 401 without credentials, 403 for a viewer's
write (and nothing stored), robots limited to their own records, per-token rate limits."""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import stat

import pytest
from fastapi.testclient import TestClient

from leafscout.link.records import PlantRecord
from leafscout.station.db import open_db
from leafscout.station.web.app import create_app
from leafscout.station.web.auth import UsersFileError, UserStore, add_user, hash_secret, read_users, verify_secret
from leafscout.station.web.ratelimit import RateLimiter
from leafscout.station.web.sample_data import fill_survey, leaf_jpeg
from leafscout.station.web.users_cli import register as register_add_user

PROTECTED = ["/", "/surveys/s1", "/surveys/s1/gallery", "/surveys/s1/plants.csv",
             "/surveys/s1/observations.geojson", "/surveys/s1/report.html", "/api/surveys/s1/summary",
             "/thumbnails/robot-1:1"]


OUTBOX = "5eed" * 8  # a robot's outbox id: record ids are "<robot>:<32 hex digits>:<seq>"
RID_9001 = f"robot-1:{OUTBOX}:9001"


def _record(robot_id: str = "robot-1", plant_id: int = 9001) -> dict:
    return PlantRecord(robot_id, "s1", plant_id, 1_780_100_000.0, "Tomato___Late_blight", 0, 0.91, 4,
                       row=2, metre=3.5, lat=52.0, lon=5.0).to_dict()


@pytest.fixture()
def station(tmp_path):
    db = open_db(tmp_path / "station.db")
    fill_survey(db, "s1", row_incidence=(0.2, 0.4), plants_per_row=10)
    users = tmp_path / "users.json"
    secrets = {
        "viewer": add_user(users, "viewer", "viewer"),
        "robot-1": add_user(users, "robot-1", "robot"),
        "admin": add_user(users, "admin", "admin", "a long admin password"),
    }
    yield db, users, secrets
    db.close()


@pytest.fixture()
def client(station):
    db, users, _ = station
    with TestClient(create_app(db, users)) as c:
        yield c


def _basic(name: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()}


# -- secrets and the users file -------------------------------------------------------
def test_secrets_are_salted_scrypt_hashes():
    a, b = hash_secret("hunter22"), hash_secret("hunter22")
    assert a != b and a.startswith("scrypt$") and "hunter22" not in a
    assert verify_secret("hunter22", a) and verify_secret("hunter22", b)
    assert not verify_secret("hunter23", a)
    assert not verify_secret("hunter22", "md5$deadbeef")
    assert not verify_secret("hunter22", "scrypt$x$y$z$salt$hash")


def test_users_file_stores_only_hashes_and_is_private(station):
    _, users, secrets = station
    text = users.read_text()
    assert all(secret not in text for secret in secrets.values())
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    entries = read_users(users)
    assert {n: e["role"] for n, e in entries.items()} == {"viewer": "viewer", "robot-1": "robot", "admin": "admin"}
    store = UserStore(entries)
    assert store.authenticate("admin", "a long admin password").role == "admin"
    assert store.authenticate("admin", "a long admin passwore") is None
    assert store.authenticate("nobody", "a long admin password") is None


@pytest.mark.parametrize("name, role, secret, message", [
    ("bob", "superuser", None, "unknown role 'superuser'; expected one of"),
    ("bob smith", "viewer", None, "bad user name 'bob smith'"),
    ("bob", "viewer", "short", "need at least 8"),
])
def test_add_user_rejects_bad_input(tmp_path, name, role, secret, message):
    with pytest.raises(UsersFileError, match=message):
        add_user(tmp_path / "users.json", name, role, secret)
    assert not (tmp_path / "users.json").exists()


def test_malformed_users_file_is_rejected_with_its_path(tmp_path):
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"format": "leafscout-users/1", "users": {"eve": {"role": "root", "secret": "x"}}}))
    with pytest.raises(UsersFileError, match=r"users.json: user 'eve' has role 'root'"):
        read_users(path)
    path.write_text("{not json")
    with pytest.raises(UsersFileError, match="cannot read users file"):
        read_users(path)


def test_add_user_command_generates_a_token_or_reads_a_password(tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    register_add_user(parser.add_subparsers())
    users = tmp_path / "u.json"
    args = parser.parse_args(["add-user", "field-robot", "--role", "robot", "--users", str(users)])
    assert args.func(args) == 0
    token = capsys.readouterr().out.split("store it now): ")[1].strip()
    assert UserStore.from_file(users).authenticate("field-robot", token).role == "robot"

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    args = parser.parse_args(["add-user", "ann", "--users", str(users), "--password-stdin"])
    assert args.func(args) == 0
    assert "token" not in capsys.readouterr().out
    assert UserStore.from_file(users).authenticate("ann", "correct horse battery").role == "viewer"


# -- 401 / 403 ------------------------------------------------------------------------
@pytest.mark.parametrize("path", PROTECTED)
def test_every_page_and_export_needs_credentials(client, path):
    r = client.get(path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic")
    r = client.get(path, headers={"Accept": "text/html", **_basic("viewer", "wrong-token")})
    assert r.status_code == 401 and 'action="/signin"' in r.text


def test_viewer_reads_everything(client, station):
    db, _, secrets = station
    flagged = next(p.record_id for p in db.plants("s1") if p.has_thumbnail)
    for path in PROTECTED[:-1] + [f"/thumbnails/{flagged}"]:
        assert client.get(path, headers=_basic("viewer", secrets["viewer"])).status_code == 200, path


def test_write_without_credentials_is_401_and_viewer_write_is_403_and_nothing_is_stored(client, station):
    db, _, secrets = station
    before = db.record_count()
    body = {"record_id": RID_9001, "record": _record()}
    assert client.post("/api/records", json=body).status_code == 401
    r = client.post("/api/records", json=body, headers=_basic("viewer", secrets["viewer"]))
    assert r.status_code == 403 and "viewer" in r.json()["detail"]
    # A viewer's session cookie does not help either.
    client.post("/signin", data={"name": "viewer", "secret": secrets["viewer"]})
    assert client.post("/api/records", json=body).status_code == 403
    assert db.record_count() == before and not db.has_record(RID_9001)


def test_robot_writes_only_its_own_records(client, station):
    db, _, secrets = station
    robot = _basic("robot-1", secrets["robot-1"])
    thumb = base64.b64encode(leaf_jpeg(1)).decode()
    body = {"record_id": RID_9001, "record": _record(), "thumbnail_jpeg_b64": thumb}
    r = client.post("/api/records", json=body, headers=robot)
    assert r.status_code == 201 and r.json() == {"stored": True, "duplicate": False}
    assert db.thumbnail(RID_9001) == leaf_jpeg(1)
    again = client.post("/api/records", json=body, headers=robot)
    assert again.status_code == 200 and again.json()["duplicate"] is True

    other = {"record_id": f"robot-2:{OUTBOX}:1", "record": _record("robot-2")}
    assert client.post("/api/records", json=other, headers=robot).status_code == 403
    assert not db.has_record(f"robot-2:{OUTBOX}:1")
    admin = _basic("admin", secrets["admin"])
    assert client.post("/api/records", json=other, headers=admin).status_code == 201


@pytest.mark.parametrize("body, message", [
    (b"[1, 2]", "expected {\"record_id\""),
    (json.dumps({"record_id": f"robot-1:{OUTBOX}:5", "record": {"kind": "plant", "robot_id": "robot-1"}}).encode(),
     "missing key"),
    (json.dumps({"record_id": f"robot-1:{OUTBOX}:5", "record": _record(), "thumbnail_jpeg_b64": "aGVsbG8="}).encode(), "JPEG"),
    (b"\xff\xfe not json", "bad record"),
    # A record id in another robot's namespace would make that robot's real record a "duplicate".
    (json.dumps({"record_id": f"robot-2:{OUTBOX}:5", "record": _record()}).encode(), "is not robot-1:<32 hex digits>"),
])
def test_bad_records_are_rejected_with_a_reason(client, station, body, message):
    db, _, secrets = station
    before = db.record_count()
    r = client.post("/api/records", content=body,
                    headers={"Content-Type": "application/json", **_basic("admin", secrets["admin"])})
    assert r.status_code == 422 and message in r.json()["detail"]
    assert db.record_count() == before


def test_oversized_write_is_refused_before_storing(client, station):
    db, _, secrets = station
    before = db.record_count()
    r = client.post("/api/records", content=b"x" * 300_000,
                    headers={"Content-Type": "application/json", **_basic("admin", secrets["admin"])})
    assert r.status_code == 413
    assert db.record_count() == before


# -- sessions ---------------------------------------------------------------------------
def test_sign_in_sign_out_and_no_open_redirect(client, station):
    secret = station[2]["viewer"]
    r = client.post("/signin", data={"name": "viewer", "secret": secret, "next": "//evil.example/x"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and secret not in cookie
    assert client.get("/surveys/s1").status_code == 200
    client.post("/signout")
    assert client.get("/surveys/s1").status_code == 401
    bad = client.post("/signin", data={"name": "viewer", "secret": "nope-nope"})
    assert bad.status_code == 401 and "wrong password" in bad.text


# -- rate limits ------------------------------------------------------------------------
def test_rate_limit_per_token_answers_429_with_retry_after(station):
    db, users, secrets = station
    with TestClient(create_app(db, users, rate_per_s=0.5, burst=3)) as c:
        viewer = _basic("viewer", secrets["viewer"])
        codes = [c.get("/api/surveys/s1/summary", headers=viewer).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = c.get("/api/surveys/s1/summary", headers=viewer)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        # Another token has its own bucket.
        assert c.get("/api/surveys/s1/summary", headers=_basic("admin", secrets["admin"])).status_code == 200


def test_token_bucket_refills_at_its_rate():
    limiter = RateLimiter(rate=2.0, burst=2)
    assert limiter.acquire("k", now=100.0) == 0.0
    assert limiter.acquire("k", now=100.0) == 0.0
    assert limiter.acquire("k", now=100.0) == pytest.approx(0.5)
    assert limiter.acquire("k", now=100.5) == 0.0  # one token back after 1/rate seconds
    assert limiter.acquire("other", now=100.5) == 0.0
    with pytest.raises(ValueError, match="rate=0"):
        RateLimiter(rate=0, burst=1)


def test_station_options_start_the_dashboard_over_real_http(station):
    import urllib.error
    import urllib.request
    from types import SimpleNamespace

    from leafscout.station.web.station_service import add_options, start_dashboard

    db, users, secrets = station
    parser = argparse.ArgumentParser()
    add_options(parser)
    assert start_dashboard(SimpleNamespace(db=db), parser.parse_args([])) is None  # no --http, no dashboard
    args = parser.parse_args(["--http", "127.0.0.1:0", "--users", str(users)])
    web = start_dashboard(SimpleNamespace(db=db), args)
    try:
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{web.url}/surveys/s1", timeout=10)
        assert denied.value.code == 401
        denied.value.close()
        request = urllib.request.Request(f"{web.url}/api/surveys/s1/summary",
                                         headers=_basic("viewer", secrets["viewer"]))
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["totals"]["plants"] == 20
    finally:
        web.close()
