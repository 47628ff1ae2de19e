"""The dashboard shows what the receivers refused, what robots dropped, and an insecure station."""
from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from leafscout.link.records import Heartbeat
from leafscout.station.db import open_db
from leafscout.station.web.app import create_app
from leafscout.station.web.auth import add_user

OB = "00112233445566778899aabbccddeeff"


def _page(tmp_path, insecure: bool) -> str:
    db = open_db(tmp_path / f"s{insecure}.db")
    db.set_flag("insecure", insecure)
    db.insert_records([(f"r1:{OB}:1", Heartbeat("r1", 1_780_000_000.0, 5, 10, 9.0, dropped=7), None)])
    db.count_rejected("invalid", "mqtt: test", 3)
    users = tmp_path / f"users{insecure}.json"
    secret = add_user(users, "viewer", "viewer")
    auth = {"Authorization": "Basic " + base64.b64encode(f"viewer:{secret}".encode()).decode()}
    try:
        with TestClient(create_app(db, users)) as c:
            r = c.get("/", headers=auth)
            assert r.status_code == 200
            return r.text
    finally:
        db.close()


def test_index_shows_rejections_drops_and_the_insecure_banner(tmp_path):
    page = _page(tmp_path, insecure=True)
    assert "Insecure station" in page
    assert "records dropped by robot r1" in page and "input rejected: invalid" in page
    assert "Insecure station" not in _page(tmp_path, insecure=False)
