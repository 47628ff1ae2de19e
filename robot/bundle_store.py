"""Installed model bundles on the robot: verified, versioned, switched atomically, with a fallback.

    bundles/
      versions/20261203T195431Z-61d7d74f45c4/   one folder per installed version (a verified copy)
      current  -> versions/...                   what ``leafscout run`` loads
      previous -> versions/...                   last-known-good: loaded when ``current`` fails

``BundleStore.install`` copies a bundle into a staging folder, checks it there (Ed25519
signature over the manifest, every file's SHA-256, the ONNX models load, the self-test
of each model file on its stored samples), refuses a version older than the current one
unless allowed, and then swaps the ``current`` symlink with ``os.replace`` (a crash at any
point leaves either the old or the new bundle current, never half of one). Only the current
and previous versions are kept.

A bundle's version is its manifest's ``provenance.created`` time (set by ``leafscout
export``) plus the first 12 hex digits of the checkpoint's SHA-256: newer means created
later. Runs read the store once at start, so an install takes effect at the next survey.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from leafscout.vision.bundle import (
    INT8_NAME,
    SELFTEST_NAME,
    Bundle,
    BundleError,
    default_bundle_path,
    load_bundle,
    read_manifest,
)

__all__ = [
    "BundleVersion",
    "BundleStore",
    "InstallError",
    "DowngradeError",
    "SelfTestError",
    "InstallResult",
    "bundle_version",
    "default_store_dir",
    "load_run_bundle",
    "STORE_ENV",
]

log = logging.getLogger(__name__)

STORE_ENV = "LEAFSCOUT_BUNDLES"
CURRENT, PREVIOUS, VERSIONS = "current", "previous", "versions"


class InstallError(BundleError):
    """A bundle that must not become the robot's model."""


class DowngradeError(InstallError):
    """The offered bundle is older than the installed one (``--allow-downgrade`` to install anyway)."""


class SelfTestError(InstallError):
    """The bundle's models do not reproduce the logits stored with them (or store none)."""


@dataclass(frozen=True, order=True)
class BundleVersion:
    """Ordered by creation time; the checkpoint hash tells two bundles of the same second apart."""

    created: dt.datetime
    checkpoint: str

    @property
    def name(self) -> str:
        """The folder name under ``versions/`` (sortable, filesystem-safe)."""
        return f"{self.created.astimezone(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{self.checkpoint or 'nockpt'}"

    def __str__(self) -> str:
        return self.name


def bundle_version(manifest: dict[str, Any]) -> BundleVersion:
    """The version of a bundle manifest (``provenance.created`` + checkpoint hash prefix)."""
    prov = manifest.get("provenance") or {}
    created = prov.get("created")
    try:
        when = dt.datetime.fromisoformat(str(created))
    except ValueError:
        raise InstallError(f"manifest provenance.created is {created!r}, not an ISO time: the bundle has no "
                           "version (re-export it with leafscout export)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return BundleVersion(when, str(prov.get("checkpoint_sha256") or "")[:12])


def default_store_dir() -> Path:
    """``$LEAFSCOUT_BUNDLES``, else ``bundles`` in ``$LEAFSCOUT_STATE_DIR`` or ``~/.local/state/leafscout``."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    root = os.environ.get("LEAFSCOUT_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state"), "leafscout")
    return Path(root) / "bundles"


@dataclass(frozen=True)
class InstallResult:
    version: BundleVersion
    path: Path
    previous: BundleVersion | None
    changed: bool  # False: this version was already current
    detail: str


def self_test_all(root: Path, *, public_key: bytes | None = None) -> str:
    """Load every model file of bundle ``root`` and run its self-test; ``SelfTestError`` on any failure."""
    files = read_manifest(root)["files"]
    if SELFTEST_NAME not in files:
        raise SelfTestError(f"{root}: no {SELFTEST_NAME} (stored sample inputs and logits); re-export the bundle")
    details = []
    for int8 in (False, True) if INT8_NAME in files else (False,):
        result = load_bundle(root, int8=int8, threads=1, public_key=public_key).self_test()
        if not result.ok:
            raise SelfTestError(f"{root}: self-test failed: {result.detail}")
        details.append(result.detail)
    return "; ".join(details)


def _copy_synced(src: Path, dst: Path) -> None:
    """Copy the bundle's plain files and fsync them, so a power cut cannot leave a torn copy current."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dst / f.name)
            with open(dst / f.name, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(dst)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleStore:
    """The ``bundles/`` directory of a robot (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_dir()

    def _link(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        target = link.resolve()
        return target if target.is_dir() else None

    @property
    def current(self) -> Path | None:
        return self._link(CURRENT)

    @property
    def previous(self) -> Path | None:
        return self._link(PREVIOUS)

    @staticmethod
    def is_store(path: str | os.PathLike) -> bool:
        return (Path(path) / CURRENT).is_symlink()

    def version_of(self, path: Path | None) -> BundleVersion | None:
        if path is None:
            return None
        try:
            return bundle_version(read_manifest(path))
        except BundleError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time (a station offer and a hand install)
            yield

    # -- installing -------------------------------------------------------------------
    def install(self, src: str | os.PathLike, *, public_key: bytes | None,
                allow_downgrade: bool = False) -> InstallResult:
        """Verify ``src`` and make it current; the old current becomes ``previous``."""
        if not public_key:
            raise InstallError("a bundle is installed only with a public key to check its signature (--pubkey)")
        src = Path(src)
        version = bundle_version(read_manifest(src))
        with self._locked():
            versions = self.root / VERSIONS
            versions.mkdir(exist_ok=True)
            current = self.current
            cur_version = self.version_of(current)
            if cur_version == version:
                return InstallResult(version, current, self.version_of(self.previous), False,
                                     f"{version} is already current")
            if cur_version is not None and version < cur_version and not allow_downgrade:
                raise DowngradeError(f"{src} is version {version}, older than the installed {cur_version}; "
                                     "pass --allow-downgrade to install it anyway")
            staging = versions / f".staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                _copy_synced(src, staging)
                # Checked in the copy, not the source: what passes is exactly what runs.
                detail = self_test_all(staging, public_key=public_key)
                target = versions / version.name
                if target.exists() and target.resolve() != self.previous:
                    shutil.rmtree(target)  # a leftover of an interrupted install
                if not target.exists():  # else: going back to the previous version, already verified here
                    os.rename(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            if current is not None and current != target:
                self._point(PREVIOUS, current)
            self._point(CURRENT, target)
            self._prune()
        log.info("installed bundle %s (previous: %s)", version, cur_version)
        return InstallResult(version, target, cur_version if current != target else None, True, detail)

    def _point(self, name: str, target: Path) -> None:
        tmp = self.root / f".{name}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.path.relpath(target, self.root), tmp)
        os.replace(tmp, self.root / name)  # atomic: readers see the old link or the new one
        _fsync_dir(self.root)

    def _prune(self) -> None:
        keep = {p for p in (self.current, self.previous) if p is not None}
        for d in (self.root / VERSIONS).iterdir():
            if d.is_dir() and not d.name.startswith(".") and d.resolve() not in keep:
                shutil.rmtree(d, ignore_errors=True)

    # -- loading ----------------------------------------------------------------------
    def load(self, **load_kwargs: Any) -> Bundle:
        """The current bundle, loaded and self-tested; else last-known-good, with a warning.

        Raises ``BundleError`` when neither works (or nothing is installed).
        """
        errors = []
        for name in (CURRENT, PREVIOUS):
            path = self._link(name)
            if path is None:
                continue
            try:
                bundle = load_bundle(path, **load_kwargs)
                result = bundle.self_test()
                if result.ok is False:
                    raise SelfTestError(f"{path}: self-test failed: {result.detail}")
            except BundleError as e:
                errors.append(f"{name}: {e}")
                log.warning("bundle %s (%s) cannot be used: %s", name, path.name, e)
                continue
            if errors:
                log.warning("falling back to the last-known-good bundle %s", path.name)
            bundle.store_slot = name  # type: ignore[attr-defined] - shown by status and heartbeats
            return bundle
        if not errors:
            raise InstallError(f"no bundle installed in {self.root} (leafscout bundle install SRC --pubkey KEY)")
        raise InstallError(f"no usable bundle in {self.root}: " + "; ".join(errors))


def load_run_bundle(path: str | os.PathLike | None, **load_kwargs: Any) -> Bundle:
    """The bundle ``leafscout run`` uses: ``path`` (a bundle or a store), else the default store's
    current bundle (with fallback) when one is installed, else the packaged reference bundle."""
    if path is None:
        store = BundleStore()
        if store.current is not None or store.previous is not None:
            return store.load(**load_kwargs)
        return load_bundle(default_bundle_path(), **load_kwargs)
    if BundleStore.is_store(path):
        return BundleStore(path).load(**load_kwargs)
    return load_bundle(path, **load_kwargs)


def describe(bundle: Bundle) -> str:
    """``VERSION`` of a loaded bundle, with the store slot it came from (for status and logs)."""
    try:
        version = bundle_version(bundle.manifest).name
    except InstallError:
        version = "unversioned"
    slot = getattr(bundle, "store_slot", None)
    return f"{version} ({slot})" if slot else version

