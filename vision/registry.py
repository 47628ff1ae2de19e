"""One model registry: every architecture registers here, every tool builds from here.

A plain dict behind ``@register_model`` and one factory, ``create_model``. Each entry
carries its default input size so nobody re-types it in a script.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "get_entry"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., "nn.Module"]
    input_size: tuple[int, int]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(*, input_size: tuple[int, int], description: str) -> Callable:
    """Register a builder under its function name; a duplicate name is an error."""

    def wrap(fn: Callable[..., "nn.Module"]) -> Callable[..., "nn.Module"]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, fn, tuple(input_size), description)
        return fn

    return wrap


def _load_architectures() -> None:
    """Import the architecture modules, which register themselves (once)."""
    importlib.import_module("leafscout.vision.models")


def get_entry(name: str) -> ModelEntry:
    _load_architectures()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int, **kwargs) -> "nn.Module":
    """Build a registered model. ``num_classes`` follows the label list."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return get_entry(name).builder(num_classes=num_classes, **kwargs)


def list_models() -> list[str]:
    _load_architectures()
    return sorted(_REGISTRY)
