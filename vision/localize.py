"""Find leaves in a camera frame with classical colour segmentation, fast enough for every frame.

Pixels are leaf when they are green (excess green, 2G - R - B) or bright yellow
(chlorosis); brown lesions are not green, so holes are filled and small gaps
closed to keep diseased tissue inside its leaf. Segmentation runs on a frame
shrunk to ``work_width`` pixels (a 4x smaller 640x480 frame costs well under a
millisecond); boxes come back in full-frame pixels and masks are drawn only when
asked for. Soil (brown, grey, low saturation) yields no detections.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

__all__ = ["LocalizeConfig", "Detection", "LeafLocalizer", "LocalizeError", "largest_leaf_mask", "square_crop",
           "masked_square_crop"]

log = logging.getLogger(__name__)


class LocalizeError(ValueError):
    """A frame or setting the localizer cannot work with."""


@dataclass(frozen=True)
class LocalizeConfig:
    """Segmentation settings; areas are fractions of the full frame so they hold at any resolution."""

    work_width: int = 160  # segmentation resolution (pixels across)
    exg_min: int = 24  # 2G - R - B above this is green tissue (uint8 scale)
    yellow_hue: tuple[int, int] = (20, 40)  # OpenCV hue (0-180) of yellow/chlorotic tissue (soil is < 15)
    yellow_sat_min: int = 100
    yellow_val_min: int = 120
    close_px: int = 5  # closing kernel at work resolution (~20 px of a 640 frame): bridges lesions that cut a leaf
    min_area: float = 0.003  # of the frame; 0.3 % of 640x480 ~ 920 px ~ a 30 px leaf
    max_area: float = 0.5

    def __post_init__(self) -> None:
        if self.work_width < 32:
            raise LocalizeError(f"work_width must be >= 32 pixels, got {self.work_width}")
        if not 0 <= self.min_area < self.max_area <= 1:
            raise LocalizeError(f"need 0 <= min_area < max_area <= 1, got {self.min_area}, {self.max_area}")
        if self.close_px < 1:
            raise LocalizeError(f"close_px must be >= 1, got {self.close_px}")


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
        pts = np.round(self._contour.astype(np.float32) * self._scale - (x0, y0)).astype(np.int32)
        cv2.drawContours(out, [pts], -1, 1, thickness=cv2.FILLED)
        return out.astype(bool)


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}"
        raise LocalizeError(f"expected a uint8 HxWx3 BGR frame, got {desc}")


def _tissue(small: np.ndarray, cfg: LocalizeConfig) -> np.ndarray:
    """Green or yellow pixels of a (small) BGR image, as uint8 0/255."""
    b, g, r = (small[:, :, i].astype(np.int16) for i in range(3))
    green = (2 * g - r - b) > cfg.exg_min
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    lo = np.array([cfg.yellow_hue[0], cfg.yellow_sat_min, cfg.yellow_val_min], np.uint8)
    hi = np.array([cfg.yellow_hue[1], 255, 255], np.uint8)
    yellow = cv2.inRange(hsv, lo, hi) > 0
    return (green | yellow).astype(np.uint8) * 255


def _leaf_contours(small: np.ndarray, cfg: LocalizeConfig) -> list[np.ndarray]:
    mask = _tissue(small, cfg)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.close_px, cfg.close_px))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    # External contours only: drawing them filled is what keeps lesions inside the leaf.
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return list(contours)


def _shrink(frame: np.ndarray, width: int) -> np.ndarray:
    """Halve with linear interpolation (an exact 2x2 mean, 3x faster than INTER_AREA), then fit."""
    while frame.shape[1] >= 2 * width:
        frame = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    if frame.shape[1] != width:
        h, w = frame.shape[:2]
        frame = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_LINEAR)
    return frame


class LeafLocalizer:
    """Callable: BGR frame -> list of leaf detections, largest first."""

    def __init__(self, config: LocalizeConfig | None = None) -> None:
        self.config = config or LocalizeConfig()

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        _check_frame(frame)
        cfg = self.config
        h, w = frame.shape[:2]
        small = _shrink(frame, cfg.work_width) if w > cfg.work_width else frame
        scale = w / small.shape[1]
        frame_area = float(h * w)
        dets = []
        for c in _leaf_contours(small, cfg):
            area = cv2.contourArea(c) * scale * scale
            if not cfg.min_area * frame_area <= area <= cfg.max_area * frame_area:
                continue
            x, y, bw, bh = cv2.boundingRect(c)
            box = (
                int(x * scale), int(y * scale), min(w, int(np.ceil((x + bw) * scale))),
                min(h, int(np.ceil((y + bh) * scale))),
            )
            m = cv2.moments(c)
            cx, cy = (m["m10"] / m["m00"], m["m01"] / m["m00"]) if m["m00"] else (x + bw / 2, y + bh / 2)
            border = x <= 0 or y <= 0 or x + bw >= small.shape[1] or y + bh >= small.shape[0]
            dets.append(Detection(box, area, (cx * scale, cy * scale), border, c, scale))
        dets.sort(key=lambda d: -d.area)
        return dets


def largest_leaf_mask(image: np.ndarray, config: LocalizeConfig | None = None) -> np.ndarray:
    """Boolean mask of the largest leaf in ``image``, at full resolution (to cut a leaf off its backdrop).

    The same colour rule as the localizer, so a coloured photo backdrop (blue, purple,
    grey) is left out while lesions inside the leaf stay in.
    """
    _check_frame(image)
    cfg = config or LocalizeConfig(work_width=min(image.shape[1], 256), min_area=0.0)
    small = _shrink(image, cfg.work_width) if image.shape[1] > cfg.work_width else image
    out = np.zeros(image.shape[:2], np.uint8)
    contours = _leaf_contours(small, cfg)
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


def masked_square_crop(frame: np.ndarray, det: Detection, margin: float = 0.08, fill: int = 128) -> np.ndarray:
    """``square_crop`` with everything but the leaf painted ``fill`` grey (a copy).

    For models that learned their photo backdrop: the soil around the leaf then
    cannot sway the class.
    """
    sx, sy, side = _square(frame.shape, det.box, margin)
    mask = np.zeros((side, side), np.uint8)
    pts = np.round(det._contour.astype(np.float32) * det._scale - (sx, sy)).astype(np.int32)
    cv2.drawContours(mask, [pts], -1, 1, thickness=cv2.FILLED)
    crop = np.full((side, side, 3), fill, np.uint8)
    np.copyto(crop, frame[sy : sy + side, sx : sx + side], where=mask[:, :, None].astype(bool))
    return crop
