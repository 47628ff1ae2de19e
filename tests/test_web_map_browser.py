"""The field map in a real headless Chromium: cells along each row, zoom until the plants
appear, click one for its leaf, filters, the gallery's link back to a plant's place,
robot status that refreshes itself, and the page at phone width (screenshot kept).

Set LEAFSCOUT_MAP_SCREENSHOTS=DIR to keep the screenshots (desktop, zoomed, phone).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import require_binary

pytest.importorskip("playwright.sync_api")

from test_dashboard_browser import CHROMIUM_ARGS, only_the_station  # noqa: E402

from leafscout.link.records import Heartbeat
from leafscout.station.db import open_db  # noqa: E402
from leafscout.station.web.app import create_app  # noqa: E402
from leafscout.station.web.auth import add_user  # noqa: E402
from leafscout.station.web.sample_data import fill_survey  # noqa: E402
from leafscout.station.web.server import WebServer  # noqa: E402

ROW_INCIDENCE = (0.0, 0.1, 0.25, 0.5, 0.2, 0.05, 0.75, 0.3)
PLANTS_PER_ROW = 300  # 150 m rows: too long for plant points at the whole-field view


@pytest.fixture()
def station(tmp_path):
    db = open_db(tmp_path / "station.db")
    truth = fill_survey(db, "field-9", row_incidence=ROW_INCIDENCE, plants_per_row=PLANTS_PER_ROW,
                        uncertain_per_row=6)
    token = add_user(tmp_path / "users.json", "agronomist", "viewer")
    with WebServer(create_app(db, tmp_path / "users.json"), "127.0.0.1", 0) as web:
        yield web, db, truth, token
    db.close()


def _sign_in(page, web, token: str, path: str) -> None:
    page.goto(f"{web.url}{path}")
    page.fill("#name", "agronomist")
    page.fill("#secret", token)
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_field_map_zoom_click_filters_and_phone_width(station, tmp_path):
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    web, db, truth, token = station
    shots = Path(os.environ.get("LEAFSCOUT_MAP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    external: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            page.route("**/*", only_the_station(external))
            _sign_in(page, web, token, "/surveys/field-9")
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # Each row is drawn as cells along it; their counts add up to the row's.
            cells = page.eval_on_selector_all(
                "svg.field-map rect.row-cell",
                "els => els.map(e => [+e.dataset.row, +e.dataset.plants, +e.dataset.diseased, e.dataset.ciLo])")
            per_row: dict[int, list[int]] = {}
            for row, plants, diseased, ci_lo in cells:
                acc = per_row.setdefault(row, [0, 0])
                acc[0], acc[1] = acc[0] + plants, acc[1] + diseased
                assert ci_lo != ""  # every cell with decided plants carries its interval
            assert {r: tuple(v) for r, v in per_row.items()} == {r.row: (r.plants, r.diseased) for r in truth.rows}
            assert len(cells) > 10 * len(truth.rows)  # hotspots along a row, not one bar per row
            svg = page.locator("svg.field-map")
            assert svg.get_attribute("data-points") == "off"  # whole field: too many plants to draw
            assert page.locator("svg.field-map circle.plant").count() == 0
            page.screenshot(path=str(shots / "map_desktop.png"), full_page=True)
            cell = page.locator("svg.field-map rect.row-cell").nth(5)
            cell.hover()
            assert re.match(r"row \d+, [\d.]+-[\d.]+ m: [\d.]+% diseased \(\d+/\d+.*\), 95% CI [\d.]+%-[\d.]+%$",
                            cell.locator("title").text_content())

            # Zoom in (button and wheel) until the plants load, then click a diseased one.
            for _ in range(3):
                page.click("[data-zoom=in]")
            box = svg.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
            page.mouse.wheel(0, -300)
            page.wait_for_selector("svg.field-map[data-points=loaded]", timeout=15_000)
            assert float(svg.get_attribute("data-zoom")) > 8
            points = page.locator("svg.field-map circle.plant")
            assert 0 < points.count() < truth.plants
            diseased = page.locator("svg.field-map circle.plant.diseased[data-thumbnail='1']").first
            diseased.dispatch_event("click")
            panel = page.locator("#map-panel")
            panel.wait_for(state="visible")
            page.wait_for_function("() => { const i = document.querySelector('#map-panel img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=10_000)
            assert "diseased" in panel.inner_text() and "confidence" in panel.inner_text()
            page.screenshot(path=str(shots / "map_zoomed.png"), full_page=False)

            # Pan by dragging: the view moves.
            before = svg.get_attribute("viewBox")
            page.mouse.move(box["x"] + 300, box["y"] + 100)
            page.mouse.down()
            page.mouse.move(box["x"] + 150, box["y"] + 120, steps=5)
            page.mouse.up()
            assert svg.get_attribute("viewBox") != before
            assert errors == []

            # Filters: one class, rows 2..5.
            page.locator("details.filters summary").click()
            page.select_option("select[name=label]", "Tomato___Late_blight")
            page.fill("input[name=row_min]", "2")
            page.fill("input[name=row_max]", "5")
            with page.expect_navigation():
                page.click("#filters button[type=submit]")
            want = sum(1 for p in db.plants("field-9") if p.label == "Tomato___Late_blight" and 2 <= p.row <= 5)
            assert page.locator("[data-kpi=plants]").inner_text() == str(want)
            assert {int(r) for r in page.eval_on_selector_all("svg.field-map rect.row-cell",
                                                              "els => els.map(e => e.dataset.row)")} <= {2, 3, 4, 5}

            # Gallery -> "on the map": the plant's place, zoomed, with its leaf shown.
            page.goto(f"{web.url}/surveys/field-9/gallery")
            link = page.locator("a.on-map").first
            record = link.locator("xpath=ancestor::figure").get_attribute("data-record")
            with page.expect_navigation():
                link.click()
            page.wait_for_selector(f'#map-panel[data-record="{record}"]', timeout=15_000)
            assert page.locator(f'svg.field-map circle.plant.focus[data-record="{record}"]').count() == 1

            # Robot status refreshes itself (polling): a new robot shows up without a reload.
            page.goto(f"{web.url}/surveys/field-9")
            assert page.locator("table.robots tr[data-robot=robot-9]").count() == 0
            db.insert_record("robot-9:1", Heartbeat("robot-9", time.time(), 0, 1, 10.0, survey_id="field-9"))
            page.wait_for_selector("table.robots tr[data-robot=robot-9]", timeout=15_000)

            # Phone width: nothing wider than the screen, map usable, screenshot looked at.
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                        is_mobile=True, has_touch=True).new_page()
            phone.route("**/*", only_the_station(external))
            _sign_in(phone, web, token, "/surveys/field-9")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            map_width = phone.locator("svg.field-map").bounding_box()["width"]
            assert 300 <= map_width <= 390
            phone.click("[data-zoom=in]")
            assert float(phone.locator("svg.field-map").get_attribute("data-zoom")) == pytest.approx(2.0)
            phone.screenshot(path=str(shots / "map_phone.png"), full_page=True)
        finally:
            browser.close()
    assert external == [], f"the dashboard asked for external resources: {external}"
    for name in ("map_desktop.png", "map_zoomed.png", "map_phone.png"):
        assert (shots / name).stat().st_size > 10_000


def test_index_lists_surveys_a_page_at_a_time(tmp_path):
    from fastapi.testclient import TestClient
    from test_web_auth import _basic

    from leafscout.station.web.routes import SURVEYS_PAGE

    db = open_db(tmp_path / "station.db")
    try:
        for i in range(SURVEYS_PAGE + 5):
            fill_survey(db, f"s{i:03d}", robot_id=f"r{i}", row_incidence=(0.5,), plants_per_row=1, uncertain_per_row=0,
                        thumbnails=False, t0=1_780_000_000.0 + 100 * i)
        token = add_user(tmp_path / "users.json", "v", "viewer")
        with TestClient(create_app(db, tmp_path / "users.json")) as c:
            first = c.get("/", headers=_basic("v", token)).text
            assert first.count('href="/surveys/') == SURVEYS_PAGE and "s054" in first and "s004" not in first
            assert 'rel="next"' in first and "page 1 of 2" in first
            second = c.get("/?page=1", headers=_basic("v", token)).text
            assert second.count('href="/surveys/') == 5 and "s004" in second and 'rel="prev"' in second
            found = c.get("/?q=s01", headers=_basic("v", token)).text
            assert found.count('href="/surveys/') == 10
    finally:
        db.close()
    if os.environ.get("LEAFSCOUT_MAP_SCREENSHOTS"):
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_gps_map_zooms_to_plants_over_a_basemap(tmp_path):
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright
    from test_web_map import _png

    from leafscout.station.web.app import BasemapFile

    shots = Path(os.environ.get("LEAFSCOUT_MAP_SCREENSHOTS") or tmp_path)
    db = open_db(tmp_path / "station.db")
    fill_survey(db, "gps-only", row_incidence=(0.2, 0.6, 0.4), plants_per_row=200, with_rows=False)
    token = add_user(tmp_path / "users.json", "agronomist", "viewer")
    basemap = BasemapFile.parse(_png(tmp_path / "ortho.png", (200, 60)), "4.9995,51.99995,5.0016,52.00005")
    external: list[str] = []
    try:
        with WebServer(create_app(db, tmp_path / "users.json", basemap=basemap), "127.0.0.1", 0) as web, \
                sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1000, "height": 800}).new_page()
                page.route("**/*", only_the_station(external))
                _sign_in(page, web, token, "/surveys/gps-only")
                svg = page.locator("svg.field-map")
                assert svg.get_attribute("data-geo") == "gps" and svg.get_attribute("data-points") == "off"
                assert page.evaluate("document.querySelector('image.basemap').getBBox().width") > 100
                # Zoom with the wheel where the plants are (the south edge of their 10 m cells).
                plants_y = page.evaluate("(() => { const s = document.querySelector('svg.field-map');"
                                         " const d = s.dataset; const vb = s.viewBox.baseVal;"
                                         " const y = +d.pad + (+d.lat1 - 52.000007) * +d.scale;"
                                         " const r = s.getBoundingClientRect(); return r.top + y / vb.height * r.height; })()")
                box = svg.bounding_box()
                page.mouse.move(box["x"] + box["width"] * 0.5, plants_y)
                for _ in range(12):
                    page.mouse.wheel(0, -100)
                page.wait_for_selector("svg.field-map[data-points=loaded]", timeout=15_000)
                points = page.locator("svg.field-map circle.plant")
                assert points.count() > 0
                page.locator("svg.field-map circle.plant.diseased[data-thumbnail='1']").first.dispatch_event("click")
                page.wait_for_function("() => { const i = document.querySelector('#map-panel img');"
                                       " return i && i.complete && i.naturalWidth > 0; }", timeout=10_000)
                assert "52.0" in page.locator("#map-panel").inner_text()  # its place: latitude, longitude
                page.screenshot(path=str(shots / "map_gps.png"))
            finally:
                browser.close()
    finally:
        db.close()
    assert external == []
