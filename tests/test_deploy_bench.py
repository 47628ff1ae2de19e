"""`leafscout bench`: every runtime timed side by side, JSON written, ratios against the compute limit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from leafscout.deploy.bench import RUNTIMES, bench_bundle, matmul_rate
from leafscout.deploy.testing import make_tiny_bundle
from leafscout.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"))


def test_matmul_rate_is_plausible() -> None:
    rate = matmul_rate(n=256, seconds=0.05)
    assert 1e8 < rate < 1e13  # between a very slow core and far more than one core can do


def test_bench_covers_every_runtime_and_writes_json(bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    rc = main(["bench", str(bundle), "--seconds", "0.02", "--batch", "1", "4", "--threads", "1",
               "--checkpoint", str(bundle.parent / "run" / "best.pt"), "--json", str(out), "--markdown", str(md)])
    assert rc == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["runtime"] for r in rows} == set(RUNTIMES)
    assert {(r["batch"], r["threads"]) for r in rows} == {(1, 1), (4, 1)}
    assert len(rows) == len(RUNTIMES) * 2
    for r in rows:
        assert r["images_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] and r["calls"] >= 5
        assert r["best_images_per_s"] >= r["images_per_s"] and r["best_images_per_s"] >= r["mean_images_per_s"]
        assert r["limit_ratio"] == pytest.approx(r["best_images_per_s"] / result["limit_images_per_s"])
    assert result["limit_images_per_s"] == pytest.approx(
        result["matmul_gflops_1thread"] * 1e9 / (2 * result["macs_per_image"]))
    assert "weights from" in result["weights"]  # the source checkpoint was found and used
    table = capsys.readouterr().out
    assert "| onnxruntime_int8 | 1 | 4 |" in table and md.read_text().count("\n") == len(rows) + 4


def test_bench_rejects_unknown_runtime(bundle: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown runtimes \['tensorflow'\]; choose from"):
        bench_bundle(bundle, runtimes=("tensorflow",), seconds=0.01)
