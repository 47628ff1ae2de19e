"""Load a deploy bundle (ONNX model + manifest) strictly, for the robot and for evaluation.

A bundle is a directory written by ``leafscout export``: ``manifest.json``, ``model.onnx``
(folded fp32), optionally ``model.int8.onnx`` and ``split.json``. Everything a runtime
needs (classes, preprocessing, calibration) comes from the manifest, and every way a
bundle can be wrong is its own ``BundleError`` subclass, so a wrong model never loads
silently. Only numpy, OpenCV and onnxruntime are imported here: the robot has no torch.
The format is described in docs/bundle.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .preprocess import PreprocessError, PreprocessSpec
from .taxonomy import BACKGROUND, Taxonomy, TaxonomyError

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "FP32_NAME",
    "INT8_NAME",
    "SELFTEST_NAME",
    "SelfTestResult",
    "METADATA_KEY",
    "PUBLIC_KEY_ENV",
    "Bundle",
    "calibrated_probs",
    "BundleError",
    "BundleMissingFile",
    "BundleHashMismatch",
    "BundleFormatError",
    "BundleShapeError",
    "BundleClassCountError",
    "BundleSignatureError",
    "load_bundle",
    "read_manifest",
    "embedded_manifest",
    "default_bundle_path",
    "sha256_bytes",
    "session_options",
    "softmax",
]

log = logging.getLogger(__name__)

FORMAT = "leafscout-bundle/1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
# Stored sample inputs and the logits export measured on them: a bundle checks itself
# (``Bundle.self_test``) on any machine, without its checkpoint or data.
SELFTEST_NAME = "selftest.npz"
SELFTEST_FP32_TOLERANCE = 1e-4  # max |logit difference| (the parity gate's)
SELFTEST_INT8_TOLERANCE = 0.25  # int8 kernels differ between CPUs (VNNI or not): a looser bound, same top-1
# ONNX metadata_props key holding the manifest without its "files" block (a file
# cannot contain its own hash).
METADATA_KEY = "leafscout.manifest"
# Path of an Ed25519 public key (PEM or 32 raw bytes); when set, every load checks the signature.
PUBLIC_KEY_ENV = "LEAFSCOUT_BUNDLE_PUBLIC_KEY"
REQUIRED_KEYS = ("format", "classes", "preprocess", "files", "model", "input", "output", "metrics", "provenance")


class BundleError(RuntimeError):
    """A bundle that cannot be loaded as the model it claims to be."""


class BundleMissingFile(BundleError):
    """The bundle directory, its manifest or a file it lists is not there."""


class BundleHashMismatch(BundleError):
    """A file's SHA-256 differs from the one in the manifest."""


class BundleFormatError(BundleError):
    """Unknown format version, malformed manifest, or manifest and model disagree."""


class BundleShapeError(BundleError):
    """The model input (or a batch handed to it) has the wrong shape."""


class BundleClassCountError(BundleError):
    """The model outputs a different number of classes than the manifest lists."""


class BundleSignatureError(BundleError):
    """The manifest signature is missing or does not verify with the configured key."""


def default_bundle_path() -> Path:
    """The reference bundle shipped inside the package (``vision/reference_bundle/``)."""
    return Path(__file__).resolve().parent / "reference_bundle"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file read in 1 MiB chunks (bundles, checkpoints and splits are hashed alike)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def softmax(logits: np.ndarray, temperature: float = 1.0, *, background_temperature: float | None = None,
            background_index: int | None = None) -> np.ndarray:
    """softmax(logits / T); rows whose best class is ``background_index`` use ``background_temperature``.

    Why two: a field model is over-confident on leaves and under-confident on soil and weeds,
    and one temperature can only trade one against the other. Either temperature keeps each
    row's best class, so the split by best class is the same before and after scaling.
    """
    z = logits.astype(np.float32)
    if background_temperature is not None and background_index is not None:
        t = np.where(z.argmax(axis=-1) == background_index, np.float32(background_temperature),
                     np.float32(temperature))
        z = z / t[..., None]
    else:
        z = z / np.float32(temperature)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def calibrated_probs(logits: np.ndarray, calibration: dict[str, Any] | None,
                     background_index: int | None) -> np.ndarray:
    """The robot's probabilities from a ``calibration`` block (one rule for bundles, checkpoints and export)."""
    cal = calibration or {}
    bg_t = cal.get("background_temperature")
    return softmax(logits, float(cal.get("temperature") or 1.0),
                   background_temperature=None if bg_t is None else float(bg_t), background_index=background_index)


def _bundle_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name == MANIFEST_NAME:
        p = p.parent
    if p.is_file():
        raise BundleMissingFile(f"{str(p)!r} is a file; pass the bundle directory (the folder holding {MANIFEST_NAME})")
    if not p.is_dir():
        raise BundleMissingFile(f"bundle directory {str(p)!r} does not exist (expected a folder written by 'leafscout export')")
    return p


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of bundle ``path``, checked for format version and required keys only."""
    root = _bundle_dir(path)
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleMissingFile(f"{root}: no {MANIFEST_NAME}; is this a bundle written by 'leafscout export'?")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleFormatError(f"{mpath}: not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise BundleFormatError(f"{mpath}: expected a JSON object, got {type(manifest).__name__}")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise BundleFormatError(f"{mpath}: unknown bundle format {fmt!r}; this leafscout reads {FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleFormatError(f"{mpath}: manifest lacks required keys {missing}")
    classes = manifest["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise BundleFormatError(f"{mpath}: 'classes' must be a list of >= 2 names, got {classes!r}")
    if not isinstance(manifest["files"], dict) or FP32_NAME not in manifest["files"]:
        raise BundleFormatError(f"{mpath}: 'files' must map file names to hashes and include {FP32_NAME!r}")
    return manifest


def _read_listed_file(root: Path, name: str, entry: Any) -> bytes:
    if Path(name).name != name:
        raise BundleFormatError(f"{root}: file name {name!r} in the manifest is not a plain file name")
    fpath = root / name
    if not fpath.is_file():
        raise BundleMissingFile(f"{root}: {name} is listed in the manifest but missing")
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(expected, str):
        raise BundleFormatError(f"{root}: manifest entry for {name} has no sha256")
    data = fpath.read_bytes()
    got = sha256_bytes(data)
    if got != expected:
        raise BundleHashMismatch(f"{root}: {name} has sha256 {got}, manifest says {expected}: file changed or corrupt")
    return data


def _check_signature(root: Path, public_key: bytes) -> None:
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BundleSignatureError("a public key is configured but the 'cryptography' package is not installed") from e
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        raise BundleSignatureError(f"{root}: a public key is configured but the bundle has no {SIGNATURE_NAME}")
    try:
        if public_key.startswith(b"-----BEGIN"):
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            key = load_pem_public_key(public_key)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"PEM holds a {type(key).__name__}")
        else:
            key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as e:
        raise BundleSignatureError(
            f"public key must be an Ed25519 PEM or 32 raw bytes, got {len(public_key)} bytes ({e})"
        ) from e
    try:
        key.verify(sig_path.read_bytes(), (root / MANIFEST_NAME).read_bytes())
    except InvalidSignature:
        raise BundleSignatureError(f"{root}: {SIGNATURE_NAME} does not verify against the configured public key") from None


def _configured_public_key(public_key: bytes | None) -> bytes | None:
    if public_key is not None:
        return public_key
    key_path = os.environ.get(PUBLIC_KEY_ENV)
    if not key_path:
        return None
    try:
        return Path(key_path).read_bytes()
    except OSError as e:
        raise BundleSignatureError(f"{PUBLIC_KEY_ENV}={key_path!r} cannot be read: {e}") from e


def embedded_manifest(session: Any, name: str = FP32_NAME) -> dict[str, Any]:
    """The manifest stored in a loaded model's ONNX metadata (everything but ``files``)."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise BundleFormatError(f"{name} has no {METADATA_KEY!r} metadata; it was not written by 'leafscout export'")
    try:
        return json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise BundleFormatError(f"{name}: {METADATA_KEY!r} metadata is not valid JSON: {e}") from e


def _choose_providers(requested: Sequence[str] | None) -> list[str]:
    import onnxruntime as ort

    if not requested:
        return ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    skipped = [p for p in requested if p not in available]
    if skipped:
        log.warning("execution providers %s are not available here (available: %s)", skipped, sorted(available))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(threads: int | None = None) -> Any:
    """onnxruntime options used for every bundle session: full graph optimisation, fixed threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for all cores), got {threads}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


@dataclass(frozen=True)
class SelfTestResult:
    ok: bool | None  # None: the bundle stores no samples (exported before self-tests)
    n: int
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    detail: str


class Bundle:
    """A loaded, checked bundle: an onnxruntime session plus what the manifest says about it."""

    def __init__(self, path: Path, manifest: dict[str, Any], session: Any, model_file: str):
        self.path = path
        self.manifest = manifest
        self.session = session
        self.model_file = model_file
        self.classes: list[str] = list(manifest["classes"])
        try:
            self.spec = PreprocessSpec.from_json(manifest["preprocess"])
        except PreprocessError as e:
            raise BundleFormatError(f"{path}: bad 'preprocess' block: {e}") from e
        calibration = manifest.get("calibration") or {}
        temperature, below = calibration.get("temperature"), calibration.get("abstain_below")
        if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
            raise BundleFormatError(f"{path}: calibration temperature must be a number > 0, got {temperature!r}")
        if below is not None and not (isinstance(below, (int, float)) and 0.0 <= below <= 1.0):
            raise BundleFormatError(f"{path}: calibration abstain_below must be in [0, 1] or null, got {below!r}")
        self.temperature = 1.0 if temperature is None else float(temperature)
        bg_t = calibration.get("background_temperature")
        if bg_t is not None and not (isinstance(bg_t, (int, float)) and bg_t > 0):
            raise BundleFormatError(f"{path}: calibration background_temperature must be a number > 0 or null, "
                                    f"got {bg_t!r}")
        self.background_temperature: float | None = None if bg_t is None else float(bg_t)
        self.abstain_below: float | None = None if below is None else float(below)
        ood, decide_on = calibration.get("ood_below"), calibration.get("decide_on", "class")
        if ood is not None and not (isinstance(ood, (int, float)) and 0.0 <= ood <= 1.0):
            raise BundleFormatError(f"{path}: calibration ood_below must be in [0, 1] or null, got {ood!r}")
        if decide_on not in ("class", "health"):
            raise BundleFormatError(f"{path}: calibration decide_on must be 'class' or 'health', got {decide_on!r}")
        self.ood_below: float | None = None if ood is None else float(ood)
        self.decides_health = decide_on == "health"
        weight = calibration.get("diseased_weight", 1.0)
        if not (isinstance(weight, (int, float)) and weight > 0):
            raise BundleFormatError(f"{path}: calibration diseased_weight must be a number > 0, got {weight!r}")
        self.diseased_weight = float(weight)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleShapeError(f"{model_file} must have one input and one output, has {len(inputs)} and {len(outputs)}")
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self.input_shape = (3, *self.spec.size)
        self._check_model(inputs[0], outputs[0])
        # After the class-count check: a model with the wrong head is that error, not a taxonomy one.
        self.taxonomy, self.background_class = self._read_taxonomy(path, manifest)
        self.background_index: int | None = self.taxonomy.background_index
        if self.background_temperature is not None and self.background_index is None:
            raise BundleFormatError(f"{path}: calibration has a background_temperature but the bundle has no "
                                    "background class")

    @staticmethod
    def _read_taxonomy(path: Path, manifest: dict[str, Any]) -> tuple[Taxonomy, str | None]:
        classes = list(manifest["classes"])
        if "taxonomy" not in manifest:
            log.info("%s: bundle has no taxonomy (made before leafscout 0.2): health read from class names, "
                     "no background class", path)
            taxonomy = Taxonomy.from_names(c for c in classes)
            if taxonomy.background_index is not None:  # an old bundle never meant "background" as "not a plant"
                raise BundleFormatError(f"{path}: a class is named {BACKGROUND!r} but the manifest has no taxonomy")
            return taxonomy, None
        try:
            taxonomy = Taxonomy.from_json(classes, manifest["taxonomy"])
        except TaxonomyError as e:
            raise BundleFormatError(f"{path}: bad 'taxonomy': {e}") from e
        background = manifest.get("background_class")
        named = None if taxonomy.background_index is None else classes[taxonomy.background_index]
        if background != named:
            raise BundleFormatError(f"{path}: background_class is {background!r} but the taxonomy's background "
                                    f"class is {named!r}")
        return taxonomy, background

    @property
    def is_int8(self) -> bool:
        return self.model_file == INT8_NAME

    def _check_model(self, inp: Any, out: Any) -> None:
        want = self.manifest["input"]
        if inp.name != want.get("name"):
            raise BundleShapeError(f"{self.model_file} input is named {inp.name!r}, manifest says {want.get('name')!r}")
        if inp.type != "tensor(float)":
            raise BundleShapeError(f"{self.model_file} input {inp.name!r} is {inp.type}, expected tensor(float)")
        dims = list(inp.shape)
        if len(dims) != 4 or list(dims[1:]) != list(self.input_shape):
            raise BundleShapeError(
                f"{self.model_file} takes input of shape {dims}, but the manifest's preprocessing makes "
                f"[N, {', '.join(map(str, self.input_shape))}]"
            )
        n_out = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else None
        if n_out is None:  # symbolic class dim: ask the model
            n_out = self._run(np.zeros((1, *self.input_shape), np.float32)).shape[-1]
        if n_out != len(self.classes):
            raise BundleClassCountError(
                f"{self.model_file} outputs {n_out} classes but the manifest lists {len(self.classes)}"
            )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits [N, C] for a float32 NCHW batch made by ``self.spec.apply_batch``."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise BundleShapeError(
                f"expected a batch of shape [N, {', '.join(map(str, self.input_shape))}], got {list(batch.shape)}"
                + ("; add a batch axis (x[None])" if batch.ndim == 3 else "")
            )
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))

    def probs(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities: softmax(logits / temperature), see ``softmax``."""
        return softmax(self.logits(batch), self.temperature, background_temperature=self.background_temperature,
                       background_index=self.background_index)

    def self_test(self) -> SelfTestResult:
        """Run the stored sample inputs and compare with the logits export recorded for this model file."""
        path = self.path / SELFTEST_NAME
        if SELFTEST_NAME not in self.manifest["files"]:
            return SelfTestResult(None, 0, 0.0, 0.0, 0.0, f"{self.path}: no {SELFTEST_NAME} (exported before self-tests)")
        with np.load(path) as z:  # its hash was checked when the bundle loaded
            x = z["inputs"]
            key = "int8_logits" if self.is_int8 else "fp32_logits"
            if key not in z:
                return SelfTestResult(False, 0, float("inf"), 0.0, 0.0, f"{SELFTEST_NAME} has no {key}")
            want = z[key]
        got = self.logits(x)
        tol = SELFTEST_INT8_TOLERANCE if self.is_int8 else SELFTEST_FP32_TOLERANCE
        diff = float(np.abs(got - want).max()) if len(x) else 0.0
        agree = float((got.argmax(1) == want.argmax(1)).mean()) if len(x) else 1.0
        ok = diff <= tol and agree == 1.0
        return SelfTestResult(ok, len(x), diff, agree, tol,
                              f"{self.model_file} on {len(x)} stored inputs: max |logit diff| {diff:.2e} "
                              f"(allowed {tol:g}), top-1 agreement {100 * agree:.1f}%")

    def classify(self, images_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities for OpenCV BGR uint8 images, preprocessed exactly as the manifest says."""
        return self.probs(self.spec.apply_batch(images_bgr))

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, model={self.model_file}, classes={len(self.classes)})"


def load_bundle(
    path: str | os.PathLike,
    *,
    int8: bool | None = None,
    providers: list[str] | None = None,
    threads: int | None = None,
    public_key: bytes | None = None,
) -> Bundle:
    """Load and check a bundle: format, file hashes, signature, model input and output.

    ``int8=None`` picks the int8 model when the bundle has one (it passed export's
    accuracy gate) and the fp32 model otherwise. ``providers`` lists onnxruntime
    execution providers in order of preference (CPU when None); unavailable ones are
    skipped with a warning. ``threads`` sets intra-op threads (all cores when None).
    ``public_key`` (Ed25519, PEM or 32 raw bytes; else the file named by $LEAFSCOUT_BUNDLE_PUBLIC_KEY)
    makes a valid ``manifest.sig`` mandatory.
    """
    import onnxruntime as ort

    root = _bundle_dir(path)
    manifest = read_manifest(root)
    key = _configured_public_key(public_key)
    if key is not None:
        _check_signature(root, key)
    files = manifest["files"]
    if int8 is None:
        int8 = INT8_NAME in files
    model_file = INT8_NAME if int8 else FP32_NAME
    if model_file not in files:
        raise BundleMissingFile(f"{root}: bundle has no {model_file} (export with --int8 to add one)")
    contents = {name: _read_listed_file(root, name, entry) for name, entry in files.items()}

    try:
        session = ort.InferenceSession(contents[model_file], sess_options=session_options(threads), providers=_choose_providers(providers))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BundleFormatError(f"{root}: onnxruntime cannot load {model_file}: {e}") from e
    embedded = embedded_manifest(session, model_file)
    outer = {k: v for k, v in manifest.items() if k != "files"}
    if embedded != outer:
        differ = sorted(k for k in set(embedded) | set(outer) if embedded.get(k) != outer.get(k))
        raise BundleFormatError(
            f"{root}: {MANIFEST_NAME} disagrees with the manifest embedded in {model_file} in {differ}; "
            "was the manifest edited by hand?"
        )

    bundle = Bundle(root, manifest, session, model_file)
    log.info("loaded %r", bundle)
    return bundle
