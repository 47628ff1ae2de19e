"""DistributedDataParallel on CPU: torchrun with 2 gloo processes against a 1-process run.

``lenet`` has no BatchNorm, so with augmentation off and the same global batch the
2-process run must follow the 1-process run step for step (up to float summation order).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leafscout.training.checkpoint import read_checkpoint
from leafscout.training.synthetic import generate_dataset
from leafscout.vision import create_model

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data: Path, out: Path) -> list[str]:
    return ["-m", "leafscout.cli", "train", "--data", str(data), "--out", str(out), "--model", "lenet",
            "--epochs", "2", "--batch-size", "16", "--no-augment", "--threads", "1", "--no-progress",
            "--dump-replicas"]


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "data", per_class=24, size=40, seed=3)
    env = {**os.environ, "LEAFSCOUT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    _run([*torchrun, *_train_args(data, tmp_path / "ddp")], env)
    _run([sys.executable, *_train_args(data, tmp_path / "single")], env)

    r0 = torch.load(tmp_path / "ddp" / "replicas" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp" / "replicas" / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:  # replicas hold identical weights: same averaged gradient, same update
        assert torch.equal(r0[k], r1[k]), k

    ddp = read_checkpoint(tmp_path / "ddp" / "last.pt")
    single = read_checkpoint(tmp_path / "single" / "last.pt")
    assert ddp["epoch"] == single["epoch"] == 2
    assert ddp["split_manifest_sha256"] == single["split_manifest_sha256"]
    max_diff = max((ddp["state_dict"][k] - single["state_dict"][k]).abs().max().item() for k in r0)
    assert max_diff <= 1e-4, max_diff
    assert ddp["metrics"]["train_loss"] == pytest.approx(single["metrics"]["train_loss"], rel=1e-4)
    assert ddp["metrics"]["val_top1"] == single["metrics"]["val_top1"]
    # Not vacuous: training really moved the weights, far beyond the tolerance.
    torch.manual_seed(0)
    init = create_model("lenet", num_classes=4).state_dict()
    assert max((init[k] - single["state_dict"][k]).abs().max().item() for k in init) > 100 * 1e-4
