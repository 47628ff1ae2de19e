"""Side-by-side inference benchmark of one bundle on every runtime, against the core's compute limit.

All runtimes run in one process on the same input, so their ratios mean something.
The limit is ``rate / (2 * MACs per image)`` where ``rate`` is the one-thread float32
matrix-multiply rate measured in the same run (384x384 ``torch.mm``, before and after
the runtimes, the higher one kept; at peak on one core, yet each call is short enough, ~1 ms,
to fit between other processes' time slices on a shared machine, which 1024x1024 is not): a runtime at ratio 1.0 would spend every cycle of one
core on useful multiply-adds. The ratio compares fastest calls on both sides (peak with
peak): on a machine shared with other work, medians taken minutes apart are not
comparable. Throughput is also reported from the median call and the mean. Rows with more
threads are compared with the same one-core limit, so their ratio can exceed 1.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from leafscout.training.checkpoint import load_checkpoint
from leafscout.vision import create_model
from leafscout.vision.bundle import FP32_NAME, INT8_NAME, load_bundle

from .fold import fold_batchnorm
from .runtimes import ort_session
from .verify import source_checkpoint

__all__ = ["BenchRow", "matmul_rate", "bench_bundle", "format_table"]

log = logging.getLogger(__name__)

RUNTIMES = ("pytorch_bn", "pytorch_folded", "onnxruntime_fp32", "onnxruntime_int8", "opencv_dnn_fp32")


@dataclass
class BenchRow:
    runtime: str
    threads: int
    batch: int
    images_per_s: float  # batch / median call time: robust to other processes on a shared machine
    mean_images_per_s: float  # batch x calls / total time
    best_images_per_s: float  # batch / fastest call: compared with the GEMM's fastest call
    p50_ms: float
    p99_ms: float
    calls: int
    limit_ratio: float | None = None


def all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def matmul_rate(n: int = 384, seconds: float = 1.0) -> float:
    """One-thread float32 GEMM rate in FLOP/s (fastest of repeated ``torch.mm``: the core's peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = _time_calls(lambda: torch.mm(a, b), seconds)
    finally:
        torch.set_num_threads(old)
    return 2.0 * n**3 / min(times)


def _time_calls(fn: Callable[[], Any], seconds: float, min_calls: int = 5) -> list[float]:
    for _ in range(2):  # warm-up: allocations, kernel selection
        fn()
    times = []
    deadline = time.monotonic() + seconds
    while len(times) < min_calls or time.monotonic() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _runners(bundle_dir: Path, manifest: dict, checkpoint: str | os.PathLike | None) -> tuple[dict[str, Callable], str]:
    """One factory per runtime: ``factory(threads) -> (batch -> None)``."""
    ckpt_path, why = source_checkpoint(manifest, checkpoint)
    if ckpt_path is not None:
        model, _ = load_checkpoint(ckpt_path)
        weights = f"weights from {ckpt_path}"
    else:  # speed does not depend on the weights' values
        model = create_model(manifest["model"]["name"], **manifest["model"]["args"]).eval()
        weights = f"PyTorch rows use freshly initialised weights ({why})"
    folded = fold_batchnorm(model)

    def torch_runner(m: torch.nn.Module) -> Callable:
        def make(threads: int) -> Callable:
            def run(x: np.ndarray) -> None:
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                with torch.inference_mode():
                    m(torch.from_numpy(x))
            return run
        return make

    def ort_runner(name: str) -> Callable:
        def make(threads: int) -> Callable:
            session = ort_session(bundle_dir / name, threads)
            input_name = session.get_inputs()[0].name
            return lambda x: session.run(None, {input_name: x})
        return make

    def cv_runner(threads: int) -> Callable:
        net = cv2.dnn.readNetFromONNX(str(bundle_dir / FP32_NAME))
        cv2.setNumThreads(threads)  # once, outside the timed calls; bench_bundle restores it

        def run(x: np.ndarray) -> None:
            net.setInput(x)
            net.forward()
        return run

    runners = {"pytorch_bn": torch_runner(model), "pytorch_folded": torch_runner(folded),
               "onnxruntime_fp32": ort_runner(FP32_NAME), "opencv_dnn_fp32": cv_runner}
    if INT8_NAME in manifest["files"]:
        runners["onnxruntime_int8"] = ort_runner(INT8_NAME)
    return {k: runners[k] for k in RUNTIMES if k in runners}, weights


def bench_bundle(
    path: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    batches: tuple[int, ...] = (1, 32),
    threads: tuple[int, ...] | None = None,
    seconds: float = 1.0,
    runtimes: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Benchmark every runtime x threads x batch; returns a JSON-ready dict with ``rows``."""
    unknown = set(runtimes or ()) - set(RUNTIMES)
    if unknown:
        raise ValueError(f"unknown runtimes {sorted(unknown)}; choose from {list(RUNTIMES)}")
    bundle = load_bundle(path, int8=False)  # checks hashes before anything is timed
    manifest = bundle.manifest
    threads = threads or tuple(sorted({1, all_threads()}))
    runners, weights = _runners(bundle.path, manifest, checkpoint)
    if runtimes:
        runners = {k: v for k, v in runners.items() if k in runtimes}
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *bundle.input_shape)).astype(np.float32) for b in batches}
    macs = int(manifest["model"]["macs"])
    gemm_seconds = min(1.0, max(0.1, seconds))
    rate_before = matmul_rate(seconds=gemm_seconds)
    old_threads = torch.get_num_threads(), cv2.getNumThreads()
    rows: list[BenchRow] = []
    configs = [(r, t, b) for r in runners for t in threads for b in batches]
    try:
        for name, t, b in tqdm(configs, desc="bench", unit="config", disable=None):
            run = runners[name](t)
            times = np.asarray(_time_calls(lambda: run(inputs[b]), seconds))
            p50 = float(np.percentile(times, 50))
            rows.append(BenchRow(name, t, b, b / p50, b * len(times) / float(times.sum()), b / float(times.min()),
                                 1e3 * p50, 1e3 * float(np.percentile(times, 99)), len(times)))
    finally:
        torch.set_num_threads(old_threads[0])
        cv2.setNumThreads(old_threads[1])
    rate = max(rate_before, matmul_rate(seconds=gemm_seconds))  # the higher rate gives the stricter limit
    limit = rate / (2.0 * macs)
    for row in rows:
        row.limit_ratio = row.best_images_per_s / limit
    return {
        "bundle": str(bundle.path),
        "model": manifest["model"],
        "input_shape": list(bundle.input_shape),
        "weights": weights,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": all_threads()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "matmul_gflops_1thread": rate / 1e9,
        "macs_per_image": macs,
        "limit_images_per_s": limit,
        "seconds_per_config": seconds,
        "rows": [asdict(r) for r in rows],
    }


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of a ``bench_bundle`` result."""
    lines = [
        f"one-thread fp32 matmul {result['matmul_gflops_1thread']:.1f} GFLOP/s; "
        f"{result['macs_per_image'] / 1e6:.1f} M MACs/image -> limit {result['limit_images_per_s']:.0f} images/s per core",
        "",
        "| runtime | threads | batch | images/s (median call) | images/s (mean) | images/s (best call) | p50 ms | p99 ms | best / limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['runtime']} | {r['threads']} | {r['batch']} | {r['images_per_s']:.0f} | {r['mean_images_per_s']:.0f} | "
                     f"{r['best_images_per_s']:.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {100 * r['limit_ratio']:.0f}% |")
    return "\n".join(lines)
