"""Metrics against hand-worked examples, and `leafscout eval` on a real (tiny) checkpoint."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leafscout.cli import main
from leafscout.training.evaluate import EvaluationError, evaluate_checkpoint
from leafscout.training.metrics import classification_metrics, expected_calibration_error
from leafscout.training.split import load_split
from leafscout.training.synthetic import generate_dataset
from leafscout.training.train import TrainConfig, train


def _onehot(pred: list[int], k: int, conf: float = 1.0) -> np.ndarray:
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_perfect_predictions() -> None:
    m = classification_metrics(np.array([0, 0, 1, 2]), _onehot([0, 0, 1, 2], 3), ["a", "b", "c"])
    assert m["n"] == 4 and m["top1"] == 1.0 and m["macro_f1"] == 1.0 and m["ece"] == pytest.approx(0.0)
    assert m["confusion"] == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_hand_worked_confusion_precision_recall_f1() -> None:
    y = np.array([0, 0, 1, 1, 2])
    m = classification_metrics(y, _onehot([0, 1, 1, 1, 0], 3), ["a", "b", "c"])
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows = true class
    assert m["top1"] == pytest.approx(3 / 5)
    pc = m["per_class"]
    assert pc["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert pc["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert pc["c"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_ignores_classes_absent_from_the_split() -> None:
    m = classification_metrics(np.array([0, 1]), _onehot([0, 1], 3), ["a", "b", "c"])
    assert m["macro_f1"] == 1.0 and m["per_class"]["c"]["support"] == 0


def test_ece_hand_worked() -> None:
    # Always 80% confident, right half the time: |0.5 - 0.8| = 0.3.
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, _onehot([0, 0, 0, 0], 2, conf=0.8)) == pytest.approx(0.3)
    # Two bins: 0.9-confident and right; 0.6-confident and wrong -> (0.1 + 0.6) / 2.
    probs = np.array([[0.9, 0.1], [0.4, 0.6]])
    assert expected_calibration_error(np.array([0, 0]), probs, n_bins=10) == pytest.approx(0.35)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        classification_metrics(np.array([0, 1, 2]), np.ones((2, 3)) / 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        classification_metrics(np.array([0, 5]), np.ones((2, 2)) / 2, ["a", "b"])
    with pytest.raises(ValueError, match="3 class names"):
        classification_metrics(np.array([0, 1]), np.ones((2, 2)) / 2, ["a", "b", "c"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("evalrun")
    data = generate_dataset(tmp / "data", per_class=20, size=48, seed=4)
    return train(TrainConfig(data=data, out=tmp / "run", model="lenet", epochs=2, batch_size=16, threads=1,
                             cache_dir=tmp / "cache", progress=False))


def test_evaluate_checkpoint_on_its_test_split(run: Path) -> None:
    m = evaluate_checkpoint(run / "best.pt")
    test = load_split(run / "split.json").samples("test")
    assert m["n"] == len(test) and m["split"] == "test"
    assert m["classes"] == load_split(run / "split.json").classes
    assert sum(map(sum, m["confusion"])) == len(test)
    assert 0.0 <= m["ece"] <= 1.0 and set(m["per_class"]) == set(m["classes"])
    val = evaluate_checkpoint(run / "best.pt", split="val")
    assert val["n"] == len(load_split(run / "split.json").samples("val"))


def test_eval_cli_json_and_text(run: Path, capsys) -> None:
    assert main(["eval", str(run / "best.pt"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"top1", "macro_f1", "ece", "per_class", "confusion", "n"} <= set(m)
    assert main(["eval", str(run / "last.pt"), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "Leaf___rust" in out


def test_eval_on_a_moved_folder_and_without_a_manifest(run: Path, tmp_path: Path) -> None:
    data = load_split(run / "split.json").root
    moved = shutil.copytree(data, tmp_path / "moved data")
    m = evaluate_checkpoint(run / "best.pt", data=moved)  # split.json re-pointed by --data
    assert m["n"] == len(load_split(run / "split.json").samples("test"))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(run / "best.pt", lone / "model.pt")
    with pytest.raises(EvaluationError, match="--data"):
        evaluate_checkpoint(lone / "model.pt")
    everything = evaluate_checkpoint(lone / "model.pt", data=moved, split="all")
    assert everything["n"] == sum(1 for p in moved.rglob("*.jpg"))
    (moved / "Leaf___mystery").mkdir()
    shutil.copy(next(moved.rglob("*.jpg")), moved / "Leaf___mystery" / "x.jpg")
    with pytest.raises(EvaluationError, match="Leaf___mystery"):
        evaluate_checkpoint(lone / "model.pt", data=moved, split="all")


def test_eval_refuses_a_foreign_split_manifest(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(run / "best.pt", other / "best.pt")
    doc = json.loads((run / "split.json").read_text())
    doc["seed"] = 99  # a different split than the one trained on
    (other / "split.json").write_text(json.dumps(doc))
    with pytest.raises(EvaluationError, match="not the split"):
        evaluate_checkpoint(other / "best.pt")
    assert main(["eval", str(other / "best.pt")]) == 2
