"""Leaf localization on frames with a known number of leaves, lesions, and bare soil."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from leafscout.robot.simulate import LeafImage, paste_leaf, soil_texture
from leafscout.training.synthetic import SYNTHETIC_CLASSES, draw_leaf
from leafscout.vision.localize import LeafLocalizer, LocalizeConfig, LocalizeError, masked_square_crop, square_crop


# Blight can turn most of a leaf soil-brown; colour alone cannot find such a leaf (a known limit).
CLASSES = [c for c in SYNTHETIC_CLASSES if "blight" not in c]


def field_frame(seed: int, n_leaves: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A 640x480 soil frame with ``n_leaves`` synthetic leaves on a grid (no two touch)."""
    rng = np.random.default_rng(seed)
    frame = soil_texture(rng, 480, 640)
    cells = [(80 + 160 * (i % 4), 80 + 160 * (i // 4)) for i in range(12)]
    centres = [cells[i] for i in sorted(rng.permutation(12)[:n_leaves])]
    for k, (cx, cy) in enumerate(centres):
        img, mask = draw_leaf(rng, CLASSES[k % len(CLASSES)], 160)
        ys, xs = np.nonzero(mask)
        leaf = LeafImage("x", img[ys.min():ys.max() + 1, xs.min():xs.max() + 1],
                         mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1], "test")
        paste_leaf(frame, leaf, cx, cy, int(rng.integers(80, 110)), float(rng.uniform(0, 360)))
    return frame, centres


@pytest.mark.parametrize("seed,n", [(0, 1), (1, 5), (2, 10), (3, 12)])
def test_counts_leaves_in_a_frame(seed: int, n: int) -> None:
    frame, centres = field_frame(seed, n)
    dets = LeafLocalizer()(frame)
    assert len(dets) == n
    for cx, cy in centres:  # every leaf is found where it was put
        assert any(d.box[0] <= cx <= d.box[2] and d.box[1] <= cy <= d.box[3] for d in dets)


def green_ellipses(ellipses: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """Soil with flat green ellipses (cx, cy, half length, half width, angle) drawn in order: later ones on top."""
    frame = soil_texture(np.random.default_rng(9), 480, 640)
    for k, (cx, cy, a, b, angle) in enumerate(ellipses):
        cv2.ellipse(frame, (cx, cy), (a, b), angle, 0, 360, (40, 150 + 15 * (k % 3), 60), -1)
    return frame


def test_a_chain_of_overlapping_leaves_is_cut_into_each_leaf() -> None:
    # a big leaf with two small ones overlapping it by a quarter on each side, and a third on the far one:
    # a cut at a share of the chain's deepest point loses the small leaves beside the big one
    chain = [(180, 240, 46, 30, 0), (290, 240, 64, 44, 0), (400, 240, 46, 30, 0), (480, 240, 40, 27, 0)]
    dets = LeafLocalizer()(green_ellipses(chain))
    assert len(dets) == len(chain), [d.box for d in dets]
    for cx, cy, *_ in chain:
        assert sum(d.box[0] <= cx <= d.box[2] and d.box[1] <= cy <= d.box[3] for d in dets) >= 1


def test_a_long_leaf_is_not_cut_and_neither_are_two_leaves_side_by_side_apart() -> None:
    long_leaf = [(320, 240, 150, 35, 20)]  # a ridge without a neck: one leaf however long
    assert len(LeafLocalizer()(green_ellipses(long_leaf))) == 1
    apart = [(200, 240, 50, 32, 30), (440, 240, 50, 32, -30)]
    assert len(LeafLocalizer()(green_ellipses(apart))) == 2


def test_splitting_settings_are_checked() -> None:
    for bad in ({"split_saddle": 0.0}, {"split_saddle": 1.5}, {"peak_px": 0}, {"peak_floor": 1.2},
                {"part_area": 0.5}, {"part_core_px": -1}):
        with pytest.raises(LocalizeError, match=next(iter(bad))):
            LocalizeConfig(**bad)


@pytest.mark.parametrize("seed", range(6))
def test_bare_soil_gives_no_detections(seed: int) -> None:
    frame = soil_texture(np.random.default_rng(100 + seed), 480, 640)
    ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 75])  # compression artefacts too
    assert LeafLocalizer()(frame) == [] and LeafLocalizer()(cv2.imdecode(jpg, cv2.IMREAD_COLOR)) == []


def test_brown_and_yellow_lesions_stay_inside_the_leaf() -> None:
    frame = soil_texture(np.random.default_rng(7), 480, 640)
    cv2.ellipse(frame, (320, 240), (120, 70), 20, 0, 360, (40, 140, 60), -1)  # green leaf
    cv2.circle(frame, (300, 235), 35, (40, 60, 95), -1)  # brown necrosis, soil-coloured, in the middle
    cv2.ellipse(frame, (420, 275), (25, 15), 20, 0, 360, (40, 200, 220), -1)  # yellow chlorosis at the tip
    dets = LeafLocalizer()(frame)
    assert len(dets) == 1
    d = dets[0]
    x0, y0, x1, y1 = d.box
    assert x0 <= 215 and x1 >= 425 and y0 <= 190 and y1 >= 290  # the whole leaf, tip included
    mask = d.mask
    assert mask.shape == (d.height, d.width)
    assert mask[235 - y0, 300 - x0] and mask[275 - y0, 420 - x0]  # lesion pixels are leaf pixels
    assert not mask[0, 0]  # the box corner is soil


def test_boxes_are_in_full_frame_pixels_at_any_resolution() -> None:
    frame, centres = field_frame(4, 3)
    big = cv2.resize(frame, (1280, 960), interpolation=cv2.INTER_LINEAR)
    small_dets, big_dets = LeafLocalizer()(frame), LeafLocalizer()(big)
    assert len(big_dets) == len(small_dets) == 3
    for a, b in zip(sorted(d.centroid for d in small_dets), sorted(d.centroid for d in big_dets)):
        assert b == pytest.approx((2 * a[0], 2 * a[1]), abs=6)


def test_masked_crop_keeps_the_leaf_and_paints_the_soil() -> None:
    frame, (centre,) = field_frame(5, 1)
    (d,) = LeafLocalizer()(frame)
    crop = masked_square_crop(frame, d, margin=0.1, fill=128)
    plain = square_crop(frame, d.box, margin=0.1)
    assert crop.shape == plain.shape and not np.shares_memory(crop, frame)
    assert (crop[0, 0] == 128).all()  # the corner was soil
    c = crop.shape[0] // 2
    assert (crop[c - 3 : c + 3, c - 3 : c + 3] == plain[c - 3 : c + 3, c - 3 : c + 3]).all()  # the leaf is untouched


def test_masked_crop_paints_a_colour_and_keeps_a_rim_around_the_leaf() -> None:
    frame, _ = field_frame(5, 1)
    (d,) = LeafLocalizer()(frame)
    tight = masked_square_crop(frame, d, margin=0.1, fill=(40, 56, 98))
    grown = masked_square_crop(frame, d, margin=0.1, fill=(40, 56, 98), grow_px=4)
    assert tight[0, 0].tolist() == [40, 56, 98]  # the corner was soil: painted the colour given
    painted = lambda c: (c == np.array([40, 56, 98], np.uint8)).all(axis=2)  # noqa: E731
    assert painted(grown).sum() < painted(tight).sum()  # the rim around the leaf's outline is the frame's own


def test_a_dull_blue_green_leaf_on_straw_is_found_and_straw_alone_is_not() -> None:
    """Yellow straw has more excess green than a dull blue-green leaf (PlantVillage's healthy apple
    leaves): only green-over-red (``green_red``) tells them apart."""
    from leafscout.robot.conditions import CONDITIONS

    rng = np.random.default_rng(0)
    frame = soil_texture(rng, 480, 640)
    CONDITIONS["straw"].apply(rng, frame)
    assert LeafLocalizer()(frame) == []
    for cx, cy in ((120, 120), (320, 120), (520, 120), (120, 360), (320, 360), (520, 360)):
        m = np.zeros(frame.shape[:2], np.uint8)
        cv2.ellipse(m, (cx, cy), (50, 32), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        leaf = np.array([100, 110, 84]) + rng.normal(0, 12, (480, 640, 3))
        frame[m > 0] = np.clip(leaf[m > 0], 0, 255).astype(np.uint8)
    assert len(LeafLocalizer()(frame)) == 6
    assert len(LeafLocalizer(LocalizeConfig(green_red=0.0, max_index=0.3))(frame)) < 6  # excess green alone


def test_square_crop_is_a_clipped_square_view() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    crop = square_crop(frame, (600, 10, 640, 90), margin=0.1)
    assert crop.shape[0] == crop.shape[1] == 96 and np.shares_memory(crop, frame)


def test_bad_frames_and_settings_are_rejected_clearly() -> None:
    with pytest.raises(LocalizeError, match="expected a uint8 HxWx3 BGR frame, got float32"):
        LeafLocalizer()(np.zeros((48, 64, 3), np.float32))
    with pytest.raises(LocalizeError, match="min_area < max_area"):
        LocalizeConfig(min_area=0.6, max_area=0.5)


def test_gray_world_undoes_a_warm_cast_but_not_a_different_ground() -> None:
    from leafscout.vision.white_balance import SOIL_BGR, WhiteBalance, WhiteBalanceError, apply_gains, balance_gains

    wb = WhiteBalance("gray-world", reference=SOIL_BGR, deadband=0.0)
    soil = np.array(SOIL_BGR)
    warm = soil * np.array([0.7, 1.0, 1.25])  # the same soil under a warm cast
    gains = balance_gains(np.zeros((4, 4, 3), np.uint8), wb, warm)
    fixed = warm * gains
    assert np.allclose(fixed / fixed.sum(), soil / soil.sum(), atol=0.02)  # the soil's colour is back
    straw = np.array([110.0, 175.0, 200.0])  # another ground: greener, not a light change
    g = balance_gains(np.zeros((4, 4, 3), np.uint8), wb, straw)
    assert g[0] * g[2] == pytest.approx(g[1] ** 2, rel=1e-4)  # blue up as much as red down: no green change
    assert abs(g[0] / g[2] - 1) < 0.35  # and modest
    full = balance_gains(np.zeros((4, 4, 3), np.uint8), WhiteBalance("gray-world", reference=SOIL_BGR, axis="full"),
                         straw)
    assert full[1] < 0.9  # the full correction would pull the green down too
    leaf = np.full((2, 2, 3), (60, 140, 50), np.uint8)
    assert (apply_gains(leaf, np.array([1.0, 1.0, 1.0], np.float32)) == leaf).all()
    assert apply_gains(leaf, np.array([2.0, 1.0, 0.5], np.float32))[0, 0].tolist() == [120, 140, 25]
    near = np.array(SOIL_BGR) * np.array([1.04, 1.0, 0.96])  # a soil a shade bluer: inside the deadband
    assert np.allclose(balance_gains(np.zeros((4, 4, 3), np.uint8), WhiteBalance("gray-world", reference=SOIL_BGR),
                                     near), 1.0)
    with pytest.raises(WhiteBalanceError, match="mode 'auto' is not one of off, gray-world"):
        WhiteBalance("auto")


def test_gray_world_cools_a_warm_frame_but_never_warms_one() -> None:
    """Grey gravel is bluer than brown soil, as a cool light would make it; warming such a frame
    turned healthy leaves diseased (docs/localizer.md), so by default a frame is only cooled."""
    from leafscout.vision.white_balance import SOIL_BGR, WhiteBalance, WhiteBalanceError, balance_gains

    gravel = np.array([70.0, 75.0, 80.0])
    frame = np.zeros((4, 4, 3), np.uint8)
    wb = WhiteBalance("gray-world", reference=SOIL_BGR)
    assert np.allclose(balance_gains(frame, wb, gravel), 1.0)
    warmed = balance_gains(frame, WhiteBalance("gray-world", reference=SOIL_BGR, max_warming=None), gravel)
    assert warmed[2] > 1.1 > 0.9 > warmed[0]  # without the limit: red up, blue down
    warm = np.array(SOIL_BGR) * np.array([0.7, 1.0, 1.25])
    cooled = balance_gains(frame, wb, warm)
    assert cooled[0] > 1.0 > cooled[2]  # a warm cast is still undone
    assert wb.soil_fill == SOIL_BGR and WhiteBalance(paint_soil=False).soil_fill is None
    with pytest.raises(WhiteBalanceError, match="max_warming must be >= 0"):
        WhiteBalance(max_warming=-0.1)
