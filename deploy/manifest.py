"""Write a bundle's manifest: embed it in the ONNX files, hash every file, sign if asked.

Order matters: the manifest (without ``files``) goes into each model's ONNX metadata
first, then the files are hashed, then ``manifest.json`` is written with the hashes,
then ``manifest.sig`` over those exact bytes. ``leafscout.vision.bundle.load_bundle`` checks all of it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import onnx

from leafscout.training.checkpoint import file_sha256
from leafscout.vision.bundle import FP32_NAME, INT8_NAME, MANIFEST_NAME, METADATA_KEY, SIGNATURE_NAME

from .errors import DeployError

__all__ = ["json_clean", "embed_manifest", "write_manifest", "sign_manifest", "load_private_key"]

MODEL_FILES = (FP32_NAME, INT8_NAME)


def json_clean(obj: Any) -> Any:
    """JSON-safe copy: tuples to lists, numpy scalars to Python, NaN/inf to None (they break equality)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def embed_manifest(onnx_path: Path, manifest: dict[str, Any]) -> None:
    """Store ``manifest`` (minus ``files``) in the model's metadata_props, replacing any old copy."""
    model = onnx.load(str(onnx_path))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for k, v in keep:
        model.metadata_props.add(key=k, value=v)
    body = {k: v for k, v in manifest.items() if k != "files"}
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(body, sort_keys=True, allow_nan=False))
    onnx.save(model, str(onnx_path))


def load_private_key(path: str | os.PathLike) -> Any:
    """An Ed25519 private key from a PEM file or a raw 32-byte seed."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError as e:
        raise DeployError("signing needs the 'cryptography' package (pip install cryptography)") from e
    data = Path(path).read_bytes()
    if data.startswith(b"-----BEGIN"):
        key = load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise DeployError(f"{path} holds a {type(key).__name__}, expected an Ed25519 private key")
        return key
    if len(data) != 32:
        raise DeployError(f"{path}: expected a PEM Ed25519 key or 32 raw bytes, got {len(data)} bytes")
    return Ed25519PrivateKey.from_private_bytes(data)


def sign_manifest(bundle_dir: Path, key_path: str | os.PathLike) -> Path:
    """Detached Ed25519 signature over the exact bytes of manifest.json."""
    key = load_private_key(key_path)
    out = bundle_dir / SIGNATURE_NAME
    out.write_bytes(key.sign((bundle_dir / MANIFEST_NAME).read_bytes()))
    return out


def write_manifest(bundle_dir: Path, manifest: dict[str, Any], *, extra_files: tuple[str, ...] = (),
                   sign_key: str | os.PathLike | None = None) -> dict[str, Any]:
    """Embed, hash and write; returns the final manifest (with ``files``)."""
    manifest = json_clean({k: v for k, v in manifest.items() if k != "files"})
    names = [n for n in MODEL_FILES if (bundle_dir / n).is_file()]
    if FP32_NAME not in names:
        raise DeployError(f"{bundle_dir} has no {FP32_NAME} to describe")
    for name in names:
        embed_manifest(bundle_dir / name, manifest)
    files = {}
    for name in (*names, *extra_files):
        path = bundle_dir / name
        files[name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    manifest["files"] = files
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    (bundle_dir / MANIFEST_NAME).write_text(text, encoding="utf-8")
    stale_sig = bundle_dir / SIGNATURE_NAME
    if sign_key is not None:
        sign_manifest(bundle_dir, sign_key)
    elif stale_sig.exists():
        stale_sig.unlink()
    return manifest
