"""The robot's per-frame vision on one image: plant candidates, each classified, plus the vegetation mask.

``leafscout detect`` runs this on still images. It is the same path as the robot's
loop (localizer, square crop, white balance against the frame's soil, classifier),
without tracking or voting: one view per candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .localize import Detection, LeafLocalizer, LocalizeConfig, masked_square_crop, square_crop, vegetation_mask
from .white_balance import WhiteBalance, apply_gains, balance_gains

__all__ = ["ImageDetection", "FrameDetections", "Detector", "HEALTH_VALUES", "leaf_crop", "LEAF_GROW_PX"]

HEALTH_VALUES = ("healthy", "diseased", "uncertain", "background")
LEAF_GROW_PX = 4  # a painted crop keeps this much (frame pixels) around the leaf's outline: blurred or missed edges


def leaf_crop(image: np.ndarray, box: Sequence[int], detection: Detection | None, *, margin: float,
              gains: np.ndarray | None = None, fill: int | Sequence[float] | None = None) -> np.ndarray:
    """The classifier's view of one leaf (the robot's loop and ``leafscout detect`` alike).

    A square crop around ``box``, colour-corrected by ``gains``; with ``fill`` (a grey level
    or a B, G, R colour, as the classifier is to see it) and the leaf's ``detection``,
    everything but the leaf is painted over. Measured on the simulator's textured grounds
    (docs/localizer.md): painting the reference soil kept speckles, gravel, straw and weeds
    from swaying healthy-versus-diseased.
    """
    if fill is None or detection is None:
        crop = square_crop(image, box, margin)
        return crop if gains is None else apply_gains(crop, gains)
    if gains is None:
        return masked_square_crop(image, detection, margin, fill, LEAF_GROW_PX)
    paint = np.broadcast_to(np.asarray(fill, np.float64), (3,)) / np.maximum(gains, 1e-3)  # is ``fill`` after gains
    return apply_gains(masked_square_crop(image, detection, margin, paint, LEAF_GROW_PX), gains)


@dataclass
class ImageDetection:
    """One candidate with its decision; ``box`` is (x0, y0, x1, y1) in image pixels, ends exclusive."""

    box: tuple[int, int, int, int]
    cls: str
    health: str
    confidence: float
    detection: Detection

    def to_json(self) -> dict[str, Any]:
        return {"box": [int(v) for v in self.box], "class": self.cls, "health": self.health,
                "confidence": round(float(self.confidence), 6)}


@dataclass
class FrameDetections:
    width: int
    height: int
    detections: list[ImageDetection]
    mask: np.ndarray | None  # uint8 255 = vegetation, at the image's size (when asked for)

    def to_json(self, image: str) -> dict[str, Any]:
        return {"image": image, "width": self.width, "height": self.height,
                "detections": [d.to_json() for d in self.detections]}


def _health(classifier: Any, pred: Any) -> str:
    """healthy | diseased | uncertain | background, from the classifier's taxonomy when it has one."""
    health = getattr(classifier, "health", None)
    if health is not None:
        return str(health(pred))
    if pred.uncertain:  # a classifier without health decisions: read it from the class name
        return "uncertain"
    return "healthy" if "healthy" in classifier.classes[pred.index].lower() else "diseased"


class Detector:
    """Callable: BGR image -> ``FrameDetections``. ``classifier`` may be None (boxes only, health "uncertain")."""

    def __init__(self, classifier: Any = None, *, localize: LocalizeConfig | None = None,
                 white_balance: WhiteBalance | None = None, crop_margin: float = 0.08) -> None:
        self.classifier = classifier
        self.localizer = LeafLocalizer(localize)
        self.white_balance = white_balance or WhiteBalance()
        self.crop_margin = crop_margin

    def __call__(self, image: np.ndarray, *, mask: bool = False) -> FrameDetections:
        dets, seg = self.localizer.detect(image)
        gains = balance_gains(image, self.white_balance, seg.background_bgr)
        preds: Sequence[Any] = [None] * len(dets)
        if self.classifier is not None and dets:
            fill = self.white_balance.soil_fill
            crops = [leaf_crop(image, d.box, d, margin=self.crop_margin, gains=gains, fill=fill) for d in dets]
            preds = self.classifier.classify(crops)
        out = []
        for d, p in zip(dets, preds):
            if p is None:
                out.append(ImageDetection(d.box, "", "uncertain", 0.0, d))
            else:
                out.append(ImageDetection(d.box, self.classifier.classes[p.best], _health(self.classifier, p),
                                          p.confidence, d))
        h, w = image.shape[:2]
        return FrameDetections(w, h, out, vegetation_mask(image, self.localizer.config) if mask else None)
