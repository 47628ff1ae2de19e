"""Pixels to predictions: models, the preprocessing spec, localization and bundle loading.

Training and the robot both import from here, so there is exactly one way to turn
an image into a model input.
"""
from . import models as _models  # noqa: F401  (registers the architectures)
from .complexity import count_macs, count_params
from .preprocess import PreprocessError, PreprocessSpec
from .registry import create_model, get_entry, list_models, register_model

__all__ = [
    "PreprocessError",
    "PreprocessSpec",
    "count_macs",
    "count_params",
    "create_model",
    "get_entry",
    "list_models",
    "register_model",
]
