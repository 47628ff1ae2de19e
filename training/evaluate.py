"""Evaluate a checkpoint on its run's held-out split, the way the robot sees images.

Images are read from disk and go through ``PreprocessSpec.apply`` from the
checkpoint, so the numbers describe the deployed preprocessing, not a training shortcut.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from leafscout.vision import PreprocessSpec

from .checkpoint import checkpoint_preprocess, load_checkpoint
from .data import Sample, sample_image, scan_folder
from .metrics import classification_metrics
from .split import PARTS, load_split

__all__ = ["EvaluationError", "evaluate_checkpoint", "predict_probs", "predict_batches"]

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """Data and checkpoint that do not belong together."""


@torch.inference_mode()
def predict_batches(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities for ``(inputs, labels)`` batches: ``(y_true, probs)``; ``autocast_dtype``
    (e.g. bf16) trades exactness for speed, as training's per-epoch validation does."""
    was_training = model.training
    model.eval()
    ys, ps = [], []
    try:
        device_type = torch.device(device).type
        for x, y in batches:
            with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                logits = model(x.to(device))
            ps.append(torch.softmax(logits.float(), 1).cpu().numpy())
            ys.append(np.asarray(y))
    finally:
        model.train(was_training)
    if not ys:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(ys).astype(np.int64), np.concatenate(ps)


def _disk_batches(spec: PreprocessSpec, samples: list[Sample], batch_size: int):
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        # A fresh array per batch: a consumer may keep the tensors (no shared buffer).
        x = spec.apply_batch([sample_image(s) for s in chunk])
        yield torch.from_numpy(x), np.array([s.label for s in chunk])


def predict_probs(
    model: nn.Module, spec: PreprocessSpec, samples: list[Sample], batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Read, preprocess (``spec.apply``) and classify ``samples``: ``(y_true, probs)``."""
    return predict_batches(model, _disk_batches(spec, samples, batch_size))


def _samples_for(ckpt_path: Path, ckpt: dict[str, Any], data: str | os.PathLike | None, split: str) -> list[Sample]:
    """The run's split part when its manifest sits beside the checkpoint, else all of ``data``."""
    manifest = ckpt_path.parent / "split.json"
    if manifest.is_file() and split != "all":
        if split not in PARTS:
            raise EvaluationError(f"split must be one of {PARTS + ('all',)}, got {split!r}")
        s = load_split(manifest, root=data)
        want = ckpt.get("split_manifest_sha256")
        if want and s.sha256 != want:
            raise EvaluationError(f"{manifest} (sha256 {s.sha256[:12]}) is not the split this checkpoint "
                                  f"was trained on ({want[:12]})")
        if s.classes != ckpt["classes"]:
            raise EvaluationError(f"{manifest} classes differ from the checkpoint's")
        return s.samples(split)
    if data is None:
        raise EvaluationError(f"no split.json beside {ckpt_path}: pass --data DIR to evaluate on a whole folder")
    ds = scan_folder(data)
    index = {c: i for i, c in enumerate(ckpt["classes"])}
    unknown = [c for c in ds.classes if c not in index]
    if unknown:
        raise EvaluationError(f"{data} has classes the model does not know: {unknown}; "
                              f"it knows: {ckpt['classes']}")
    log.info("evaluating on all %d images of %s", len(ds.samples), data)
    return [Sample(s.path, index[ds.classes[s.label]], s.group) for s in ds.samples]


def evaluate_checkpoint(
    ckpt_path: str | os.PathLike, data: str | os.PathLike | None = None, split: str = "test", batch_size: int = 128
) -> dict[str, Any]:
    """Metrics (see ``classification_metrics``) plus ``classes``, ``split`` and ``checkpoint``."""
    ckpt_path = Path(ckpt_path)
    model, ckpt = load_checkpoint(ckpt_path)
    samples = _samples_for(ckpt_path, ckpt, data, split)
    if not samples:
        raise EvaluationError(f"the {split!r} part of {ckpt_path.parent / 'split.json'} is empty")
    y, probs = predict_probs(model, checkpoint_preprocess(ckpt), samples, batch_size)
    metrics = classification_metrics(y, probs, ckpt["classes"])
    metrics.update(classes=list(ckpt["classes"]), split=split, checkpoint=str(ckpt_path), epoch=ckpt["epoch"])
    return metrics
