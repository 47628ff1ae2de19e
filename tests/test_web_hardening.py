"""The dashboard's defences, each against the defect that was found: ids that need URL
encoding, Nagle on kept-alive connections, password guessing, thumbnails eating the
page budget, cross-site writes, missing security headers, TLS, users added or removed
while the station runs, and spreadsheet formulas in CSV exports."""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import html
import io
import json
import logging
import re
import socket
import sqlite3
import ssl
import urllib.error
import urllib.request
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from test_web_auth import OUTBOX, _basic, client, station  # noqa: F401  (the same station and users)

from leafscout.link.records import PlantRecord
from leafscout.station.web import auth
from leafscout.station.web.app import create_app
from leafscout.station.web.auth import add_user
from leafscout.station.web.server import WebServer
from leafscout.station.web.users_cli import register as register_user_commands

# Ids a database written before ids were validated at ingestion may hold.
AWKWARD_IDS = ("north/field", "a?b#c", "..", "50% done", "..%2F")


def _copy_survey_as(db_path, source: str, survey_id: str) -> None:
    """Store a copy of a survey (plants and thumbnails) under another id, straight in SQL,
    the way an old station wrote ids it did not check."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("INSERT INTO thumbnails SELECT t.record_id || '/' || ?, t.jpeg FROM thumbnails t "
                     "JOIN plants p ON p.record_id = t.record_id WHERE p.survey_id = ?", (survey_id, source))
        conn.execute("INSERT INTO plants SELECT record_id || '/' || ?, robot_id, ?, plant_id, t, label, class_index, "
                     "confidence, diseased, uncertain, row, metre, lat, lon, frames, fix, fix_quality FROM plants "
                     "WHERE survey_id = ?",
                     (survey_id, survey_id, source))


def _links(page: str, attr: str = "href") -> list[str]:
    return [html.unescape(m) for m in re.findall(rf'{attr}="([^"]+)"', page)]


# -- ids that need URL encoding -----------------------------------------------------------
def _get(url: str, headers: dict) -> tuple[int, str, str]:
    """Status, content type and text of a GET over real HTTP (the test client decodes paths twice)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.headers["content-type"], r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["content-type"], e.read().decode("utf-8", "replace")


def test_every_link_of_a_survey_with_an_awkward_id_works(station):
    from leafscout.station.web.routes import IdConvertor

    db, users, secrets = station
    for survey_id in AWKWARD_IDS:
        _copy_survey_as(db.path, "s1", survey_id)
    viewer = _basic("viewer", secrets["viewer"])
    with WebServer(create_app(db, users), "127.0.0.1", 0) as web:
        status, _, index = _get(web.url + "/", viewer)
        assert status == 200  # one id with "/" used to take the home page down
        hrefs = _links(index)
        for survey_id in AWKWARD_IDS:
            page_link = "/surveys/" + IdConvertor().to_string(survey_id)
            assert page_link in hrefs, survey_id
            status, _, page = _get(web.url + page_link, viewer)
            assert status == 200 and f'data-survey="{html.escape(survey_id)}"' in page, survey_id
            exports = [h for h in _links(page) if h.startswith(page_link + "/")]
            assert {h.rsplit("/", 1)[1] for h in exports} >= {"gallery", "plants.csv", "observations.geojson",
                                                               "report.html"}
            for href in exports:
                assert _get(web.url + href, viewer)[0] == 200, href
            csv_text = _get(web.url + page_link + "/plants.csv", viewer)[2]
            assert len(list(csv.DictReader(io.StringIO(csv_text)))) == 20
            summary = json.loads(_get(web.url + "/api" + page_link + "/summary", viewer)[2])
            assert summary["survey_id"] == survey_id and summary["totals"]["plants"] == 20
            gallery = _get(web.url + page_link + "/gallery", viewer)[2]
            thumbnails = [src for src in _links(gallery, "src") if src.startswith("/thumbnails/")]
            assert thumbnails
            for src in thumbnails:
                assert _get(web.url + src, viewer)[:2] == (200, "image/jpeg"), src


# -- Nagle --------------------------------------------------------------------------------
def test_connections_are_served_without_nagle_delay(station):
    db, users, secrets = station
    with WebServer(create_app(db, users), "127.0.0.1", 0) as web:
        # Accepted connections inherit the option from the listening socket (Linux, BSD).
        assert web._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        request = urllib.request.Request(f"{web.url}/healthz")
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200


# -- password guessing --------------------------------------------------------------------
def test_sixth_wrong_password_is_refused_before_any_password_check(client, station, monkeypatch, caplog):
    _, _, secrets = station
    checks = []
    real_verify = auth.verify_secret
    monkeypatch.setattr(auth, "verify_secret", lambda s, h: checks.append(1) or real_verify(s, h))
    caplog.set_level(logging.WARNING, logger="leafscout.station.web.access")
    codes = [client.get("/api/surveys/s1/summary", headers=_basic("viewer", f"guess-{i}")).status_code
             for i in range(6)]
    assert codes == [401] * 5 + [429]
    assert len(checks) == 5  # the locked-out attempt cost no scrypt
    refused = client.get("/api/surveys/s1/summary", headers=_basic("viewer", secrets["viewer"]))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 30
    assert len(checks) == 5
    failures = [r for r in caplog.records if "failed sign-in for 'viewer' from testclient" in r.getMessage()]
    assert len(failures) == 5 and "locked out for 60 s" in failures[-1].getMessage()
    # Another account is not locked.
    assert client.get("/api/surveys/s1/summary", headers=_basic("admin", secrets["admin"])).status_code == 200


def test_sign_in_form_counts_failures_too(client, station):
    _, _, secrets = station
    codes = [client.post("/signin", data={"name": "admin", "secret": f"guess number {i}"}).status_code
             for i in range(6)]
    assert codes == [401] * 5 + [429]
    assert client.post("/signin", data={"name": "admin", "secret": secrets["admin"]}).status_code == 429
    page = client.post("/signin", data={"name": "admin", "secret": secrets["admin"]}, headers={"Accept": "text/html"})
    assert page.status_code == 429 and 'role="alert">Too many failed sign-ins; locked out for another' in page.text
    assert client.post("/signin", data={"name": "viewer", "secret": secrets["viewer"]},
                       follow_redirects=False).status_code == 303


def test_one_client_guessing_many_accounts_is_locked_out(station):
    db, users, secrets = station
    with TestClient(create_app(db, users, client_login_failures=8)) as c:
        codes = [c.get("/", headers=_basic(f"user{i}", "a wrong secret")).status_code for i in range(9)]
        assert codes == [401] * 8 + [429]
        assert c.get("/", headers=_basic("viewer", secrets["viewer"])).status_code == 429


def test_lockouts_double_and_a_success_clears_the_account():
    from leafscout.station.web.ratelimit import LoginGuard

    guard = LoginGuard(free=3, window_s=60, lockout_s=10, max_lockout_s=25)
    assert [guard.failed("a", now=t) for t in (0, 1, 2)] == [0, 0, 10]
    assert guard.wait("a", now=5) == pytest.approx(7) and guard.wait("b", now=5) == 0
    assert [guard.failed("a", now=t) for t in (13, 14, 15)] == [0, 0, 20]
    assert [guard.failed("a", now=t) for t in (40, 41, 42)] == [0, 0, 25]  # capped
    assert guard.failed("c", now=0) == 0 and guard.failed("c", now=61) == 0 and guard.failed("c", now=62) == 0
    guard.succeeded("a")
    assert guard.wait("a", now=43) == 0


# -- thumbnails and the page budget ---------------------------------------------------------
def test_thumbnails_do_not_spend_the_page_budget(station):
    db, users, secrets = station
    flagged = [p.record_id for p in db.plants("s1") if p.has_thumbnail]
    assert len(flagged) >= 3
    viewer = _basic("viewer", secrets["viewer"])
    with TestClient(create_app(db, users, rate_per_s=0.01, burst=2)) as c:
        for _ in range(4):
            for record_id in flagged:
                assert c.get(f"/thumbnails/{record_id}", headers=viewer).status_code == 200
        assert c.get("/surveys/s1/gallery", headers=viewer).status_code == 200
        assert c.get("/surveys/s1", headers=viewer).status_code == 200
        assert c.get("/surveys/s1", headers=viewer).status_code == 429


# -- cross-site writes ----------------------------------------------------------------------
def _plant_body(plant_id: int) -> dict:
    record = PlantRecord("robot-1", "s1", plant_id, 1_780_100_000.0, "Tomato___Late_blight", 0, 0.9, 3, row=1,
                         metre=1.0)
    return {"record_id": f"robot-1:{OUTBOX}:{plant_id}", "record": record.to_dict()}


def test_a_form_on_another_port_cannot_write_with_an_admins_cookie(client, station):
    db, _, secrets = station
    r = client.post("/signin", data={"name": "admin", "secret": secrets["admin"]}, follow_redirects=False)
    assert r.status_code == 303
    before = db.record_count()
    body = json.dumps(_plant_body(9100))
    # What an HTML form can send: not JSON.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = client.post("/api/records", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 415, content_type
    # JSON from a page of another origin (fetch) or another port of this host.
    for headers in ({"Origin": "http://testserver:8081"}, {"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "same-site"}, {"Sec-Fetch-Site": "cross-site"}):
        r = client.post("/api/records", content=body, headers={"Content-Type": "application/json", **headers})
        assert r.status_code == 403 and "cross" in r.json()["detail"], headers
    assert db.record_count() == before
    # The dashboard's own origin, and tools that send no Origin, still write.
    r = client.post("/api/records", content=body, headers={"Content-Type": "application/json",
                                                           "Origin": "http://testserver",
                                                           "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 201 and db.has_record(f"robot-1:{OUTBOX}:9100")


def test_sign_in_from_another_origin_is_refused(client, station):
    secret = station[2]["viewer"]
    r = client.post("/signin", data={"name": "viewer", "secret": secret}, headers={"Origin": "http://evil.example"},
                    follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers


# -- security headers -----------------------------------------------------------------------
@pytest.mark.parametrize("path, signed_in", [("/", True), ("/surveys/s1", False), ("/static/style.css", False),
                                             ("/surveys/s1/plants.csv", True), ("/signin", False)])
def test_every_response_carries_security_headers(client, station, path, signed_in):
    headers = _basic("viewer", station[2]["viewer"]) if signed_in else {}
    r = client.get(path, headers=headers)
    assert r.status_code in (200, 401)
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"


# -- TLS ------------------------------------------------------------------------------------
def _self_signed(tmp_path):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_option_serves_https_with_secure_cookies(station, tmp_path):
    from leafscout.station.web.station_service import add_options, start_dashboard

    db, users, secrets = station
    cert, key = _self_signed(tmp_path)
    parser = argparse.ArgumentParser()
    add_options(parser)
    args = parser.parse_args(["--http", "127.0.0.1:0", "--users", str(users), "--tls-cert", str(cert),
                              "--tls-key", str(key)])
    web = start_dashboard(SimpleNamespace(db=db), args)
    try:
        assert web.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                             _NoRedirect())
        form = f"name=viewer&secret={quote(secrets['viewer'])}".encode()
        with opener.open(urllib.request.Request(f"{web.url}/signin", data=form), timeout=10) as r:
            cookie = r.headers["set-cookie"]
            assert r.status == 303 and "Secure" in cookie and "HttpOnly" in cookie
            assert r.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(OSError):  # plain HTTP on the TLS port gets no page
            urllib.request.urlopen(web.url.replace("https://", "http://") + "/healthz", timeout=10).read()
    finally:
        web.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None

    def http_error_303(self, req, fp, code, msg, headers):
        return fp


def test_tls_needs_both_files(tmp_path):
    from leafscout.station.web.server import WebServerError

    cert, _ = _self_signed(tmp_path)
    with pytest.raises(WebServerError, match="--tls-key"):
        WebServer(None, "127.0.0.1", 0, tls_cert=cert)


# -- the users file, changed while the station runs -----------------------------------------
def test_users_added_and_removed_take_effect_without_a_restart(client, station):
    from leafscout.station.web.auth import remove_user

    _, users, secrets = station
    assert client.post("/signin", data={"name": "viewer", "secret": secrets["viewer"]},
                       follow_redirects=False).status_code == 303
    assert client.get("/surveys/s1").status_code == 200  # by session cookie
    carol = add_user(users, "carol", "viewer")
    assert client.get("/surveys/s1", headers=_basic("carol", carol)).status_code == 200
    remove_user(users, "viewer")
    assert client.get("/surveys/s1").status_code == 401  # the session ended with the account
    assert client.get("/surveys/s1", headers=_basic("viewer", secrets["viewer"])).status_code == 401
    add_user(users, "carol", "viewer", "a brand new password")  # a new secret replaces the old one at once
    assert client.get("/surveys/s1", headers=_basic("carol", carol)).status_code == 401
    assert client.get("/surveys/s1", headers=_basic("carol", "a brand new password")).status_code == 200


def test_users_list_and_remove_commands(station, capsys):
    _, users, _ = station
    parser = argparse.ArgumentParser()
    register_user_commands(parser.add_subparsers())
    args = parser.parse_args(["users", "list", "--users", str(users)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines() == ["admin\tadmin", "robot-1\trobot", "viewer\tviewer"]
    args = parser.parse_args(["users", "remove", "viewer", "--users", str(users)])
    assert args.func(args) == 0 and "viewer removed" in capsys.readouterr().out
    args = parser.parse_args(["users", "remove", "viewer", "--users", str(users)])
    assert args.func(args) == 2 and "no user 'viewer'" in capsys.readouterr().err
    args = parser.parse_args(["users", "list", "--users", str(users)])
    args.func(args)
    assert "viewer" not in capsys.readouterr().out


# -- CSV formulas ---------------------------------------------------------------------------
def test_csv_export_neutralizes_formula_cells(client, station):
    db, _, secrets = station
    labels = ['=HYPERLINK("http://evil.example","open")', "+1+1", "@SUM(A1)", "-2+3"]
    db.insert_records([(f"robot-1:{8000 + i}", PlantRecord("robot-1", "s1", 8000 + i, 1_780_100_100.0 + i, label,
                                                           0, 0.8, 2, row=1, metre=2.0, lat=-33.5, lon=-70.6), None)
                       for i, label in enumerate(labels)])
    text = client.get("/surveys/s1/plants.csv", headers=_basic("viewer", secrets["viewer"])).text
    rows = {r["plant_id"]: r for r in csv.DictReader(io.StringIO(text))}
    for i, label in enumerate(labels):
        row = rows[str(8000 + i)]
        assert row["label"] == "'" + label
        assert row["lat"] == "-33.5" and row["lon"] == "-70.6"  # numbers stay numbers
