"""Preprocessing parity: what training/evaluation feed the model equals what the robot computes.

The robot does ``spec.apply(image)`` on a decoded BGR frame; training caches images
and evaluation reads them from disk. The tensors must agree to 1e-6.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from leafscout.robot.simulate import soil_texture
from leafscout.training.augment import (AUGMENT_PRESETS, AugmentConfig, LeafAugment, augment_config, cut_leaf_mask, jpeg_roundtrip,
                                        leaf_mask, paint_like_robot, randomize_background)
from leafscout.training.data import read_image, scan_folder
from leafscout.training.distributed import DistInfo
from leafscout.training.evaluate import _disk_batches
from leafscout.training.split import make_split
from leafscout.training.synthetic import draw_leaf, generate_dataset
from leafscout.training.train import TrainConfig, _eval_set, _train_set
from leafscout.vision import PreprocessSpec
from leafscout.vision.detect import leaf_crop
from leafscout.vision.localize import LeafLocalizer, square_crop
from leafscout.vision.white_balance import SOIL_BGR

TOL = 1e-6


@pytest.fixture(scope="module")
def leaf_folder(tmp_path_factory) -> Path:
    root = generate_dataset(tmp_path_factory.mktemp("pp") / "leaves", per_class=4, size=90, seed=2)
    # Awkward formats as well: a PNG and an RGBA PNG renamed .jpg.
    img = read_image(next((root / "Leaf___rust").iterdir()))
    Image.fromarray(img[:, :, ::-1]).save(root / "Leaf___rust" / "as png.png")
    Image.fromarray(img[:, :, ::-1]).convert("RGBA").save(root / "Leaf___spot" / "rgba png (x).jpg", format="PNG")
    return root


@pytest.mark.parametrize("model, size", [("leafnet_bn", None), ("lenet_bn", 32), ("leafnet_bn", 72)])
def test_eval_path_matches_robot_path(leaf_folder: Path, tmp_path: Path, model: str, size: int | None) -> None:
    ds = scan_folder(leaf_folder)
    split = make_split(ds, fractions=(0.0, 1.0, 0.0))  # everything in val
    spec = PreprocessSpec.for_model(model, size)
    cfg = TrainConfig(data=leaf_folder, model=model, img_size=size, cache_dir=tmp_path, progress=False)
    val = _eval_set(split.samples("val"), spec, cfg, DistInfo())
    no_aug = _train_set(split, spec, TrainConfig(**{**cfg.__dict__, "augment": False}), DistInfo())
    disk = torch.cat([x for x, _ in _disk_batches(spec, split.samples("val"), 5)])
    assert len(val) == len(split.samples("val")) == len(disk)
    by_path = {s.path: i for i, s in enumerate(split.samples("train"))}
    for i, s in enumerate(split.samples("val")):
        robot = spec.apply(read_image(s.path))  # what the robot computes
        x, y = val[i]
        assert y == s.label
        assert np.abs(x.numpy() - robot).max() <= TOL
        assert np.abs(disk[i].numpy() - robot).max() <= TOL
        if s.path in by_path:
            assert np.abs(no_aug[by_path[s.path]][0].numpy() - robot).max() <= TOL


def test_training_path_is_augment_then_spec_apply(leaf_folder: Path, tmp_path: Path) -> None:
    """Augmented samples are exactly spec.apply of an augmented uint8 image, reproducible per epoch."""
    ds = scan_folder(leaf_folder)
    split = make_split(ds, fractions=(1.0, 0.0, 0.0))
    spec = PreprocessSpec.for_model("leafnet_bn")
    train = _train_set(split, spec, TrainConfig(data=leaf_folder, cache_dir=tmp_path, progress=False), DistInfo())
    train.epoch = 3
    x1, _ = train[0]
    x2, _ = train[0]
    assert torch.equal(x1, x2)  # seeded by (seed, epoch, index)
    rng = np.random.default_rng((train.seed, 3, 0))
    expected = spec.apply(train.augment(train.images[0], train.masks[0], rng))
    assert np.abs(x1.numpy() - expected).max() <= TOL
    train.epoch = 4
    assert not torch.equal(train[0][0], x1)
    assert x1.shape == (3, 64, 64) and x1.dtype == torch.float32


def test_augment_keeps_uint8_bgr_and_varies() -> None:
    rng = np.random.default_rng(0)
    img, mask = draw_leaf(rng, "Leaf___spot", 80)
    aug = LeafAugment(AugmentConfig(background_p=1.0))
    outs = [aug(img, mask, rng) for _ in range(6)]
    for o in outs:
        assert o.dtype == np.uint8 and o.ndim == 3 and o.shape[2] == 3
        assert 0.6 * 80 * 80 * 0.7 <= o.shape[0] * o.shape[1] <= 80 * 80  # random resized crop
    assert len({o.tobytes() for o in outs}) == 6


def test_background_randomization_replaces_only_the_backdrop() -> None:
    rng = np.random.default_rng(1)
    img, true_mask = draw_leaf(rng, "Leaf___healthy", 96)
    mask = leaf_mask(img)
    inter = ((mask > 0) & (true_mask > 0)).sum()
    union = ((mask > 0) | (true_mask > 0)).sum()
    assert inter / union > 0.85  # the segmentation finds the drawn leaf
    out = randomize_background(rng, img, true_mask)
    kernel = np.ones((5, 5), np.uint8)
    inner = cv2.erode(true_mask, kernel) > 0  # away from the soft edge
    assert np.abs(out[inner].astype(int) - img[inner]).max() <= 1  # the leaf is kept
    outside = cv2.dilate(true_mask, kernel) == 0
    assert (out[outside] != img[outside]).any(axis=1).mean() > 0.5  # the backdrop changes


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a > 0) & (b > 0)).sum() / max(1, ((a > 0) | (b > 0)).sum()))


def test_cut_leaf_mask_leaves_a_coloured_backdrop_out() -> None:
    """PlantVillage shot some classes on saturated backdrops: the saturation rule alone takes them in."""
    rng = np.random.default_rng(3)
    img, true_mask = draw_leaf(rng, "Leaf___healthy", 128)
    img[true_mask == 0] = (170, 60, 40)  # a saturated blue backdrop
    assert _iou(leaf_mask(img), true_mask) < 0.5  # the backdrop counts as leaf
    cut = cut_leaf_mask(img)
    assert _iou(cut, true_mask) > 0.7  # the leaf, plus a thin rim kept for marginal lesions
    far = cv2.dilate(true_mask, np.ones((11, 11), np.uint8)) == 0
    assert not cut[far].any()  # none of the backdrop beyond that rim


def test_pasted_leaf_is_turned_without_losing_it() -> None:
    img = np.full((96, 96, 3), 128, np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    mask[40:56, 16:80] = 255  # a long, lying leaf
    img[mask > 0] = (0, 200, 0)
    out = randomize_background(np.random.default_rng(0), img, mask, angle=90.0, scale=1.0)
    leaf = (out[:, :, 1] > 150) & (out[:, :, 0] < 60) & (out[:, :, 2] < 60)
    ys, xs = np.nonzero(leaf)
    assert np.ptp(ys) > 3 * np.ptp(xs)  # now standing
    assert abs(int(leaf.sum()) - int((mask > 0).sum())) < 0.1 * (mask > 0).sum()  # all of it, and only it


def test_augment_never_pastes_a_failed_cut() -> None:
    """An empty mask would turn the image into a bare background that still carries the label."""
    rng = np.random.default_rng(4)
    img, _ = draw_leaf(rng, "Leaf___spot", 80)
    aug = LeafAugment(AugmentConfig(background_p=1.0, crop_scale=(1.0, 1.0), tilt_p=0.0, brightness=0.0,
                                    contrast=0.0, saturation=0.0, hue=0.0, rotate=False, flip=False))
    out = aug(img, np.zeros((80, 80), np.uint8), np.random.default_rng(5))
    assert np.abs(out.astype(int) - img).max() <= 3  # only the HSV round trip of the (zero) jitter


def test_jpeg_round_trip_halves_colour_detail_like_a_camera() -> None:
    """4:2:0 keeps brightness detail but blurs colour detail finer than two pixels (small lesions)."""
    img = np.full((64, 64, 3), (40, 140, 60), np.uint8)
    img[:, 1::2] = (40, 60, 140)  # one-pixel stripes of another hue, same order of brightness
    out = jpeg_roundtrip(img, 95)
    assert out.shape == img.shape and out.dtype == np.uint8
    red = out[:, :, 2].astype(int)
    assert np.abs(red[:, 1::2] - red[:, ::2]).mean() < 0.5 * 80  # the stripes' colour runs together
    grey = np.zeros((64, 64, 3), np.uint8)
    grey[:, 1::2] = 200
    kept = jpeg_roundtrip(grey, 95)[:, :, 1].astype(int)
    assert np.abs(kept[:, 1::2] - kept[:, ::2]).mean() > 0.7 * 200  # brightness stripes survive
    assert jpeg_roundtrip(img, 80, side=120).shape == (120, 120, 3)
    with pytest.raises(ValueError, match="quality must be within 1-100, got 0"):
        jpeg_roundtrip(img, 0)


def test_augment_applies_jpeg_with_its_probability() -> None:
    rng = np.random.default_rng(6)
    img, mask = draw_leaf(rng, "Leaf___spot", 80)
    still = dict(crop_scale=(1.0, 1.0), tilt_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                 rotate=False, flip=False, background_p=0.0)
    plain = LeafAugment(AugmentConfig(**still))(img, mask, np.random.default_rng(1))
    jpeg = LeafAugment(AugmentConfig(**still, jpeg_p=1.0, jpeg_quality=(60, 60), jpeg_side=(80, 80)))(
        img, mask, np.random.default_rng(1))
    assert jpeg.shape == img.shape
    diff = np.abs(jpeg.astype(int) - plain).mean()
    assert 0.5 < diff < 12  # compressed: changed, but still the same leaf


def _painted(crop: np.ndarray) -> np.ndarray:
    return (crop == np.rint(SOIL_BGR).astype(np.uint8)).all(axis=2)


def test_robot_paint_matches_the_robots_own_crop() -> None:
    """Training's painted crop (``--augment robot``) is the crop the robot classifies: same leaf kept, rest soil."""
    rng = np.random.default_rng(7)
    frame = soil_texture(rng, 480, 640)
    leaf, mask = draw_leaf(rng, "Leaf___spot", 180)  # a leaf of ~120 px, as the field's (paint_like_robot's scale)
    y0, x0 = 150, 230
    region = frame[y0 : y0 + 180, x0 : x0 + 180]
    region[mask > 0] = leaf[mask > 0]
    dets = LeafLocalizer()(frame)
    assert len(dets) == 1
    robot = leaf_crop(frame, dets[0].box, dets[0], margin=0.08, fill=SOIL_BGR)
    ours = paint_like_robot(square_crop(frame, dets[0].box, margin=0.08))
    assert ours is not None and ours.shape == robot.shape
    kept_robot, kept_ours = ~_painted(robot), ~_painted(ours)
    assert 0.2 < kept_robot.mean() < 0.9  # the robot did paint around the leaf
    assert _iou(kept_robot, kept_ours) > 0.85  # not 1: the grown rim is scaled to a typical leaf, not exact
    assert np.array_equal(ours[kept_ours], square_crop(frame, dets[0].box, margin=0.08)[kept_ours])  # leaf untouched
    assert paint_like_robot(soil_texture(rng, 96, 96)) is None  # bare soil: nothing the robot would crop


def test_robot_preset_paints_with_its_probability() -> None:
    rng = np.random.default_rng(8)
    img, mask = draw_leaf(rng, "Leaf___healthy", 96)
    assert AUGMENT_PRESETS["field"].robot_paint_p == 0 and 0 < AUGMENT_PRESETS["robot"].robot_paint_p < 1
    still = dict(crop_scale=(1.0, 1.0), tilt_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                 rotate=False, flip=False, background_p=0.0)
    always = LeafAugment(AugmentConfig(**still, robot_paint_p=1.0))
    out = always(img, mask, np.random.default_rng(1))
    corners = _painted(out)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.all() and not _painted(out)[48, 48]  # backdrop painted, leaf kept
    never = LeafAugment(AugmentConfig(**still))(img, mask, np.random.default_rng(1))
    assert not _painted(never).any()


def test_field_clean_keeps_field_backgrounds_but_not_the_leaf_degradations() -> None:
    """``--augment field-clean`` (a finishing fine-tune) pastes on real field patches as ``field`` does,
    but never casts, darkens, shades, blurs, noises or occludes the leaf itself."""
    rng = np.random.default_rng(9)
    img, mask = draw_leaf(rng, "Leaf___healthy", 96)
    bank = np.zeros((3, 64, 64, 3), np.uint8)
    bank[..., 0] = 255  # pure blue "field" patches: nothing drawn is this colour
    still = dict(crop_scale=(1.0, 1.0), tilt_p=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                 rotate=False, flip=False, jpeg_p=0.0)
    clean = replace(AUGMENT_PRESETS["field-clean"], **still)
    field = replace(AUGMENT_PRESETS["field"], **still)
    def run(config: AugmentConfig, seed: int) -> np.ndarray:
        return LeafAugment(replace(config, background_p=0.0), bank)(img, mask, np.random.default_rng(seed))

    plain = [run(AugmentConfig(**still), s) for s in range(40)]  # the jitter's colour round trip only
    assert all(np.array_equal(run(clean, s), p) for s, p in enumerate(plain))
    assert sum(not np.array_equal(run(field, s), p) for s, p in enumerate(plain)) > 20
    pasted = [LeafAugment(replace(clean, background_p=1.0), bank)(img, mask, np.random.default_rng(s)) for s in range(60)]
    on_field = np.mean([(p[0, 0] == (255, 0, 0)).all() for p in pasted])
    assert abs(on_field - AUGMENT_PRESETS["field-clean"].real_background_p) < 0.2


def test_robot_paint_probability_overrides_the_preset() -> None:
    """``--robot-paint-p`` sets the painted-crop probability of any preset; None keeps the preset's."""
    assert augment_config("field-clean", 0.5).robot_paint_p == 0.0
    assert augment_config("robot", 0.5).robot_paint_p == AUGMENT_PRESETS["robot"].robot_paint_p
    cfg = augment_config("field-clean", 0.5, robot_paint_p=0.35)
    assert cfg.robot_paint_p == 0.35 and cfg.real_background_p == AUGMENT_PRESETS["field-clean"].real_background_p
    assert augment_config("robot", 0.5, robot_paint_p=0.0).robot_paint_p == 0.0


def test_augment_set_changes_one_setting_of_the_preset_with_its_type() -> None:
    """``--augment-set NAME=VALUE`` reaches any AugmentConfig field, parsed as that field's type."""
    cfg = augment_config("field-clean", 0.5, settings={"blur_p": "0.2", "crop_scale": "0.5,1", "flip": "false",
                                                       "jpeg_quality": "70,90"})
    assert cfg.blur_p == 0.2 and cfg.crop_scale == (0.5, 1.0) and cfg.flip is False and cfg.jpeg_quality == (70, 90)
    assert cfg.real_background_p == AUGMENT_PRESETS["field-clean"].real_background_p  # the rest stays the preset's
    with pytest.raises(ValueError, match="unknown augmentation setting 'blurp'"):
        augment_config("field", 0.5, settings={"blurp": "0.2"})
    with pytest.raises(ValueError, match="jpeg_quality='70.5,90': expected 2 comma-separated ints"):
        augment_config("field", 0.5, settings={"jpeg_quality": "70.5,90"})
    with pytest.raises(ValueError, match="blur_p='often': expected a float"):
        augment_config("field", 0.5, settings={"blur_p": "often"})
    with pytest.raises(ValueError, match="flip='maybe': expected true or false"):
        augment_config("field", 0.5, settings={"flip": "maybe"})
