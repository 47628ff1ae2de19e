"""Temperature scaling and the abstain threshold: math on known cases, then a real checkpoint end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from leafscout.training.calibration import (
    CalibrationError,
    accepted_precision,
    choose_abstain_threshold,
    fit_temperature,
    plot_reliability,
    reliability_bins,
    softmax,
)


def _calibrated_sample(n: int = 4000, c: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(n, c))
    p = softmax(logits)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_known_scale(scale: float) -> None:
    logits, labels = _calibrated_sample()
    # Logits multiplied by `scale` need T = scale to be calibrated again.
    t = fit_temperature(scale * logits, labels)
    assert t == pytest.approx(scale, rel=0.12)


def test_temperature_scaling_lowers_ece_of_overconfident_logits() -> None:
    logits, labels = _calibrated_sample(seed=1)
    over = 4.0 * logits
    t = fit_temperature(over, labels)
    before = reliability_bins(softmax(over), labels).ece
    after = reliability_bins(softmax(over, t), labels).ece
    assert before > 0.15
    assert after < 0.03
    # Temperature never changes a prediction.
    assert np.array_equal(softmax(over).argmax(1), softmax(over, t).argmax(1))


def test_ece_of_perfectly_confident_correct_predictions_is_zero() -> None:
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[labels]
    assert reliability_bins(probs, labels).ece == pytest.approx(0.0)
    wrong = np.eye(3)[(labels + 1) % 3]
    assert reliability_bins(wrong, labels).ece == pytest.approx(1.0)


def test_plot_ece_agrees_with_the_reported_metric() -> None:
    from leafscout.training.metrics import expected_calibration_error

    logits, labels = _calibrated_sample(n=1000, seed=3)
    probs = softmax(2.5 * logits)
    assert reliability_bins(probs, labels).ece == pytest.approx(expected_calibration_error(labels, probs), abs=1e-9)


def test_abstain_threshold_is_smallest_that_meets_target() -> None:
    # Sorted by confidence: right, right, right, wrong, right, wrong.
    conf = np.array([0.99, 0.95, 0.90, 0.85, 0.80, 0.60])
    correct = np.array([1, 1, 1, 0, 1, 0], bool)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(correct, 0, 1)
    th = choose_abstain_threshold(probs, labels, target_precision=0.8)
    # Accepting >= 0.80 keeps 5 with 4 right (0.8); accepting all gives 4/6 < 0.8.
    assert th.threshold == pytest.approx(0.80)
    assert th.precision == pytest.approx(0.8)
    assert th.coverage == pytest.approx(5 / 6)
    strict = choose_abstain_threshold(probs, labels, target_precision=1.0)
    assert strict.threshold == pytest.approx(0.90)
    assert strict.coverage == pytest.approx(0.5)
    assert accepted_precision(probs, labels, strict.threshold) == (1.0, 0.5)


def test_abstain_threshold_respects_ties() -> None:
    # Two predictions share confidence 0.9, one right and one wrong: no cut can split them.
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.9, 0.1]])
    labels = np.array([0, 0, 1])
    th = choose_abstain_threshold(probs, labels, target_precision=0.9)
    assert th.threshold == pytest.approx(0.95)
    assert th.coverage == pytest.approx(1 / 3)


def test_unreachable_target_abstains_below_one() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    labels = np.array([1, 1])
    th = choose_abstain_threshold(probs, labels, target_precision=0.98)
    assert th.threshold == 1.0 and not th.target_met
    assert th.coverage == 0.0 and th.precision is None
    assert accepted_precision(probs, labels, th.threshold) == (None, 0.0)


@pytest.mark.parametrize(
    ("probs", "labels", "target", "match"),
    [
        (np.ones((3, 2)) / 2, np.array([0, 1]), 0.9, "labels must have shape"),
        (np.ones((2, 2)) / 2, np.array([0, 2]), 0.9, r"labels must be integers in \[0, 1\]"),
        (np.ones((2, 2)) / 2, np.array([0, 1]), 1.5, r"target_precision must be in \(0, 1\], got 1.5"),
        (np.full((2, 2), np.nan), np.array([0, 1]), 0.9, "NaN"),
        (np.ones(4), np.array([0, 1, 0, 1]), 0.9, r"scores must be an N x C array \(C >= 2 classes\), got shape \(4,\)"),
    ],
)
def test_bad_inputs_name_the_problem(probs, labels, target, match) -> None:
    with pytest.raises(CalibrationError, match=match):
        choose_abstain_threshold(probs, labels, target)


def test_reliability_plot_is_written(tmp_path) -> None:
    logits, labels = _calibrated_sample(n=500)
    out = plot_reliability(
        [("before", reliability_bins(softmax(3 * logits), labels)),
         ("after", reliability_bins(softmax(logits), labels))],
        tmp_path / "sub" / "reliability.png",
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
    assert math.isfinite(fit_temperature(logits, labels))


# -- end to end: a real checkpoint trained on synthetic leaves ------------------------------
TARGET = 0.98


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from leafscout.training.synthetic import generate_dataset
    from leafscout.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("calib")
    generate_dataset(root / "leaves", per_class=200, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEAFSCOUT_CACHE", str(root / "cache"))  # not the user's ~/.cache
        return train(TrainConfig(
            data=root / "leaves", model="lenet_bn", epochs=10, out=root / "run", batch_size=16, lr=0.05,
            optimizer="sgd", schedule="cosine", weight_decay=5e-4, label_smoothing=0.0, augment=False,
            progress=False, seed=0,
        ))


@pytest.fixture(scope="module")
def calibrated(trained_run: Path) -> tuple[Path, dict, dict]:
    """(checkpoint, checkpoint dict before, calibration result) with best.pt calibrated in place."""
    from leafscout.training.calibration import calibrate_checkpoint
    from leafscout.training.checkpoint import read_checkpoint

    ckpt_path = trained_run / "best.pt"
    before = read_checkpoint(ckpt_path)
    result = calibrate_checkpoint(ckpt_path, target_precision=TARGET)
    return ckpt_path, before, result


def test_calibration_is_written_into_the_checkpoint_and_nothing_else_changes(calibrated) -> None:
    import torch

    from leafscout.training.checkpoint import load_checkpoint, read_checkpoint

    ckpt_path, before, result = calibrated
    after = read_checkpoint(ckpt_path)
    assert before.get("calibration") is None
    assert after["calibration"] == result
    assert set(after) == set(before)
    for key in before:
        if key not in ("calibration", "state_dict"):
            assert after[key] == before[key], key
    assert all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    load_checkpoint(ckpt_path)  # still loads strictly
    assert not list(ckpt_path.parent.glob("*.tmp"))
    for key in ("temperature", "abstain_below", "ece_before", "ece_after", "target_precision",
                "val_precision_accepted", "val_coverage"):
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert T_RANGE[0] < result["temperature"] < T_RANGE[1]
    png = ckpt_path.with_name("reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


T_RANGE = (0.05, 20.0)


def test_temperature_does_not_worsen_validation_ece(calibrated) -> None:
    _, _, result = calibrated
    assert result["ece_after"] <= result["ece_before"]
    assert result["test"]["n"] > 0 and 0.0 <= result["test"]["ece_after"] <= 1.0


def test_threshold_meets_target_precision_on_validation(calibrated) -> None:
    """Recomputed independently from the checkpoint, the split and the recorded numbers."""
    from leafscout.training.checkpoint import checkpoint_preprocess, load_checkpoint
    from leafscout.training.evaluate import predict_probs
    from leafscout.training.split import load_split

    ckpt_path, _, result = calibrated
    model, ckpt = load_checkpoint(ckpt_path)
    val = load_split(ckpt_path.parent / "split.json").samples("val")
    y, probs = predict_probs(model, checkpoint_preprocess(ckpt), val)
    calibrated_probs = softmax(np.log(np.maximum(probs, 1e-45)), result["temperature"])
    accept = calibrated_probs.max(1) >= result["abstain_below"]
    assert result["target_met"] and accept.any()
    precision = (calibrated_probs.argmax(1) == y)[accept].mean()
    assert precision >= TARGET
    assert precision == pytest.approx(result["val_precision_accepted"])
    assert accept.mean() == pytest.approx(result["val_coverage"])
    # Smallest such threshold: accepting the next most confident rejected prediction breaks the target.
    below = calibrated_probs.max(1)[~accept]
    if below.size:
        accept_more = calibrated_probs.max(1) >= below.max()
        assert (calibrated_probs.argmax(1) == y)[accept_more].mean() < TARGET


def test_bundle_carries_temperature_and_threshold(calibrated, tmp_path) -> None:
    from leafscout.deploy.export import export_bundle
    from leafscout.vision.bundle import load_bundle
    from leafscout.vision.classifier import LeafClassifier

    ckpt_path, _, result = calibrated
    export_bundle(ckpt_path, tmp_path / "bundle", split="val")
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.temperature == pytest.approx(result["temperature"])
    assert bundle.abstain_below == pytest.approx(result["abstain_below"])
    from leafscout.training.data import read_image
    from leafscout.training.split import load_split

    val = load_split(ckpt_path.parent / "split.json").samples("val")
    clf = LeafClassifier(bundle)
    preds = [clf.decide(p) for p in clf.probs([read_image(s.path) for s in val])]
    accepted = [(p.index, s.label) for p, s in zip(preds, val) if not p.uncertain]
    assert len(accepted) == pytest.approx(result["val_coverage"] * len(val), abs=1)
    # onnxruntime's logits differ from PyTorch's in the last bits: allow one prediction at the threshold to flip.
    assert sum(i == label for i, label in accepted) >= TARGET * len(accepted) - 1


def test_calibrate_cli(calibrated, capsys) -> None:
    from leafscout.training.study_cli import main

    ckpt_path, _, result = calibrated
    assert main(["calibrate", str(ckpt_path), "--target-precision", str(TARGET), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["temperature"] == pytest.approx(result["temperature"])
    assert printed["abstain_below"] == pytest.approx(result["abstain_below"])


def test_calibrate_refuses_a_checkpoint_without_its_split(calibrated, tmp_path, capsys) -> None:
    import shutil

    from leafscout.training.study_cli import main

    lonely = tmp_path / "best.pt"
    shutil.copy(calibrated[0], lonely)
    assert main(["calibrate", str(lonely)]) == 2
    err = capsys.readouterr().err
    assert f"no split.json beside {lonely}" in err and "validation split" in err


def test_ece_temperature_is_no_worse_than_none_or_nll_and_cross_fits() -> None:
    from leafscout.training.calibration import cross_fitted_ece, fit_temperature_ece
    from leafscout.training.metrics import expected_calibration_error

    logits, labels = _calibrated_sample(seed=3)
    # Over-confident on the right class only: NLL and ECE disagree about the best T.
    over = logits * 1.8
    over[np.arange(len(labels)), labels] += 0.7
    ece = lambda t: expected_calibration_error(labels, softmax(over, t))  # noqa: E731
    t_ece, t_nll = fit_temperature_ece(over, labels), fit_temperature(over, labels)
    assert ece(t_ece) <= min(ece(1.0), ece(t_nll))
    assert ece(t_ece) < 0.02
    folds = np.arange(len(labels)) % 2
    crossed = cross_fitted_ece(over, labels, folds)
    assert ece(t_ece) <= crossed < ece(1.0)  # honest: not better than fitted on itself
    assert cross_fitted_ece(over, labels, folds, objective="nll") < ece(1.0)


def test_cross_fitting_needs_two_folds_and_a_known_objective() -> None:
    from leafscout.training.calibration import cross_fitted_ece

    logits, labels = _calibrated_sample(n=200)
    with pytest.raises(CalibrationError, match="at least 2 folds"):
        cross_fitted_ece(logits, labels, np.zeros(200, int))
    with pytest.raises(CalibrationError, match="objective must be one of"):
        cross_fitted_ece(logits, labels, np.arange(200) % 2, objective="brier")


def _field_sample(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Leaves over-confident (logits x 2 of a calibrated sample) and background rows under-confident
    (the background logit raised by 2 on rows that are all background): the field model's two faults."""
    logits, labels = _calibrated_sample(n=4000, c=6, seed=seed)
    bg = 5
    logits = 2.0 * logits
    soil = np.random.default_rng(seed + 1).random(len(labels)) < 0.25
    logits[soil, bg] = logits[soil].max(axis=1) + 2.0
    labels = np.where(soil, bg, labels)
    return logits, labels, bg


def test_two_field_temperatures_beat_any_single_one_and_keep_the_best_class() -> None:
    from leafscout.training.calibration import ECE_GRID, cross_fitted_ece, fit_field_temperatures
    from leafscout.training.metrics import expected_calibration_error as ece

    logits, labels, bg = _field_sample()
    t, t_bg = fit_field_temperatures(logits, labels, bg)
    assert t == pytest.approx(2.0, rel=0.15) and t_bg is not None and t_bg < 1.0  # leaves cooled, soil sharpened
    two = softmax(logits, t, background_temperature=t_bg, background_index=bg)
    assert (two.argmax(1) == logits.argmax(1)).all()
    best_single = min(ece(labels, softmax(logits, float(s))) for s in ECE_GRID)
    assert ece(labels, two) < 0.6 * best_single
    folds = np.arange(len(labels)) % 2
    assert cross_fitted_ece(logits, labels, folds, background_index=bg) < cross_fitted_ece(logits, labels, folds)


def test_one_temperature_when_a_side_has_too_few_rows() -> None:
    from leafscout.training.calibration import MIN_ROWS_PER_TEMPERATURE, fit_field_temperatures

    logits, labels, bg = _field_sample()
    keep = np.flatnonzero(logits.argmax(1) != bg)
    keep = np.r_[keep, np.flatnonzero(logits.argmax(1) == bg)[: MIN_ROWS_PER_TEMPERATURE - 1]]
    t, t_bg = fit_field_temperatures(logits[keep], labels[keep], bg)
    assert t_bg is None and t == pytest.approx(2.0, rel=0.2)


def test_softmax_uses_the_background_temperature_only_where_background_wins() -> None:
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]], np.float32)  # best: class 0, then background (2)
    p = softmax(logits, 2.0, background_temperature=0.5, background_index=2)
    e0 = np.exp(np.array([1.0, 0.0, 0.5]) - 1.0)
    e1 = np.exp(np.array([0.0, 2.0, 6.0]) - 6.0)
    np.testing.assert_allclose(p[0], e0 / e0.sum(), rtol=1e-6)
    np.testing.assert_allclose(p[1], e1 / e1.sum(), rtol=1e-6)
    np.testing.assert_allclose(softmax(logits, 2.0, background_temperature=0.5), softmax(logits, 2.0))


def test_resplit_cross_fitted_ece_spreads_over_other_photo_splits() -> None:
    """The cross-fitted ECE over other splits by photo: as many figures as asked, the photos kept whole,
    around the one split's figure; one photo for all cannot be split and says so."""
    from leafscout.training.calibration import CalibrationError, cross_fitted_ece, photo_folds, resplit_cross_fitted_ece

    rng = np.random.default_rng(5)
    n = 600
    logits = rng.normal(0, 2, (n, 4))
    labels = np.array([rng.choice(4, p=np.exp(l) / np.exp(l).sum()) for l in 2.0 * logits])  # the model: too unsure
    groups = [f"photo{i // 3}" for i in range(n)]  # three crops per photo
    folds = photo_folds(groups, salt=3)
    assert all(len(set(folds[i:i + 3])) == 1 for i in range(0, n, 3))  # a photo's crops stay on one side
    for a, b in ((0, 1), (1, 2), (0, 7)):  # new partitions, not the same one again or its mirror
        assert 0.3 < (photo_folds(groups, a) == photo_folds(groups, b)).mean() < 0.7
    spread = resplit_cross_fitted_ece(logits, labels, groups, n=6)
    assert len(spread) == 6 and len(set(spread)) > 1
    one = cross_fitted_ece(logits, labels, photo_folds(groups))
    assert min(spread) - 0.03 < one < max(spread) + 0.03
    with pytest.raises(CalibrationError, match="puts photos on both sides"):
        resplit_cross_fitted_ece(logits, labels, ["same photo"] * n, n=2)
