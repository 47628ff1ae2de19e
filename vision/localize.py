"""Find plants in a camera frame: vegetation segmentation, then leaf-sized, leaf-shaped blobs.

``leafscout.vision.segment`` marks vegetation per pixel with a per-frame threshold (bare soil,
straw, gravel give none). This module turns that mask into plant candidates on a
frame shrunk to ``work_width`` pixels (a 4x smaller 640x480 frame costs about a
millisecond): an opening first removes specks, grass blades and thin weeds narrower
than ``open_px``; a closing then bridges lesions that cut a leaf; blobs are filled
(brown lesions stay inside their leaf) and kept when their area, solidity and green
fill (the share of the blob that is really vegetation, which rejects welded specks)
look like a leaf. Touching and overlapping leaves are cut at their necks: each leaf is a
hill of the blob's distance map, and each pixel goes to the nearest hilltop. Boxes come
back in full-frame pixels; masks are drawn only when asked.

Every candidate still goes through the classifier (its ``background`` class and
out-of-distribution gate) before it counts as a plant: colour cannot tell a crop leaf
from a weed of the same size.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from .segment import Segmentation, segment_vegetation

__all__ = ["LocalizeConfig", "Detection", "LeafLocalizer", "LocalizeError", "largest_leaf_mask", "square_crop",
           "masked_square_crop", "vegetation_mask"]

log = logging.getLogger(__name__)


class LocalizeError(ValueError):
    """A frame or setting the localizer cannot work with."""


@dataclass(frozen=True)
class LocalizeConfig:
    """Localizer settings (the ``[localizer]`` section of robot.toml).

    Kernel sizes are in work-resolution pixels; areas are fractions of the full frame,
    so they hold at any camera resolution.
    """

    work_width: int = 160  # segmentation resolution (pixels across)
    min_index: float = 0.09  # excess-green floor: Otsu's threshold is never below it (bare soil gives nothing)
    max_index: float = 0.35  # ... and never above this: a pale leaf among deep green ones is still a leaf
    min_absolute: float = 0.02  # ... and green outright (its own index above this): grey stones on brown soil are not
    hysteresis: float = 0.04  # pixels this much below the threshold are vegetation where they touch vegetation
    green_red: float = 0.5  # weight of (G - R) in the index: yellow straw is green-excessive, but redder than green
    seed_green: float | None = 0.02  # a seed pixel's (G - R) / (B + G + R) is above this (None: no such test) ...
    seed_green_over_soil: float = 0.1  # ... or above the soil's own plus this, whichever is lower (a warm cast)
    brightness_k: float = 0.4  # damping of dark pixels in the index (x the frame's mean brightness)
    balance: bool = True  # white-balance the index against the frame's own soil
    denoise_px: int = 3  # median filter before the index (0: off); removes chroma speckle
    open_px: int = 5  # opening kernel: specks, grass blades and thin weeds narrower than this go
    close_px: int = 5  # closing kernel (~20 px of a 640 frame): bridges lesions that cut a leaf
    min_area: float = 0.003  # of the frame; 0.3 % of 640x480 ~ 920 px ~ a 30 px leaf
    max_area: float = 0.5
    min_solidity: float = 0.6  # area / convex hull area, after splitting
    min_fill: float = 0.35  # share of a filled blob that is vegetation (the rest: lesions, or soil between specks)
    split_solidity: float = 1.0  # blobs less solid than this are tried for touching leaves (1: all; a chain of
    # overlapping round leaves is nearly convex)
    split_saddle: float = 0.9  # two depth peaks are two leaves when the depth between them dips below this x the lower
    peak_px: int = 5  # depth peaks closer than this (work pixels) are one
    peak_floor: float = 0.5  # ... and one shallower than this x the blob's deepest is a lobe or a weed, not a leaf
    part_area: float = 1.5  # a leaf cut from touching leaves covers this x min_area ...
    part_core_px: float = 5.0  # ... and is this deep (work pixels)
    min_core_px: float = 3.0  # a leaf is at least this deep (distance to its edge, work pixels): grass tufts are not
    mask_width: int = 0  # resolution of vegetation masks (leafscout detect --masks); 0: the image's own

    def __post_init__(self) -> None:
        if self.work_width < 32:
            raise LocalizeError(f"work_width must be >= 32 pixels, got {self.work_width}")
        if not 0 <= self.min_area < self.max_area <= 1:
            raise LocalizeError(f"need 0 <= min_area < max_area <= 1, got {self.min_area}, {self.max_area}")
        if self.close_px < 1 or self.open_px < 0 or self.denoise_px < 0:
            raise LocalizeError(f"need close_px >= 1, open_px >= 0, denoise_px >= 0, got "
                                f"{self.close_px}, {self.open_px}, {self.denoise_px}")
        if self.denoise_px and self.denoise_px % 2 == 0:
            raise LocalizeError(f"denoise_px must be odd (a median filter's size), got {self.denoise_px}")
        for name in ("min_solidity", "min_fill", "split_solidity", "peak_floor"):
            if not 0 <= getattr(self, name) <= 1:
                raise LocalizeError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.split_saddle <= 1:
            raise LocalizeError(f"split_saddle must be in (0, 1], got {self.split_saddle}")
        if self.part_area < 1 or self.part_core_px < 0:
            raise LocalizeError(f"need part_area >= 1 (x min_area) and part_core_px >= 0, got "
                                f"{self.part_area}, {self.part_core_px}")
        if self.peak_px < 1:
            raise LocalizeError(f"peak_px must be >= 1 work pixel, got {self.peak_px}")
        if not -1 < self.min_index < 2:
            raise LocalizeError(f"min_index must be in (-1, 2), got {self.min_index}")
        if self.mask_width < 0:
            raise LocalizeError(f"mask_width must be >= 0 (0: full resolution), got {self.mask_width}")


@dataclass
class Detection:
    """One leaf: box ``(x0, y0, x1, y1)`` in frame pixels (exclusive ends), area, centroid."""

    box: tuple[int, int, int, int]
    area: float
    centroid: tuple[float, float]
    touches_border: bool
    _contour: np.ndarray = field(repr=False)  # at work resolution
    _scale: float = field(repr=False)

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def mask(self) -> np.ndarray:
        """Boolean leaf mask of the box region (drawn on demand, holes filled)."""
        x0, y0, _, _ = self.box
        out = np.zeros((self.height, self.width), np.uint8)
        cv2.drawContours(out, [self.contour(offset=(x0, y0))], -1, 1, thickness=cv2.FILLED)
        return out.astype(bool)

    def contour(self, offset: tuple[float, float] = (0, 0)) -> np.ndarray:
        """The leaf's outline in full-frame pixels (minus ``offset``), int32 for OpenCV drawing."""
        return np.round(self._contour.astype(np.float32) * self._scale - offset).astype(np.int32)


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}"
        raise LocalizeError(f"expected a uint8 HxWx3 BGR frame, got {desc}")


def _shrink(frame: np.ndarray, width: int) -> np.ndarray:
    """Halve with linear interpolation (an exact 2x2 mean, 3x faster than INTER_AREA), then fit."""
    while frame.shape[1] >= 2 * width:
        frame = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    if frame.shape[1] != width:
        h, w = frame.shape[:2]
        frame = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_LINEAR)
    return frame


@functools.lru_cache(maxsize=16)
def _ellipse(px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (px, px))


def _leaf_peaks(dist: np.ndarray, nms_px: int, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima of a distance map (the deepest within ``nms_px``, at least ``floor`` deep), one per plateau.

    Empty when there is only one: the caller has nothing to split.
    """
    k = 2 * nms_px + 1
    tops = ((dist >= cv2.dilate(dist, _ellipse(k))) & (dist >= floor)).astype(np.uint8)
    count, plateau = cv2.connectedComponents(tops, connectivity=8)
    if count <= 2:  # one top (most blobs are one leaf): no split to try
        return np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0, np.float32)
    ys, xs = np.nonzero(tops)
    depth = dist[ys, xs]
    order = np.lexsort((-depth, plateau[ys, xs]))  # by plateau, deepest first
    _, first = np.unique(plateau[ys, xs][order], return_index=True)
    pick = order[first]
    return ys[pick], xs[pick], depth[pick]


def _split_touching(blob: np.ndarray, *, saddle: float, nms_px: int, floor: float, min_core_px: float,
                    min_part: float, min_part_core: float) -> list[np.ndarray]:
    """Outlines of the leaves in one filled blob (uint8 0/1, its bounding box plus a 1 px border).

    Each leaf is a hill of the blob's distance map. Two hills are the same leaf unless the
    depth along the straight line between their tops dips below ``saddle`` x the lower
    top: a neck. A long leaf's ridge does not dip; two overlapping leaves meet at a neck
    however big either is (a share of the blob's deepest point, tried before, lost the
    small leaf of a chain beside a big one). Each leaf then takes the pixels nearest its tops.
    A part must stand as a leaf on its own: ``min_part`` pixels and ``min_part_core`` deep
    (crossing weed blades fork into small shallow parts beside a leaf).
    """
    def whole() -> list[np.ndarray]:
        return list(cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0])

    dist = cv2.distanceTransform(blob, cv2.DIST_L2, 3)
    ys, xs, depth = _leaf_peaks(dist, nms_px, max(min_core_px, floor * float(dist.max())))
    n = len(ys)
    if n < 2:
        return whole()
    # one leaf's tops are no further apart than a few of its depths; test those pairs all at once
    pa, pb = np.triu_indices(n, 1)
    gap = np.hypot(ys[pa] - ys[pb], xs[pa] - xs[pb])
    near = gap <= 4 * np.maximum(depth[pa], depth[pb])
    pa, pb, gap = pa[near], pb[near], gap[near]
    t = np.linspace(0.0, 1.0, int(gap.max(initial=0)) + 2)[None, :]
    line = dist[np.rint(ys[pa, None] + t * (ys[pb] - ys[pa])[:, None]).astype(np.intp),
                np.rint(xs[pa, None] + t * (xs[pb] - xs[pa])[:, None]).astype(np.intp)]
    # no neck between them: one leaf; tops within nms_px are one too (equal maxima a pixel or two apart)
    joined = (line.min(axis=1) >= saddle * np.minimum(depth[pa], depth[pb])) | (gap <= nms_px)
    group = list(range(n))

    def root(k: int) -> int:
        while group[k] != k:
            group[k] = group[group[k]]
            k = group[k]
        return k

    for a, b in zip(pa[joined].tolist(), pb[joined].tolist()):
        group[root(b)] = root(a)
    _, leaf = np.unique([root(i) for i in range(n)], return_inverse=True)  # each top's leaf, 0..leaves-1
    if leaf.max() == 0:
        return whole()
    # Each pixel goes to the top nearest it in the power sense (distance^2 - depth^2): the cut between
    # a big leaf and a small one moves toward the small one, near the neck. (A watershed on the
    # distance map leaked along the blob's rim, whose pixels all lie at the same depth.)
    py, px = np.nonzero(blob)
    power = (py[:, None] - ys[None, :]) ** 2 + (px[:, None] - xs[None, :]) ** 2 - depth[None, :].astype(np.float64) ** 2
    owner = leaf[np.argmin(power, axis=1)]
    deepest = np.zeros(leaf.max() + 1)
    np.maximum.at(deepest, leaf, depth)
    part = np.zeros(blob.shape, np.uint8)
    parts = []
    for k in np.flatnonzero(deepest >= min_part_core):  # shallower: a weed's fork or a lobe, not a leaf of its own
        part[:] = 0
        part[py[owner == k], px[owner == k]] = 1
        found = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        if found:
            parts.append(max(found, key=cv2.contourArea))
    parts = [p for p in parts if cv2.contourArea(p) >= min_part]  # a sliver at the picture's edge is no leaf
    return parts or whole()


class LeafLocalizer:
    """Callable: BGR frame -> list of leaf detections, largest first. ``segment`` also gives the mask."""

    def __init__(self, config: LocalizeConfig | None = None) -> None:
        self.config = config or LocalizeConfig()
        cfg = self.config
        self._open = _ellipse(cfg.open_px) if cfg.open_px > 1 else None
        self._close = _ellipse(cfg.close_px)
        self._regrow = _ellipse(3)
        self.last: Segmentation | None = None  # the latest frame's segmentation (background colour, mask)

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        return self.detect(frame)[0]

    def segment(self, small: np.ndarray) -> Segmentation:
        """Vegetation of a work-resolution frame."""
        cfg = self.config
        if cfg.denoise_px:
            small = cv2.medianBlur(small, cfg.denoise_px)
        return segment_vegetation(small, min_index=cfg.min_index, max_index=cfg.max_index, brightness_k=cfg.brightness_k,
                                  balance=cfg.balance, hysteresis=cfg.hysteresis, min_absolute=cfg.min_absolute,
                                  green_red=cfg.green_red, seed_green=cfg.seed_green,
                                  seed_green_over_soil=cfg.seed_green_over_soil)

    def detect(self, frame: np.ndarray) -> tuple[list[Detection], Segmentation]:
        """Detections (largest first) and the frame's segmentation at work resolution."""
        _check_frame(frame)
        cfg = self.config
        h, w = frame.shape[:2]
        small = _shrink(frame, cfg.work_width) if w > cfg.work_width else frame
        seg = self.segment(small)
        self.last = seg
        if seg.empty:
            return [], seg
        scale = w / small.shape[1]
        lo, hi = cfg.min_area * h * w / scale**2, cfg.max_area * h * w / scale**2  # in work pixels
        dets = [self._detection(c, scale, small.shape) for c in self._leaves(seg.mask, lo, hi)]
        dets.sort(key=lambda d: -d.area)
        return dets, seg

    def _leaves(self, veg: np.ndarray, lo: float, hi: float) -> list[np.ndarray]:
        cfg = self.config
        mask = veg
        if self._open is not None:
            mask = cv2.morphologyEx(veg, cv2.MORPH_OPEN, self._open)
            # give back the leaf edges the opening rounded off (a 3 px reach), not the weed blades beyond them
            mask = cv2.bitwise_and(cv2.dilate(mask, self._regrow), veg)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close)
        leaves = []
        # External contours only: drawing them filled is what keeps lesions inside the leaf.
        for c in cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]:
            area = cv2.contourArea(c)
            if area < lo:
                continue
            x, y, bw, bh = cv2.boundingRect(c)
            blob = np.zeros((bh + 2, bw + 2), np.uint8)
            cv2.drawContours(blob, [c], -1, 1, thickness=cv2.FILLED, offset=(1 - x, 1 - y))
            tissue = cv2.bitwise_and(veg[y : y + bh, x : x + bw], veg[y : y + bh, x : x + bw], mask=blob[1:-1, 1:-1])
            if cv2.countNonZero(tissue) < cfg.min_fill * max(area, 1.0):
                continue  # mostly not vegetation: specks welded by the closing, or soil
            if cv2.distanceTransform(tissue, cv2.DIST_L2, 3).max() < cfg.min_core_px:
                continue  # thin all over: grass blades, stalks, a tuft of seedlings
            parts = [c]
            if area > 2 * lo and area < cfg.split_solidity * cv2.contourArea(cv2.convexHull(c)):
                parts = [p + (x - 1, y - 1) for p in _split_touching(
                    blob, saddle=cfg.split_saddle, nms_px=cfg.peak_px, floor=cfg.peak_floor,
                    min_core_px=cfg.min_core_px, min_part=cfg.part_area * lo, min_part_core=cfg.part_core_px)]
            for p in parts:
                a = cv2.contourArea(p)
                if lo <= a <= hi and a >= cfg.min_solidity * cv2.contourArea(cv2.convexHull(p)):
                    leaves.append(p)
        return leaves

    @staticmethod
    def _detection(c: np.ndarray, scale: float, shape: tuple[int, ...]) -> Detection:
        sh, sw = shape[:2]
        x, y, bw, bh = cv2.boundingRect(c)
        box = (int(x * scale), int(y * scale), min(int(round(sw * scale)), int(np.ceil((x + bw) * scale))),
               min(int(round(sh * scale)), int(np.ceil((y + bh) * scale))))
        m = cv2.moments(c)
        cx, cy = (m["m10"] / m["m00"], m["m01"] / m["m00"]) if m["m00"] else (x + bw / 2, y + bh / 2)
        border = x <= 0 or y <= 0 or x + bw >= sw or y + bh >= sh
        return Detection(box, cv2.contourArea(c) * scale * scale, (cx * scale, cy * scale), border, c, scale)


def vegetation_mask(image: np.ndarray, config: LocalizeConfig | None = None) -> np.ndarray:
    """uint8 mask of ``image``'s vegetation at its own size (255 = vegetation, 0 = other).

    Segmented at ``config.mask_width`` (0: full resolution); the index is upsampled
    before thresholding, so edges stay smooth at any working resolution.
    """
    _check_frame(image)
    cfg = config or LocalizeConfig()
    h, w = image.shape[:2]
    width = min(w, cfg.mask_width or w)
    small = _shrink(image, width) if w > width else image
    seg = LeafLocalizer(cfg).segment(small)
    if seg.empty:
        return np.zeros((h, w), np.uint8)
    # the plain threshold, without the localizer's hysteresis: measured on cwfid, hysteresis
    # grows vegetation into its soil halo (IoU 0.859 against 0.877 on the tuning images)
    index = seg.index if small.shape[1] == w else cv2.resize(seg.index, (w, h), interpolation=cv2.INTER_LINEAR)
    return (index > seg.threshold).astype(np.uint8) * 255


# -- cutting a leaf off its photo backdrop (training and the simulator's real leaves) ---------------
# A fixed colour rule, not the field segmentation: PlantVillage backdrops are plain and
# the leaf fills the photo, so Otsu there would split the leaf itself.
_PHOTO_EXG_MIN = 24  # 2G - R - B above this is green tissue (uint8 scale)
_PHOTO_YELLOW = ((20, 100, 120), (40, 255, 255))  # HSV of yellow/chlorotic tissue (soil hue is < 15)
_PHOTO_CLOSE_PX = 5


def _photo_tissue(small: np.ndarray) -> np.ndarray:
    b, g, r = (small[:, :, i].astype(np.int16) for i in range(3))
    green = (2 * g - r - b) > _PHOTO_EXG_MIN
    yellow = cv2.inRange(cv2.cvtColor(small, cv2.COLOR_BGR2HSV), *(np.array(v, np.uint8) for v in _PHOTO_YELLOW)) > 0
    mask = (green | yellow).astype(np.uint8) * 255
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _ellipse(_PHOTO_CLOSE_PX))


def largest_leaf_mask(image: np.ndarray, work_width: int = 256) -> np.ndarray:
    """Boolean mask of the largest leaf in a leaf photo, at full resolution (to cut it off its backdrop).

    Green or yellow tissue, so a coloured photo backdrop (blue, purple, grey) is left
    out while lesions inside the leaf stay in.
    """
    _check_frame(image)
    width = min(image.shape[1], work_width)
    small = _shrink(image, width) if image.shape[1] > width else image
    out = np.zeros(image.shape[:2], np.uint8)
    contours = cv2.findContours(_photo_tissue(small), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    if contours:
        best = max(contours, key=cv2.contourArea) * (image.shape[1] / small.shape[1])
        cv2.drawContours(out, [np.round(best).astype(np.int32)], -1, 1, thickness=cv2.FILLED)
    return out.astype(bool)


def _square(shape: Sequence[int], box: Sequence[int], margin: float) -> tuple[int, int, int]:
    x0, y0, x1, y1 = box
    h, w = shape[:2]
    side = min(int(max(x1 - x0, y1 - y0) * (1 + 2 * margin)), h, w)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    return min(max(0, cx - side // 2), w - side), min(max(0, cy - side // 2), h - side), side


def square_crop(frame: np.ndarray, box: Sequence[int], margin: float = 0.08) -> np.ndarray:
    """A square view of ``frame`` around ``box`` (plus ``margin`` of its size), clipped to the frame.

    Square, so the classifier's resize keeps the leaf's proportions. A view, not a copy.
    """
    sx, sy, side = _square(frame.shape, box, margin)
    return frame[sy : sy + side, sx : sx + side]


def masked_square_crop(frame: np.ndarray, det: Detection, margin: float = 0.08,
                       fill: int | Sequence[float] = 128, grow_px: int = 0) -> np.ndarray:
    """``square_crop`` with everything but the leaf painted ``fill`` (a grey level or a B, G, R colour; a copy).

    The soil, straw, gravel or weeds around a leaf then cannot sway the class. ``grow_px``
    widens the leaf's outline first, so a leaf edge the segmentation missed stays in.
    """
    sx, sy, side = _square(frame.shape, det.box, margin)
    mask = np.zeros((side, side), np.uint8)
    cv2.drawContours(mask, [det.contour(offset=(sx, sy))], -1, 1, thickness=cv2.FILLED)
    if grow_px > 0:
        mask = cv2.dilate(mask, _ellipse(2 * grow_px + 1))
    crop = np.empty((side, side, 3), np.uint8)
    crop[:] = np.clip(np.rint(np.broadcast_to(np.asarray(fill, np.float64), (3,))), 0, 255).astype(np.uint8)
    np.copyto(crop, frame[sy : sy + side, sx : sx + side], where=mask[:, :, None].astype(bool))
    return crop
