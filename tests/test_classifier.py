"""The classifier on a real (tiny, really trained and exported) bundle: batching, calibration, uncertain, votes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leafscout.robot.simulate import FieldConfig, FieldSimulator, LeafBank
from leafscout.vision.classifier import ClassifierError, LeafClassifier
from leafscout.vision.localize import LeafLocalizer, square_crop


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path):
    from leafscout.vision.bundle import load_bundle

    return load_bundle(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    sim = FieldSimulator(FieldConfig(rows=1, row_length_m=2.0, seed=2), LeafBank.synthetic(seed=2, per_class=3))
    frames = sim.frames()
    for _ in range(15):
        image, _ = next(frames)
    return [square_crop(image, d.box) for d in LeafLocalizer()(image)]


def test_all_crops_of_a_frame_go_in_one_batch_through_the_bundle_spec(bundle, crops) -> None:
    clf = LeafClassifier(bundle)
    assert len(crops) >= 6
    probs = clf.probs(crops)
    assert probs.shape == (len(crops), len(bundle.classes)) and clf.calls == 1
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(probs, bundle.classify(crops), atol=1e-6)  # same preprocessing as the bundle's own path
    buffer = clf._buffer
    clf.probs(crops[:3])
    assert clf._buffer is buffer  # the input buffer is reused in the hot loop


def test_low_confidence_is_uncertain_not_forced_into_a_class(bundle, crops) -> None:
    assert LeafClassifier(bundle).abstain_below == bundle.abstain_below == 0.5
    conf = LeafClassifier(bundle, abstain_below=0.0).probs(crops).max(axis=1)
    threshold = float(np.median(conf))
    preds = LeafClassifier(bundle, abstain_below=threshold).classify(crops)
    assert [p.uncertain for p in preds] == [c < threshold for c in conf]
    assert any(p.uncertain for p in preds) and not all(p.uncertain for p in preds)
    assert all(p.index == -1 for p in preds if p.uncertain) and all(p.best >= 0 for p in preds)


def test_vote_is_weighted_by_confidence(bundle) -> None:
    clf = LeafClassifier(bundle, abstain_below=0.5)
    c = len(bundle.classes)

    def onehot(i: int, p: float) -> np.ndarray:
        v = np.full(c, (1 - p) / (c - 1))
        v[i] = p
        return v

    # Two lukewarm views say class 1, one sure view says class 0: the sure view wins.
    views = np.stack([onehot(0, 0.97), onehot(1, 0.55), onehot(1, 0.52)])
    decision = clf.vote(views)
    assert decision.index == 0 and 0.5 < decision.confidence < 0.97
    assert clf.vote(np.stack([onehot(2, 0.3), onehot(3, 0.3)])).uncertain


def test_bad_thresholds_and_vote_shapes_are_rejected(bundle) -> None:
    with pytest.raises(ClassifierError, match=r"abstain_below must be a probability in \[0, 1\], got 1.5"):
        LeafClassifier(bundle, abstain_below=1.5)
    with pytest.raises(ClassifierError, match="vote needs"):
        LeafClassifier(bundle).vote(np.zeros((0, len(bundle.classes))))
