"""benchmarks/resolution_study.py: top-1 per source at other input sizes, on a tiny run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from leafscout.deploy.testing import make_tiny_run
from leafscout.training.evaluate import evaluate_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import resolution_study  # noqa: E402


def test_at_the_trained_size_it_matches_eval_and_other_sizes_are_scored(tmp_path: Path) -> None:
    ckpt = make_tiny_run(tmp_path / "run", model_name="leafnet_bn", per_class=20, steps=30, size=32)
    rows = resolution_study.study(ckpt, [32, 48], "val")
    assert [(r["trained_at"], r["size"], r["split"]) for r in rows] == [(32, 32, "val"), (32, 48, "val")]
    (source,) = [k for k in rows[0] if k not in ("checkpoint", "trained_at", "size", "split")]
    assert rows[0][source] == pytest.approx(100 * evaluate_checkpoint(ckpt, split="val")["top1"], abs=0.006)
    assert all(0.0 <= r[source] <= 100.0 for r in rows)


def test_the_test_part_cannot_be_chosen(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        resolution_study.main([str(tmp_path / "best.pt"), "--split", "test"])
    assert "invalid choice: 'test'" in capsys.readouterr().err
