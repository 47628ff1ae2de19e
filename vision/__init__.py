"""Pixels to predictions: models, the preprocessing spec, localization and bundle loading.

Training and the robot both import from here, so there is exactly one way to turn
an image into a model input. Importing ``vision`` needs only numpy and OpenCV: the
torch-backed names (models, registry, complexity) load on first use, so a robot with
just onnxruntime runs ``leafscout.vision.bundle`` and ``leafscout.vision.classifier`` without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .preprocess import PreprocessError, PreprocessSpec

_LAZY = {
    "create_model": "registry",
    "get_entry": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "count_macs": "complexity",
    "count_params": "complexity",
}

__all__ = ["PreprocessError", "PreprocessSpec", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vision' has no attribute {name!r}")
