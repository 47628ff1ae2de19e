"""Checkpoint -> bundle: fold, export, gate on parity, quantize, evaluate, write the manifest.

Each step is a pure function followed by its check; the bundle is assembled in a
temporary sibling directory and only moved into place when every gate has passed,
so a failed export never leaves something that looks like a bundle.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from leafscout.training.checkpoint import checkpoint_preprocess, file_sha256, leafscout_version, load_checkpoint
from leafscout.training.metrics import classification_metrics, health_metrics
from leafscout.vision import count_macs, count_params
from leafscout.vision.bundle import FORMAT, FP32_NAME, INT8_NAME, SELFTEST_NAME, calibrated_probs, load_bundle
from leafscout.vision.taxonomy import Taxonomy

from .data import BUNDLE_SPLIT_NAME, load_images, pick_calibration, resolve_split, split_beside, write_bundle_split
from .errors import BundleExistsError, ParityError
from .fold import fold_batchnorm
from .manifest import write_manifest
from .onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
from .parity import MAX_INT8_DROP_POINTS, MAX_LOGIT_DIFF, Int8Gate, ParityReport, compare_runtimes, int8_gate
from .quantize import quantize_int8
from .runtimes import ort_logits, ort_session, torch_logits

__all__ = ["ExportResult", "export_bundle", "describe", "QUANTIZATION"]

log = logging.getLogger(__name__)

QUANTIZATION = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True,
                "activations": "uint8", "weights": "int8"}


@dataclass
class ExportResult:
    bundle: Path
    parity: ParityReport
    int8: Int8Gate | None
    int8_written: bool
    int8_reason: str | None
    manifest: dict[str, Any]


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"leafscout": leafscout_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str],
             calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Class metrics, plus the robot's health decisions for a model that decides on health."""
    probs = calibrated_probs(logits, calibration, Taxonomy.from_names(classes).background_index)
    m = classification_metrics(labels, probs, classes)
    cal = calibration or {}
    if cal.get("decide_on") == "health":
        m.update(health_metrics(labels, probs, Taxonomy.from_names(classes),
                                abstain_below=float(cal.get("abstain_below") or 0.0),
                                ood_below=float(cal.get("ood_below") or 0.0),
                                diseased_weight=float(cal.get("diseased_weight") or 1.0)))
    return m


def _per_source(logits: np.ndarray, labels: np.ndarray, sources: np.ndarray, names: list[str], classes: list[str],
                calibration: dict[str, Any] | None) -> dict[str, Any]:
    """Headline metrics per source of the split (only when there are several)."""
    if len(names) < 2:
        return {}
    keep = ("n", "top1", "macro_f1", "ece", "health_accuracy", "false_alarm_rate", "miss_rate", "coverage",
            "crop_accuracy", "background_called_plant")
    out = {}
    for i, name in enumerate(names):
        sel = sources == i
        if sel.any():
            m = _metrics(logits[sel], labels[sel], classes, calibration)
            out[name] = {k: m[k] for k in keep if k in m}
    return out


# Weight ranges tried for int8; the more accurate one is kept. 7-bit weights avoid the int16
# saturation of x86 CPUs without VNNI (see deploy.quantize); full range is more precise elsewhere.
INT8_RECIPES = ({"reduce_range": True}, {"reduce_range": False})


def _quantize_and_gate(
    bundle_dir: Path, calib: np.ndarray, x: np.ndarray, y: np.ndarray, fp32: np.ndarray, *, method: str, max_drop: float
) -> tuple[Int8Gate, np.ndarray | None, dict[str, Any]]:
    """Quantize with each recipe, keep the most accurate as model.int8.onnx if it passes the gate.

    Returns (gate of the best recipe, its logits or None when rejected, what was tried).
    """
    tried = []
    for i, recipe in enumerate(INT8_RECIPES):
        path = bundle_dir / f"candidate{i}.int8.onnx"
        quantize_int8(bundle_dir / FP32_NAME, path, calib, method=method, **recipe)
        logits = ort_logits(ort_session(path), x)
        gate = int8_gate(fp32, logits, y, max_drop)
        log.debug("%s: %s", recipe, gate.format())
        tried.append((gate.top1_int8, gate.agreement, i, path, gate, logits))
    tried.sort(key=lambda t: (t[0], t[1], -t[2]), reverse=True)
    _, _, best, path, gate, logits = tried[0]
    info = {**INT8_RECIPES[best], "tried": [{**INT8_RECIPES[t[2]], "top1": t[0], "agreement": t[1]} for t in tried]}
    if gate.ok:
        path.rename(bundle_dir / INT8_NAME)
    for t in tried:
        t[3].unlink(missing_ok=True)
    return gate, logits if gate.ok else None, info


def _manifest(
    checkpoint: Path, ckpt: dict[str, Any], folded: Any, split_sha256: str | None, split: str,
    metrics: dict[str, Any], parity: ParityReport, quantization: dict[str, Any],
) -> dict[str, Any]:
    spec = checkpoint_preprocess(ckpt)
    classes = list(ckpt["classes"])
    taxonomy = Taxonomy.from_names(classes)
    manifest = {
        "format": FORMAT,
        "classes": classes,
        "taxonomy": taxonomy.to_json(),
        "background_class": None if taxonomy.background_index is None else classes[taxonomy.background_index],
        "preprocess": spec.to_json(),
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "shape": ["N", 3, *spec.size]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(classes)]},
        "model": {"name": ckpt["model"]["name"], "args": ckpt["model"]["args"], "params": count_params(folded),
                  "macs": count_macs(folded, spec.size), "bn_folded": True, "opset": OPSET},
        "metrics": {"split": split, **metrics},
        "parity": parity.to_json(),
        "quantization": quantization,
        # No absolute path: a bundle is shipped to other machines (the checkpoint is named by its hash).
        "provenance": {"checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
                       "epoch": ckpt.get("epoch"), "split_manifest_sha256": split_sha256, "split_file": BUNDLE_SPLIT_NAME,
                       "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions()},
    }
    calibration = ckpt.get("calibration")
    if calibration:  # temperature and abstain_below are what runtimes use; the rest is its evidence
        manifest["calibration"] = {"temperature": calibration.get("temperature"),
                                   "abstain_below": calibration.get("abstain_below"), **calibration}
    return manifest


SELFTEST_SAMPLES = 16
# Inputs are stored as float32, so their share of the bundle grows with the input's area: the
# pixel budget of 16 inputs at 96x96 keeps selftest.npz (~0.5 MB) the same size at any input size.
SELFTEST_PIXELS = SELFTEST_SAMPLES * 96 * 96
SELFTEST_MIN_SAMPLES = 4


def selftest_samples(size: tuple[int, int]) -> int:
    """How many inputs the self-test keeps for models of input ``size`` (H, W)."""
    return max(SELFTEST_MIN_SAMPLES, min(SELFTEST_SAMPLES, SELFTEST_PIXELS // (size[0] * size[1])))


def _write_selftest(path: Path, x: np.ndarray, fp32: np.ndarray, int8: np.ndarray | None) -> None:
    """A few evaluation inputs (spread over the set) and the logits each model gave them."""
    idx = np.linspace(0, len(x) - 1, min(selftest_samples(x.shape[2:]), len(x))).round().astype(int)
    arrays = {"inputs": x[idx].astype(np.float32), "fp32_logits": fp32[idx].astype(np.float32)}
    if int8 is not None:
        arrays["int8_logits"] = int8[idx].astype(np.float32)
    np.savez_compressed(path, **arrays)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp``; a README.md already in ``out`` (the reference bundle's) is kept."""
    readme = out / "README.md"
    if readme.is_file():
        shutil.copy2(readme, tmp / "README.md")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def export_bundle(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    int8: bool = False,
    data: str | os.PathLike | None = None,
    split: str = "test",
    calibration_images: int = 256,
    calibration_method: str = "minmax",
    int8_max_drop: float = MAX_INT8_DROP_POINTS,
    parity_tolerance: float = MAX_LOGIT_DIFF,
    sign_key: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write a bundle for ``checkpoint`` to ``out``.

    Raises ``ParityError`` (nothing written) when PyTorch, folded PyTorch and onnxruntime
    disagree on the ``split`` images. An int8 model that loses more than
    ``int8_max_drop`` top-1 points is not written; the result says why.
    """
    if parity_tolerance < 0:
        raise ValueError(f"parity_tolerance must be >= 0, got {parity_tolerance}")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise BundleExistsError(f"{out} already exists; pass --force to replace it")
    model, ckpt = load_checkpoint(checkpoint)
    spec, classes = checkpoint_preprocess(ckpt), list(ckpt["classes"])
    split_path = split_beside(checkpoint)
    data_split = resolve_split(split_path, data=data, expected_sha256=ckpt.get("split_manifest_sha256"), classes=classes)
    eval_samples = data_split.samples(split)
    x, y = load_images(eval_samples, spec, desc=f"{split} images")
    sources = np.array([s.source for s in eval_samples], np.int64)
    calibration = ckpt.get("calibration")
    folded = fold_batchnorm(model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shipped
    try:
        export_onnx(folded, tmp / FP32_NAME, spec.size)
        fp32 = ort_logits(ort_session(tmp / FP32_NAME), x)
        parity = compare_runtimes({"pytorch_bn": torch_logits(model, x), "pytorch_folded": torch_logits(folded, x),
                                   "onnxruntime_fp32": fp32}, parity_tolerance)
        log.debug("%s", parity.format())
        if not parity.ok:
            raise ParityError(f"parity gate failed, no bundle written:\n{parity.format()}", parity)

        gate, int8_logits, recipe = None, None, {}
        if int8:
            calib, _ = load_images(pick_calibration(data_split.samples("train"), calibration_images), spec,
                                   desc="calibration images")
            gate, int8_logits, recipe = _quantize_and_gate(tmp, calib, x, y, fp32, method=calibration_method,
                                                           max_drop=int8_max_drop)
        reason = gate.format() if gate is not None and int8_logits is None else None
        quantization = {**QUANTIZATION, **recipe, "requested": int8, "written": int8_logits is not None, "reason": reason,
                        "calibration_split": "train", "calibrate_method": calibration_method,
                        "calibration_images": calibration_images if int8 else 0,
                        "gate": None if gate is None else gate.to_json()}
        metrics = {"fp32": _metrics(fp32, y, classes, calibration),
                   "int8": None if int8_logits is None else _metrics(int8_logits, y, classes, calibration)}
        shipped = fp32 if int8_logits is None else int8_logits
        per_source = _per_source(shipped, y, sources, data_split.source_names(), classes, calibration)
        if per_source:
            metrics["per_source"] = per_source
            metrics["per_source_model"] = FP32_NAME if int8_logits is None else INT8_NAME
        write_bundle_split(split_path, tmp)
        _write_selftest(tmp / SELFTEST_NAME, x, fp32, int8_logits)
        manifest = _manifest(checkpoint, ckpt, folded, data_split.sha256, split, metrics, parity, quantization)
        manifest = write_manifest(tmp, manifest, extra_files=(BUNDLE_SPLIT_NAME, SELFTEST_NAME), sign_key=sign_key)
        for use_int8 in (False, True) if int8_logits is not None else (False,):
            check = load_bundle(tmp, int8=use_int8).self_test()  # loads under its own strict rules, and checks itself
            if not check.ok:
                raise ParityError(f"the written bundle fails its own self-test: {check.detail}")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, parity, gate, int8_logits is not None, reason, manifest)


def describe(result: ExportResult) -> str:
    """Human summary printed by ``leafscout export``."""
    m = result.manifest["metrics"]
    lines = [f"bundle written to {result.bundle}", result.parity.format(),
             f"fp32 on {m['split']} ({m['fp32']['n']} images): top-1 {100 * m['fp32']['top1']:.2f}%, "
             f"macro-F1 {100 * m['fp32']['macro_f1']:.2f}%"]
    if result.int8 is not None:
        lines.append(result.int8.format())
        lines.append("model.int8.onnx written" if result.int8_written else "model.int8.onnx NOT written (gate above)")
    return "\n".join(lines)

