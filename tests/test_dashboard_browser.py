"""The dashboard in a real headless Chromium: sign in, read the field map, open the gallery,
download the exports, take a screenshot, and never touch a host other than the station.

Set LEAFSCOUT_UPDATE_SCREENSHOT=1 to also refresh docs/img/dashboard.png (the README's).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import REPO, require_binary

pytest.importorskip("playwright.sync_api")

from leafscout.station.db import open_db  # noqa: E402
from leafscout.station.report import validate_observations  # noqa: E402
from leafscout.station.web.app import create_app  # noqa: E402
from leafscout.station.web.auth import add_user  # noqa: E402
from leafscout.station.web.sample_data import fill_survey  # noqa: E402
from leafscout.station.web.server import WebServer  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ROW_INCIDENCE = (0.0, 0.1, 0.25, 0.5, 0.2, 0.05, 0.75, 0.3)


def only_the_station(external: list[str]):
    """A Playwright route handler that lets loopback requests through and records (and
    aborts) any other: the dashboard must work offline."""

    def handle(route):
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    return handle


@pytest.fixture()
def station(tmp_path, db_target):
    db = open_db(db_target)
    truth = fill_survey(db, "field-7", row_incidence=ROW_INCIDENCE, plants_per_row=30, without_position_every=23)
    token = add_user(tmp_path / "users.json", "agronomist", "viewer")
    app = create_app(db, tmp_path / "users.json")
    with WebServer(app, "127.0.0.1", 0) as web:
        yield web, truth, token
    db.close()


def test_dashboard_in_chromium(station, tmp_path):
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    web, truth, token = station
    external: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.route("**/*", only_the_station(external))

            # Not signed in: the field page answers 401 and shows the sign-in form.
            response = page.goto(f"{web.url}/surveys/field-7")
            assert response.status == 401
            page.fill("#name", "agronomist")
            page.fill("#secret", "not the token")
            page.click("button[type=submit]")
            assert page.locator("[role=alert]").inner_text().startswith("Unknown user name")
            page.fill("#name", "agronomist")
            page.fill("#secret", token)
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert urlsplit(page.url).path == "/surveys/field-7"

            # The field map: one bar per row with the true incidence.
            bars = page.locator("svg.field-map rect.row")
            assert bars.count() == len(truth.rows)
            shown = {int(bars.nth(i).get_attribute("data-row")): float(bars.nth(i).get_attribute("data-incidence"))
                     for i in range(bars.count())}
            assert shown == pytest.approx({r.row: r.incidence for r in truth.rows}, abs=1e-4)
            assert page.locator("svg.field-map polyline.track").count() == 1
            assert page.locator("[data-kpi=plants]").inner_text() == str(truth.plants)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # Downloads: CSV with every plant, GeoJSON with every positioned plant, valid.
            with page.expect_download() as csv_dl:
                page.click("#csv-link")
            records = list(csv.DictReader(io.StringIO(Path(csv_dl.value.path()).read_text(encoding="utf-8"))))
            assert len(records) == truth.plants
            assert sum(r["diseased"] == "1" for r in records) == truth.diseased
            with page.expect_download() as geo_dl:
                page.click("#geojson-link")
            text = Path(geo_dl.value.path()).read_text(encoding="utf-8")
            assert validate_observations(text) == []
            doc = json.loads(text)
            assert len(doc["features"]) == truth.plants - truth.without_position
            assert doc["leafscout"]["skipped_without_position"] == truth.without_position

            # The gallery: every flagged leaf's thumbnail actually loads.
            page.click("#gallery-link")
            page.wait_for_load_state("load")
            figures = page.locator(".gallery figure")
            assert figures.count() == min(truth.thumbnails, 48)
            widths = page.eval_on_selector_all(".gallery img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert widths and all(w > 0 for w in widths)
        finally:
            browser.close()

    assert external == [], f"the dashboard asked for external resources: {external}"
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    if os.environ.get("LEAFSCOUT_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "dashboard.png", REPO / "docs" / "img" / "dashboard.png")
