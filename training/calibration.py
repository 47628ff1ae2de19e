"""Confidences the robot can trust: temperature scaling and an abstain threshold.

BN networks tend to be over-confident (Guo et al. 2017, "On calibration of modern
neural networks"). One scalar temperature ``T`` fitted on the validation split fixes
most of it without changing any prediction: ``probs = softmax(logits / T)``.

The abstain threshold turns "uncertain" into something measurable: a prediction is
**accepted when its calibrated max probability is >= abstain_below**, and reported as
uncertain otherwise (``leafscout.vision.classifier.LeafClassifier.decide``). ``abstain_below``
is the smallest threshold whose accepted validation predictions reach the target
precision, so it keeps as many predictions as the target allows.

Both numbers go into the checkpoint's ``calibration`` block, which the deploy step
copies into the bundle manifest.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leafscout.vision.bundle import softmax  # the robot's softmax: same numbers on both sides

__all__ = [
    "CalibrationError",
    "AbstainThreshold",
    "ReliabilityBins",
    "fit_temperature",
    "fit_temperature_ece",
    "cross_fitted_ece",
    "photo_folds",
    "resplit_cross_fitted_ece",
    "fit_field_temperatures",
    "TEMPERATURE_OBJECTIVES",
    "softmax",
    "choose_abstain_threshold",
    "accepted_precision",
    "reliability_bins",
    "plot_reliability",
    "calibrate_checkpoint",
    "calibrate_field",
    "choose_health_threshold",
    "choose_ood_threshold",
    "choose_diseased_weight",
]

log = logging.getLogger(__name__)

# Bounds of the temperature search: outside them the model is broken, not miscalibrated.
T_MIN, T_MAX = 0.05, 20.0
# The ECE search: temperatures on a log grid over [1/3, 3] (T = 1 is on it, in the middle).
ECE_GRID = np.exp(np.linspace(math.log(1 / 3), math.log(3.0), 121))
TEMPERATURE_OBJECTIVES = ("nll", "ece")
# Other two-fold splits by photo over which calibration reports the cross-fitted ECE's spread.
CROSS_FIT_RESPLITS = 20


class CalibrationError(ValueError):
    """Inputs that calibration cannot work with (shapes, labels, targets)."""


def _check_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits or probabilities (N x C) and integer labels, as float64 and int64."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise CalibrationError(f"scores must be an N x C array (C >= 2 classes), got shape {scores.shape}")
    if labels.shape != (scores.shape[0],):
        raise CalibrationError(f"labels must have shape ({scores.shape[0]},), got {labels.shape}")
    if scores.shape[0] == 0:
        raise CalibrationError("no samples to calibrate on")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= scores.shape[1]:
        got = f"{labels.dtype} values in [{labels.min()}, {labels.max()}]"
        raise CalibrationError(f"labels must be integers in [0, {scores.shape[1] - 1}], got {got}")
    if not np.isfinite(scores).all():
        raise CalibrationError("scores contain NaN or inf (a diverged model cannot be calibrated)")
    return scores, labels.astype(np.int64)


def _nll(logits: np.ndarray, labels: np.ndarray, beta: float) -> float:
    """Mean negative log-likelihood of softmax(beta * logits); convex in beta."""
    z = beta * logits
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, iters: int = 80) -> float:
    """The scalar T minimising validation NLL of softmax(logits / T).

    The NLL is convex in 1/T, so a golden-section search over log(1/T) within
    [1/T_MAX, 1/T_MIN] finds the optimum without a learning rate to tune.
    """
    logits, labels = _check_scores(logits, labels)
    lo, hi = math.log(1.0 / T_MAX), math.log(1.0 / T_MIN)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(logits, labels, math.exp(a)), _nll(logits, labels, math.exp(b))
    for _ in range(iters):
        if fa < fb:  # minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(logits, labels, math.exp(b))
    t = 1.0 / math.exp((lo + hi) / 2.0)
    if t <= T_MIN * 1.01 or t >= T_MAX * 0.99:
        log.warning("fitted temperature %.3g sits at the search bound [%g, %g]", t, T_MIN, T_MAX)
    return t


def fit_temperature_ece(logits: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """The T of ``ECE_GRID`` with the lowest ECE of softmax(logits / T); ties go to the lower NLL.

    ECE is the figure a confidence is judged by, and the NLL-optimal T need not minimise
    it (NLL also pays for the spread of the wrong classes' probabilities). ECE is a step
    function of T, so a grid, not a line search; T = 1 is on the grid, so the chosen T
    never has a higher ECE on these samples than no scaling.
    """
    from .metrics import expected_calibration_error

    logits, labels = _check_scores(logits, labels)
    scores = [(round(expected_calibration_error(labels, softmax(logits, float(t)), n_bins), 9),
               _nll(logits, labels, 1.0 / float(t)), float(t)) for t in ECE_GRID]
    return min(scores)[2]


def _fit(objective: str, logits: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    if objective not in TEMPERATURE_OBJECTIVES:
        raise CalibrationError(f"temperature objective must be one of {TEMPERATURE_OBJECTIVES}, got {objective!r}")
    return fit_temperature_ece(logits, labels, n_bins=n_bins) if objective == "ece" else fit_temperature(logits, labels)


# Fewer rows than this on either side of the best-class split: one temperature for all rows.
MIN_ROWS_PER_TEMPERATURE = 20


def fit_field_temperatures(logits: np.ndarray, labels: np.ndarray, background_index: int, objective: str = "ece",
                           n_bins: int = 15) -> tuple[float, float | None]:
    """(T for rows whose best class is a plant, T for rows whose best class is background).

    A field model is over-confident on leaves (about half right at 50% confidence) and
    under-confident on soil and weed windows (nearly all right at 85%); one temperature only
    trades one against the other. Each T is fitted on its own rows; both keep every row's
    best class, so the robot applies them the same way (``vision.bundle.softmax``). Both stay
    within the ECE grid's bounds: rows that are nearly all right would drive NLL's T to 0.
    With too few rows on a side, one temperature for all (the second is None).
    """
    logits, labels = _check_scores(logits, labels)
    best_bg = logits.argmax(axis=1) == background_index
    lo, hi = float(ECE_GRID[0]), float(ECE_GRID[-1])
    if min(best_bg.sum(), (~best_bg).sum()) < MIN_ROWS_PER_TEMPERATURE:
        return float(np.clip(_fit(objective, logits, labels, n_bins), lo, hi)), None
    plant = _fit(objective, logits[~best_bg], labels[~best_bg], n_bins)
    background = _fit(objective, logits[best_bg], labels[best_bg], n_bins)
    return float(np.clip(plant, lo, hi)), float(np.clip(background, lo, hi))


def cross_fitted_ece(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray, objective: str = "ece",
                     n_bins: int = 15, *, background_index: int | None = None) -> float:
    """ECE of temperatures each fitted on the other folds and applied to the held-out one.

    A temperature chosen to minimise ECE on the very samples it is scored on flatters
    itself; this is the ECE to expect on new data of the same kind. With ``background_index``
    the temperatures are ``fit_field_temperatures``'s pair, as ``calibrate_field`` fits them.
    """
    from .metrics import expected_calibration_error

    logits, labels = _check_scores(logits, labels)
    folds = np.asarray(folds)
    if folds.shape != labels.shape or len(np.unique(folds)) < 2:
        raise CalibrationError(f"folds must label every sample with one of at least 2 folds, got {np.unique(folds)}")
    cal = np.empty_like(logits)
    for k in np.unique(folds):
        held = folds == k
        if background_index is None:
            cal[held] = softmax(logits[held], _fit(objective, logits[~held], labels[~held], n_bins))
        else:
            t, t_bg = fit_field_temperatures(logits[~held], labels[~held], background_index, objective, n_bins)
            cal[held] = softmax(logits[held], t, background_temperature=t_bg, background_index=background_index)
    return expected_calibration_error(labels, cal, n_bins)


def photo_folds(groups: list[str], salt: int = 0) -> np.ndarray:
    """Two folds by photo (a photo's leaves and windows stay together); ``salt`` > 0 draws another split.

    Salt 0 is the split calibration always reported (CRC-32 of the photo's name). Other splits
    come from a seeded shuffle of the photos: CRC-32 is linear, so salting its input would give
    the same partition again (or its mirror).
    """
    if salt == 0:
        return np.array([zlib.crc32(g.encode()) % 2 for g in groups])
    names = sorted(set(groups))
    side = dict(zip(names, np.random.default_rng([salt, 0x5EED]).integers(0, 2, len(names))))
    return np.array([side[g] for g in groups])


def _spread(values: list[float]) -> dict[str, float | int]:
    return {"n": len(values), "mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}


def resplit_cross_fitted_ece(logits: np.ndarray, labels: np.ndarray, groups: list[str], n: int = 20,
                             objective: str = "ece", n_bins: int = 15, *,
                             background_index: int | None = None) -> list[float]:
    """``cross_fitted_ece`` over ``n`` other two-fold splits by photo (salts 1..n).

    One split's figure moves with which photos fell on which side; the spread over
    splits says how much a difference between two checkpoints' figures can be trusted.
    A draw that puts every photo on one side (only with very few photos) is skipped.
    """
    out = []
    for salt in range(1, n + 1):
        folds = photo_folds(groups, salt)
        if len(np.unique(folds)) == 2:
            out.append(cross_fitted_ece(logits, labels, folds, objective, n_bins, background_index=background_index))
    if not out:
        raise CalibrationError(f"none of {n} splits puts photos on both sides: need photos from several groups")
    return out


@dataclass(frozen=True)
class AbstainThreshold:
    """Accept a prediction when its max probability >= ``threshold``."""

    threshold: float
    precision: float | None  # precision of accepted predictions (None when none accepted)
    coverage: float  # fraction of predictions accepted
    target_precision: float
    target_met: bool


def _cuts(conf: np.ndarray, correct: np.ndarray, target: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidences sorted high to low, the precision of accepting the first k+1, and the
    indices k where that precision reaches ``target``. A cut is only valid after the last
    of a group of equal confidences (accept >= t)."""
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order].astype(np.float64)
    precision = np.cumsum(correct) / np.arange(1, len(conf) + 1)
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]
    return conf, precision, np.flatnonzero(last_of_tie & (precision >= target - 1e-12))


def choose_abstain_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float) -> AbstainThreshold:
    """The smallest max-probability threshold whose accepted predictions reach the target.

    Smallest, because it keeps the most predictions (largest coverage) among the
    thresholds that meet the target. When none does, the threshold is 1.0 (only
    saturated predictions pass) and ``target_met`` is False.
    """
    if not 0.0 < target_precision <= 1.0:
        raise CalibrationError(f"target_precision must be in (0, 1], got {target_precision!r}")
    probs, labels = _check_scores(probs, labels)
    conf, precision, ok = _cuts(probs.max(axis=1), probs.argmax(axis=1) == labels, target_precision)
    n = len(conf)
    if len(ok) == 0:
        log.warning("no threshold reaches precision %.3f on %d predictions: abstaining below 1.0", target_precision, n)
        prec, cov = accepted_precision(probs, labels, 1.0)
        return AbstainThreshold(1.0, prec, cov, float(target_precision), False)
    k = int(ok[-1])  # the deepest cut = the smallest threshold
    return AbstainThreshold(float(conf[k]), float(precision[k]), (k + 1) / n, float(target_precision), True)


def accepted_precision(probs: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float | None, float]:
    """(precision of accepted predictions, coverage) at a given threshold, e.g. on the test split."""
    probs, labels = _check_scores(probs, labels)
    accept = probs.max(axis=1) >= threshold
    if not accept.any():
        return None, 0.0
    return float((probs.argmax(axis=1) == labels)[accept].mean()), float(accept.mean())


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin mean confidence, accuracy and count over equal-width confidence bins."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted |accuracy - confidence|."""
        return float(np.sum(self.count * np.abs(self.accuracy - self.confidence)) / max(1, self.count.sum()))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Bin predictions by max probability (bins are (lo, hi], as in Guo et al. 2017)."""
    probs, labels = _check_scores(probs, labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        acc = np.bincount(idx, correct, n_bins) / count
    empty = count == 0
    mean_conf[empty], acc[empty] = 0.0, 0.0
    return ReliabilityBins(edges, mean_conf, acc, count)


def plot_reliability(
    panels: list[tuple[str, ReliabilityBins]], path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Reliability diagrams side by side (e.g. before/after temperature scaling) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ncols = min(2, len(panels))  # before | after, one row per split
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, bins) in zip(axes.flat, panels):
        width = np.diff(bins.edges)
        centers = bins.edges[:-1] + width / 2
        filled = bins.count > 0
        ax.bar(centers[filled], bins.accuracy[filled], width=width[filled], edgecolor="black",
               color="tab:blue", label="accuracy")
        gap_lo = np.minimum(bins.accuracy, bins.confidence)[filled]
        gap_h = np.abs(bins.accuracy - bins.confidence)[filled]
        ax.bar(centers[filled], gap_h, bottom=gap_lo, width=width[filled], color="tab:red", alpha=0.35,
               edgecolor="tab:red", hatch="//", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE = {100 * bins.ece:.2f}%  (n = {int(bins.count.sum())})", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_probs(probs: np.ndarray) -> np.ndarray:
    """Logits up to a per-row constant (all softmax needs); underflowed zeros become ln(float32 tiny)."""
    return np.log(np.maximum(np.asarray(probs, np.float64), np.finfo(np.float32).smallest_subnormal))


def _split_probs(ckpt_path: Path, data: str | os.PathLike | None, parts: tuple[str, ...]) -> dict[str, tuple]:
    """``part -> (labels, probs)`` for the run's split parts, read from disk as the robot reads them."""
    from .checkpoint import checkpoint_preprocess, load_checkpoint
    from .evaluate import _samples_for, predict_probs

    manifest = ckpt_path.parent / "split.json"
    if not manifest.is_file():
        raise CalibrationError(
            f"no split.json beside {ckpt_path}: calibration needs the run's own validation split "
            "(fitting on training images would make the model look better calibrated than it is)"
        )
    model, ckpt = load_checkpoint(ckpt_path)
    spec = checkpoint_preprocess(ckpt)
    out = {}
    for part in parts:
        samples = _samples_for(ckpt_path, ckpt, data, part)
        if samples:
            out[part] = predict_probs(model, spec, samples)
        else:
            log.warning("the %r part of %s is empty", part, manifest)
    return out


def _rewrite_calibration(ckpt_path: Path, calibration: dict[str, Any]) -> None:
    """Replace only the ``calibration`` key, atomically (tmp + rename), keeping every other key."""
    import torch

    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    ckpt["calibration"] = calibration
    tmp = ckpt_path.with_suffix(ckpt_path.suffix + ".calib.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, ckpt_path)


def calibrate_checkpoint(
    ckpt_path: str | os.PathLike,
    target_precision: float = 0.98,
    split: str = "val",
    *,
    data: str | os.PathLike | None = None,
    report_split: str | None = "test",
    n_bins: int = 15,
) -> dict[str, Any]:
    """Fit T and ``abstain_below`` on ``split``, write them into the checkpoint, plot reliability.

    ``data`` re-points the run's split manifest at another copy of the images.
    ``report_split`` (default test) is only measured, never fitted on: its ECE
    before/after and the precision/coverage of the chosen threshold are what to quote.
    Writes ``reliability.png`` beside the checkpoint; returns the calibration block.
    """
    from .metrics import expected_calibration_error

    if not 0.0 < target_precision <= 1.0:
        raise CalibrationError(f"target_precision must be in (0, 1], got {target_precision!r}")
    if split == report_split:
        raise CalibrationError(f"fit split and report split are both {split!r}; report on a split not fitted on")
    ckpt_path = Path(ckpt_path)
    parts = (split,) if report_split is None else (split, report_split)
    preds = _split_probs(ckpt_path, data, parts)
    if split not in preds:
        raise CalibrationError(f"the {split!r} part of {ckpt_path.parent / 'split.json'} is empty: nothing to fit on")

    y, probs = preds[split]
    logits = _log_probs(probs)
    t = fit_temperature(logits, y)
    calibrated = softmax(logits, t)
    threshold = choose_abstain_threshold(calibrated, y, target_precision)
    result: dict[str, Any] = {
        "temperature": t,
        "abstain_below": threshold.threshold,
        "fit_split": split,
        "n_fit": int(len(y)),
        "n_bins": n_bins,
        "ece_before": expected_calibration_error(y, probs, n_bins),
        "ece_after": expected_calibration_error(y, calibrated, n_bins),
        "target_precision": float(target_precision),
        "target_met": threshold.target_met,
        "val_precision_accepted": threshold.precision,
        "val_coverage": threshold.coverage,
    }
    panels = [(f"{split}, before (T = 1)", reliability_bins(probs, y, n_bins)),
              (f"{split}, after (T = {t:.2f})", reliability_bins(calibrated, y, n_bins))]
    if report_split in preds:
        ry, rprobs = preds[report_split]
        rcal = softmax(_log_probs(rprobs), t)
        prec, cov = accepted_precision(rcal, ry, threshold.threshold)
        result[report_split] = {
            "n": int(len(ry)),
            "top1": float((rprobs.argmax(1) == ry).mean()),
            "ece_before": expected_calibration_error(ry, rprobs, n_bins),
            "ece_after": expected_calibration_error(ry, rcal, n_bins),
            "precision_accepted": prec,
            "coverage": cov,
        }
        panels += [(f"{report_split}, before", reliability_bins(rprobs, ry, n_bins)),
                   (f"{report_split}, after", reliability_bins(rcal, ry, n_bins))]
    plot_reliability(panels, ckpt_path.with_name("reliability.png"), title=f"{ckpt_path}: temperature scaling")
    _rewrite_calibration(ckpt_path, result)
    log.info("%s: T = %.3f, ECE %.2f%% -> %.2f%% on %s; abstain below %.4f (precision %s, coverage %.1f%%)",
             ckpt_path, t, 100 * result["ece_before"], 100 * result["ece_after"], split, threshold.threshold,
             threshold.precision, 100 * threshold.coverage)
    return result


# -- field models: decide on health, abstain when unsure, refuse what is not a leaf ---------
def choose_health_threshold(group_p: np.ndarray, correct: np.ndarray, target_accuracy: float,
                            min_coverage: float) -> tuple[float, bool]:
    """The smallest threshold on the winning health group's probability whose accepted leaves
    reach ``target_accuracy``; if that keeps fewer than ``min_coverage`` of them, the threshold
    that keeps exactly ``min_coverage`` instead (``target_met`` False)."""
    if len(group_p) == 0:
        raise CalibrationError("no leaves to choose a health threshold on")
    conf, _, meets = _cuts(np.asarray(group_p), np.asarray(correct), target_accuracy)
    n = len(conf)
    k_min = max(0, int(np.ceil(min_coverage * n)) - 1)
    if len(meets) and meets[-1] >= k_min:
        return float(conf[meets[-1]]), True
    return float(conf[k_min]), False


def choose_diseased_weight(probs: np.ndarray, true_group: np.ndarray, taxonomy: Any) -> float:
    """The prior correction on the diseased group at which false alarms (healthy called
    diseased) and misses (diseased called healthy or background) are equally frequent on
    these leaves: lab training sets hold far more diseased than healthy classes, a field does not."""
    from leafscout.vision.classifier import decide_batch

    healthy, diseased = true_group == 1, true_group == 2
    if not healthy.any() or not diseased.any():
        return 1.0
    best, best_gap = 1.0, float("inf")
    for w in np.exp(np.linspace(np.log(0.25), np.log(4.0), 41)):
        _, _, h, _ = decide_batch(probs, taxonomy, abstain_below=0.0, on_health=True, diseased_weight=float(w))
        gap = abs((h[healthy] == "diseased").mean() - (h[diseased] != "diseased").mean())
        if gap < best_gap - 1e-12:
            best, best_gap = float(w), gap
    return best


def choose_ood_threshold(best_p_neg: np.ndarray, plant_neg: np.ndarray, max_called_plant: float) -> float:
    """The smallest max-probability floor under which at most ``max_called_plant`` of the
    negatives are still decided as plants (0 when they already are)."""
    if len(best_p_neg) == 0 or plant_neg.mean() <= max_called_plant:
        return 0.0
    cands = np.unique(best_p_neg[plant_neg])
    for t in np.r_[cands, 1.0]:
        if (plant_neg & (best_p_neg >= t)).mean() <= max_called_plant:
            return float(t)
    return 1.0


def calibrate_field(
    ckpt_path: str | os.PathLike,
    *,
    data: Any = None,
    target_health_accuracy: float = 0.92,
    min_coverage: float = 0.85,
    max_negatives_called_plant: float = 0.04,
    n_bins: int = 15,
    temperature_objective: str = "ece",
) -> dict[str, Any]:
    """Calibrate a model with a ``background`` class on the *field* validation data.

    Fitted only on the validation part of the split's box sources (leaves and
    background in real surroundings): the temperatures (``fit_field_temperatures``: lowest ECE,
    or NLL), the health abstain threshold
    (``choose_health_threshold``) and the out-of-distribution floor on the best class
    probability, chosen on the validation negatives (``choose_ood_threshold``). The test
    part is never looked at here. Writes the block into the checkpoint and returns it.
    """
    from leafscout.vision.classifier import decide_batch
    from leafscout.vision.taxonomy import BACKGROUND, DISEASED, HEALTHY, Taxonomy

    from .checkpoint import checkpoint_preprocess, load_checkpoint
    from .evaluate import predict_probs
    from .metrics import expected_calibration_error
    from .split import resolve_split, split_beside

    ckpt_path = Path(ckpt_path)
    model, ckpt = load_checkpoint(ckpt_path)
    classes = list(ckpt["classes"])
    if BACKGROUND not in classes:
        raise CalibrationError(f"{ckpt_path} has no {BACKGROUND!r} class: use the class calibration")
    split = resolve_split(split_beside(ckpt_path), data=data, expected_sha256=ckpt.get("split_manifest_sha256"),
                          classes=classes)
    kinds = [src.get("kind", "folder") for src in (split.sources or [{}])]
    field = [s for s in split.samples("val") if kinds[s.source] == "boxes"]
    if not field:
        raise CalibrationError(f"{ckpt_path}: the split has no validation samples from box folders (field photos)")
    # Background windows that show unboxed leaves are label noise, not negatives: left out.
    from .sources import unboxed_leaf_windows

    noisy = unboxed_leaf_windows(split, field)
    field = [s for s, n in zip(field, noisy) if not n]
    y, probs = predict_probs(model, checkpoint_preprocess(ckpt), field)
    logits = _log_probs(probs)
    taxonomy = Taxonomy.from_names(classes)
    bg = taxonomy.background_index
    t, t_bg = fit_field_temperatures(logits, y, bg, temperature_objective, n_bins)
    t_single = _fit(temperature_objective, logits, y, n_bins)  # evidence: what one temperature would give
    t_nll = fit_temperature(logits, y)
    cal = softmax(logits, t, background_temperature=t_bg, background_index=bg)
    # Two folds by photo (a photo's leaves and windows stay together) for an honest ECE.
    folds = photo_folds([s.group for s in field])
    leaf = y != bg
    true_g = taxonomy.group_masks()[:, y].argmax(axis=0)  # each label's group index
    weight = choose_diseased_weight(cal[leaf], true_g[leaf], taxonomy)
    _, _, decided, health_p = decide_batch(cal[leaf], taxonomy, abstain_below=0.0, on_health=True,
                                           diseased_weight=weight)
    threshold, met = choose_health_threshold(health_p, decided == np.array(Taxonomy.group_names())[true_g[leaf]],
                                             target_health_accuracy, min_coverage)
    _, _, health, _ = decide_batch(cal[~leaf], taxonomy, abstain_below=threshold, on_health=True,
                                   diseased_weight=weight)
    ood = choose_ood_threshold(cal[~leaf].max(1), np.isin(health, [HEALTHY, DISEASED]), max_negatives_called_plant)
    from .metrics import health_metrics

    after = health_metrics(y, cal, taxonomy, abstain_below=threshold, ood_below=ood, diseased_weight=weight)
    result: dict[str, Any] = {
        "temperature": t,
        "background_temperature": t_bg,
        "abstain_below": threshold,
        "ood_below": ood,
        "ood_score": "max_probability",
        "decide_on": "health",
        "diseased_weight": weight,
        "fit_split": "val",
        "fit_sources": sorted({split.source_names()[s.source] for s in field}),
        "n_fit": int(len(y)),
        "n_unboxed_leaf_windows_left_out": int(noisy.sum()),
        "n_bins": n_bins,
        "ece_before": expected_calibration_error(y, probs, n_bins),
        "ece_after": expected_calibration_error(y, cal, n_bins),
        "temperature_objective": temperature_objective,
        "temperature_nll": t_nll,
        "ece_at_nll_temperature": expected_calibration_error(y, softmax(logits, t_nll), n_bins),
        "ece_cross_fitted": cross_fitted_ece(logits, y, folds, temperature_objective, n_bins, background_index=bg),
        "temperature_single": t_single,
        "ece_single_temperature": expected_calibration_error(y, softmax(logits, t_single), n_bins),
        "ece_cross_fitted_single_temperature": cross_fitted_ece(logits, y, folds, temperature_objective, n_bins),
        "cross_fit_folds": "2, by photo",
        "ece_cross_fitted_resplits": _spread(resplit_cross_fitted_ece(
            logits, y, [s.group for s in field], CROSS_FIT_RESPLITS, temperature_objective, n_bins, background_index=bg)),
        "target_health_accuracy": target_health_accuracy,
        "min_coverage": min_coverage,
        "target_met": met,
        "max_negatives_called_plant": max_negatives_called_plant,
        "val": {k: after[k] for k in ("coverage", "health_accuracy", "false_alarm_rate", "miss_rate",
                                      "background_called_plant")},
    }
    plot_reliability([("field val, before (T = 1)", reliability_bins(probs, y, n_bins)),
                      (f"field val, after (T = {t:.2f}" + ("" if t_bg is None else f", background {t_bg:.2f}") + ")",
                       reliability_bins(cal, y, n_bins))],
                     ckpt_path.with_name("reliability.png"), title=f"{ckpt_path.name}: temperature scaling on field data")
    _rewrite_calibration(ckpt_path, result)
    spread = result["ece_cross_fitted_resplits"]
    log.info("%s: T = %.3f, background T = %s (%s), field-val ECE %.2f%% -> %.2f%% (2-fold cross-fitted %.2f%%; "
             "over %d other splits %.2f-%.2f%%, mean %.2f%%); health abstain below %.3f, OOD below %.3f: %s",
             ckpt_path, t, t_bg, temperature_objective, 100 * result["ece_before"], 100 * result["ece_after"],
             100 * result["ece_cross_fitted"], spread["n"], 100 * spread["min"], 100 * spread["max"],
             100 * spread["mean"], threshold, ood, result["val"])
    return result
