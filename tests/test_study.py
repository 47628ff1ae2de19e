"""The BN study: a real quick sweep on synthetic leaves (with a learning rate that must
diverge), then the summary logic and the argument checks on their own."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from leafscout.training.study import ARMS, RunResult, StudyConfig, StudyError, summarize
from leafscout.training.study_cli import main

# A diverged model's NaN probabilities make numpy warn inside the ECE binning; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

QUICK_LRS = (0.05, 1e4)  # 1e4 blows up every arm within an epoch


@pytest.fixture(scope="module")
def synthetic_leaves(tmp_path_factory) -> Path:
    from leafscout.training.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("leaves") / "synthetic"
    generate_dataset(root, per_class=24, seed=0)
    return root


@pytest.fixture(scope="module")
def quick_study(synthetic_leaves: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEAFSCOUT_CACHE", str(tmp_path_factory.mktemp("cache")))  # not the user's ~/.cache
        rc = main(["study", "bn", "--quick", "--data", str(synthetic_leaves), "--out", str(out),
                   "--lrs", ",".join(map(str, QUICK_LRS)), "--no-progress"])
    assert rc == 0
    return out


def test_quick_study_writes_every_output(quick_study: Path) -> None:
    doc = json.loads((quick_study / "study.json").read_text())
    assert doc["format"] == "leafscout-bn-study/1"
    pairs = [(r["arm"], r["lr"]) for r in doc["runs"]]
    assert pairs == [(arm, lr) for arm in ARMS for lr in QUICK_LRS]
    png = (quick_study / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    table = (quick_study / "study.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == len(ARMS) * len(QUICK_LRS) + len(ARMS)  # run rows + per-arm verdict rows
    assert "epochs to target" in table and "wall time to target" in table


def test_every_run_sees_the_same_split(quick_study: Path) -> None:
    manifests = {p.parent.name: p.read_bytes() for p in (quick_study / "runs").glob("*/split.json")}
    assert len(manifests) == len(ARMS) * len(QUICK_LRS)
    assert len(set(manifests.values())) == 1, "runs were trained on different splits"


def test_diverged_runs_are_reported_not_crashed(quick_study: Path) -> None:
    doc = json.loads((quick_study / "study.json").read_text())
    table = (quick_study / "study.md").read_text()
    huge = [r for r in doc["runs"] if r["lr"] == QUICK_LRS[1]]
    assert huge and all(r["diverged"] for r in huge)
    for r in huge:
        # Stopped after the first NaN epoch instead of training on garbage.
        assert r["epochs_run"] == 1
        assert r["final_val_top1"] is None and r["best_val_top1"] is None and r["epochs_to_target"] is None
    assert table.count("diverged (NaN)") == len(huge)
    sane = [r for r in doc["runs"] if r["lr"] == QUICK_LRS[0]]
    assert not any(r["diverged"] for r in sane)
    assert all(r["epochs_run"] == 2 and 0.0 <= r["best_val_top1"] <= 1.0 for r in sane)


def test_epochs_and_time_to_target_follow_the_history(quick_study: Path) -> None:
    doc = json.loads((quick_study / "study.json").read_text())
    target = doc["summary"]["target"]
    for r in doc["runs"]:
        hist = [h for h in r["history"] if math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])]
        first = next((h["epoch"] for h in hist if h["val_top1"] >= target), None)
        assert r["epochs_to_target"] == first
        if first is not None:
            want = sum(h["seconds"] for h in r["history"] if h["epoch"] <= first)
            assert r["seconds_to_target"] == pytest.approx(want)


def _run(arm: str, lr: float, accs: list[float], diverged: bool = False) -> RunResult:
    history = [{"epoch": i + 1, "val_top1": a, "train_loss": 1.0, "val_loss": 1.0, "seconds": 2.0}
               for i, a in enumerate(accs)]
    return RunResult(arm, lr, Path("."), history, diverged)


def test_summary_picks_each_arms_fastest_lr_and_judges_the_claim() -> None:
    runs = [
        _run("lenet", 0.01, [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9]),  # target 0.8 at epoch 6
        _run("lenet", 0.1, [0.3, 0.5, 0.6, 0.7, 0.75, 0.78, 0.8, 0.81]),  # epoch 7
        _run("lenet", 1.0, [0.1, float("nan")], diverged=True),
        _run("lenet_bn", 0.1, [0.5, 0.7, 0.8, 0.9]),  # epoch 3 <= 6 / 2: holds
        _run("lenet_bn", 1.0, [0.6, 0.75, 0.79, 0.95]),
        _run("lenet_bn_after", 0.1, [0.5, 0.7, 0.75, 0.8]),  # epoch 4 > 3: does not hold
    ]
    s = summarize(runs, target=0.8)
    base = s["per_arm"]["lenet"]
    assert (base["fastest_lr"], base["epochs_to_target"], base["seconds_to_target"]) == (0.01, 6, 12.0)
    assert base["diverged_lrs"] == [1.0] and base["best_val_top1"] == 0.9
    assert s["per_arm"]["lenet_bn"]["fastest_lr"] == 0.1
    assert s["per_arm"]["lenet_bn"]["best_val_lr"] == 1.0
    assert s["vs_baseline"]["lenet_bn"] == {"speedup_epochs": 2.0, "claim_half_the_epochs": "holds"}
    assert s["vs_baseline"]["lenet_bn_after"]["claim_half_the_epochs"] == "does not hold"
    assert s["per_arm"]["lenet_bn"]["epochs_to_level"]["0.5"] == 1


def test_summary_when_the_baseline_never_reaches_the_target() -> None:
    s = summarize([_run("lenet", 0.1, [0.3, 0.4]), _run("lenet_bn", 0.1, [0.9])], target=0.8)
    assert s["per_arm"]["lenet"]["epochs_to_target"] is None
    assert "never" in s["vs_baseline"]["lenet_bn"]["claim_half_the_epochs"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arms": ("lenet", "resnet9000")}, r"unknown model 'resnet9000'; choose one of: .*lenet_bn"),
        ({"lrs": (0.1, -1.0)}, r"lrs must be positive numbers, got \[0.1, -1.0\]"),
        ({"target": 1.5}, r"target must be a validation accuracy in \(0, 1\], got 1.5"),
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ],
)
def test_bad_study_configs_name_the_problem(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises((StudyError, ValueError), match=match):
        StudyConfig(out=tmp_path, **kwargs).validate()


def test_cli_rejects_bad_learning_rates(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["study", "bn", "--out", str(tmp_path), "--lrs", "0.1,fast"])
    assert e.value.code == 2
    assert "comma-separated learning rates like 0.01,0.1,1.0, got '0.1,fast'" in capsys.readouterr().err


def test_report_only_reanalyses_without_training(quick_study: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(quick_study, copy)
    before = {p.name: p.stat().st_mtime_ns for p in (copy / "runs").glob("*/metrics.json")}
    assert main(["study", "bn", "--out", str(copy), "--report-only", "--target", "0.01"]) == 0
    doc = json.loads((copy / "study.json").read_text())
    assert doc["summary"]["target"] == 0.01
    # Every finite run reaches 1% in its first epoch; the diverged ones still never do.
    assert all(r["epochs_to_target"] == (None if r["diverged"] else 1) for r in doc["runs"])
    assert "validation top-1 >= 1%" in (copy / "study.md").read_text()
    assert before == {p.name: p.stat().st_mtime_ns for p in (copy / "runs").glob("*/metrics.json")}


def test_report_only_without_a_study_says_so(tmp_path: Path, capsys) -> None:
    assert main(["study", "bn", "--out", str(tmp_path), "--report-only"]) == 2
    assert f"cannot read {tmp_path / 'study.json'}" in capsys.readouterr().err


def test_a_grown_study_trains_only_the_new_runs(quick_study: Path, synthetic_leaves: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(quick_study, copy)
    old = {p.parent.name: p.stat().st_mtime_ns for p in (copy / "runs").glob("*/metrics.json")}
    lrs = (*QUICK_LRS, 0.2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEAFSCOUT_CACHE", str(tmp_path / "cache"))
        assert main(["study", "bn", "--quick", "--data", str(synthetic_leaves), "--out", str(copy),
                     "--lrs", ",".join(map(str, lrs)), "--no-progress"]) == 0
    new = {p.parent.name: p.stat().st_mtime_ns for p in (copy / "runs").glob("*/metrics.json")}
    assert {k: new[k] for k in old} == old, "finished runs were trained again"
    assert set(new) - set(old) == {f"{arm}_lr0.2" for arm in ARMS}
    doc = json.loads((copy / "study.json").read_text())
    assert [(r["arm"], r["lr"]) for r in doc["runs"]] == [(arm, lr) for arm in ARMS for lr in lrs]
    assert doc["train_seconds_total"] > doc["wall_seconds"] * 0.5
