"""Overlays that show why a count is what it is: boxes, labels, track ids and the vegetation outline.

``draw`` paints one frame (a copy); ``VideoAnnotator`` is the runtime's annotator
(``leafscout run --annotate OUT.avi``): each processed frame, with the tracks being
followed and their current vote, into an MJPG AVI any player opens.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

__all__ = ["draw", "draw_outline", "VideoAnnotator", "COLOURS"]

COLOURS = {  # BGR, by health
    "healthy": (60, 200, 60), "diseased": (40, 40, 230), "uncertain": (0, 200, 230), "background": (170, 170, 170),
    "": (230, 160, 40),  # not classified (yet)
}
OUTLINE = (255, 0, 255)


def draw_outline(canvas: np.ndarray, mask: np.ndarray | None) -> None:
    """The vegetation mask's outline (any resolution), in place."""
    if mask is None or not mask.any():
        return
    h, w = canvas.shape[:2]
    if mask.shape[:2] != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    contours = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    cv2.drawContours(canvas, contours, -1, OUTLINE, 1, cv2.LINE_AA)


def draw(image: np.ndarray, boxes: Iterable[tuple[Sequence[int], str, str]], mask: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``image`` with the mask outline and each (box, label, health) drawn."""
    canvas = image.copy()
    draw_outline(canvas, mask)
    scale = max(0.4, canvas.shape[1] / 1600)
    for box, label, health in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        colour = COLOURS.get(health, COLOURS[""])
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
        if label:
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = max(th + base, y0)
            cv2.rectangle(canvas, (x0, ty - th - base), (x0 + tw, ty), colour, -1)
            cv2.putText(canvas, label, (x0, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


class VideoAnnotator:
    """The runtime's overlay video: ``frame(...)`` per processed frame; use as a context manager."""

    def __init__(self, path: str | os.PathLike, classifier: Any, fps: float = 20.0, quality: int = 80) -> None:
        self.path = str(path)
        self.classifier = classifier
        self.fps = fps
        self.quality = quality
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None

    def __enter__(self) -> "VideoAnnotator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _label(self, track: Any) -> tuple[str, str]:
        if not track.votes:
            return f"#{track.id}", ""
        pred = self.classifier.vote(np.stack(track.votes))
        health = getattr(pred, "health", None) or ("uncertain" if pred.uncertain else "")
        name = self.classifier.classes[pred.best].split("___")[-1]
        return f"#{track.id} {name} {pred.confidence:.2f}", health

    def frame(self, image: np.ndarray, detections: Sequence[Any], tracks: Sequence[Any], segmentation: Any) -> None:
        if self._writer is None:
            from .simulate import mjpeg_writer

            self._writer = mjpeg_writer(self.path, self.fps, (image.shape[1], image.shape[0]), self.quality)
        current = {id(d) for d in detections}
        seen = [t for t in tracks if id(t.detection) in current]
        boxes = [(t.box, *self._label(t)) for t in seen]
        self._writer.write(draw(image, boxes, getattr(segmentation, "mask", None)))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
