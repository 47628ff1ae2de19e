"""The simulator's hard cases, each at small scale: the robot counts the plants within 5 %, and 0 on bare soil."""
from __future__ import annotations

import numpy as np
import pytest

from leafscout.robot.camera.capture import Capture
from leafscout.robot.conditions import CONDITIONS, SOIL_TEXTURES, ConditionError, parse_conditions
from leafscout.robot.gps import FramePosition
from leafscout.robot.runtime import Runtime
from leafscout.robot.simulate import FieldConfig, FieldSimulator, LeafBank, LeafImage, SimSource, SimulationError, score_report
from leafscout.robot.survey_store import SurveyStore
from leafscout.training.synthetic import draw_leaf
from leafscout.vision.classifier import LeafClassifier
from leafscout.vision.localize import LeafLocalizer


@pytest.fixture(scope="module")
def bank() -> LeafBank:
    """Synthetic leaves without blight: a leaf brown all over is a known limit of colour (test_localize.py)."""
    rng = np.random.default_rng(5)
    leaves = []
    for cls in ("Leaf___healthy", "Leaf___rust", "Leaf___spot"):
        for i in range(6):
            img, mask = draw_leaf(rng, cls, 160)
            ys, xs = np.nonzero(mask)
            sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            leaves.append(LeafImage(cls, img[sl].copy(), mask[sl].copy(), f"test:{cls}:{i}"))
    return LeafBank(leaves)


@pytest.fixture(scope="module")
def classifier(tiny_bundle):
    from leafscout.vision.bundle import load_bundle

    return LeafClassifier(load_bundle(tiny_bundle, threads=1))


def count(config: FieldConfig, bank: LeafBank, classifier: LeafClassifier) -> dict:
    sim = FieldSimulator(config, bank)
    with Capture(lambda: SimSource(sim)) as cap, SurveyStore(None) as store:
        report = Runtime(cap, classifier, store, positions=FramePosition()).run()
    return score_report(report, sim.truth())


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_each_condition_counts_within_5_percent(name: str, bank: LeafBank, classifier: LeafClassifier) -> None:
    score = count(FieldConfig(rows=1, row_length_m=3.0, seed=7, conditions=(name,)), bank, classifier)
    n = score["plants_truth"]
    assert n >= 12
    assert abs(score["plants"] - n) <= max(1, 0.05 * n), score


BARE = [(), ("speckled",), ("gravel",), ("chroma",), ("clods", "stones"), ("straw",),
        ("speckled", "white-balance", "noise", "shadows"), ("gravel", "exposure", "blur"),
        ("chroma", "noise", "white-balance"), ("clods", "stones", "shadows", "noise"),
        ("straw", "white-balance", "noise"),
        # under a warm cast, darker straw stalks read greener than the bright straw: a seed must also be
        # greener than red (LocalizeConfig.seed_green), which no straw stalk is
        ("clods", "stones", "straw", "white-balance", "noise", "shadows")]


@pytest.mark.parametrize("conditions", BARE, ids=lambda c: "+".join(c) or "plain")
def test_bare_soil_of_every_texture_counts_nothing(conditions: tuple, bank: LeafBank,
                                                    classifier: LeafClassifier) -> None:
    score = count(FieldConfig(rows=1, row_length_m=2.0, seed=8, bare_share=1.0, conditions=conditions),
                  bank, classifier)
    assert score["plants_truth"] == 0 and score["plants"] == 0, score


def test_the_bare_soil_cases_cover_every_texture() -> None:
    covered = {c for case in BARE for c in case}
    assert set(SOIL_TEXTURES[1:]) | {"clods", "stones", "straw"} <= covered


def test_conditions_change_the_picture_and_follow_the_seed(bank: LeafBank) -> None:
    def tenth(cfg: FieldConfig) -> np.ndarray:
        frames = FieldSimulator(cfg, bank).frames()
        return [next(frames)[0] for _ in range(10)][-1]

    plain = tenth(FieldConfig(rows=1, row_length_m=2.0, seed=3))
    for name, cond in CONDITIONS.items():
        cfg = FieldConfig(rows=1, row_length_m=2.0, seed=3, conditions=(name,))
        a, b = tenth(cfg), tenth(cfg)
        assert np.array_equal(a, b), name  # reproducible
        if cond.kind != "layout":
            assert np.abs(a.astype(int) - plain.astype(int)).mean() > 1.0, name  # and visible
        assert cond.doc, name


def test_layouts_move_the_plants() -> None:
    base = FieldConfig(rows=1, row_length_m=3.0)
    assert FieldConfig(rows=1, row_length_m=3.0, conditions=("touching",)).spacing_m == pytest.approx(base.leaf_size_m)
    assert FieldConfig(rows=1, row_length_m=3.0, conditions=("overlapping",)).spacing_m < base.leaf_size_m
    lo, hi = FieldConfig(rows=1, row_length_m=3.0, conditions=("bare",)).bare_stretch()
    assert hi - lo == pytest.approx(1.0, abs=1e-6)


def test_soils_alone_are_not_vegetation() -> None:
    rng = np.random.default_rng(0)
    for name in SOIL_TEXTURES[1:]:
        soil = CONDITIONS[name].apply(rng, 480, 640)
        assert soil.shape == (480, 640, 3) and soil.dtype == np.uint8
        assert LeafLocalizer()(soil) == [], name


def test_condition_lists_are_parsed_and_checked() -> None:
    assert parse_conditions("straw, weeds,white-balance") == ("straw", "weeds", "white-balance")
    assert parse_conditions("straw+straw") == ("straw",)
    with pytest.raises(ConditionError, match="unknown condition 'mud'; known: speckled, gravel"):
        parse_conditions("mud")
    with pytest.raises(ConditionError, match="one soil"):
        parse_conditions("gravel,speckled")
    with pytest.raises(SimulationError, match="unknown condition"):
        FieldConfig(conditions=("fog",))
    src = SimSource.from_spec("rows=1,length=1.5,conditions=straw+noise")
    assert src.simulator.config.conditions == ("straw", "noise")


def test_cli_simulate_conditions(tmp_path, capsys: pytest.CaptureFixture) -> None:
    import json

    from leafscout.cli import main

    out = tmp_path / "field"
    assert main(["simulate", "--out", str(out), "--rows", "1", "--row-length", "1.5", "--conditions",
                 "straw,weeds,white-balance"]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["config"]["conditions"] == ["straw", "weeds", "white-balance"]
    assert main(["simulate", "--out", str(tmp_path / "bad"), "--conditions", "fog"]) == 2
    assert "unknown condition 'fog'" in capsys.readouterr().err
