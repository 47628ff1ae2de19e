"""Leaf crops to decisions: the bundle's model, calibrated probabilities, and an honest "uncertain".

All crops of a frame go through the bundle's ``PreprocessSpec`` into one reused
buffer and one onnxruntime call. A prediction whose calibrated confidence is below
the bundle's ``abstain_below`` is *uncertain* (index -1), counted apart instead of
forced into a class. ``vote`` merges a plant's views into one decision.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .preprocess import PreprocessSpec

__all__ = ["UNCERTAIN_INDEX", "Prediction", "LeafClassifier", "ClassifierError", "BundleLike"]

log = logging.getLogger(__name__)

UNCERTAIN_INDEX = -1


class ClassifierError(ValueError):
    """A threshold or input the classifier cannot use."""


class BundleLike(Protocol):
    """What the classifier needs from ``vision.bundle.Bundle``."""

    classes: list[str]
    spec: PreprocessSpec
    abstain_below: float | None

    def probs(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Prediction:
    index: int  # class index, or UNCERTAIN_INDEX
    confidence: float  # calibrated probability of the best class
    best: int  # best class index even when uncertain (for diagnostics)

    @property
    def uncertain(self) -> bool:
        return self.index == UNCERTAIN_INDEX


class LeafClassifier:
    """Wraps a loaded bundle; ``abstain_below`` overrides the bundle's threshold (0 disables it)."""

    def __init__(self, bundle: BundleLike, *, abstain_below: float | None = None, max_batch: int = 64) -> None:
        threshold = bundle.abstain_below if abstain_below is None else abstain_below
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ClassifierError(f"abstain_below must be a probability in [0, 1], got {threshold!r}")
        self.bundle = bundle
        self.classes = list(bundle.classes)
        self.spec = bundle.spec
        self.abstain_below = float(threshold or 0.0)
        self._buffer = np.empty((max_batch, 3, *self.spec.size), np.float32)
        self.calls = 0
        self.crops = 0

    def probs(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities [N, C] for BGR crops, in one model call."""
        if not crops:
            return np.empty((0, len(self.classes)), np.float32)
        batch = self.spec.apply_batch(crops, out=self._buffer)
        if batch.base is not self._buffer and batch is not self._buffer:  # grew past max_batch: keep the bigger one
            self._buffer = batch
        self.calls += 1
        self.crops += len(crops)
        return self.bundle.probs(batch)

    def decide(self, probs: np.ndarray) -> Prediction:
        """One probability vector -> class or uncertain."""
        best = int(np.argmax(probs))
        conf = float(probs[best])
        return Prediction(UNCERTAIN_INDEX if conf < self.abstain_below else best, conf, best)

    def classify(self, crops: Sequence[np.ndarray]) -> list[Prediction]:
        return [self.decide(p) for p in self.probs(crops)]

    def vote(self, probs: np.ndarray) -> Prediction:
        """Confidence-weighted vote over one plant's views ([K, C] probabilities).

        Each view's probabilities count with its own confidence as weight, so a sharp
        centred view outweighs a blurry one at the edge; the mean stays calibrated-ish
        and goes through the same uncertain threshold as a single view.
        """
        probs = np.asarray(probs, np.float64)
        if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] != len(self.classes):
            raise ClassifierError(f"vote needs [K>0, {len(self.classes)}] probabilities, got {probs.shape}")
        w = probs.max(axis=1)
        return self.decide((w[:, None] * probs).sum(axis=0) / w.sum())
