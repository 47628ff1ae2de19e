"""Re-run export's checks on an existing bundle: hashes, graph, metrics, int8 gate, PyTorch parity.

PyTorch parity needs the checkpoint: the one named, or the one recorded in the
manifest's provenance when it is still there with the same hash; otherwise that
check is reported as skipped (never as passed).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from leafscout.vision.bundle import FP32_NAME, INT8_NAME, BundleError, file_sha256, load_bundle

from .errors import DeployDataError
from .evaluate import bundle_images
from .parity import MAX_INT8_DROP_POINTS, MAX_LOGIT_DIFF, compare_runtimes, int8_gate, top1

__all__ = ["Check", "VerifyReport", "verify_bundle", "source_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str


@dataclass
class VerifyReport:
    bundle: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def format(self) -> str:
        marks = {True: "ok  ", False: "FAIL", None: "skip"}
        lines = [f"verify {self.bundle}:"]
        for c in self.checks:
            lines += [f"  {marks[c.ok]} {c.name}: " + c.detail.replace("\n", "\n         ")]
        lines.append("bundle OK" if self.ok else "bundle FAILED verification")
        return "\n".join(lines)


def source_checkpoint(manifest: dict, given: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The checkpoint a bundle came from (``given`` or the recorded one), if its hash matches; else why not."""
    prov = manifest["provenance"]
    path = Path(given) if given is not None else Path(prov.get("checkpoint", ""))
    if given is None and not path.is_file():
        return None, f"checkpoint {str(path)!r} from the manifest is not here; pass --checkpoint"
    digest = file_sha256(path) if path.is_file() else None
    if digest != prov.get("checkpoint_sha256"):
        return None, f"{path} is not the checkpoint this bundle was exported from (sha256 differs)"
    return path, ""


def _check_metrics(report: VerifyReport, name: str, got: float, n: int, recorded: dict | None) -> None:
    """Re-measured top-1 must match the manifest to within one image (another CPU may round differently)."""
    if recorded is None:
        report.add(f"metrics {name}", False, "the manifest records no metrics for this model")
        return
    same = n == recorded["n"] and round(abs(got - recorded["top1"]) * n) <= 1
    report.add(f"metrics {name}", same, f"top-1 {100 * got:.2f}% on {n} images; manifest says "
               f"{100 * recorded['top1']:.2f}% on {recorded['n']}")


def verify_bundle(
    path: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    public_key: bytes | None = None,
) -> VerifyReport:
    report = VerifyReport(Path(path))
    try:
        fp32 = load_bundle(path, int8=False, public_key=public_key)
    except BundleError as e:
        report.add("load", False, f"{type(e).__name__}: {e}")
        return report
    manifest = fp32.manifest
    has_int8 = INT8_NAME in manifest["files"]
    report.add("load", True, "format, file hashes, embedded manifest, input shape and class count"
               + (", signature" if public_key is not None else ""))
    # Parity on the stored samples needs neither the checkpoint nor the data.
    for use_int8 in (False, True) if INT8_NAME in manifest["files"] else (False,):
        check = (fp32 if not use_int8 else load_bundle(path, int8=True, public_key=public_key)).self_test()
        report.add(f"self-test {INT8_NAME if use_int8 else FP32_NAME}", check.ok, check.detail)
    try:  # the graph checks need the onnx package, which a [robot] install leaves out
        from .onnx_export import OnnxExportError, check_onnx
    except ImportError as e:
        report.add("graph", None, f"skipped: {e.name} is not installed (pip install 'leafscout[train]')")
        check_onnx = None
    for name in ((FP32_NAME, INT8_NAME) if has_int8 else (FP32_NAME,)) if check_onnx else ():
        try:
            check_onnx(fp32.path / name)
            report.add(f"graph {name}", True, "onnx.checker passes, input 'image', output 'logits', no BatchNormalization")
        except OnnxExportError as e:
            report.add(f"graph {name}", False, str(e))

    try:
        x, y = bundle_images(fp32, data, manifest["metrics"]["split"])
    except DeployDataError as e:
        # No --data and the training images are not here (a robot): the stored samples above are the check.
        # A folder that was named but does not fit is a failure.
        report.add("images", None if data is None else False, f"cannot re-run the metric and parity checks: {e}")
        return report
    logits32 = fp32.logits(x)
    _check_metrics(report, "fp32", top1(logits32, y), len(y), manifest["metrics"]["fp32"])
    if has_int8:
        int8 = load_bundle(path, int8=True, public_key=public_key)
        logits8 = int8.logits(x)
        _check_metrics(report, "int8", top1(logits8, y), len(y), manifest["metrics"]["int8"])
        gate_cfg = manifest["quantization"].get("gate") or {}
        gate = int8_gate(logits32, logits8, y, gate_cfg.get("max_drop_points", MAX_INT8_DROP_POINTS))
        report.add("int8 gate", gate.ok, gate.format())

    ckpt_path, why = source_checkpoint(manifest, checkpoint)
    if ckpt_path is None:
        report.add("pytorch parity", None, why)
    elif importlib.util.find_spec("torch") is None:
        report.add("pytorch parity", None, "skipped: torch is not installed (pip install 'leafscout[train]')")
    else:
        from leafscout.training.checkpoint import load_checkpoint

        from .fold import fold_batchnorm
        from .runtimes import torch_logits

        model, _ = load_checkpoint(ckpt_path)
        tolerance = manifest["parity"].get("max_abs_logit_diff_allowed", MAX_LOGIT_DIFF)
        parity = compare_runtimes({"pytorch_bn": torch_logits(model, x), "pytorch_folded": torch_logits(fold_batchnorm(model), x),
                                   "onnxruntime_fp32": logits32}, tolerance)
        report.add("pytorch parity", parity.ok, parity.format())
    return report
