"""Vegetation versus everything else, per pixel, with a threshold chosen per frame.

The index is excess green on chromaticity plus a share of green-over-red,
``(2G - R - B + w (G - R)) / (R + G + B + k * mean)``: dividing by brightness makes it
hold under exposure changes and shadows, and the ``k * mean`` term keeps dark, noisy
pixels from swinging it. Excess green alone ranks yellow straw above a dull blue-green
leaf (PlantVillage's healthy apple leaves); green-over-red does not (``w`` 0.5 found
them: straw count -11 % -> -2 %). A seed pixel must also be greener than red outright
(``seed_green``): lime-yellow stalks are not. The index is taken
relative to the frame's own background (the mean index of the pixels a first pass
calls soil), so a colour cast or a greenish soil cannot move bare soil into the green;
a pixel must also be green outright (``min_absolute``), or grey stones on brown soil
would count.
(Balancing the pixels' colour against brown soil instead turns dull blue-green leaves
grey; measured, it lost a sixth of real PlantVillage leaves.)

The threshold is Otsu's on that frame's index histogram, clipped to
``[min_index, max_index]`` (the upper bound keeps pale leaves in a frame of deep green
ones). The floor is what holds on bare ground: a frame with only soil, straw, gravel or stones has nothing greener
than that, so Otsu's split of soil against soil is refused and the frame yields no
vegetation. Measured on the cwfid field images (vegetation IoU), see docs/localizer.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Segmentation", "vegetation_index", "green_over_red", "otsu_threshold", "segment_vegetation", "INDEX_SCALE"]

INDEX_SCALE = 127.5  # index (-1..2) -> uint8 for the histogram: q = (index + 1) * INDEX_SCALE


@dataclass
class Segmentation:
    """One frame's vegetation at work resolution."""

    mask: np.ndarray  # uint8 0/255, work resolution
    index: np.ndarray  # float32 excess-green index, work resolution
    threshold: float  # index threshold used (inf when the frame has no vegetation)
    background_bgr: np.ndarray  # mean colour of the non-vegetation pixels (float, B G R), before balancing

    @property
    def empty(self) -> bool:
        return not np.isfinite(self.threshold)


def vegetation_index(small: np.ndarray, brightness_k: float = 1.0, green_red: float = 0.0) -> np.ndarray:
    """Normalised excess green of a BGR uint8 image (float32), plus ``green_red`` x (G - R) on the same scale."""
    b, g, r = cv2.split(small.astype(np.float32))
    s = b + g + r
    num = 2 * g - r - b
    if green_red:
        num += green_red * (g - r)
    return num / (s + brightness_k * float(s.mean()) + 1.0)


def green_over_red(small: np.ndarray) -> np.ndarray:
    """(G - R) / (B + G + R) of a BGR uint8 image (float32): positive for leaves, negative for soil and straw."""
    b, g, r = cv2.split(small.astype(np.float32))
    return (g - r) / (b + g + r + 1.0)


def otsu_threshold(index: np.ndarray) -> float:
    """Otsu's threshold of an index image, in index units."""
    q = np.clip((index + 1.0) * INDEX_SCALE, 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) / INDEX_SCALE - 1.0


def segment_vegetation(small: np.ndarray, *, min_index: float, max_index: float = 2.0, brightness_k: float = 1.0,
                       balance: bool = True, hysteresis: float = 0.0, min_absolute: float | None = None,
                       green_red: float = 0.0, seed_green: float | None = None,
                       seed_green_over_soil: float = 0.1) -> Segmentation:
    """Vegetation mask of a (work-resolution) BGR frame; see the module docstring."""
    raw = vegetation_index(small, brightness_k=brightness_k, green_red=green_red)
    index = raw.copy()
    t0 = otsu_threshold(index)
    soil = (index <= t0).astype(np.uint8)
    background = np.asarray(cv2.mean(small, mask=soil)[:3], np.float32)
    if balance:
        # measured from the frame's own soil: a colour cast or a greenish soil moves soil and leaves alike
        index -= np.float32(cv2.mean(index, mask=soil)[0])
        t0 = otsu_threshold(index)
    t = min(max(t0, min_index), max(min_index, max_index))
    if balance and min_absolute is not None:
        # greener than brown soil is not enough: grey stones are too. Vegetation is green outright.
        index[raw <= min_absolute] -= 1.0
    mask = (index > t).astype(np.uint8) * 255
    if seed_green is not None:
        # a seed is greener than red outright: lime-yellow straw stalks are green-excessive but not that.
        # Capped at the soil's own share plus a margin, so a warm cast (red up everywhere) keeps its leaves;
        # only seeds: hysteresis below still grows yellowing, diseased leaf parts back from them
        gr = green_over_red(small)
        mask[gr <= min(seed_green, float(cv2.mean(gr, mask=soil)[0]) + seed_green_over_soil)] = 0
    if not mask.any():
        return Segmentation(mask, index, float("inf"), background)
    if hysteresis > 0:
        # pixels a little less green than the threshold belong to vegetation they touch (dull, patchy leaves)
        n, labels = cv2.connectedComponents((index > t - hysteresis).astype(np.uint8))
        keep = np.zeros(n, np.uint8)
        keep[np.unique(labels[mask > 0])] = 255
        keep[0] = 0
        mask = keep[labels]
    return Segmentation(mask, index, t, background)
