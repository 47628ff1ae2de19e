"""A short real training run on synthetic leaves: it learns, its files describe it, it resumes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from leafscout.cli import main
from leafscout.training.checkpoint import checkpoint_preprocess, file_sha256, load_checkpoint, read_checkpoint
from leafscout.training.data import read_image
from leafscout.training.evaluate import evaluate_checkpoint
from leafscout.training.split import load_split
from leafscout.training.synthetic import SYNTHETIC_CLASSES, generate_dataset
from leafscout.training.train import LRSchedule, TrainConfig, TrainError, _class_weights, resolve_precision, train

EPOCH_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_top1", "val_macro_f1", "seconds", "images_per_s"}


def _config(data: Path, out: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(data=data, out=out, model="lenet_bn", epochs=12, batch_size=16, threads=1,
                cache_dir=cache, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def leaves(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("leaves") / "data", per_class=80, size=64, seed=1)


@pytest.fixture(scope="module")
def trained(leaves: Path, tmp_path_factory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("run")
    seen: list[dict] = []
    run = train(_config(leaves, tmp / "run", tmp / "cache", on_epoch_end=seen.append))
    return run, seen


def test_short_run_beats_chance_on_held_out_leaves(trained) -> None:
    run, _ = trained
    metrics = evaluate_checkpoint(run / "best.pt", split="test")
    chance = 1 / len(SYNTHETIC_CLASSES)
    assert metrics["n"] == len(load_split(run / "split.json").samples("test")) >= 40
    assert metrics["top1"] >= chance + 0.25, metrics["top1"]
    assert metrics["macro_f1"] >= 0.4


def test_run_dir_holds_everything_described(trained) -> None:
    run, seen = trained
    for name in ("split.json", "last.pt", "best.pt", "metrics.json", "curves.png", "confusion.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert all(EPOCH_KEYS <= set(h) for h in history)
    assert [h["epoch"] for h in seen] == [h["epoch"] for h in history]  # on_epoch_end callback
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["lr"] < max(h["lr"] for h in history)  # schedule decays

    best = read_checkpoint(run / "best.pt")
    last = read_checkpoint(run / "last.pt")
    assert best["split_manifest_sha256"] == file_sha256(run / "split.json")
    assert best["model"] == {"name": "lenet_bn", "args": {"num_classes": 4}}
    assert best["classes"] == sorted(SYNTHETIC_CLASSES)
    assert best["preprocess"]["size"] == [32, 32]
    assert best["optimizer"] is None and last["optimizer"] is not None and last["scheduler"] is not None
    assert last["epoch"] == 12
    assert best["metrics"]["val_top1"] == max(h["val_top1"] for h in history)


def test_checkpoint_round_trip_predicts_identically(trained) -> None:
    run, _ = trained
    model, ckpt = load_checkpoint(run / "best.pt")
    spec = checkpoint_preprocess(ckpt)
    sample = load_split(run / "split.json").samples("test")[0]
    x = torch.from_numpy(spec.apply(read_image(sample.path)))[None]
    again, _ = load_checkpoint(run / "best.pt")
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))
    # Strict loading: a checkpoint whose weights do not fit its model is refused.
    bad = dict(ckpt, state_dict={k: v for k, v in ckpt["state_dict"].items() if "classifier" not in k})
    torch.save(bad, run / "broken.pt")
    from leafscout.training.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(run / "broken.pt")


class _Stop(Exception):
    pass


def test_resume_continues_exactly(leaves: Path, tmp_path: Path) -> None:
    straight = train(_config(leaves, tmp_path / "a", tmp_path / "cache", epochs=3))

    def stop_after_first(record: dict) -> None:
        if record["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(_config(leaves, tmp_path / "b", tmp_path / "cache", epochs=3, on_epoch_end=stop_after_first))
    assert read_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = train(_config(leaves, tmp_path / "b", tmp_path / "cache", epochs=3, resume=True))
    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    assert b["epoch"] == 3
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k].float(), b["state_dict"][k].float(), atol=1e-5), k
    hist = json.loads((resumed / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3]


def test_resume_needs_a_previous_run(leaves: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="last.pt does not exist"):
        train(_config(leaves, tmp_path / "none", tmp_path / "cache", resume=True))


def test_fine_tune_starts_from_the_weights_on_their_split(trained, tmp_path: Path) -> None:
    """--init-from: the source's weights (a vanishing learning rate keeps them) and its exact split."""
    run, _ = trained
    tuned = train(_config(None, tmp_path / "tuned", tmp_path / "cache", epochs=1, lr=1e-12,
                          init_from=run / "best.pt"))
    src, new = read_checkpoint(run / "best.pt"), read_checkpoint(tuned / "last.pt")
    assert load_split(tuned / "split.json").sha256 == load_split(run / "split.json").sha256
    assert new["split_manifest_sha256"] == src["split_manifest_sha256"]
    weights = [k for k in src["state_dict"] if k.endswith("weight") and src["state_dict"][k].ndim > 1]
    assert weights
    for k in weights:  # conv and linear weights: untouched by the tiny step (BN running stats do move)
        assert torch.allclose(src["state_dict"][k].float(), new["state_dict"][k].float(), atol=1e-6), k
    assert new["train_config"]["init_from"] == str(run / "best.pt")


def test_fine_tune_refuses_what_would_leak_or_mismatch(trained, tmp_path: Path) -> None:
    run, _ = trained
    with pytest.raises(TrainError, match="does not exist"):
        train(_config(None, tmp_path / "a", tmp_path / "cache", init_from=tmp_path / "nope.pt"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "best.pt").write_bytes((run / "best.pt").read_bytes())
    with pytest.raises(TrainError, match="no split.json beside"):
        train(_config(None, tmp_path / "b", tmp_path / "cache", init_from=lonely / "best.pt"))
    with pytest.raises(TrainError, match="holds 'lenet_bn', not --model 'leafnet_bn'"):
        train(_config(None, tmp_path / "c", tmp_path / "cache", model="leafnet_bn", init_from=run / "best.pt"))
    with pytest.raises(TrainError, match="exclude each other"):
        train(_config(None, tmp_path / "d", tmp_path / "cache", resume=True, init_from=run / "best.pt"))


@pytest.mark.parametrize("field, value, message", [
    ("model", "nope", "leafnet_bn"),
    ("optimizer", "lion", "adamw"),
    ("schedule", "step", "onecycle"),
    ("epochs", 0, "epochs"),
    ("precision", "fp16", "bf16"),
    ("augment_preset", "heavy", "light"),
    ("background_p", 1.5, "background_p"),
    ("jpeg_p", -0.1, "jpeg_p"),
    ("robot_paint_p", 1.2, "robot_paint_p"),
    ("augment_set", {"blurp": "0.2"}, "unknown augmentation setting .blurp.; known: background_p, blur_p"),
    ("augment_set", {"crop_scale": "0.5"}, "crop_scale=.0.5.: expected 2 comma-separated floats"),
])
def test_bad_config_is_named(tmp_path: Path, field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(_config(tmp_path, tmp_path / "x", tmp_path / "c", **{field: value}))


def test_bf16_light_augmentation_run_learns_and_keeps_fp32_weights(leaves: Path, tmp_path: Path) -> None:
    """bf16 autocast only changes the arithmetic of the forward pass: checkpoints stay fp32."""
    run = train(_config(leaves, tmp_path / "bf16", tmp_path / "cache", precision="bf16", augment_preset="light",
                        background_p=0.5))
    ckpt = read_checkpoint(run / "best.pt")
    assert {v.dtype for v in ckpt["state_dict"].values() if v.is_floating_point()} == {torch.float32}
    assert ckpt["train_config"]["precision"] == "bf16"
    assert ckpt["train_config"]["augment_preset"] == "light" and ckpt["precision_used"] == "bf16"
    m = evaluate_checkpoint(run / "best.pt", split="test")
    assert m["top1"] >= 1 / len(SYNTHETIC_CLASSES) + 0.25, m["top1"]


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="torch.compile needs a C++ compiler")
def test_compiled_run_learns_and_saves_plain_weights(leaves: Path, tmp_path: Path) -> None:
    """torch.compile wraps only the training step: checkpoints hold the plain module's keys."""
    from leafscout.vision import create_model

    run = train(_config(leaves, tmp_path / "compiled", tmp_path / "cache", precision="bf16", compile=True, epochs=6))
    ckpt = read_checkpoint(run / "best.pt")
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["args"])
    model.load_state_dict(ckpt["state_dict"], strict=True)  # no "_orig_mod." prefixes
    assert ckpt["train_config"]["compile"] is True
    m = evaluate_checkpoint(run / "best.pt", split="test")
    assert m["top1"] >= 1 / len(SYNTHETIC_CLASSES) + 0.2, m["top1"]


def test_auto_precision_is_bf16_only_with_native_support() -> None:
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: honoured even if emulated


def test_class_weights_favour_small_classes_by_the_chosen_power() -> None:
    labels = np.array([0] * 400 + [1] * 100 + [3] * 25)  # class 2 absent
    full, sqrt, none = (_class_weights(labels, 4, b).numpy() for b in ("loss", "sqrt", "none"))
    assert full[2] == sqrt[2] == 0.0 and np.allclose(none, 1.0)
    for w in (full, sqrt):
        assert w[[0, 1, 3]].mean() == pytest.approx(1.0)  # mean 1 over present classes
    assert full[3] / full[0] == pytest.approx(16.0) and sqrt[3] / sqrt[0] == pytest.approx(4.0)


def test_lr_schedule_shapes_and_shortening() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, 1.0, 100, "onecycle")
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(0.05) and max(lrs) == pytest.approx(1.0, abs=1e-3)
    assert int(np.argmax(lrs)) == 25 and lrs[-1] < 0.01
    sched = LRSchedule(opt, 1.0, 100, "cosine")
    for _ in range(40):
        sched.step()
    sched.set_total(50)  # a time budget cuts the run short: the decay speeds up
    for _ in range(9):
        sched.step()
    assert opt.param_groups[0]["lr"] < 0.01


def test_cli_trains_with_synthetic_fallback_and_time_budget(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LEAFSCOUT_DATA", "synthetic")
    monkeypatch.setenv("LEAFSCOUT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cli run"
    rc = main(["train", "--model", "lenet_bn", "--epochs", "50", "--batch-size", "32", "--out", str(out),
               "--time-budget", "0.5", "--no-progress", "--threads", "1", "--augment-set", "blur_p=0.3"])
    assert rc == 0
    assert (out / "synthetic").is_dir() and (out / "best.pt").is_file()
    history = json.loads((out / "metrics.json").read_text())
    assert 1 <= len(history) < 50  # the budget, not --epochs, ended the run
    assert read_checkpoint(out / "best.pt")["train_config"]["augment_set"] == {"blur_p": "0.3"}
    assert main(["train", "--model", "nope", "--out", str(tmp_path / "y")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["train", "--augment-set", "blurp=0.2", "--out", str(tmp_path / "z")]) == 2
    assert "unknown augmentation setting 'blurp'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--augment-set", "blur_p", "--out", str(tmp_path / "z")])
    assert e.value.code == 2 and "expected NAME=VALUE" in capsys.readouterr().err
