"""Synthetic leaves drawn with OpenCV, so the demo and tests run without any real data.

Each leaf comes with its mask (255 = leaf) so the robot simulator can cut it out and
compose it onto soil. Diseases are drawn as lesions inside the leaf; leaf colour,
shape, pose and lesion severity vary, and benign specks appear on every class, so a
model has to look at the lesions' kind, not merely whether something brown is there.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

__all__ = ["SYNTHETIC_CLASSES", "draw_leaf", "generate_dataset", "generate_box_folder"]

log = logging.getLogger(__name__)

SYNTHETIC_CLASSES = ("Leaf___blight", "Leaf___healthy", "Leaf___rust", "Leaf___spot")


def _leaf_polygon(rng: np.random.Generator, size: int) -> np.ndarray:
    """An ovate-to-lanceolate outline with a slightly serrated edge, randomly posed."""
    length = size * rng.uniform(0.62, 0.85)
    width = length * rng.uniform(0.32, 0.55)
    power = rng.uniform(0.6, 1.1)  # <1 rounder, >1 more pointed
    u = np.linspace(0.0, 1.0, 60)
    half = 0.5 * width * np.sin(np.pi * u) ** power * (1.0 + 0.25 * (1 - u) * rng.uniform(-1, 1))
    half *= 1.0 + rng.uniform(0.0, 0.05) * np.sin(u * rng.integers(8, 30) * np.pi)
    y = (u - 0.5) * length
    pts = np.concatenate([np.stack([half, y], 1), np.stack([-half[::-1], y[::-1]], 1)])
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    return (pts @ rot.T + centre).astype(np.int32), angle


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, n: int = 14) -> np.ndarray:
    """An irregular closed blob, for necrotic patches."""
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.6, 1.2, n)
    return (centre + np.stack([np.cos(t) * r, np.sin(t) * r], 1)).astype(np.int32)


def _draw_lesions(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, cls: str, size: int) -> None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return

    def spot_centre() -> np.ndarray:
        i = rng.integers(len(xs))
        return np.array([xs[i], ys[i]], np.float64)

    layer = img.copy()
    if cls.endswith("spot"):
        for _ in range(rng.integers(3, 12)):
            c = tuple(int(v) for v in spot_centre())
            r = max(1, int(size * rng.uniform(0.02, 0.05)))
            cv2.circle(layer, c, int(r * 1.7), (60, 200, 210), -1, cv2.LINE_AA)  # yellow halo
            cv2.circle(layer, c, r, tuple(int(v) for v in rng.uniform([15, 35, 60], [35, 60, 95])), -1, cv2.LINE_AA)
    elif cls.endswith("rust"):
        for _ in range(rng.integers(15, 50)):
            c = tuple(int(v) for v in spot_centre())
            r = max(1, int(size * rng.uniform(0.008, 0.02)))
            cv2.circle(layer, c, r, tuple(int(v) for v in rng.uniform([0, 90, 190], [40, 140, 250])), -1, cv2.LINE_AA)
    elif cls.endswith("blight"):
        for _ in range(rng.integers(1, 4)):
            c = spot_centre()
            r = size * rng.uniform(0.08, 0.2)
            colour = tuple(int(v) for v in rng.uniform([20, 50, 80], [50, 80, 120]))
            cv2.fillPoly(layer, [_blob(rng, c, r * 1.25)], (50, 150, 170), cv2.LINE_AA)  # chlorotic margin
            cv2.fillPoly(layer, [_blob(rng, c, r)], colour, cv2.LINE_AA)
            for k in range(1, 3):  # concentric rings, as in early blight
                cv2.circle(layer, tuple(int(v) for v in c), int(r * k / 3), (15, 30, 50), 1, cv2.LINE_AA)
    elif not cls.endswith("healthy"):
        raise ValueError(f"unknown synthetic class {cls!r}; choose one of {SYNTHETIC_CLASSES}")
    keep = mask > 0
    img[keep] = layer[keep]


def draw_leaf(rng: np.random.Generator, cls: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One BGR uint8 leaf of class ``cls`` on a plain backdrop, and its mask (255 = leaf)."""
    if cls not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown synthetic class {cls!r}; choose one of {SYNTHETIC_CLASSES}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    grey = int(rng.integers(90, 200))
    img = np.full((size, size, 3), grey, np.uint8)
    poly, angle = _leaf_polygon(rng, size)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA)
    mask = np.where(mask > 127, 255, 0).astype(np.uint8)

    # Leaf body: a green that varies from yellowish to bluish, with shading and noise.
    hue = rng.uniform(35, 70)
    sat = rng.uniform(110, 230)
    val = rng.uniform(90, 190)
    hsv = np.empty((size, size, 3), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = 1.0 + 0.25 * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    hsv[..., 0] = hue + rng.normal(0, 2, (size, size))
    hsv[..., 1] = sat
    hsv[..., 2] = np.clip(val * shade + rng.normal(0, 6, (size, size)), 0, 255)
    body = cv2.cvtColor(np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2BGR)
    leaf = body.copy()
    # Midrib and a few side veins, lighter than the blade.
    ends = poly[[0, len(poly) // 2 - 1]]
    vein = tuple(int(v) for v in np.clip(body[size // 2, size // 2].astype(int) + 40, 0, 255))
    cv2.line(leaf, tuple(map(int, ends[0])), tuple(map(int, ends[1])), vein, max(1, size // 64), cv2.LINE_AA)
    for k in range(2, 10, 2):
        a = ends[0] + (ends[1] - ends[0]) * k / 10
        for side in (-1, 1):
            d = poly[(k * 6 + (0 if side < 0 else len(poly) // 2)) % len(poly)]
            cv2.line(leaf, tuple(map(int, a)), tuple(map(int, (a + d) / 2)), vein, 1, cv2.LINE_AA)
    # Benign specks (dust, shadows) on every class so "any dark dot" is not a disease cue.
    for _ in range(rng.integers(0, 5)):
        i = rng.integers(len(poly))
        c = (poly[i] * 0.7 + np.array([size, size]) * 0.15).astype(int)
        cv2.circle(leaf, tuple(map(int, c)), 1, (60, 70, 70), -1)
    _draw_lesions(rng, leaf, mask, cls, size)
    keep = mask > 0
    img[keep] = leaf[keep]
    return img, mask


def generate_dataset(
    out_dir: str | os.PathLike, per_class: int = 60, size: int = 96, seed: int = 0
) -> Path:
    """Write a PlantVillage-layout folder of synthetic JPEG leaves; returns ``out_dir``."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(SYNTHETIC_CLASSES):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, _ = draw_leaf(rng, cls, size)
            leaf_id = f"syn{seed:04d}-{c}-{i:05d}"
            path = out / cls / f"{leaf_id}___leaf {i}.jpg"
            if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92]):
                raise OSError(f"could not write {path}")
    log.info("wrote %d synthetic leaves in %d classes to %s", per_class * len(SYNTHETIC_CLASSES), len(SYNTHETIC_CLASSES), out)
    return out


def generate_box_folder(
    out_dir: str | os.PathLike, photos: int = 40, size: int = 192, leaves: tuple[int, int] = (1, 3), seed: int = 0
) -> Path:
    """Write a box folder (images/, labels/ in YOLO form, classes.txt, name_map.json) of synthetic
    leaves lying on drawn soil: field photos for tests and for ``make demo`` without real data.

    Class names are field-style (``leaf blight``), joined to ``Leaf___blight`` by the name map,
    as PlantDoc joins PlantVillage. A photo in ten has no leaf at all (an empty label file).
    """
    from .augment import random_background

    if photos < 1:
        raise ValueError(f"photos must be >= 1, got {photos}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    names = [f"leaf {cls.split('___')[1]}" for cls in SYNTHETIC_CLASSES]
    (out / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (out / "name_map.json").write_text(json.dumps(dict(zip(names, SYNTHETIC_CLASSES)), indent=1), encoding="utf-8")
    rng = np.random.default_rng(seed)
    for i in range(photos):
        img = random_background(rng, size, size)
        lines = []
        n = 0 if i % 10 == 9 else int(rng.integers(leaves[0], leaves[1] + 1))
        for _ in range(n):
            c = int(rng.integers(len(SYNTHETIC_CLASSES)))
            side = int(rng.integers(size // 4, size // 2))
            leaf, mask = draw_leaf(rng, SYNTHETIC_CLASSES[c], side)
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            region = img[y0 : y0 + side, x0 : x0 + side]
            region[mask > 0] = leaf[mask > 0]
            ys, xs = np.nonzero(mask)
            bx0, bx1, by0, by1 = x0 + xs.min(), x0 + xs.max() + 1, y0 + ys.min(), y0 + ys.max() + 1
            lines.append(f"{c} {(bx0 + bx1) / 2 / size:.6f} {(by0 + by1) / 2 / size:.6f} "
                         f"{(bx1 - bx0) / size:.6f} {(by1 - by0) / size:.6f}")
        stem = f"field photo {seed:03d}-{i:04d}"
        if not cv2.imwrite(str(out / "images" / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"could not write {out / 'images' / stem}.jpg")
        (out / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    log.info("wrote %d synthetic field photos with leaf boxes to %s", photos, out)
    return out
