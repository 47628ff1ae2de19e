"""The tracker counts each plant once across frames, on made-up detections and on real simulated frames."""
from __future__ import annotations

import numpy as np
import pytest

from leafscout.robot.simulate import FieldConfig, FieldSimulator, LeafBank
from leafscout.robot.tracker import PlantTracker, TrackerConfig
from leafscout.vision.localize import Detection, LeafLocalizer

W, H = 640, 480


def det(cx: float, cy: float, size: float = 100.0) -> Detection:
    box = (int(cx - size / 2), int(cy - size / 2), int(cx + size / 2), int(cy + size / 2))
    clipped = (max(0, box[0]), max(0, box[1]), min(W, box[2]), min(H, box[3]))
    border = clipped != box
    ccx = (clipped[0] + clipped[2]) / 2  # what a localizer sees of a leaf cut by the edge
    return Detection(clipped, float(size * size), (ccx, cy), border, np.zeros((1, 1, 2), np.int32), 1.0)


def drive(plants_x: list[float], ys: list[float], steps: int, speed: float = 20.0, skip: set = frozenset()):
    """Plants at fixed field positions slide right to left; yields detections of what is in view."""
    for k in range(steps):
        out = []
        for i, (x, y) in enumerate(zip(plants_x, ys)):
            cx = x - k * speed
            if -40 < cx < W + 40 and (i, k) not in skip:
                out.append(det(cx, y))
        yield k, out


def test_each_plant_is_counted_once_across_frames() -> None:
    xs, ys = [700, 900, 1100, 760, 960], [120, 120, 120, 360, 360]
    tracker = PlantTracker((W, H))
    ended, motion = [], []
    for k, dets in drive(xs, ys, steps=90):
        ended += tracker.update(dets, k, where=k)
        motion.append(tracker.motion[0])
    ended += tracker.flush()
    assert len(ended) == 5
    assert all(t.frames > 25 for t in ended)
    assert motion[40] == pytest.approx(-20, abs=2)  # learned the robot's motion


def test_a_plant_missed_for_a_few_frames_is_still_one_plant() -> None:
    skip = {(0, k) for k in range(20, 23)} | {(1, k) for k in range(30, 34)}
    tracker = PlantTracker((W, H), TrackerConfig(max_missed=4))
    ended = []
    for k, dets in drive([700, 900], [200, 200], steps=70, skip=skip):
        ended += tracker.update(dets, k)
    assert len(ended + tracker.flush()) == 2


def test_dropped_frames_keep_each_plant_one_track() -> None:
    """A live loop that processes every third frame: the gap scales the predicted shift."""
    xs, ys = [700, 800, 900, 1000], [120, 360, 120, 360]
    tracker = PlantTracker((W, H))
    ended, motion = [], {}
    for k, dets in drive(xs, ys, steps=90, speed=25.0):
        if k % 3 == 0:
            ended += tracker.update(dets, k)
            motion[k] = tracker.motion[0]
    ended += tracker.flush()
    assert len(ended) == 4
    assert motion[27] == pytest.approx(-25, abs=1)  # per camera frame, not per processed one


def test_a_gap_longer_than_max_missed_ends_the_tracks() -> None:
    """Frames never processed (a frozen camera's repeats at the headland turn) still count as unseen."""
    tracker = PlantTracker((W, H), TrackerConfig(max_missed=4, min_frames=3))
    for k in range(5):
        assert tracker.update([det(320 - 10 * k, 240)], k) == []
    assert tracker.update([], 5) == []  # one frame of bare soil, then frames 6-9 never processed
    # the next row's plant, where the last one would be by now: the old plant ended, a new track begins
    ended = tracker.update([det(320 - 10 * 10, 240)], 10)
    assert [(t.first_frame, t.frames) for t in ended] == [(0, 5)]
    assert [t.first_frame for t in tracker.tracks] == [10]


def test_one_frame_flicker_is_noise_not_a_plant() -> None:
    tracker = PlantTracker((W, H), TrackerConfig(min_frames=3))
    tracker.update([det(300, 240)], 0)
    assert tracker.update([], 1) == [] and tracker.flush() == []
    assert tracker.noise_tracks == 1


def test_votes_only_while_fully_in_view_and_spaced_out() -> None:
    tracker = PlantTracker((W, H), TrackerConfig(votes=3, vote_every=4))
    voted = []
    for k, dets in drive([700], [240], steps=40):
        tracker.update(dets, k)
        for t in tracker.due(k):
            assert t.full_view
            tracker.add_vote(t, np.array([0.2, 0.8]), k, np.zeros((8, 8, 3), np.uint8))
            voted.append(k)
    assert len(voted) == 3 and np.diff(voted).min() >= 4


def test_the_position_kept_is_where_the_plant_crossed_the_centre() -> None:
    tracker = PlantTracker((W, H))
    ended = []
    for k, dets in drive([700], [240], steps=60):
        ended += tracker.update(dets, k, where=f"frame{k}")
    (plant,) = ended + tracker.flush()
    assert plant.where == "frame19"  # 700 - 19 * 20 = 320, the centre


def test_counts_real_simulated_frames_like_the_truth() -> None:
    sim = FieldSimulator(FieldConfig(rows=1, row_length_m=3.0, seed=5), LeafBank.synthetic(seed=5, per_class=4))
    localizer, tracker = LeafLocalizer(), PlantTracker((W, H))
    plants = []
    for k, (image, meta) in enumerate(sim.frames()):
        plants += tracker.update(localizer(image), k, where=meta["metre"])
    plants += tracker.flush()
    truth = [p for p in sim.plants if "blight" not in p.cls]  # blight can be all soil-brown: see test_localize
    n_blight = len(sim.plants) - len(truth)
    assert len(truth) <= len(plants) <= len(sim.plants) + n_blight
