"""The field simulator: files written, truth consistent with the video and NMEA, deterministic by seed."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from leafscout.cli import main
from leafscout.robot.gps import FieldGeometry, NmeaLog
from leafscout.robot.simulate import FieldConfig, FieldSimulator, LeafBank, SimulationError, SimSource, simulate_run

CONFIG = FieldConfig(rows=2, row_length_m=2.0, seed=11)


def test_writes_video_nmea_field_and_truth_that_agree(tmp_path: Path) -> None:
    out = simulate_run(tmp_path / "run", CONFIG)
    truth = json.loads((out / "truth.json").read_text())
    cap = cv2.VideoCapture(str(out / "field.avi"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == truth["frames"]
    assert truth["plants_total"] == len(truth["plants"]) == sum(r["plants"] for r in truth["rows"])
    assert {p["row"] for p in truth["plants"]} == {0, 1}
    for r in truth["rows"]:
        ps = [p for p in truth["plants"] if p["row"] == r["row"]]
        assert r["diseased"] == sum("healthy" not in p["cls"] for p in ps)
    field = FieldGeometry.load(out / "field.json")
    log = NmeaLog(out / "gps.nmea")
    assert log.counters.checksum_errors == 0
    rows = {field.locate(f.lat, f.lon)[0] for f in log.fixes}
    assert {0, 1} <= rows  # the track covers both rows


def test_same_seed_same_field_other_seed_other_field() -> None:
    bank = LeafBank.synthetic(seed=1, per_class=3)
    a, b = FieldSimulator(CONFIG, bank), FieldSimulator(CONFIG, bank)
    assert a.truth() == b.truth()
    fa, fb = next(a.frames())[0], next(b.frames())[0]
    assert np.array_equal(fa, fb)
    c = FieldSimulator(FieldConfig(rows=2, row_length_m=2.0, seed=12), bank)
    assert c.truth()["plants"] != a.truth()["plants"]


def test_sim_spec_options_and_bad_options() -> None:
    src = SimSource.from_spec("rows=1,length=1.5,seed=2,fps=10")
    assert src.simulator.config.rows == 1 and src.fps == 10.0
    with pytest.raises(SimulationError, match="unknown simulator option 'colour'; known:"):
        SimSource.from_spec("colour=red")
    with pytest.raises(SimulationError, match=r"invalid field settings: rows=0 \(expected >= 1\)"):
        FieldConfig(rows=0)
    with pytest.raises(SimulationError, match=r"video_quality=0 \(expected 1-100\)"):
        FieldConfig(video_quality=0)
    with pytest.raises(SimulationError, match="unknown simulator option 'video_quality'"):
        SimSource.from_spec("video_quality=50")  # the live simulator records nothing


def test_video_quality_is_the_recording_quality(tmp_path: Path) -> None:
    """OpenCV's own MJPEG writer at the configured quality: lower quality, fewer bytes, more error."""
    config = FieldConfig(rows=1, row_length_m=1.0, seed=3)
    sim = FieldSimulator(config, LeafBank.synthetic(seed=config.seed))
    first = next(sim.frames())[0]
    sizes, errors = {}, {}
    for q in (30, 95):
        out = simulate_run(tmp_path / str(q), FieldConfig(rows=1, row_length_m=1.0, seed=3, video_quality=q))
        sizes[q] = (out / "field.avi").stat().st_size
        ok, frame = cv2.VideoCapture(str(out / "field.avi")).read()
        assert ok
        errors[q] = np.abs(frame.astype(int) - first).mean()
    assert sizes[30] < 0.8 * sizes[95]
    assert errors[95] < errors[30]
    assert errors[95] < 2.0  # close to what the simulator rendered


def test_real_leaves_are_cut_from_their_backdrop(plantvillage_dir: Path | None) -> None:
    if plantvillage_dir is None:
        pytest.skip("the shared PlantVillage folder is not on this machine")
    bank = LeafBank.from_folder(plantvillage_dir, per_class=1, seed=0)
    assert len(bank.classes) >= 20 and bank.healthy and bank.diseased
    for leaves in bank.by_class.values():
        leaf = leaves[0]
        assert leaf.image.shape[:2] == leaf.mask.shape
        assert 0.3 < (leaf.mask > 0).mean() <= 1.0  # cropped tight around the leaf


def test_cli_simulate_writes_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["simulate", "--out", str(tmp_path / "cli"), "--rows", "1", "--row-length", "1.5", "--seed", "4"])
    assert rc == 0
    assert "plants" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["field.avi", "field.json", "gps.nmea", "truth.json"]
    assert main(["simulate", "--out", str(tmp_path / "x"), "--split", str(tmp_path / "s.json")]) == 2
    assert main(["simulate", "--out", str(tmp_path / "q"), "--video-quality", "0"]) == 2
    assert "video_quality=0 (expected 1-100)" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
