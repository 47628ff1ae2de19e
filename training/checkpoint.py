"""Self-describing checkpoints: everything needed to rebuild the model, loaded strictly.

Layout (a dict saved with ``torch.save``):
  format            "leafscout-checkpoint/1"
  model             {"name": registry name, "args": constructor kwargs incl. num_classes}
  classes           class names in output order
  preprocess        PreprocessSpec.to_json()
  split_manifest_sha256, epoch, metrics, calibration (optional), leafscout_version
  state_dict, optimizer, scheduler (optional; None in exported/best-only files)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from leafscout.vision import PreprocessSpec, create_model
from leafscout.vision.bundle import file_sha256  # noqa: F401  (re-exported: checkpoints and splits are hashed alike)

FORMAT = "leafscout-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as the model it claims to be."""


def leafscout_version() -> str:
    from leafscout import __version__

    return __version__


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_name: str,
    model_args: dict[str, Any],
    classes: list[str],
    preprocess: PreprocessSpec,
    epoch: int,
    split_manifest_sha256: str | None = None,
    metrics: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (tmp + rename) so a crash never leaves a half checkpoint."""
    if model_args.get("num_classes") != len(classes):
        raise CheckpointError(f"model_args num_classes={model_args.get('num_classes')} != {len(classes)} classes")
    module = model.module if hasattr(model, "module") else model
    payload = {
        "format": FORMAT,
        "model": {"name": model_name, "args": dict(model_args)},
        "classes": list(classes),
        "preprocess": preprocess.to_json(),
        "split_manifest_sha256": split_manifest_sha256,
        "epoch": int(epoch),
        "metrics": metrics or {},
        "calibration": calibration,
        "leafscout_version": leafscout_version(),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw dict, validated for format and required keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"{path} is not a readable checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: format {got!r} is not {FORMAT!r}")
    missing = {"model", "classes", "preprocess", "state_dict", "epoch"} - set(ckpt)
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {sorted(missing)}")
    return ckpt


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from its recorded name and arguments and load weights strictly."""
    ckpt = read_checkpoint(path)
    spec = ckpt["model"]
    model = create_model(spec["name"], **spec["args"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match model {spec['name']!r}: {e}") from e
    model.eval()
    return model, ckpt


def checkpoint_preprocess(ckpt: dict[str, Any]) -> PreprocessSpec:
    return PreprocessSpec.from_json(ckpt["preprocess"])
