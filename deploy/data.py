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
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from leafscout.training.data import ImageReadError, Sample, sample_image
from leafscout.training import split as _split
from leafscout.training.split import SPLIT_MANIFEST_NAME, Split, SplitError
from leafscout.vision import PreprocessSpec

from .errors import DeployDataError

__all__ = ["SPLIT_MANIFEST_NAME", "BUNDLE_SPLIT_NAME", "split_beside", "resolve_split", "read_bundle_split",
           "write_bundle_split", "load_images", "pick_calibration"]

log = logging.getLogger(__name__)

BUNDLE_SPLIT_NAME = "split.json.gz"


def split_beside(checkpoint: str | os.PathLike) -> Path:
    """``split.json`` beside a checkpoint (``training.split.split_beside``), as a deploy error."""
    try:
        return _split.split_beside(checkpoint)
    except SplitError as e:
        raise DeployDataError(str(e)) from e


def resolve_split(manifest_path: str | os.PathLike, **kwargs: Any) -> Split:
    """``training.split.resolve_split`` (see there), as a deploy error."""
    try:
        return _split.resolve_split(manifest_path, **kwargs)
    except SplitError as e:
        raise DeployDataError(str(e)) from e


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
