"""A tiny but really trained run (synthetic leaves, split manifest, checkpoint) for tests and demos.

Export needs a checkpoint with a split manifest beside it and images to evaluate on;
this builds one in seconds on a CPU, with running BN statistics that are not the
defaults, so folding and parity are exercised for real.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from leafscout.training.checkpoint import save_checkpoint
from leafscout.training.data import scan_folder
from leafscout.training.split import make_split
from leafscout.training.synthetic import generate_dataset
from leafscout.vision import PreprocessSpec, create_model

from .data import SPLIT_MANIFEST_NAME, load_images

__all__ = ["make_tiny_run", "make_tiny_bundle"]

log = logging.getLogger(__name__)


def _train(model_name: str, num_classes: int, x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), size=min(32, len(x)), replace=False))
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), loss.item()


def make_tiny_run(
    run_dir: str | os.PathLike,
    *,
    model_name: str = "lenet_bn",
    per_class: int = 40,
    steps: int = 60,
    size: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    calibration: dict | None = None,
) -> Path:
    """Synthetic data -> split.json -> a few Adam steps -> ``run_dir/best.pt``; returns the checkpoint."""
    run_dir = Path(run_dir)
    data_dir = Path(data_dir) if data_dir is not None else run_dir / "data"
    if not data_dir.is_dir():
        generate_dataset(data_dir, per_class=per_class, size=48, seed=seed)
    dataset = scan_folder(data_dir)
    split = make_split(dataset, seed=seed)
    split.save(run_dir / SPLIT_MANIFEST_NAME)
    spec = PreprocessSpec.for_model(model_name, size)
    x, y = load_images(split.samples("train"), spec, desc="train images")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: extra threads only fight over a shared CPU
    try:
        model, loss = _train(model_name, len(dataset.classes), x, y, steps, seed)
    finally:
        torch.set_num_threads(threads)
    log.info("tiny %s run: final train loss %.3f", model_name, loss)
    return save_checkpoint(
        run_dir / "best.pt",
        model,
        model_name=model_name,
        model_args={"num_classes": len(dataset.classes)},
        classes=list(dataset.classes),
        preprocess=spec,
        epoch=1,
        split_manifest_sha256=split.sha256,
        metrics={"train_loss": loss},
        calibration=calibration,
    )


def make_tiny_bundle(root: str | os.PathLike, *, per_class: int = 16, steps: int = 10, calibration_images: int = 16) -> Path:
    """``make_tiny_run`` under ``root/run`` exported to ``root/bundle`` with fp32 and int8 (int8 gate disabled)."""
    from .export import export_bundle

    root = Path(root)
    ckpt = make_tiny_run(root / "run", per_class=per_class, steps=steps)
    return export_bundle(ckpt, root / "bundle", int8=True, int8_max_drop=100.0,
                         calibration_images=calibration_images).bundle
