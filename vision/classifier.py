"""Leaf crops to decisions: the bundle's model, calibrated probabilities, and an honest "uncertain".

All crops of a frame go through the bundle's ``PreprocessSpec`` into one reused
buffer and one onnxruntime call. ``vote`` merges a plant's views into one decision.

What is decided depends on the bundle. A field bundle (``calibration.decide_on ==
"health"``, with a ``background`` class) answers *healthy, diseased or not a plant*
from the class probabilities summed per health group (``leafscout.vision.taxonomy``): the
largest group wins; it is *uncertain* when that group's calibrated probability is
below ``abstain_below`` or when the best class probability is below ``ood_below``
(an out-of-distribution input: nothing the model knows). The class is the best one
within the winning group. An older bundle decides on the class: below
``abstain_below`` the prediction is uncertain, and health follows the class.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .preprocess import PreprocessSpec
from .taxonomy import BACKGROUND, DISEASED, HEALTHY, UNCERTAIN, Taxonomy

__all__ = ["UNCERTAIN_INDEX", "Prediction", "LeafClassifier", "ClassifierError", "BundleLike", "decide_batch"]

log = logging.getLogger(__name__)

UNCERTAIN_INDEX = -1


class ClassifierError(ValueError):
    """A threshold or input the classifier cannot use."""


class BundleLike(Protocol):
    """What the classifier needs from ``leafscout.vision.bundle.Bundle``."""

    classes: list[str]
    spec: PreprocessSpec
    abstain_below: float | None

    def probs(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Prediction:
    index: int  # class index, or UNCERTAIN_INDEX
    confidence: float  # calibrated probability of the best class
    best: int  # best class index even when uncertain (for diagnostics)
    health: str = UNCERTAIN  # healthy | diseased | uncertain | background
    health_confidence: float = 0.0  # calibrated probability of the decided health group

    @property
    def uncertain(self) -> bool:
        return self.index == UNCERTAIN_INDEX

    @property
    def is_plant(self) -> bool:
        """A decided plant (healthy or diseased): what a survey counts."""
        return self.health in (HEALTHY, DISEASED)


def decide_batch(probs: np.ndarray, taxonomy: Taxonomy, *, abstain_below: float, ood_below: float = 0.0,
                 on_health: bool = True, diseased_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decisions for [N, C] calibrated probabilities: (class index or -1, class prob, health, health prob).

    One vectorised rule for the robot, ``leafscout eval`` and calibration alike (see the
    module docstring); ``health`` is an array of strings. ``diseased_weight`` scales the
    diseased group before the groups are compared (a prior correction fitted on field
    validation data: lab sets hold far more diseased than healthy classes).
    """
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(taxonomy):
        raise ClassifierError(f"expected [N, {len(taxonomy)}] probabilities, got shape {probs.shape}")
    n = len(probs)
    rows = np.arange(n)
    best = probs.argmax(axis=1)
    best_p = probs[rows, best]
    if not on_health:
        index = np.where(best_p < abstain_below, UNCERTAIN_INDEX, best)
        health = taxonomy.health_names()[best]
        health[index == UNCERTAIN_INDEX] = UNCERTAIN
        return index, best_p, health, best_p
    groups = taxonomy.group_probs(probs)  # (background, healthy, diseased)
    if diseased_weight != 1.0:
        groups[:, 2] *= np.float32(diseased_weight)
        groups /= groups.sum(axis=1, keepdims=True)
    g = groups.argmax(axis=1)
    g_p = groups[rows, g]
    health = np.array(Taxonomy.group_names(), dtype=object)[g]
    index = np.where(taxonomy.group_masks()[g], probs, -1.0).argmax(axis=1)  # best class inside the winning group
    conf = probs[rows, index]
    plant = health != BACKGROUND
    unsure = plant & ((g_p < abstain_below) | (best_p < ood_below))
    health[unsure] = UNCERTAIN
    index = np.where(unsure, UNCERTAIN_INDEX, index)
    return index, conf, health, g_p


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
        self.taxonomy: Taxonomy = getattr(bundle, "taxonomy", None) or Taxonomy.from_names(self.classes)
        self.ood_below = float(getattr(bundle, "ood_below", None) or 0.0)
        self.on_health = bool(getattr(bundle, "decides_health", False))
        self.diseased_weight = float(getattr(bundle, "diseased_weight", None) or 1.0)
        self.background_index: int | None = self.taxonomy.background_index
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
        """One probability vector -> class (or uncertain) and health."""
        probs = np.asarray(probs)
        index, conf, health, health_p = decide_batch(probs[None], self.taxonomy, abstain_below=self.abstain_below,
                                                     ood_below=self.ood_below, on_health=self.on_health,
                                                     diseased_weight=self.diseased_weight)
        best = int(np.argmax(probs))
        return Prediction(int(index[0]), float(conf[0]) if index[0] >= 0 else float(probs[best]), best,
                          str(health[0]), float(health_p[0]))

    def health(self, pred: Prediction) -> str:
        """``healthy``, ``diseased``, ``uncertain`` or ``background`` (not a plant) for a decision."""
        return pred.health

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
