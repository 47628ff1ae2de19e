"""Image folders in PlantVillage layout: ``ROOT/Crop___Disease/*.jpg``, read robustly.

Real collections mix RGBA PNGs, CMYK JPEGs, PNGs saved as ``.jpg`` and the odd
broken file. Everything is decoded from bytes (content decides, not the extension)
into OpenCV uint8 BGR; files that cannot be read are listed with their path and a
reason, logged, and skipped, never dropped silently.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

__all__ = [
    "ImageReadError",
    "Sample",
    "Dataset",
    "read_image",
    "scan_folder",
    "default_data_dir",
    "group_from_filename",
    "decode_cached",
    "sample_image",
    "BOX_MARGIN",
    "default_cache_dir",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
GROUPS_CSV_NAME = "plantvillage.csv"
BOX_MARGIN = 0.08  # around a leaf box, as the robot crops a detection (RuntimeConfig.crop_margin)

# Leading bytes of the formats we accept; the extension is ignored on purpose.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",  # TIFF little endian
    b"MM\x00*",  # TIFF big endian
)


class ImageReadError(ValueError):
    """A file that is not a decodable image."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    group: str
    box: tuple[float, float, float, float] | None = None  # normalised x0 y0 x1 y1 of a leaf box (None: whole image)
    source: int = 0  # index into Dataset.sources / Split.sources


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    samples: list[Sample]
    bad_files: list[tuple[Path, str]] = field(default_factory=list)
    sources: list = field(default_factory=list)  # training.sources.SourceInfo; empty: one folder at root

    def __len__(self) -> int:
        return len(self.samples)

    def class_counts(self) -> np.ndarray:
        return np.bincount([s.label for s in self.samples], minlength=len(self.classes))


def _to_bgr(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        # Drop alpha, as cv2.imread and PIL's convert("RGB") do on the robot side.
        return np.ascontiguousarray(img[:, :, :3])
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    raise ImageReadError(f"{path}: unsupported image shape {img.shape}")


def _decode_with_pil(data: bytes, path: Path) -> np.ndarray:
    """Fallback for what OpenCV's decoders refuse (some CMYK/palette files)."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise ImageReadError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode any supported image file to uint8 HxWx3 BGR, whatever its extension says."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read file ({e.strerror or e})") from e
    if not data:
        raise ImageReadError(f"{path}: empty file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return _decode_with_pil(data, path)
    return _to_bgr(img, path)


def sample_image(sample: Sample) -> np.ndarray:
    """The pixels a sample stands for: the whole file, or its box cropped as the robot crops a detection."""
    from leafscout.vision.localize import square_crop

    image = read_image(sample.path)
    if sample.box is None:
        return image
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v * s)) for v, s in zip(sample.box, (w, h, w, h)))
    return np.ascontiguousarray(square_crop(image, (x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)), BOX_MARGIN))


def _sniff(path: Path) -> str | None:
    """None when the file starts like an image, else why not (cheap: 16 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"
    if not head:
        return "empty file"
    if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return "not an image (unknown file signature)"


def group_from_filename(path: Path) -> str:
    """PlantVillage's ``<leaf uuid>___<source name>`` prefix, else the file stem."""
    name = path.name
    if "___" in name:
        return name.split("___", 1)[0]
    return path.stem


def _read_groups_csv(csv_path: Path) -> dict[Path, str]:
    """Map absolute file path -> leaf group from a ``file,group`` CSV (paths relative to the CSV)."""
    base = csv_path.parent.resolve()
    groups: dict[Path, str] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"file", "group"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: needs columns 'file' and 'group', missing {sorted(missing)}")
        for row in reader:
            if row["group"]:
                groups[base / row["file"]] = row["group"]
    return groups


def scan_folder(root: str | os.PathLike, groups_csv: str | os.PathLike | None = None) -> Dataset:
    """List a PlantVillage-layout folder: sorted class folders, leaf groups, bad files.

    Groups come from ``groups_csv`` (default ``root.parent/plantvillage.csv`` when it
    exists), else the UUID prefix of the file name, else the file itself. Only the
    first bytes of each file are checked here; decoding happens once, in the cache.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(
            f"{root} must hold one sub-folder per class (Crop___Disease/), found {len(classes)}: {classes}"
        )
    if groups_csv is None and (root.parent / GROUPS_CSV_NAME).is_file():
        groups_csv = root.parent / GROUPS_CSV_NAME
    csv_groups = _read_groups_csv(Path(groups_csv)) if groups_csv is not None else {}

    samples: list[Sample] = []
    bad: list[tuple[Path, str]] = []
    n_from_csv = 0
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            reason = _sniff(path)
            if reason is not None:
                log.warning("skipping %s: %s", path, reason)
                bad.append((path, reason))
                continue
            group = csv_groups.get(path.resolve())
            if group is None:
                group = group_from_filename(path)
            else:
                n_from_csv += 1
            samples.append(Sample(path, label, group))
    if not samples:
        raise ValueError(f"{root}: no readable images in {len(classes)} class folders")
    log.info(
        "%s: %d images in %d classes (%d groups from %s), %d bad files skipped",
        root, len(samples), len(classes), n_from_csv, groups_csv or "file names", len(bad),
    )
    return Dataset(root=root, classes=classes, samples=samples, bad_files=bad)


def default_data_dir() -> Path | None:
    """``$LEAFSCOUT_DATA``, else the shared PlantVillage folder beside the checkout, else None.

    ``LEAFSCOUT_DATA=synthetic`` forces None (callers then generate synthetic leaves).
    """
    env = os.environ.get("LEAFSCOUT_DATA")
    if env == "synthetic":
        return None
    if env:
        return Path(env)
    shared = REPO_ROOT.parent / "shared" / "data" / "plantvillage"
    return shared if shared.is_dir() else None


def default_cache_dir() -> Path:
    """Where decoded-image caches live: ``$LEAFSCOUT_CACHE`` or ``~/.cache/leafscout``."""
    return Path(os.environ.get("LEAFSCOUT_CACHE", Path.home() / ".cache" / "leafscout"))


def _cache_key(items: list[Path] | list[Sample], transform_key: str) -> str:
    h = hashlib.sha256(transform_key.encode())
    for it in items:
        p, box = (it.path, it.box) if isinstance(it, Sample) else (it, None)
        st = p.stat()
        h.update(f"\x1f{p.resolve()}\x1e{st.st_size}\x1e{st.st_mtime_ns}".encode())
        if box is not None:
            h.update(("\x1e%.6f %.6f %.6f %.6f" % tuple(box)).encode())
    return h.hexdigest()[:32]


def decode_cached(
    paths: list[Path] | list[Sample],
    transform: Callable[[np.ndarray], np.ndarray],
    transform_key: str,
    *,
    cache_dir: Path | None = None,
    desc: str = "decoding",
    threads: int = 2,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image once, apply ``transform`` (fixed output shape), stack, cache on disk.

    ``paths`` may also be ``Sample`` s: a sample with a box decodes to its crop
    (``leafscout.training.sources.sample_image``). Returns ``(arrays, ok)``; ``ok[i]`` is False
    for a file that failed to decode (logged with its path). The cache is keyed by the file list, sizes, mtimes and
    ``transform_key``, so a changed file or spec never reuses stale pixels.
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    cache = cache_dir / f"{_cache_key(paths, transform_key)}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                arrays, ok = z["arrays"], z["ok"]
            if len(ok) == len(paths):
                log.info("%s: %d images from cache %s", desc, len(paths), cache)
                return arrays, ok
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable cache %s: %s", cache, e)

    def work(item: Path | Sample) -> np.ndarray | None:
        try:
            if isinstance(item, Sample):
                return transform(sample_image(item))
            return transform(read_image(item))
        except ImageReadError as e:
            log.warning("skipping %s", e)
            return None

    results: list[np.ndarray | None] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # OpenCV releases the GIL
        for out in tqdm(pool.map(work, paths), total=len(paths), desc=desc, disable=not progress, leave=False):
            results.append(out)
    ok = np.array([r is not None for r in results], bool)
    first = next((r for r in results if r is not None), None)
    if first is None:
        raise ValueError(f"{desc}: none of {len(paths)} images could be decoded")
    arrays = np.zeros((len(paths), *first.shape), first.dtype)
    for i, r in enumerate(results):
        if r is not None:
            arrays[i] = r
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, arrays=arrays, ok=ok)
        os.replace(tmp, cache)
    except OSError as e:
        log.warning("could not write cache %s: %s", cache, e)
    return arrays, ok
