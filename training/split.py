"""Deterministic, leaf-grouped, class-stratified train/val/test splits, saved as a manifest.

Every image of one leaf (``Sample.group``) lands in the same part, so near-duplicate
photos never leak from train into test. The manifest (``RUN_DIR/split.json``) is the
record of what a run saw; its sha256 goes into every checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vision.taxonomy import BACKGROUND

from .data import Dataset, Sample

__all__ = ["PARTS", "SPLIT_FORMAT", "Split", "SplitError", "make_split", "load_split"]

SPLIT_FORMAT = "leafscout-split/1"  # one folder (what older leafscout reads)
SPLIT_FORMAT_SOURCES = "leafscout-split/2"  # several sources, boxes
READ_FORMATS = (SPLIT_FORMAT, SPLIT_FORMAT_SOURCES)
PARTS = ("train", "val", "test")


class SplitError(ValueError):
    """A split request or manifest that cannot be honoured."""


def _stable_seed(*parts: Any) -> int:
    """A seed that does not depend on Python's per-process string hashing."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _part_sizes(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Group counts per part; each part gets at least one group when n >= 3."""
    if n >= 3:
        n_val = max(1, int(round(n * fractions[1])))
        n_test = max(1, int(round(n * fractions[2])))
        n_train = max(1, n - n_val - n_test)
        # Rounding may overshoot on tiny classes: take back from the largest eval part.
        while n_train + n_val + n_test > n:
            if n_test >= n_val and n_test > 1:
                n_test -= 1
            else:
                n_val -= 1
        return n_train, n_val, n_test
    return n, 0, 0  # too few leaves to evaluate on: train only


@dataclass
class Split:
    root: Path  # the first source's folder
    classes: list[str]
    seed: int
    fractions: tuple[float, float, float]
    items: list[tuple[Sample, str]]  # (sample, part)
    sha256: str | None = None
    sources: list[dict[str, str]] | None = None  # [{name, root, kind}]; None: one folder at ``root``

    def source_roots(self) -> list[Path]:
        return [Path(src["root"]) for src in self.sources] if self.sources else [self.root]

    def source_names(self) -> list[str]:
        return [src["name"] for src in self.sources] if self.sources else [self.root.name]

    def samples(self, part: str) -> list[Sample]:
        if part not in PARTS:
            raise SplitError(f"unknown split part {part!r}; choose one of {PARTS}")
        return [s for s, p in self.items if p == part]

    def counts(self) -> dict[str, int]:
        c = Counter(p for _, p in self.items)
        return {p: c.get(p, 0) for p in PARTS}

    def to_json(self) -> dict[str, Any]:
        roots = self.source_roots()

        def item(s: Sample, part: str) -> dict[str, Any]:
            d = {"path": s.path.relative_to(roots[s.source]).as_posix(), "label": s.label, "group": s.group, "split": part}
            if self.sources:
                d["source"] = s.source
            if s.box is not None:
                d["box"] = [round(float(v), 6) for v in s.box]
            return d

        doc = {
            "format": SPLIT_FORMAT_SOURCES if self.sources else SPLIT_FORMAT,
            "root": str(self.root),
            "classes": list(self.classes),
            "seed": self.seed,
            "fractions": list(self.fractions),
            "items": [item(s, p) for s, p in self.items],
        }
        if self.sources:
            doc["sources"] = [dict(src) for src in self.sources]
        return doc

    def canonical_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the manifest; ``sha256`` becomes the hash of exactly these bytes."""
        data = self.canonical_bytes()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.sha256 = hashlib.sha256(data).hexdigest()
        return path


def make_split(
    dataset: Dataset, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> Split:
    """Split by leaf group, stratified by class; the same inputs always give the same split."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise SplitError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    # A group follows the class most of its images carry (a leaf has one disease); in a
    # photo with leaves, its background windows do not decide where it goes.
    background = dataset.classes.index(BACKGROUND) if BACKGROUND in dataset.classes else None
    group_labels: dict[str, Counter] = defaultdict(Counter)
    for s in dataset.samples:
        group_labels[s.group][s.label] += 1
    for counter in group_labels.values():
        if background in counter and len(counter) > 1:
            del counter[background]
    groups_by_class: dict[int, list[str]] = defaultdict(list)
    for g, counter in group_labels.items():
        label = min(counter, key=lambda k: (-counter[k], k))
        groups_by_class[label].append(g)

    part_of_group: dict[str, str] = {}
    for label in sorted(groups_by_class):
        groups = sorted(groups_by_class[label])
        rng = np.random.default_rng(_stable_seed(seed, dataset.classes[label]))
        order = [groups[i] for i in rng.permutation(len(groups))]
        n_train, n_val, _ = _part_sizes(len(order), fractions)
        for i, g in enumerate(order):
            part_of_group[g] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    items = [(s, part_of_group[s.group]) for s in dataset.samples]
    sources = [info.to_json() for info in dataset.sources] if dataset.sources else None
    split = Split(root=dataset.root, classes=list(dataset.classes), seed=seed, fractions=fractions, items=items,
                  sources=sources)
    split.sha256 = hashlib.sha256(split.canonical_bytes()).hexdigest()  # = hash of the saved file
    return split


def load_split(path: str | os.PathLike, root: str | os.PathLike | None = None,
               roots: dict[str, str | os.PathLike] | None = None) -> Split:
    """Read a manifest; ``root`` re-points its first source at another copy of the same folder,
    ``roots`` (source name -> folder) any source."""
    path = Path(path)
    try:
        data = path.read_bytes()
        doc = json.loads(data)
    except (OSError, ValueError) as e:
        raise SplitError(f"cannot read split manifest {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") not in READ_FORMATS:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise SplitError(f"{path}: format {got!r} is not one of {READ_FORMATS}")
    sources = [dict(src) for src in doc["sources"]] if doc.get("sources") else None
    if sources:
        for i, src in enumerate(sources):
            if roots and src["name"] in roots:
                src["root"] = str(roots[src["name"]])
            elif i == 0 and root is not None:
                src["root"] = str(root)
        bases = [Path(src["root"]) for src in sources]
    else:
        bases = [Path(root) if root is not None else Path(doc["root"])]
    classes = list(doc["classes"])
    items = []
    for it in doc["items"]:
        src = int(it.get("source", 0))
        if it["split"] not in PARTS or not 0 <= it["label"] < len(classes) or not 0 <= src < len(bases):
            raise SplitError(f"{path}: bad item {it!r}; split must be one of {PARTS}, label < {len(classes)}, "
                             f"source < {len(bases)}")
        box = tuple(float(v) for v in it["box"]) if it.get("box") is not None else None
        items.append((Sample(bases[src] / it["path"], int(it["label"]), str(it["group"]), box, src), it["split"]))
    return Split(
        sources=sources,
        root=bases[0],
        classes=classes,
        seed=int(doc["seed"]),
        fractions=tuple(doc["fractions"]),
        items=items,
        sha256=hashlib.sha256(data).hexdigest(),
    )
