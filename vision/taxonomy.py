"""What each class means: crop, health and disease, in one place.

Every label space leafscout trains on joins here. A class is named like PlantVillage
(``Crop___Disease``, ``Crop___healthy``) or is ``background`` ("not a leaf we know":
soil, stones, straw, weeds, sky, hands, tools). ``Taxonomy`` maps each class to a
``ClassInfo`` and answers the robot's real question, *healthy, diseased or not a
plant?*, by summing class probabilities per health group, so nothing downstream
parses name suffixes. Bundles store the mapping in ``manifest.json`` (``taxonomy``);
bundles from before it get one derived from their names, with a logged note.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = [
    "BACKGROUND",
    "HEALTHY",
    "DISEASED",
    "UNCERTAIN",
    "HEALTH_VALUES",
    "ClassInfo",
    "Taxonomy",
    "TaxonomyError",
    "info_from_name",
]

log = logging.getLogger(__name__)

BACKGROUND = "background"
HEALTHY = "healthy"
DISEASED = "diseased"
UNCERTAIN = "uncertain"
HEALTH_VALUES = (HEALTHY, DISEASED, BACKGROUND)
_GROUPS = (BACKGROUND, HEALTHY, DISEASED)  # column order of Taxonomy.group_probs


class TaxonomyError(ValueError):
    """A taxonomy that does not cover its classes, or an entry with a bad value."""


@dataclass(frozen=True)
class ClassInfo:
    crop: str | None  # None for background
    health: str  # one of HEALTH_VALUES
    disease: str | None  # None when healthy or background

    def __post_init__(self) -> None:
        if self.health not in HEALTH_VALUES:
            raise TaxonomyError(f"health must be one of {HEALTH_VALUES}, got {self.health!r}")
        if self.health == DISEASED and not self.disease:
            raise TaxonomyError("a diseased class needs a disease name")

    def to_json(self) -> dict[str, Any]:
        return {"crop": self.crop, "health": self.health, "disease": self.disease}

    @classmethod
    def from_json(cls, d: Any, name: str = "?") -> "ClassInfo":
        if not isinstance(d, dict) or set(d) != {"crop", "health", "disease"}:
            raise TaxonomyError(f"taxonomy entry for {name!r} must be {{crop, health, disease}}, got {d!r}")
        return cls(d["crop"], d["health"], d["disease"])


def info_from_name(name: str) -> ClassInfo:
    """PlantVillage's naming convention, the one place it is read: ``Crop___Disease``.

    ``Corn_(maize)___Common_rust_`` -> crop ``Corn (maize)``, disease ``Common rust``;
    a disease part containing ``healthy`` means healthy; ``background`` is not a plant.
    """
    if name == BACKGROUND:
        return ClassInfo(None, BACKGROUND, None)
    crop, _, disease = name.partition("___")
    pretty = lambda s: " ".join(s.replace("_", " ").replace(",", " ").split())  # noqa: E731
    if not disease or "healthy" in disease.lower():
        return ClassInfo(pretty(crop), HEALTHY, None)
    return ClassInfo(pretty(crop), DISEASED, pretty(disease))


class Taxonomy:
    """Class list + meaning of each class; group sums over a probability matrix."""

    def __init__(self, classes: Iterable[str], info: Mapping[str, ClassInfo]):
        self.classes = list(classes)
        missing = [c for c in self.classes if c not in info]
        if missing:
            raise TaxonomyError(f"taxonomy lacks entries for classes {missing}")
        self.info = {c: info[c] for c in self.classes}
        health = [self.info[c].health for c in self.classes]
        # [C, 3] one-hot: class -> (background, healthy, diseased) group.
        self._groups = np.zeros((len(self.classes), len(_GROUPS)), np.float32)
        for i, h in enumerate(health):
            self._groups[i, _GROUPS.index(h)] = 1.0
        self._masks = self._groups.T > 0  # [3, C]: which classes are in each group
        self._health_names = np.array(health, dtype=object)
        backgrounds = [i for i, h in enumerate(health) if h == BACKGROUND]
        if len(backgrounds) > 1:
            raise TaxonomyError(f"at most one background class, got {[self.classes[i] for i in backgrounds]}")
        self.background_index: int | None = backgrounds[0] if backgrounds else None

    @classmethod
    def from_names(cls, classes: Iterable[str]) -> "Taxonomy":
        classes = list(classes)
        return cls(classes, {c: info_from_name(c) for c in classes})

    @classmethod
    def from_json(cls, classes: Iterable[str], d: Any) -> "Taxonomy":
        if not isinstance(d, dict):
            raise TaxonomyError(f"taxonomy must be an object mapping class -> {{crop, health, disease}}, got {type(d).__name__}")
        return cls(classes, {name: ClassInfo.from_json(v, name) for name, v in d.items()})

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {c: self.info[c].to_json() for c in self.classes}

    def health(self, name: str) -> str:
        try:
            return self.info[name].health
        except KeyError:
            raise TaxonomyError(f"unknown class {name!r}; this taxonomy has {len(self.classes)} classes") from None

    def health_of(self, index: int) -> str:
        return self.info[self.classes[index]].health

    def crop_of(self, index: int) -> str | None:
        return self.info[self.classes[index]].crop

    def mask(self, health: str) -> np.ndarray:
        """Boolean [C]: which classes have this health value."""
        return self._masks[_GROUPS.index(health)]

    def group_masks(self) -> np.ndarray:
        """Boolean [3, C]: class membership of (background, healthy, diseased), as ``group_probs`` orders them."""
        return self._masks

    def health_names(self) -> np.ndarray:
        """[C] object array: each class's health value."""
        return self._health_names

    def group_probs(self, probs: np.ndarray) -> np.ndarray:
        """[N, C] class probabilities -> [N, 3] probabilities of (background, healthy, diseased)."""
        return np.asarray(probs, np.float32) @ self._groups

    @staticmethod
    def group_names() -> tuple[str, str, str]:
        return _GROUPS

    def __len__(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        n = {h: int(self.mask(h).sum()) for h in HEALTH_VALUES}
        return f"Taxonomy({len(self.classes)} classes: {n[HEALTHY]} healthy, {n[DISEASED]} diseased, {n[BACKGROUND]} background)"
