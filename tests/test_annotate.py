"""`leafscout run --annotate OUT.avi`: an overlay video any player opens, one frame per processed frame."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from leafscout.cli import main
from leafscout.robot.annotate import COLOURS, draw


def test_run_annotate_writes_a_playable_overlay_video(tiny_bundle: Path, tmp_path: Path) -> None:
    video, report = tmp_path / "overlay.avi", tmp_path / "report.json"
    spec = "sim:rows=1,length=1.5,seed=5"
    assert main(["run", "--camera", spec, "--bundle", str(tiny_bundle), "--threads", "1",
                 "--annotate", str(video), "--report", str(report)]) == 0
    frames = json.loads(report.read_text())["frames"]
    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened()
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame)
    cap.release()
    assert len(read) == frames > 10 and read[0].shape == (480, 640, 3)
    # the overlay differs from the plain recording where leaves are: boxes and outlines were drawn
    from leafscout.robot.simulate import SimSource

    sim = SimSource.from_spec(spec[4:]).simulator
    first = next(sim.frames())[0]
    assert np.abs(read[0].astype(int) - first.astype(int)).max() > 100


def test_draw_boxes_labels_and_outline() -> None:
    image = np.full((120, 160, 3), 90, np.uint8)
    mask = np.zeros((60, 80), np.uint8)  # a half-resolution mask is scaled to the image
    mask[10:30, 10:30] = 255
    out = draw(image, [((100, 60, 150, 110), "rust 0.91", "diseased")], mask)
    assert (image == 90).all()  # a copy
    assert tuple(out[85, 100]) == COLOURS["diseased"]  # the box's left edge
    assert (out[20, 20:60] != 90).any(axis=1).any()  # the outline of the mask, at full size (x 20..60)
    assert tuple(out[40, 40]) == (90, 90, 90)  # inside the outline: untouched
