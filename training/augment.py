"""Leaf-appropriate augmentation on uint8 BGR images (NumPy/OpenCV, cheap on a CPU).

Leaves have no canonical orientation, so flips and any rotation are fair; lighting in
the field varies, hence colour jitter (hue only a little: yellowing is a symptom).
PlantVillage shot each class on its own backdrop (see shared/data/README.md), so a
model can score well by looking at the background; ``randomize_background`` cuts the
leaf out and pastes it on random colours, textures and soil so that cue is useless.
The result is still a uint8 BGR image; ``PreprocessSpec.apply`` turns it into a tensor.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import cv2
import numpy as np

from leafscout.vision.detect import LEAF_GROW_PX
from leafscout.vision.localize import LocalizeConfig, vegetation_mask
from leafscout.vision.white_balance import SOIL_BGR

__all__ = ["AUGMENT_PRESETS", "MIN_CUT_FRACTION", "AugmentConfig", "LeafAugment", "augment_config", "bank_background",
           "blur", "cast_shadow", "cut_leaf_mask", "exposure_shift", "jpeg_roundtrip", "leaf_mask", "paint_like_robot",
           "random_background", "randomize_background", "sensor_noise", "white_balance_shift"]

_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
# A cut covering less of its image than this failed (backdrop too green, leaf too small):
# training does not paste it, the field simulator does not plant it.
MIN_CUT_FRACTION = 0.08


def leaf_mask(image: np.ndarray) -> np.ndarray:
    """Foreground mask (255 = leaf) for a leaf on a low-saturation backdrop.

    Leaves and lesions are saturated or greener than grey/black studio backdrops;
    closing plus filling the largest outline recovers dark lesions inside the leaf.
    """
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    b, g, r = (image[:, :, i].astype(np.int16) for i in range(3))
    fg = (hsv[:, :, 1] > 60) & (hsv[:, :, 2] > 30) | (2 * g - r - b > 25)
    mask = cv2.morphologyEx(fg.astype(np.uint8) * 255, cv2.MORPH_OPEN, _KERNEL)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _KERNEL, iterations=2)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    if contours:
        biggest = max(contours, key=cv2.contourArea)
        cv2.drawContours(out, [biggest], -1, 255, -1)
    return out


def cut_leaf_mask(image: np.ndarray) -> np.ndarray:
    """Mask (uint8, 255 = leaf) of a photographed leaf without any of its backdrop.

    ``leaf_mask`` (saturation against a plain backdrop) keeps brown lesions at the
    margin but can take in a coloured backdrop or a shadow; green/yellow tissue (the
    robot's localizer rule) never does. Their intersection, with the tissue mask grown
    by a few pixels, keeps marginal lesions and drops the backdrop. Training pastes
    leaves cut this way on new backgrounds, and the field simulator plants them.
    """
    from leafscout.vision.localize import largest_leaf_mask

    tissue = largest_leaf_mask(image).astype(np.uint8)
    grow = max(3, image.shape[1] // 16) | 1
    near = cv2.dilate(tissue, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow, grow)))
    mask = (leaf_mask(image) > 0) & (near > 0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros(image.shape[:2], np.uint8)
    if contours:
        cv2.drawContours(out, [max(contours, key=cv2.contourArea)], -1, 255, thickness=cv2.FILLED)
    return out


# The robot finds leaves at 160 px across a 640 px frame, where a leaf is some 30-40 px; its
# crop keeps the leaf's outline grown by LEAF_GROW_PX frame pixels (vision.detect).
_ROBOT_MASK = LocalizeConfig()
_ROBOT_WORK_PX = 48  # the image is segmented at this size, as the robot sees a leaf at its work resolution
_ROBOT_LEAF_PX = 128  # a leaf's size in the robot's frame (pixels), for scaling the grown outline


def paint_like_robot(image: np.ndarray, fill: tuple[float, float, float] = SOIL_BGR) -> np.ndarray | None:
    """``image`` as the robot classifies a leaf: everything but the largest vegetation
    outline (the robot's own segmentation, holes filled, grown a little) painted ``fill``.

    The robot paints the ground around every leaf the reference soil colour
    (``WhiteBalance.paint_soil``); a model that never saw such crops reads the flat paint
    as a cue. None when the segmentation finds no vegetation (nothing the robot would crop).
    """
    h, w = image.shape[:2]
    scale = max(h, w) / _ROBOT_WORK_PX
    small = cv2.resize(image, (max(1, round(w / scale)), max(1, round(h / scale))), interpolation=cv2.INTER_AREA)
    contours = cv2.findContours(vegetation_mask(small, _ROBOT_MASK), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return None
    mask = np.zeros((h, w), np.uint8)
    outline = np.round(max(contours, key=cv2.contourArea) * scale).astype(np.int32)
    cv2.drawContours(mask, [outline], -1, 1, thickness=cv2.FILLED)
    grow = max(1, round(LEAF_GROW_PX * max(h, w) / _ROBOT_LEAF_PX))
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    out = np.empty_like(image)
    out[:] = np.clip(np.rint(fill), 0, 255).astype(np.uint8)
    return cv2.copyTo(np.ascontiguousarray(image), mask, out)


def random_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random plain colour, smooth blotches, or soil-like grain, uint8 BGR."""
    kind = rng.integers(3)
    if kind == 0:
        return np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    if kind == 1:  # low-frequency colour blotches (foliage, shadows, mulch)
        small = rng.integers(0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.uint8)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    # soil: brown base with fine grain and pebbles
    base = np.array([rng.uniform(20, 90), rng.uniform(40, 110), rng.uniform(60, 150)], np.float32)
    grain = rng.normal(0, rng.uniform(8, 30), (h, w, 1)).astype(np.float32)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def bank_background(rng: np.random.Generator, bank: np.ndarray | None, h: int, w: int, real_p: float) -> np.ndarray:
    """A real field patch from ``bank`` ([N, H, W, 3], turned and flipped at random) with
    probability ``real_p``, else a drawn one (``random_background``)."""
    if bank is None or not len(bank) or rng.random() >= real_p:
        return random_background(rng, h, w)
    patch = np.rot90(bank[int(rng.integers(len(bank)))], int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return cv2.resize(np.ascontiguousarray(patch), (w, h), interpolation=cv2.INTER_LINEAR)


def randomize_background(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                         angle: float = 0.0, scale: float = 1.0, bank: np.ndarray | None = None,
                         real_p: float = 0.0) -> np.ndarray:
    """Keep the leaf (mask), replace everything else, with a soft edge.

    ``angle`` (degrees) and ``scale`` turn and zoom the leaf about the centre first:
    with the backdrop gone, any angle is lossless, as a leaf seen from above on the ground.
    """
    h, w = image.shape[:2]
    if angle or scale != 1.0:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        image = cv2.warpAffine(np.ascontiguousarray(image), m, (w, h), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.ascontiguousarray(mask), m, (w, h), flags=cv2.INTER_LINEAR)
    alpha = cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32)[:, :, None] * (1.0 / 255.0)
    bg = bank_background(rng, bank, h, w, real_p).astype(np.float32)
    return (image.astype(np.float32) * alpha + bg * (1.0 - alpha)).astype(np.uint8)


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.6, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate: bool = True  # quarter turns always (lossless); leaves have no "up"
    tilt_p: float = 0.3  # probability of an extra small rotation (interpolated, reflected borders)
    tilt_deg: float = 20.0
    flip: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 3.0  # OpenCV hue units (0-180)
    background_p: float = 0.2
    # With the backdrop replaced: any-angle turn and this zoom range, as the robot sees leaves.
    pasted_scale: tuple[float, float] = (0.8, 1.1)
    # Camera compression: robot cameras deliver JPEG/MJPG or YUV 4:2:0, which halves the colour
    # resolution; lesions are colour detail, so a model never shown it may lose them (the robot
    # benchmark in docs/benchmarks.md shows held-out leaves on soil before and after the recording).
    # With probability jpeg_p the image is scaled to a side in jpeg_side (a leaf's size in a
    # 640x480 frame) and passed through JPEG (4:2:0) at a quality in jpeg_quality.
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (60, 95)
    jpeg_side: tuple[int, int] = (96, 160)
    # Field conditions (all off in the lab presets): a pasted leaf lands on a real field patch
    # (the run's background bank) with probability real_background_p; white-balance gains per
    # channel, exposure (gamma), a cast shadow, blur, sensor noise and a partial occlusion by
    # a field patch each happen with their probability.
    real_background_p: float = 0.0
    white_balance_p: float = 0.0
    white_balance: float = 0.25  # per-channel gain in [1 - x, 1 + x]
    exposure_p: float = 0.0
    gamma: tuple[float, float] = (0.6, 1.6)
    shadow_p: float = 0.0
    blur_p: float = 0.0
    noise_p: float = 0.0
    noise_sigma: tuple[float, float] = (3.0, 12.0)
    occlude_p: float = 0.0
    # Last of all, with probability robot_paint_p: the ground around the leaf painted as the
    # robot paints its crops (paint_like_robot), so the model knows that view too.
    robot_paint_p: float = 0.0


# "leaf" suits a model with capacity to spare (leafnet_bn); "light" keeps only the lossless
# turns and flips plus mild crops and lighting, for LeNet-sized models that underfit "leaf".
# "field" adds what a camera outdoors sees (real backgrounds, casts, shadows, blur, noise, JPEG,
# occlusion) for models trained on several sources (training.sources) for the robot.
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "leaf": AugmentConfig(),
    "light": AugmentConfig(crop_scale=(0.85, 1.0), tilt_p=0.0, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.0),
    "field": AugmentConfig(crop_scale=(0.5, 1.0), pasted_scale=(0.6, 1.1), brightness=0.3, contrast=0.3,
                           saturation=0.3, real_background_p=0.7, white_balance_p=0.5, exposure_p=0.4,
                           shadow_p=0.25, blur_p=0.2, noise_p=0.25, occlude_p=0.2, jpeg_p=0.3),
}
# "robot": "field" plus, for a third of the images, the robot's painted crop (see paint_like_robot).
AUGMENT_PRESETS["robot"] = replace(AUGMENT_PRESETS["field"], robot_paint_p=0.35)
# "field-clean": "leaf" plus field's real backgrounds and camera JPEG, without the effects that
# degrade the leaf itself (casts, exposure, shadows, blur, noise, occlusion, small crops). For the
# last epochs after "field": the model keeps the field's surroundings and relearns fine lesion detail.
AUGMENT_PRESETS["field-clean"] = replace(AUGMENT_PRESETS["leaf"], real_background_p=0.7, jpeg_p=0.3)


def augment_config(preset: str, background_p: float, jpeg_p: float | None = None,
                   robot_paint_p: float | None = None, settings: Mapping[str, str] | None = None) -> AugmentConfig:
    """The named preset with the run's background-replacement (and JPEG and robot-paint, unless None)
    probabilities, then ``settings`` (``--augment-set NAME=VALUE``: any AugmentConfig field, as text)."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"augmentation preset must be one of {sorted(AUGMENT_PRESETS)}, got {preset!r}")
    base = AUGMENT_PRESETS[preset]
    config = replace(base, background_p=background_p, jpeg_p=base.jpeg_p if jpeg_p is None else jpeg_p,
                     robot_paint_p=base.robot_paint_p if robot_paint_p is None else robot_paint_p)
    return replace(config, **{name: _setting(config, name, text) for name, text in (settings or {}).items()})


def _setting(config: AugmentConfig, name: str, text: str) -> object:
    """``text`` parsed as the type of ``config.name``: "0.2", "true", "0.5,1.0" for a range."""
    known = sorted(f.name for f in fields(AugmentConfig))
    if name not in known:
        raise ValueError(f"unknown augmentation setting {name!r}; known: {', '.join(known)}")
    current = getattr(config, name)
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, tuple):
            parts = text.split(",")
            if len(parts) != len(current):
                raise ValueError
            return tuple(type(c)(v) for c, v in zip(current, parts))  # int(" 70.5") fails: no silent rounding
        return type(current)(text)
    except ValueError:
        kind = ("true or false" if isinstance(current, bool) else
                f"{len(current)} comma-separated {type(current[0]).__name__}s" if isinstance(current, tuple) else
                f"a {type(current).__name__}")
        raise ValueError(f"augmentation setting {name}={text!r}: expected {kind} (now {current!r})") from None


def jpeg_roundtrip(image: np.ndarray, quality: int, side: int | None = None) -> np.ndarray:
    """``image`` as a camera's JPEG (4:2:0) would deliver it, at ``side`` px (longest side; None: as is)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1-100, got {quality}")
    if side is not None:
        h, w = image.shape[:2]
        s = side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                                                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def white_balance_shift(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Per-channel (B, G, R) gains: a colour cast as a camera's wrong white balance makes."""
    return cv2.convertScaleAbs(image.astype(np.float32) * gains.astype(np.float32).reshape(1, 1, 3))


def exposure_shift(image: np.ndarray, gamma: float) -> np.ndarray:
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def cast_shadow(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Darken the image behind a random straight edge (a stem, the robot, a neighbour), softly."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    d = (xx - rng.uniform(0, w)) * np.cos(a) + (yy - rng.uniform(0, h)) * np.sin(a)
    soft = max(1.0, rng.uniform(0.02, 0.15) * max(h, w))
    shade = 1.0 - rng.uniform(0.3, 0.7) * np.clip(0.5 + d / soft, 0.0, 1.0)
    return cv2.convertScaleAbs(image.astype(np.float32) * shade[:, :, None])


def blur(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Defocus (Gaussian) or motion blur along a random direction."""
    k = int(rng.integers(1, 4)) * 2 + 1
    if rng.random() < 0.5:
        return cv2.GaussianBlur(image, (k, k), 0)
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0 / k
    m = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, m, (k, k))
    return cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))


def sensor_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    noise = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return cv2.convertScaleAbs(image.astype(np.float32) + noise)


class LeafAugment:
    """``(image, mask, rng) -> augmented image``; the crop is left for the spec to resize.

    ``bank`` holds real field patches (uint8 [N, H, W, 3]) for backgrounds and occluders.
    """

    def __init__(self, config: AugmentConfig = AugmentConfig(), bank: np.ndarray | None = None):
        self.config = config
        self.bank = bank

    def __call__(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        # A failed cut is never pasted: it would teach the class from a bare background.
        pasted = mask is not None and rng.random() < c.background_p and mask.mean() >= 255 * MIN_CUT_FRACTION
        if pasted:
            angle = rng.uniform(0.0, 360.0) if c.rotate else 0.0
            image = randomize_background(rng, image, mask, angle, rng.uniform(*c.pasted_scale), self.bank,
                                         c.real_background_p)
        if c.rotate:
            image = np.rot90(image, int(rng.integers(4)))
            if not pasted and rng.random() < c.tilt_p:
                h, w = image.shape[:2]
                m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-c.tilt_deg, c.tilt_deg), 1.0)
                image = cv2.warpAffine(np.ascontiguousarray(image), m, (w, h), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REFLECT_101)
        if c.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        image = self._crop(image, rng)
        image = self._jitter(np.ascontiguousarray(image), rng)
        image = self._field(image, rng)
        if c.jpeg_p and rng.random() < c.jpeg_p:
            image = jpeg_roundtrip(image, int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)),
                                   int(rng.integers(c.jpeg_side[0], c.jpeg_side[1] + 1)))
        if c.robot_paint_p and rng.random() < c.robot_paint_p:
            painted = paint_like_robot(image)
            if painted is not None:
                image = painted
        return image

    def _field(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        if c.occlude_p and self.bank is not None and len(self.bank) and rng.random() < c.occlude_p:
            h, w = image.shape[:2]
            oh, ow = int(h * rng.uniform(0.15, 0.4)), int(w * rng.uniform(0.15, 0.4))
            y0, x0 = int(rng.integers(h - oh + 1)), int(rng.integers(w - ow + 1))
            image = image.copy()
            image[y0 : y0 + oh, x0 : x0 + ow] = bank_background(rng, self.bank, oh, ow, 1.0)
        if c.white_balance_p and rng.random() < c.white_balance_p:
            image = white_balance_shift(image, rng.uniform(1 - c.white_balance, 1 + c.white_balance, 3))
        if c.exposure_p and rng.random() < c.exposure_p:
            image = exposure_shift(image, float(np.exp(rng.uniform(*np.log(c.gamma)))))
        if c.shadow_p and rng.random() < c.shadow_p:
            image = cast_shadow(rng, image)
        if c.blur_p and rng.random() < c.blur_p:
            image = blur(rng, image)
        if c.noise_p and rng.random() < c.noise_p:
            image = sensor_noise(rng, image, rng.uniform(*c.noise_sigma))
        return image

    def _crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        lo, hi = self.config.crop_scale
        for _ in range(10):
            area = h * w * rng.uniform(lo, hi)
            ratio = np.exp(rng.uniform(*np.log(self.config.crop_ratio)))
            cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
                return image[y0 : y0 + ch, x0 : x0 + cw]
        return image

    def _jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        x = np.arange(256, dtype=np.float32)
        hue = (x + rng.uniform(-c.hue, c.hue)) % 180
        sat = x * rng.uniform(1 - c.saturation, 1 + c.saturation)
        val = x * rng.uniform(1 - c.brightness, 1 + c.brightness)
        lut = np.clip(np.stack([hue, sat, val], 1), 0, 255).astype(np.uint8).reshape(256, 1, 3)
        image = cv2.cvtColor(cv2.LUT(cv2.cvtColor(image, cv2.COLOR_BGR2HSV), lut), cv2.COLOR_HSV2BGR)
        a = rng.uniform(1 - c.contrast, 1 + c.contrast)
        return cv2.convertScaleAbs(image, alpha=a, beta=float((1 - a) * image.mean()))
