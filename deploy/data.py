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

import numpy as np
from tqdm import tqdm

from training.data import ImageReadError, Sample, default_data_dir, sample_image
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


def _roots_to_try(recorded: Path, data: str | os.PathLike | None) -> list[Path]:
    if data is not None:
        return [Path(data)]
    fallback = default_data_dir()
    return [recorded] + ([fallback] if fallback is not None and Path(fallback) != recorded else [])


def resolve_split(
    manifest_path: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    expected_sha256: str | None = None,
    classes: list[str] | None = None,
) -> Split:
    """Load a split manifest, check it is the expected one, and point it at a folder that has the images.

    Tries ``data`` when given, else the recorded root, then ``default_data_dir()``.
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
    tried = []
    for root in _roots_to_try(split.root, data):
        probe = next((s for s, _ in split.items), None)
        if probe is not None and (root / probe.path.relative_to(split.root)).is_file():
            return load_split(manifest_path, root=root) if root != split.root else split
        tried.append(str(root))
    raise DeployDataError(
        f"the images listed in {manifest_path} are not under {' or '.join(tried)}; "
        "pass --data DIR pointing at the data folder (Crop___Disease/ sub-folders)"
    )


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
    data: str | os.PathLike | None = None,
    classes: list[str] | None = None,
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
        return resolve_split(path, data=data, classes=classes)


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
