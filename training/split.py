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
from typing import Any, Sequence

import numpy as np

from leafscout.vision.taxonomy import BACKGROUND

from .data import REPO_ROOT, Dataset, Sample, default_data_dir

__all__ = ["PARTS", "SPLIT_FORMAT", "Split", "SplitError", "make_split", "load_split"]

SPLIT_FORMAT = "leafscout-split/1"  # one folder (what older leafscout reads)
SPLIT_FORMAT_SOURCES = "leafscout-split/2"  # several sources, boxes
READ_FORMATS = (SPLIT_FORMAT, SPLIT_FORMAT_SOURCES)
PARTS = ("train", "val", "test")
SPLIT_MANIFEST_NAME = "split.json"  # what training writes beside its checkpoints


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


def split_beside(checkpoint: str | os.PathLike) -> Path:
    """``split.json`` in the checkpoint's run directory, where training writes it."""
    path = Path(checkpoint).resolve().parent / SPLIT_MANIFEST_NAME
    if not path.is_file():
        raise SplitError(
            f"no split manifest {path}: export needs the run's {SPLIT_MANIFEST_NAME} beside the checkpoint "
            "to find evaluation and calibration images"
        )
    return path


def _candidates(name: str, recorded: Path, index: int, data: list[Path], n_sources: int) -> list[Path]:
    """Folders that may hold source ``name`` now: a --data folder of that name or the only
    --data folder (one source), else the recorded root, the shared data folder, the default."""
    out = [d for d in data if d.name == name]
    if len(data) == 1 and n_sources == 1:
        out.append(data[0])
    if out:  # a folder given for this source is the only place to look
        return list(dict.fromkeys(out))
    out.append(recorded)
    shared = REPO_ROOT.parent / "shared" / "data" / name
    out.append(shared)
    fallback = default_data_dir()
    if index == 0 and fallback is not None:
        out.append(Path(fallback))
    seen, unique = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def resolve_split(
    manifest_path: str | os.PathLike,
    *,
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    expected_sha256: str | None = None,
    classes: list[str] | None = None,
    strict: bool = True,
) -> Split:
    """Load a split manifest, check it is the expected one, and point each source at a folder that has its images.

    ``strict=False`` leaves a source whose images are nowhere at its recorded root
    instead of raising (for evaluating only some of the sources).

    For each source tries a ``data`` folder of the same name (or the only one, for a
    one-source split), the recorded root, ``../shared/data/NAME`` beside the checkout,
    then ``default_data_dir()``.
    """
    split = load_split(manifest_path)
    if expected_sha256 and split.sha256 != expected_sha256:
        raise SplitError(
            f"{manifest_path} has sha256 {split.sha256}, but the model was trained on split {expected_sha256}"
        )
    if classes is not None and list(split.classes) != list(classes):
        raise SplitError(f"{manifest_path} lists classes {split.classes}, the model has {classes}")
    dirs = [] if data is None else [Path(data)] if isinstance(data, (str, os.PathLike)) else [Path(d) for d in data]
    roots, names, recorded = {}, split.source_names(), split.source_roots()
    for i, (name, root) in enumerate(zip(names, recorded)):
        probe = next((s for s, _ in split.items if s.source == i), None)
        tried = []
        for cand in _candidates(name, root, i, dirs, len(names)):
            if probe is None or (cand / probe.path.relative_to(root)).is_file():
                roots[name] = cand
                break
            tried.append(str(cand))
        else:
            if not strict:
                roots[name] = root
                continue
            raise SplitError(
                f"the images of source {name!r} listed in {manifest_path} are not under {' or '.join(tried)}; "
                "pass --data DIR pointing at that data folder"
            )
    if split.sources:
        return load_split(manifest_path, roots=roots)
    return load_split(manifest_path, root=roots[names[0]]) if roots[names[0]] != split.root else split
