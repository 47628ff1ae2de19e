"""Evaluate a bundle exactly as the robot runs it: its own preprocessing, its own session.

Images come from the split manifest stored in the bundle (re-pointed with ``data``),
or, for a bundle without one, from every image of a labelled folder ``data``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from leafscout.training.data import scan_folder
from leafscout.training.metrics import classification_metrics
from leafscout.vision.bundle import Bundle, default_bundle_path, load_bundle

from .data import BUNDLE_SPLIT_NAME, load_images, read_bundle_split
from .errors import DeployDataError

__all__ = ["bundle_images", "evaluate_bundle", "evaluate_loaded"]

log = logging.getLogger(__name__)


def bundle_images(bundle: Bundle, data: str | os.PathLike | None = None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) for ``bundle``: its split's ``split`` part ("all": every part), or all of folder ``data``."""
    if (bundle.path / BUNDLE_SPLIT_NAME).is_file():
        prov = bundle.manifest["provenance"]
        s = read_bundle_split(bundle.path, prov.get("split_manifest_sha256"), data=data, classes=bundle.classes)
        samples = [sample for sample, _ in s.items] if split == "all" else s.samples(split)
        return load_images(samples, bundle.spec, desc=f"{split} images")
    if data is None:
        raise DeployDataError(f"{bundle.path} carries no {BUNDLE_SPLIT_NAME}; pass a labelled folder with --data")
    dataset = scan_folder(data)
    if dataset.classes != bundle.classes:
        raise DeployDataError(f"{data} has classes {dataset.classes}, the bundle has {bundle.classes}")
    return load_images(dataset.samples, bundle.spec, desc="images")


def evaluate_loaded(bundle: Bundle, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> dict[str, Any]:
    probs = np.concatenate([bundle.probs(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return classification_metrics(y, probs, bundle.classes)


def evaluate_bundle(
    path: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    split: str = "test",
    *,
    int8: bool | None = None,
) -> dict[str, Any]:
    """Metrics of bundle ``path`` (the reference bundle when None) as ``classification_metrics``
    returns them, plus ``bundle``, ``model_file`` and ``split``."""
    bundle = load_bundle(Path(path) if path is not None else default_bundle_path(), int8=int8)
    x, y = bundle_images(bundle, data, split)
    metrics = evaluate_loaded(bundle, x, y)
    metrics.update(bundle=str(bundle.path), model_file=bundle.model_file, split=split)
    log.info("%s on %d %s images: top-1 %.2f%%", bundle, metrics["n"], split, 100 * metrics["top1"])
    return metrics
