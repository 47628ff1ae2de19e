"""Images for parity checks, int8 calibration and bundle evaluation, found via the split manifest.

A checkpoint's run directory holds ``split.json``; a bundle carries a gzipped copy, so a
bundle can be re-evaluated on exactly the images it was gated on, wherever the data
folder now lives (``--data`` re-points the root).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from training.data import REPO_ROOT, ImageReadError, Sample, default_data_dir, sample_image
from training.split import Split, SplitError, load_split
from vision import PreprocessSpec

from .errors import DeployDataError

__all__ = ["SPLIT_MANIFEST_NAME", "BUNDLE_SPLIT_NAME", "split_beside", "resolve_split", "read_bundle_split",
           "write_bundle_split", "load_images", "pick_calibration"]

log = logging.getLogger(__name__)

SPLIT_MANIFEST_NAME = "split.json"
BUNDLE_SPLIT_NAME = "split.json.gz"


def split_beside(checkpoint: str | os.PathLike) -> Path:
    """``split.json`` in the checkpoint's run directory, where training writes it."""
    path = Path(checkpoint).resolve().parent / SPLIT_MANIFEST_NAME
    if not path.is_file():
        raise DeployDataError(
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
    try:
        split = load_split(manifest_path)
    except SplitError as e:
        raise DeployDataError(str(e)) from e
    if expected_sha256 and split.sha256 != expected_sha256:
        raise DeployDataError(
            f"{manifest_path} has sha256 {split.sha256}, but the model was trained on split {expected_sha256}"
        )
    if classes is not None and list(split.classes) != list(classes):
        raise DeployDataError(f"{manifest_path} lists classes {split.classes}, the model has {classes}")
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
            raise DeployDataError(
                f"the images of source {name!r} listed in {manifest_path} are not under {' or '.join(tried)}; "
                "pass --data DIR pointing at that data folder"
            )
    if split.sources:
        return load_split(manifest_path, roots=roots)
    return load_split(manifest_path, root=roots[names[0]]) if roots[names[0]] != split.root else split


def write_bundle_split(split_manifest: str | os.PathLike, bundle_dir: Path) -> Path:
    """Store the split manifest gzipped (mtime 0, so the bytes and hash are reproducible)."""
    out = bundle_dir / BUNDLE_SPLIT_NAME
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(Path(split_manifest).read_bytes())
    return out


def read_bundle_split(
    bundle_dir: str | os.PathLike,
    expected_sha256: str | None,
    *,
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    classes: list[str] | None = None,
    strict: bool = True,
) -> Split:
    """The split stored in a bundle, re-pointed at the data folder (see ``resolve_split``)."""
    src = Path(bundle_dir) / BUNDLE_SPLIT_NAME
    if not src.is_file():
        raise DeployDataError(f"{bundle_dir} has no {BUNDLE_SPLIT_NAME}; evaluate it with --data on a labelled folder")
    raw = gzip.decompress(src.read_bytes())
    if expected_sha256 and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise DeployDataError(f"{src} does not hold the split manifest {expected_sha256} recorded in the manifest")
    with tempfile.TemporaryDirectory(prefix="leafscout-split-") as tmp:
        path = Path(tmp) / SPLIT_MANIFEST_NAME
        path.write_bytes(raw)
        return resolve_split(path, data=data, classes=classes, strict=strict)


def load_images(samples: list[Sample], spec: PreprocessSpec, *, desc: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """Read and preprocess ``samples`` -> (float32 NCHW through ``spec``, int64 labels)."""
    if not samples:
        raise DeployDataError(f"no {desc} to load (is that split part empty?)")
    x = np.empty((len(samples), 3, *spec.size), np.float32)
    y = np.empty(len(samples), np.int64)
    for i, s in enumerate(tqdm(samples, desc=f"loading {desc}", unit="img", leave=False, disable=None)):
        try:
            spec.apply(sample_image(s), out=x[i])
        except ImageReadError as e:
            raise DeployDataError(str(e)) from e
        y[i] = s.label
    return x, y


def pick_calibration(samples: list[Sample], n: int, seed: int = 0) -> list[Sample]:
    """Up to ``n`` samples spread over every class (round robin over shuffled per-class lists)."""
    if n < 1:
        raise DeployDataError(f"need at least one calibration image, got n={n}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    queues = [[lst[i] for i in rng.permutation(len(lst))] for _, lst in sorted(by_class.items())]
    picked: list[Sample] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return picked[:n]
