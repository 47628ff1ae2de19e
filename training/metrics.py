"""Classification metrics shared by training, `leafscout eval` and bundle evaluation.

Accuracy alone hides the small classes, so macro-F1 and per-class precision/recall
come with it; expected calibration error says whether a 0.9 confidence means 90%.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["classification_metrics", "expected_calibration_error", "confusion_matrix", "health_metrics"]


def _check(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be (N, C) with N = len(y_true) = {y.shape[0]}, got shape {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be in [0, {p.shape[1]}), got range [{y.min()}, {y.max()}]")
    return y, p


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    idx = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    y, p = _check(y_true, probs)
    if y.size == 0:
        return 0.0
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], n_bins: int = 15
) -> dict[str, Any]:
    """top-1, macro-F1, ECE, per-class precision/recall/F1/support and the confusion matrix."""
    y, p = _check(y_true, probs)
    if p.shape[1] != len(classes):
        raise ValueError(f"probs have {p.shape[1]} columns but {len(classes)} class names were given")
    pred = p.argmax(1) if y.size else np.zeros(0, np.int64)
    cm = confusion_matrix(y, pred, len(classes))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0  # classes absent from this split do not drag the mean to zero
    return {
        "n": int(y.size),
        "top1": float((pred == y).mean()) if y.size else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "ece": expected_calibration_error(y, p, n_bins),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion": cm.tolist(),
    }


def health_metrics(y_true: np.ndarray, probs: np.ndarray, taxonomy: Any, *, abstain_below: float = 0.0,
                   ood_below: float = 0.0, on_health: bool = True, diseased_weight: float = 1.0) -> dict[str, Any]:
    """What the robot's decisions (``leafscout.vision.classifier.decide_batch``) are worth on labelled crops.

    On plant leaves (label not ``background``): ``coverage`` = share not abstained
    (uncertain); among covered leaves, ``health_accuracy`` = share whose decided health
    is right (a leaf called background is wrong), ``false_alarm_rate`` = healthy leaves
    called diseased / covered healthy leaves, ``miss_rate`` = diseased leaves called
    healthy or background / covered diseased leaves, ``crop_accuracy`` = share whose
    class names the right crop. On background crops: ``background_called_plant`` =
    share decided healthy or diseased. Counts come with every rate.
    """
    from leafscout.vision.classifier import decide_batch
    from leafscout.vision.taxonomy import BACKGROUND, DISEASED, HEALTHY, UNCERTAIN

    y, p = _check(y_true, probs)
    index, _, health, _ = decide_batch(p, taxonomy, abstain_below=abstain_below, ood_below=ood_below,
                                       on_health=on_health, diseased_weight=diseased_weight)
    true_health = taxonomy.health_names()[y]
    leaf = true_health != BACKGROUND
    covered = leaf & (health != UNCERTAIN)
    plant_called = np.isin(health, [HEALTHY, DISEASED])

    def rate(num: np.ndarray, den: np.ndarray) -> float | None:
        return float(num.sum() / den.sum()) if den.sum() else None

    crops = np.array([taxonomy.crop_of(int(i)) or "" for i in range(len(taxonomy))], dtype=object)
    right_crop = covered & (index >= 0) & (crops[np.maximum(index, 0)] == crops[y])
    healthy_cov, diseased_cov = covered & (true_health == HEALTHY), covered & (true_health == DISEASED)
    return {
        "n_leaves": int(leaf.sum()),
        "n_background": int((~leaf).sum()),
        "coverage": rate(covered, leaf),
        "health_accuracy": rate(covered & (health == true_health), covered),
        "false_alarm_rate": rate(healthy_cov & (health == DISEASED), healthy_cov),
        "miss_rate": rate(diseased_cov & np.isin(health, [HEALTHY, BACKGROUND]), diseased_cov),
        "crop_accuracy": rate(right_crop, covered),
        "leaves_called_background": rate(leaf & (health == BACKGROUND), leaf),
        "background_called_plant": rate(~leaf & plant_called, ~leaf),
        "n_healthy_covered": int(healthy_cov.sum()),
        "n_diseased_covered": int(diseased_cov.sum()),
    }
