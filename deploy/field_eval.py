"""`leafscout eval` over several sources: per source top-1, macro-F1, ECE and the robot's health decisions.

A model (a bundle, run as the robot runs it, or a checkpoint, run in PyTorch) is
evaluated on the held-out part of every source of its split manifest, or on folders
it never saw: an ImageFolder tree or a box folder whose class names join the model's
label space through the taxonomy's names. ``negatives`` is a folder of images that
hold no leaf (any layout): each should come out ``background`` or ``uncertain``, and
``negatives_called_plant`` says how many do not. Decisions are the robot's own
(``leafscout.vision.classifier.decide_batch`` with the model's calibration), so these numbers
are what a field map would show.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from leafscout.training.data import ImageReadError, Sample, sample_image
from leafscout.training.metrics import classification_metrics, health_metrics
from leafscout.training.sources import IMAGE_SUFFIXES, is_box_folder, scan_sources
from leafscout.training.split import Split
from leafscout.vision.bundle import calibrated_probs
from leafscout.vision.preprocess import PreprocessSpec
from leafscout.vision.taxonomy import BACKGROUND, Taxonomy

from .errors import DeployDataError

__all__ = ["Model", "load_model", "evaluate_sources", "HEADLINE_KEYS"]

log = logging.getLogger(__name__)

# Keys every eval report carries at the top level (and per source).
HEADLINE_KEYS = ("n", "top1", "macro_f1", "ece", "health_accuracy", "false_alarm_rate", "miss_rate", "coverage")


@dataclass
class Model:
    """What evaluation needs of a bundle or checkpoint: probabilities and the decision settings."""

    path: Path
    kind: str  # "bundle" or "checkpoint"
    classes: list[str]
    spec: PreprocessSpec
    taxonomy: Taxonomy
    abstain_below: float
    ood_below: float
    on_health: bool
    diseased_weight: float
    probs: Callable[[np.ndarray], np.ndarray]  # float32 NCHW -> calibrated probabilities
    split: Callable[[Sequence[str | os.PathLike] | None], Split | None]  # the model's split, re-pointed


def _bundle_model(path: Path, int8: bool | None) -> Model:
    from leafscout.vision.bundle import load_bundle

    from .data import BUNDLE_SPLIT_NAME, read_bundle_split

    bundle = load_bundle(path, int8=int8)

    def split(data: Sequence[str | os.PathLike] | None) -> Split | None:
        if not (bundle.path / BUNDLE_SPLIT_NAME).is_file():
            return None
        return read_bundle_split(bundle.path, bundle.manifest["provenance"].get("split_manifest_sha256"),
                                 data=data, classes=bundle.classes, strict=not data)

    return Model(bundle.path, "bundle", bundle.classes, bundle.spec, bundle.taxonomy, bundle.abstain_below or 0.0,
                 bundle.ood_below or 0.0, bundle.decides_health, bundle.diseased_weight, bundle.probs, split)


def _checkpoint_model(path: Path) -> Model:
    import torch

    from leafscout.training.checkpoint import checkpoint_preprocess, load_checkpoint

    from .data import resolve_split, split_beside

    model, ckpt = load_checkpoint(path)
    model.eval()
    cal = ckpt.get("calibration") or {}
    classes = list(ckpt["classes"])
    background = Taxonomy.from_names(classes).background_index

    @torch.inference_mode()
    def probs(x: np.ndarray) -> np.ndarray:
        return calibrated_probs(model(torch.from_numpy(x)).float().numpy(), cal, background)

    def split(data: Sequence[str | os.PathLike] | None) -> Split | None:
        if not (path.parent / "split.json").is_file():
            return None
        return resolve_split(split_beside(path), data=data, expected_sha256=ckpt.get("split_manifest_sha256"),
                             classes=classes, strict=not data)

    taxonomy = Taxonomy.from_names(classes)
    return Model(path, "checkpoint", classes, checkpoint_preprocess(ckpt), taxonomy,
                 float(cal.get("abstain_below") or 0.0), float(cal.get("ood_below") or 0.0),
                 cal.get("decide_on") == "health", float(cal.get("diseased_weight") or 1.0), probs, split)


def load_model(path: str | os.PathLike, *, int8: bool | None = None) -> Model:
    path = Path(path)
    if path.is_dir():
        return _bundle_model(path, int8)
    if path.is_file():
        return _checkpoint_model(path)
    raise DeployDataError(f"{path} is neither a bundle directory nor a checkpoint file")


def _predict(model: Model, samples: Sequence[Sample], desc: str, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, ok) for samples read from disk through the model's preprocessing."""
    out = np.zeros((len(samples), len(model.classes)), np.float32)
    ok = np.ones(len(samples), bool)
    buf = np.empty((batch, 3, *model.spec.size), np.float32)
    for start in tqdm(range(0, len(samples), batch), desc=desc, leave=False, disable=None):
        chunk = samples[start : start + batch]
        for i, s in enumerate(chunk):
            try:
                model.spec.apply(sample_image(s), out=buf[i])
            except ImageReadError as e:
                log.warning("skipping %s", e)
                ok[start + i] = False
                buf[i] = 0
        out[start : start + len(chunk)] = model.probs(buf[: len(chunk)])
    return out, ok


def _report(model: Model, y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    m = classification_metrics(y, probs, model.classes)
    m.update(health_metrics(y, probs, model.taxonomy, abstain_below=model.abstain_below, ood_below=model.ood_below,
                            on_health=model.on_health, diseased_weight=model.diseased_weight))
    return m


def _foreign_samples(model: Model, root: Path) -> list[Sample]:
    """Every sample of a folder the model never trained on, labelled in the model's label space."""
    ds = scan_sources([root])
    index = {c: i for i, c in enumerate(model.classes)}
    unknown = sorted({ds.classes[s.label] for s in ds.samples} - set(index) - {BACKGROUND})
    if unknown:
        raise DeployDataError(f"{root} has classes the model does not know: {unknown}; it knows {model.classes}")
    samples = []
    for s in ds.samples:
        name = ds.classes[s.label]
        if name not in index:  # background windows, for a model without a background class
            continue
        samples.append(Sample(s.path, index[name], s.group, s.box, 0))
    return samples


def _negative_samples(model: Model, root: Path) -> list[Sample]:
    if not root.is_dir():
        raise DeployDataError(f"--negatives {root} is not a directory of images")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DeployDataError(f"--negatives {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    label = model.taxonomy.background_index if model.taxonomy.background_index is not None else 0
    return [Sample(p, label, p.stem) for p in paths]


def _negatives_report(model: Model, samples: list[Sample]) -> dict[str, Any]:
    from leafscout.vision.classifier import decide_batch
    from leafscout.vision.taxonomy import DISEASED, HEALTHY

    probs, ok = _predict(model, samples, "negatives")
    _, _, health, _ = decide_batch(probs[ok], model.taxonomy, abstain_below=model.abstain_below,
                                   ood_below=model.ood_below, on_health=model.on_health,
                                   diseased_weight=model.diseased_weight)
    called = np.isin(health, [HEALTHY, DISEASED])
    return {"n": int(ok.sum()), "negatives_called_plant": float(called.mean()) if len(called) else None,
            "called": {h: int((health == h).sum()) for h in sorted(set(health.tolist()))}}


def evaluate_sources(
    path: str | os.PathLike,
    data: Sequence[str | os.PathLike] | None = None,
    *,
    negatives: str | os.PathLike | None = None,
    split: str = "test",
    int8: bool | None = None,
) -> dict[str, Any]:
    """Metrics over all given sources (top level) and per source (``per_source``).

    A folder of ``data`` that the model's split lists (matched by folder name) is
    evaluated on that split's ``split`` part; any other folder on all of it. With no
    ``data``, every source of the split is evaluated on its ``split`` part.
    """
    model = load_model(path, int8=int8)
    data = [Path(d) for d in data] if data else []
    the_split = model.split(data or None)
    parts: dict[str, list[Sample]] = {}
    if the_split is not None:
        names = the_split.source_names()
        chosen = [d.name for d in data if d.name in names] if data else names
        if data and len(names) == 1 and not chosen and not is_box_folder(data[0]) and len(data) == 1:
            chosen = names  # one folder under another name: the old single-source re-pointing
        items = [(s, p) for s, p in the_split.items if split == "all" or p == split]
        for name in chosen:
            i = names.index(name)
            parts[name] = [s for s, _ in items if s.source == i]
    for d in data:
        if d.name not in parts:
            parts[d.name] = _foreign_samples(model, d)
    if not parts:
        raise DeployDataError(f"{path}: no split manifest to evaluate on; pass --data DIR")
    ys, ps, per_source = [], [], {}
    for name, samples in parts.items():
        if not samples:
            raise DeployDataError(f"source {name!r} has no {split!r} samples to evaluate")
        probs, ok = _predict(model, samples, name)
        y = np.array([s.label for s in samples], np.int64)[ok]
        per_source[name] = _report(model, y, probs[ok])
        ys.append(y)
        ps.append(probs[ok])
    result = _report(model, np.concatenate(ys), np.concatenate(ps))
    for m in per_source.values():
        m.pop("confusion", None)
    result.update(per_source=per_source, classes=list(model.classes), split=split, model=str(model.path),
                  model_kind=model.kind, decide_on="health" if model.on_health else "class",
                  abstain_below=model.abstain_below, ood_below=model.ood_below,
                  diseased_weight=model.diseased_weight)
    if negatives is not None:
        neg = _negatives_report(model, _negative_samples(model, Path(negatives)))
        result["negatives"] = neg
        result["negatives_called_plant"] = neg["negatives_called_plant"]
    return result
