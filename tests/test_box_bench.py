"""The real-photo box benchmark scores what it claims: one-to-one matches at IoU >= 0.5."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import box_bench  # noqa: E402


def test_matches_are_one_to_one_at_half_overlap() -> None:
    truth = [(0, 0, 10, 10), (20, 0, 30, 10)]
    assert box_bench.matched(truth, [(0, 0, 10, 10), (20, 0, 30, 10)]) == 2
    assert box_bench.matched(truth, [(0, 0, 10, 10), (1, 0, 11, 10)]) == 1  # two detections, one plant
    assert box_bench.matched(truth, [(0, 0, 10, 20)]) == 1  # IoU exactly 0.5 counts
    assert box_bench.matched(truth, [(0, 0, 10, 21)]) == 0  # just under half
    assert box_bench.matched(truth, []) == 0 and box_bench.matched([], [(0, 0, 1, 1)]) == 0


def test_a_cwfid_like_folder_is_scored_end_to_end(tmp_path: Path) -> None:
    cw = tmp_path / "cwfid"
    (cw / "images").mkdir(parents=True)
    (cw / "labels").mkdir()
    (cw / "classes.txt").write_text("crop\nweed\n")
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal((40, 56, 98), 6, (480, 640, 3)), 0, 255).astype(np.uint8)  # brown soil
    leaves = [(160, 160), (480, 160), (320, 360)]
    for cx, cy in leaves:
        cv2.ellipse(frame, (cx, cy), (50, 32), 0, 0, 360, (40, 160, 60), -1)
    cv2.imwrite(str(cw / "images" / "001_image.jpg"), frame)
    labels = [f"0 {cx / 640:.6f} {cy / 480:.6f} {100 / 640:.6f} {64 / 480:.6f}" for cx, cy in leaves]
    labels.append(f"1 {560 / 640:.6f} {420 / 480:.6f} {40 / 640:.6f} {40 / 480:.6f}")  # a weed nobody drew
    (cw / "labels" / "001_image.txt").write_text("\n".join(labels) + "\n")
    (cw / "images" / "002_image.jpg").write_bytes((cw / "images" / "001_image.jpg").read_bytes())  # even: tuning
    (cw / "labels" / "002_image.txt").write_text(labels[0] + "\n")
    out, md = tmp_path / "boxes.json", tmp_path / "boxes.md"
    assert box_bench.main(["--data", str(tmp_path), "--json", str(out), "--md", str(md)]) == 0
    r = json.loads(out.read_text())["sets"]["cwfid held-out images"]["now"]
    assert (r["images"], r["boxes"], r["detections"], r["matched"]) == (1, 4, 3, 3)
    assert r["recall"] == 0.75 and r["precision"] == 1.0
    assert "| cwfid held-out images | 1 | 4 | 3 | 3 | 75.0 % | 100.0 % |" in md.read_text()


def test_no_data_is_a_clear_exit(tmp_path: Path, capsys) -> None:
    assert box_bench.main(["--data", str(tmp_path), "--json", str(tmp_path / "b.json"),
                           "--md", str(tmp_path / "b.md")]) == 2
    assert "no plantdoc/ or cwfid/" in capsys.readouterr().err
