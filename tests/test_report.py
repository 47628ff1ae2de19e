"""Survey exports (HTML report, CSV, farmOS-shaped GeoJSON) and the SQL aggregates behind them."""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import re

import pytest

from leafscout.link.records import PlantRecord, RowSummary
from leafscout.station.db import open_db
from leafscout.station.report import ReportError, crop_and_disease, validate_observations, write_report
from leafscout.station.report_cli import register
from leafscout.station.sql import db_errors, is_postgres
from leafscout.station.web import queries, svg
from leafscout.station.web.aggregates import SurveyAggregates, ThinnedTrack, TrackPoint
from leafscout.station.web.sample_data import fill_survey

ROW_INCIDENCE = (0.0, 0.3, 0.6, 1.0)


@pytest.fixture()
def survey(tmp_path, db_target):
    path = db_target
    with open_db(path) as db:
        truth = fill_survey(db, "north-field", row_incidence=ROW_INCIDENCE, plants_per_row=22,
                            without_position_every=9)
    return path, truth


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_report_command_writes_three_valid_files(survey, tmp_path, capsys):
    db_path, truth = survey
    out = tmp_path / "out"
    assert _cli(["report", "--db", str(db_path), "--survey", "north-field", "--out", str(out)]) == 0
    assert f"{truth.without_position} plants without a GPS position" in capsys.readouterr().out

    rows = list(csv.DictReader((out / "plants.csv").open(encoding="utf-8")))
    assert len(rows) == truth.plants
    assert sum(r["diseased"] == "1" for r in rows) == truth.diseased
    assert sum(r["label"] == "uncertain" for r in rows) == truth.uncertain
    assert rows[0]["timestamp"].endswith("Z")

    text = (out / "observations.geojson").read_text(encoding="utf-8")
    assert validate_observations(text) == []
    doc = json.loads(text)
    assert len(doc["features"]) == truth.plants - truth.without_position
    assert doc["leafscout"]["skipped_without_position"] == truth.without_position
    first = doc["features"][0]
    lon, lat = first["geometry"]["coordinates"]
    assert lon == pytest.approx(5.0, abs=0.01) and lat == pytest.approx(52.0, abs=0.01)  # RFC 7946 order
    props = first["properties"]
    assert props["log_type"] == "observation" and props["status"] == "done"
    assert props["crop"] == "Tomato" and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", props["timestamp"])
    diseased = [f["properties"] for f in doc["features"] if f["properties"]["outcome"] == "diseased"]
    assert diseased and all(p["disease"] and p["flag"] == ["monitor"] for p in diseased)


def test_html_report_is_self_contained_and_shows_the_true_numbers(survey, tmp_path):
    db_path, truth = survey
    paths = write_report(db_path, "north-field", tmp_path / "out")
    html = paths.html.read_text(encoding="utf-8")
    # Nothing to fetch: no external src/href/url(), map script, plots and thumbnails inline.
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", html)
    assert "url(" not in html and "<link" not in html and "<script src" not in html
    assert html.count("<script>") == 1 and "FieldMap" in html  # the dashboard's pan and zoom, inline
    assert '<svg class="timeline"' in html and html.count("data:image/jpeg;base64,") == min(truth.thumbnails, 24)
    # The same map as the dashboard: cells along the rows, and the flagged plants as points.
    points = re.findall(r'<circle class="plant (\w+)"', html)
    assert set(points) == {"diseased", "uncertain"} and len(points) == truth.diseased + truth.uncertain
    assert html.count('class="row-cell"') > len(truth.rows)
    bars = dict(re.findall(r'data-row="(\d+)" data-incidence="([\d.]+)"', html))
    assert {int(k): float(v) for k, v in bars.items()} == pytest.approx(
        {r.row: r.incidence for r in truth.rows}, abs=1e-4)
    assert f'data-kpi="plants">{truth.plants}<' in html


def test_report_errors_name_the_problem(survey, tmp_path, capsys):
    db_path, _ = survey
    with pytest.raises(ReportError, match=r"survey 'south' is not in .*known surveys: \['north-field'\]"):
        write_report(db_path, "south", tmp_path / "out")
    assert _cli(["report", "--db", str(tmp_path / "missing.db"), "--survey", "x"]) == 2
    assert "no station database" in capsys.readouterr().err
    assert _cli(["report", "--db", str(db_path)]) == 2  # no --survey: lists them
    assert "north-field" in capsys.readouterr().out


@pytest.mark.parametrize("change, problem", [
    (lambda f: f["geometry"].update(type="Polygon"), "Point"),
    (lambda f: f["geometry"].update(coordinates=[52.0, 95.0]), "outside WGS 84"),
    (lambda f: f["geometry"].update(coordinates=[5.0]), "exactly 2 or 3 values"),  # from the geojson library
    (lambda f: f["properties"].pop("timestamp"), "'timestamp' is a required property"),
    (lambda f: f["properties"].update(timestamp="yesterday"), "does not match"),
    (lambda f: f["properties"].update(log_type="activity"), "'observation' was expected"),
    (lambda f: f["properties"].update(confidence=1.7), "greater than the maximum"),
])
def test_validation_catches_broken_observations(survey, tmp_path, change, problem):
    db_path, _ = survey
    doc = json.loads(write_report(db_path, "north-field", tmp_path / "out").geojson.read_text())
    change(doc["features"][3])
    problems = validate_observations(json.dumps(doc))
    assert any(problem in p for p in problems), problems


def test_report_command_streams_in_bounded_memory(tmp_path, capsys):
    import tracemalloc

    path = tmp_path / "big.db"
    with open_db(path) as db:
        truth = fill_survey(db, "big", row_incidence=[r / 40 for r in range(20)], plants_per_row=1000,
                            thumbnails=False)
    tracemalloc.start()
    try:
        assert _cli(["report", "--db", str(path), "--survey", "big", "--out", str(tmp_path / "out")]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"{truth.plants} plants" in capsys.readouterr().out
    geojson_mb = (tmp_path / "out" / "observations.geojson").stat().st_size / 2**20
    # Reading the 20,000-feature file back to validate it took ~10x its size; streamed, the
    # peak is the summary and the HTML page, not the plants.
    assert geojson_mb > 8 and peak / 2**20 < 2 * geojson_mb


def test_observation_checker_sees_broken_features_while_writing():
    from leafscout.station.report import ObservationChecker, observation_feature

    plant = {"record_id": "r:1", "robot_id": "r", "survey_id": "s", "plant_id": 1, "t": 1_780_000_000.0,
             "label": "Tomato___Late_blight", "confidence": 0.9, "diseased": 1, "uncertain": 0, "row": 1,
             "metre": 2.0, "lat": 52.0, "lon": 5.0, "frames": 3}
    checker = ObservationChecker(sample_every=1000)
    for i in range(5):
        checker.check(observation_feature({**plant, "plant_id": i}))
    assert checker.problems == []
    checker.check(observation_feature({**plant, "confidence": 1.5}))  # not sampled: the cheap checks
    checker.check(observation_feature({**plant, "lat": 95.0}))
    bad_label = observation_feature({**plant, "label": "Tomato___Mosaic"})
    bad_label["properties"]["status"] = "maybe"  # a new label: the whole schema
    checker.check(bad_label)
    assert len(checker.problems) == 3
    assert "confidence" in checker.problems[0] and "outside WGS 84" in checker.problems[1]
    assert "'maybe' is not one of" in checker.problems[2]


@pytest.mark.parametrize("label, crop, disease", [
    ("Tomato___Late_blight", "Tomato", "Late blight"),
    ("Pepper,_bell___healthy", "Pepper bell", None),
    ("Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot", "Corn (maize)", "Cercospora leaf spot Gray leaf spot"),
    ("uncertain", None, None),
    ("rust", None, "rust"),
])
def test_crop_and_disease_from_class_names(label, crop, disease):
    assert crop_and_disease(label) == (crop, disease)


def test_running_aggregates_fold_in_new_records_and_row_summaries(db_target):
    db = open_db(db_target)
    db.insert_records([
        (f"r:{i}", PlantRecord("r", "s", i, 1000.0 + i, "uncertain", -1, 0.4, 3, row=0, metre=float(i)), None)
        for i in range(3)
    ] + [(f"r:{10 + i}", PlantRecord("r", "s", 10 + i, 2000.0 + i, "Tomato___Early_blight", 1, 0.9, 3), None)
         for i in range(2)])
    conn = db.reader()
    try:
        with pytest.raises(db_errors(conn), match="readonly|read-only"):
            conn.execute("DELETE FROM plants")
        live = SurveyAggregates()
        first = live.summary(conn, "s")
        (row,) = first.rows  # row 0: only uncertain plants, nothing decided
        assert (row.plants, row.uncertain, row.incidence) == (3, 3, None)
        assert svg.incidence_colour(row.incidence) == svg.NO_DATA_COLOUR
        t = first.totals
        assert (t.plants, t.diseased, t.unassigned, t.incidence, t.t_first, t.t_last) == (5, 2, 2, 1.0, 1000.0, 2001.0)
        assert sum(b.plants for b in first.timeline) == 5 and first.timeline[-1].cumulative == 1.0
        assert live.summary(conn, "s") is first  # nothing new: the same summary object

        # New records are folded in without re-reading the old ones.
        db.insert_record("r:20", PlantRecord("r", "s", 20, 2100.0, "Tomato___healthy", 2, 0.9, 3, row=0, metre=9.0))
        (row,) = live.summary(conn, "s").rows
        assert (row.plants, row.diseased, row.incidence, row.metre_max) == (4, 0, 0.0, 9.0)
        assert live.summary(conn, "s").totals.plants == SurveyAggregates().summary(conn, "s").totals.plants == 6

        # Over a slow serial link only a row summary arrived for row 1: the map still shows it.
        db.insert_record("r:21", RowSummary("r", "s", 1, 40, 10, 0, 0.25, 0.14, 0.4, 2200.0), link="serial")
        rows = live.summary(conn, "s", db.rows("s")).rows
        assert [(r.row, r.plants, r.incidence, r.from_summary) for r in rows] == [
            (0, 4, 0.0, False), (1, 40, 0.25, True)]
        assert 'data-row="1" data-incidence="0.2500"' in svg.field_map(rows)
    finally:
        conn.close()
        db.close()


def test_timeline_has_at_most_48_buckets_and_each_robot_has_a_track(db_target):
    with open_db(db_target) as db:
        fill_survey(db, "long", row_incidence=(0.1,) * 30, plants_per_row=100, thumbnails=False)
        conn = db.reader()
        summary = SurveyAggregates().summary(conn, "long")
        conn.close()
    assert len(summary.timeline) <= 48 and sum(b.plants for b in summary.timeline) == 3000
    assert summary.timeline[-1].cumulative == pytest.approx(summary.totals.incidence)
    (track,) = summary.tracks.values()
    assert 0 < len(track) <= 2001
    assert track[-1].row == 29  # ends where the robot is


def test_long_tracks_are_thinned_evenly_and_end_at_the_robot():
    track = ThinnedTrack(max_points=10)
    points = [TrackPoint(float(i), 0, float(i), None, None) for i in range(1001)]
    for p in points:
        track.add(p)
    kept = track.snapshot()
    assert 5 <= len(kept) <= 11
    assert kept[0] is points[0] and kept[-1] is points[-1]
    gaps = {b.t - a.t for a, b in zip(kept[:-2], kept[1:-1])}
    assert len(gaps) == 1  # even spacing (the stride), apart from the final point


def test_colour_scale_runs_green_to_red():
    assert svg.incidence_colour(0.0) == "#1a9850"
    assert svg.incidence_colour(1.0) == "#d73027"
    assert svg.incidence_colour(0.5) == "#fee08b"
    assert svg.incidence_colour(7.0) == "#d73027"


def test_gallery_walks_the_time_index_without_sorting(survey):
    db_path, truth = survey
    with open_db(db_path) as writer:
        writer.ensure_indexes(queries.INDEXES)
        conn = writer.reader()
    with contextlib.closing(conn):
        if not is_postgres(db_path):  # SQLite's plan; PostgreSQL picks by its statistics
            plan = " | ".join(r[-1] for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT p.record_id FROM plants p JOIN thumbnails th ON th.record_id = p.record_id "
                "WHERE p.survey_id = ? AND (p.diseased = 1 OR p.uncertain = 1) ORDER BY p.t DESC LIMIT 10",
                ("north-field",)))
            assert "USING INDEX web_plants_time" in plan and "TEMP B-TREE" not in plan, plan
        page = queries.flagged(conn, "north-field", limit=10)
    assert len(page) == 10 and [p["t"] for p in page] == sorted((p["t"] for p in page), reverse=True)
    assert all(p["label"] != "Tomato___healthy" for p in page)


def test_plants_without_rows_are_mapped_in_gps_cells(tmp_path):
    # 10 m cells: plants 0-3 m north of the origin share a cell, 25 m north is another one.
    lat0, lon0 = 52.000045, 5.0000147
    records = []
    for i, (north_m, label) in enumerate([(0, "Tomato___Late_blight"), (1, "Tomato___healthy"),
                                          (3, "Tomato___healthy"), (3, "uncertain"), (25, "Tomato___Late_blight")]):
        records.append((f"r:{i}", PlantRecord("r", "gps", i, 100.0 + i, label, 0, 0.9, 3,
                                              lat=lat0 + north_m / 111_320.0, lon=lon0), None))
    with open_db(tmp_path / "s.db") as db:
        db.insert_records(records)
        with contextlib.closing(db.reader()) as conn:
            summary = SurveyAggregates().summary(conn, "gps")
    assert summary.rows == []
    cells = sorted((c.plants, c.diseased, c.uncertain, round(c.incidence, 4)) for c in summary.cells)
    assert cells == [(1, 1, 0, 1.0), (4, 1, 1, 0.3333)]
    html = svg.survey_map(summary)
    assert html.count('class="cell"') == 2 and 'data-incidence="1.0000"' in html and 'data-incidence="0.3333"' in html
