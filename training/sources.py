"""Several training sources in one label space: ImageFolder trees and YOLO-box folders.

A *box folder* holds ``images/``, ``labels/`` (YOLO: ``class cx cy w h`` per line,
normalised), ``classes.txt`` and optionally a name map (``pv_class_map.json`` or
``name_map.json``: folder class name -> leafscout class name, or ``background``) and
``masks/`` (vegetation masks as in cwfid: 0 = vegetation, 255 = soil). Each leaf box
becomes one sample, cropped square with a margin exactly as the robot crops a
detection (``leafscout.vision.localize.square_crop``). Box classes named like PlantVillage
(``Crop___Disease``) or mapped become plant classes; other names (cwfid's ``crop`` and
``weed``: plants we cannot name) become ``background``, with a logged note.

Negatives for ``background`` come from the photos themselves: square windows that no
leaf box touches, and soil windows of vegetation masks. Windows are drawn with a seed
from the photo's name, so a folder always yields the same samples; every window keeps
its photo's group, so a photo's leaves and its background land in the same split part.

Malformed input is counted and logged, never silently dropped: a label line that is
not five numbers, a class index out of range or a box outside the image skips that
box; an image without a label file is skipped with its reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from leafscout.vision.taxonomy import BACKGROUND

from .data import Dataset, ImageReadError, Sample, read_image, sample_image, scan_folder

__all__ = [
    "LEAFY_NEGATIVE_MAX",
    "leafy_fraction",
    "unboxed_leaf_windows",
    "SourceError",
    "SourceInfo",
    "BoxFolder",
    "is_box_folder",
    "scan_box_folder",
    "scan_sources",
    "NAME_MAP_FILES",
]

log = logging.getLogger(__name__)

NAME_MAP_FILES = ("name_map.json", "pv_class_map.json")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MIN_BOX_AREA = 1e-4  # of the image, after clipping: smaller boxes are not leaves we can see
_GRID = 48  # resolution of the box-coverage raster used to place background windows


# Background windows are drawn where no leaf *box* lies, but PlantDoc's boxes are not
# exhaustive: many such windows show unboxed leaves. A window counts as a clean negative
# (no leaf) only when at most this share of its pixels is leaf-coloured (``leafy_fraction``).
LEAFY_NEGATIVE_MAX = 0.1


def leafy_fraction(image: np.ndarray) -> float:
    """Share of pixels with leaf colour (yellow-green to blue-green, saturated, not dark)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    h, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    return float(((h >= 25) & (h <= 95) & (sat >= 50) & (val >= 40)).mean())


def unboxed_leaf_windows(split: object, samples: Sequence[Sample], max_leafy: float = LEAFY_NEGATIVE_MAX,
                         images: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """True for background windows of photos without vegetation masks that show leaves.

    Such a window is an unboxed leaf, not a negative: calibration, thresholds and the
    negatives benchmark leave it out, and training may too (``--background-max-leafy``).
    ``images`` are the samples' pixels when already decoded (else each window is read).
    """
    out = np.zeros(len(samples), bool)
    if BACKGROUND not in split.classes:
        return out
    bg = split.classes.index(BACKGROUND)
    masked = [(Path(root) / "masks").is_dir() for root in split.source_roots()]
    for i, s in enumerate(samples):
        if s.label == bg and s.box is not None and not masked[s.source]:
            out[i] = leafy_fraction(sample_image(s) if images is None else images[i]) > max_leafy
    return out


class SourceError(ValueError):
    """A data folder that is neither an ImageFolder tree nor a box folder, or a broken one."""


@dataclass(frozen=True)
class SourceInfo:
    name: str  # short, unique among the run's sources
    root: Path
    kind: str  # "folder" or "boxes"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "root": str(self.root), "kind": self.kind}


@dataclass
class BoxFolder:
    """A scanned box folder: per photo its boxes (class name, normalised x0 y0 x1 y1)."""

    root: Path
    names: list[str]  # classes.txt, mapped
    photos: list[tuple[Path, list[tuple[str, tuple[float, float, float, float]]]]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    masks: dict[Path, Path] = field(default_factory=dict)  # photo -> vegetation mask


def is_box_folder(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "labels").is_dir() and (root / "classes.txt").is_file()


def _read_name_map(root: Path) -> dict[str, str]:
    for name in NAME_MAP_FILES:
        path = root / name
        if path.is_file():
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise SourceError(f"{path}: cannot read the name map: {e}") from e
            if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
                raise SourceError(f"{path}: expected a JSON object of folder class name -> class name")
            return doc
    return {}


def _map_names(root: Path, raw: list[str]) -> list[str]:
    mapping = _read_name_map(root)
    out, unnamed = [], []
    for name in raw:
        target = mapping.get(name, name)
        if target != BACKGROUND and "___" not in target:
            unnamed.append(name)
            target = BACKGROUND
        out.append(target)
    if unnamed:
        log.info("%s: classes %s are not named Crop___Disease and have no entry in a name map: their boxes "
                 "count as background (plants we cannot name)", root, unnamed)
    return out


def _parse_label_file(path: Path, n_classes: int, skipped: list[tuple[str, str]]) -> list[tuple[int, tuple[float, ...]]]:
    boxes = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        skipped.append((str(path), f"cannot read label file: {e}"))
        return boxes
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        try:
            if len(parts) != 5:
                raise ValueError(f"expected 5 fields 'class cx cy w h', got {len(parts)}")
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError as e:
            skipped.append((where, f"bad label line {line.strip()!r}: {e}"))
            continue
        if not 0 <= cls < n_classes:
            skipped.append((where, f"class index {cls} out of range 0..{n_classes - 1} (classes.txt)"))
            continue
        if not all(np.isfinite([cx, cy, w, h])) or w <= 0 or h <= 0:
            skipped.append((where, f"box needs finite centre and positive size, got {cx} {cy} {w} {h}"))
            continue
        x0, y0, x1, y1 = max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(1.0, cx + w / 2), min(1.0, cy + h / 2)
        if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) < MIN_BOX_AREA:
            skipped.append((where, f"box {cx} {cy} {w} {h} lies outside the image (or is too small once clipped)"))
            continue
        boxes.append((cls, (x0, y0, x1, y1)))
    return boxes


def scan_box_folder(root: str | os.PathLike) -> BoxFolder:
    """Read a box folder's images, labels, class names, name map and masks."""
    root = Path(root)
    if not is_box_folder(root):
        raise SourceError(f"{root}: a box folder needs images/, labels/ and classes.txt")
    raw = [ln.strip() for ln in (root / "classes.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not raw:
        raise SourceError(f"{root}/classes.txt lists no classes")
    names = _map_names(root, raw)
    folder = BoxFolder(root, names, [])
    mask_dir = root / "masks"
    for img in sorted((root / "images").iterdir()):
        if not img.is_file() or img.name.startswith(".") or img.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = root / "labels" / f"{img.stem}.txt"
        if not label.is_file():
            folder.skipped.append((str(img), f"no label file {label.name} (an empty file means: no leaves)"))
            continue
        boxes = [(names[c], b) for c, b in _parse_label_file(label, len(raw), folder.skipped)]
        folder.photos.append((img, boxes))
        if mask_dir.is_dir():
            stem = img.stem.removesuffix("_image")
            for cand in (mask_dir / f"{stem}_mask.png", mask_dir / f"{img.stem}.png"):
                if cand.is_file():
                    folder.masks[img] = cand
                    break
    for where, why in folder.skipped:
        log.warning("skipping %s: %s", where, why)
    if not folder.photos:
        raise SourceError(f"{root}: no labelled images ({len(folder.skipped)} skipped)")
    return folder


# -- background windows ---------------------------------------------------------------
def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def _coverage(boxes: Sequence[tuple[float, float, float, float]]) -> np.ndarray:
    grid = np.zeros((_GRID, _GRID), np.float32)
    for x0, y0, x1, y1 in boxes:
        grid[int(y0 * _GRID) : int(np.ceil(y1 * _GRID)), int(x0 * _GRID) : int(np.ceil(x1 * _GRID))] = 1.0
    return grid


def _windows(rng: np.random.Generator, free: np.ndarray, size_wh: tuple[int, int], count: int,
             side: tuple[float, float], max_cover: float, tries: int = 40) -> list[tuple[float, float, float, float]]:
    """Up to ``count`` square windows (normalised boxes) with at most ``max_cover`` of them off ``free``.

    A window's side is a fraction in ``side`` of the image's shorter side, square in pixels.
    """
    out = []
    g = free.shape[0]
    integral = cv2.integral(1.0 - free)
    w, h = size_wh
    for _ in range(tries):
        if len(out) >= count:
            break
        px = rng.uniform(*side) * min(w, h)
        fw, fh = px / w, px / h
        x0, y0 = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
        gx0, gy0 = int(x0 * g), int(y0 * g)
        gx1, gy1 = max(gx0 + 1, int(np.ceil((x0 + fw) * g))), max(gy0 + 1, int(np.ceil((y0 + fh) * g)))
        covered = integral[gy1, gx1] - integral[gy0, gx1] - integral[gy1, gx0] + integral[gy0, gx0]
        if covered / ((gx1 - gx0) * (gy1 - gy0)) <= max_cover:
            out.append((x0, y0, x0 + fw, y0 + fh))
    return out


def _mask_free(mask_path: Path) -> np.ndarray | None:
    """Soil raster (1 = soil) at _GRID resolution from a cwfid-style mask (0 = vegetation)."""
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        log.warning("skipping unreadable mask %s", mask_path)
        return None
    return cv2.resize((mask > 127).astype(np.float32), (_GRID, _GRID), interpolation=cv2.INTER_AREA)


def _photo_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header alone when OpenCV can, else by decoding."""
    try:
        img = read_image(path)
    except ImageReadError as e:
        log.warning("skipping %s", e)
        return None
    return img.shape[1], img.shape[0]


# -- the union ----------------------------------------------------------------------
def _source_name(root: Path, taken: set[str]) -> str:
    base = root.name or "data"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}{i}", i + 1
    return name


def scan_sources(roots: Sequence[str | os.PathLike], *, negatives_per_photo: int = 2,
                 soil_per_photo: int = 8) -> Dataset:
    """All sources in one label space (sorted class names, ``background`` among them when any negative exists).

    ``negatives_per_photo`` background windows are drawn per box-folder photo where no
    leaf box lies, ``soil_per_photo`` per masked photo where the mask shows bare soil.
    """
    roots = [Path(r) for r in roots]
    if not roots:
        raise SourceError("give at least one data folder")
    infos: list[SourceInfo] = []
    raw: list[list[tuple[Path, str, str, tuple[float, float, float, float] | None]]] = []  # path, class, group, box
    bad: list[tuple[Path, str]] = []
    taken: set[str] = set()
    for root in roots:
        if not root.is_dir():
            raise SourceError(f"data folder {root} does not exist or is not a directory")
        name = _source_name(root, taken)
        taken.add(name)
        if is_box_folder(root):
            infos.append(SourceInfo(name, root, "boxes"))
            raw.append(_box_items(scan_box_folder(root), name, negatives_per_photo, soil_per_photo, bad))
        else:
            infos.append(SourceInfo(name, root, "folder"))
            ds = scan_folder(root)
            bad.extend(ds.bad_files)
            raw.append([(s.path, ds.classes[s.label], f"{name}:{s.group}", None) for s in ds.samples])
    classes = sorted({c for items in raw for _, c, _, _ in items})
    if len(classes) < 2:
        raise SourceError(f"the sources {[str(r) for r in roots]} hold fewer than two classes: {classes}")
    index = {c: i for i, c in enumerate(classes)}
    # Boxes rounded as the split manifest stores them, so a re-read split is the same samples.
    rounded = lambda b: None if b is None else tuple(round(float(v), 6) for v in b)  # noqa: E731
    samples = [Sample(p, index[c], g, rounded(box), si) for si, items in enumerate(raw) for p, c, g, box in items]
    counts = {info.name: sum(1 for s in samples if s.source == i) for i, info in enumerate(infos)}
    log.info("%d sources %s: %d samples in %d classes", len(infos), counts, len(samples), len(classes))
    return Dataset(root=roots[0], classes=classes, samples=samples, bad_files=bad, sources=infos)


def _box_items(folder: BoxFolder, name: str, negatives_per_photo: int, soil_per_photo: int,
               bad: list[tuple[Path, str]]) -> list[tuple[Path, str, str, tuple[float, float, float, float] | None]]:
    items = []
    bad.extend((Path(where), why) for where, why in folder.skipped)
    for photo, boxes in folder.photos:
        group = f"{name}:{photo.stem}"
        for cls, box in boxes:
            items.append((photo, cls, group, box))
        want_neg = negatives_per_photo if boxes else max(negatives_per_photo, 4)
        mask = folder.masks.get(photo)
        if not want_neg and not (mask and soil_per_photo):
            continue
        size = _photo_size(photo)
        if size is None:
            bad.append((photo, "cannot decode image"))
            continue
        rng = np.random.default_rng(_seed(name, photo.name))
        free = 1.0 - _coverage([b for _, b in boxes])
        for box in _windows(rng, free, size, want_neg, (0.15, 0.45), max_cover=0.05):
            items.append((photo, BACKGROUND, group, box))
        if mask is not None and soil_per_photo:
            soil = _mask_free(mask)
            if soil is not None:
                for box in _windows(rng, soil, size, soil_per_photo, (0.1, 0.35), max_cover=0.02, tries=80):
                    items.append((photo, BACKGROUND, group, box))
    return items
