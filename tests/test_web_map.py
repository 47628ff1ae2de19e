"""The field map's numbers without a browser: cells along rows, the time chart with a few
far-off records, filters, and the plants a zoomed-in map loads."""
from __future__ import annotations

import contextlib

import pytest
from fastapi.testclient import TestClient
from test_web_auth import _basic

from leafscout.link.records import PlantRecord
from leafscout.station.db import open_db
from leafscout.station.web import queries
from leafscout.station.web.aggregates import MAX_TIME_BUCKETS, SurveyAggregates
from leafscout.station.web.app import create_app
from leafscout.station.web.auth import add_user
from leafscout.station.web.sample_data import fill_survey


@pytest.fixture()
def big(tmp_path, db_target):
    db = open_db(db_target)
    truth = fill_survey(db, "f", row_incidence=(0.1, 0.5, 0.3), plants_per_row=200, uncertain_per_row=4)
    token = add_user(tmp_path / "users.json", "v", "viewer")
    yield db, truth, tmp_path / "users.json", _basic("v", token)
    db.close()


def _summary(db, survey_id="f"):
    with contextlib.closing(db.reader()) as conn:
        return SurveyAggregates().summary(conn, survey_id)


def test_rows_are_cut_into_cells_that_add_up(big):
    db, truth, _, _ = big
    s = _summary(db)
    # 200 plants 0.5 m apart (100 m rows): at most 60 cells a row, so 2 m cells of four plants.
    assert s.row_cell_m == 2.0 and len(s.row_cells) == 3 * 50
    for r in truth.rows:
        cells = [c for c in s.row_cells if c.row == r.row]
        assert sum(c.plants for c in cells) == r.plants and sum(c.diseased for c in cells) == r.diseased
        assert all(c.end_m - c.start_m == 2.0 and c.plants == 4 for c in cells)
    hot = max(s.row_cells, key=lambda c: c.incidence)
    assert hot.incidence >= 0.5 and hot.ci_lo < hot.incidence < hot.ci_hi and hot.ci_hi - hot.ci_lo > 0.3


def test_short_rows_keep_one_metre_cells(tmp_path, db_target):
    with open_db(db_target) as db:
        fill_survey(db, "short", row_incidence=(0.5,), plants_per_row=40, thumbnails=False)
        s = _summary(db, "short")
    assert s.row_cell_m == 1.0 and len(s.row_cells) == 20 and {c.plants for c in s.row_cells} == {2}


def test_late_records_do_not_collapse_the_time_chart(big):
    db, truth, _, _ = big
    before = _summary(db).timeline
    # 40 records stamped three days earlier (a robot's clock, or a backlog sent late).
    db.insert_records([(f"robot-2:{i}", PlantRecord("robot-2", "f", i, 1_780_000_000.0 - 3 * 86400 + i,
                                                    "Tomato___Late_blight", 0, 0.9, 3, row=0, metre=1.0), None)
                       for i in range(40)])
    after = _summary(db).timeline
    main = [b for b in after if b.tail is None]
    assert len(main) >= len(before) - 1 >= MAX_TIME_BUCKETS // 2
    assert [b.tail for b in after if b.tail] == ["early"] and after[0].plants == 40 and after[0].incidence == 1.0
    assert sum(b.plants for b in after) == truth.plants + 40
    from leafscout.station.web.svg import incidence_over_time

    chart = incidence_over_time(after)
    assert chart.count('class="bucket"') == len(after) and 'data-tail="early"' in chart


def test_contiguous_records_make_no_tail_bucket(big):
    db, _, _, _ = big
    assert all(b.tail is None for b in _summary(db).timeline)


def test_filters_narrow_the_field_page_and_bad_ones_are_refused(big):
    db, truth, users, viewer = big
    with TestClient(create_app(db, users)) as c:
        page = c.get("/surveys/f?row_min=1&row_max=1&label=Tomato___healthy", headers=viewer)
        assert page.status_code == 200
        want = sum(1 for p in db.plants("f") if p.row == 1 and p.label == "Tomato___healthy")
        assert f'data-kpi="plants">{want}<' in page.text and "filtered" in page.text
        assert 'data-row="0"' not in page.text.split('class="cells"')[1].split("</g>")[0]
        conf = c.get("/surveys/f?confidence_min=0.95", headers=viewer).text
        assert f'data-kpi="plants">{sum(1 for p in db.plants("f") if p.confidence >= 0.95)}<' in conf
        none = c.get("/surveys/f?date_from=2030-01-01", headers=viewer).text
        assert 'data-kpi="plants">0<' in none
        for bad in ("row_min=x", "confidence_min=2", "date_from=yesterday"):
            r = c.get(f"/surveys/f?{bad}", headers=viewer)
            assert r.status_code == 422 and bad.split("=")[0] in r.json()["detail"]
        gallery = c.get("/surveys/f/gallery?label=uncertain", headers=viewer).text
        assert gallery.count("<figure") == 12 and "Late" not in gallery


def test_plants_api_returns_the_view_with_thumbnail_links(big):
    db, _, users, viewer = big
    with TestClient(create_app(db, users)) as c:
        r = c.get("/api/surveys/f/plants?row_min=1&row_max=2&metre_min=10&metre_max=20", headers=viewer).json()
        assert r["truncated"] is False
        assert {(p["row"], p["metre"]) for p in r["plants"]} == {
            (p.row, p.metre) for p in db.plants("f") if 1 <= p.row <= 2 and 10 <= p.metre <= 20}
        flagged = [p for p in r["plants"] if p["thumbnail"]]
        assert flagged and all(p["diseased"] or p["uncertain"] for p in flagged)
        assert c.get(flagged[0]["thumbnail_url"], headers=viewer).headers["content-type"] == "image/jpeg"
        assert all(p["thumbnail_url"] is None for p in r["plants"] if not p["thumbnail"])
        few = c.get("/api/surveys/f/plants?row_min=0&row_max=2&metre_min=0&metre_max=100&limit=5",
                    headers=viewer).json()
        assert len(few["plants"]) == 5 and few["truncated"] is True
        sick = c.get("/api/surveys/f/plants?row_min=0&row_max=2&metre_min=0&metre_max=100&label=uncertain",
                     headers=viewer).json()
        assert len(sick["plants"]) == 12 and all(p["uncertain"] for p in sick["plants"])


def test_robot_status_api(big):
    db, _, users, viewer = big
    with TestClient(create_app(db, users)) as c:
        robots = c.get("/api/robots?survey=f", headers=viewer).json()["robots"]
        assert [r["robot_id"] for r in robots] == ["robot-1"] and robots[0]["link"].endswith("via mqtt")


def test_summary_api_carries_the_maps_cells(big):
    db, truth, users, viewer = big
    with TestClient(create_app(db, users)) as c:
        doc = c.get("/api/surveys/f/summary", headers=viewer).json()
    assert doc["row_cell_m"] == 2.0 and len(doc["row_cells"]) == 150
    assert sum(cell["diseased"] for cell in doc["row_cells"]) == truth.diseased


def _png(path, size=(40, 30)):
    import cv2
    import numpy as np

    cv2.imwrite(str(path), np.full((size[1], size[0], 3), (60, 140, 90), np.uint8))
    return path


def test_gps_survey_points_basemap_and_report(tmp_path, db_target):
    from leafscout.station.report import write_report
    from leafscout.station.web.app import BasemapFile

    db = open_db(db_target)
    try:
        fill_survey(db, "gps", row_incidence=(0.2, 0.6), plants_per_row=80, with_rows=False)
        token = add_user(tmp_path / "users.json", "v", "viewer")
        image = _png(tmp_path / "ortho.png")
        basemap = BasemapFile.parse(image, "4.9999,51.9999,5.0007,52.0001")
        viewer = _basic("v", token)
        with TestClient(create_app(db, tmp_path / "users.json", basemap=basemap)) as c:
            page = c.get("/surveys/gps", headers=viewer).text
            assert 'data-geo="gps"' in page and '<image class="basemap" href="/basemap"' in page
            r = c.get("/basemap", headers=viewer)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.content == image.read_bytes()
            assert c.get("/basemap").status_code == 401
            box = c.get("/api/surveys/gps/plants?lat_min=51.99&lat_max=52.01&lon_min=4.99&lon_max=5.01",
                        headers=viewer).json()["plants"]
            assert len(box) == 160 and all(p["row"] is None and p["lat"] for p in box)
            assert c.get("/api/surveys/gps/plants", headers=viewer).status_code == 422
            gallery = c.get("/surveys/gps/gallery", headers=viewer).text
            assert "focus_lat=" in gallery and "focus_row=" not in gallery
        paths = write_report(db, "gps", tmp_path / "out", basemap=basemap)
        assert '<image class="basemap" href="data:image/png;base64,' in paths.html.read_text()
    finally:
        db.close()
    with pytest.raises(ValueError, match="WEST,SOUTH,EAST,NORTH"):
        BasemapFile.parse(image, "1,2,3")
    with pytest.raises(ValueError, match="west < east"):
        BasemapFile.parse(image, "5,52,4,53")
