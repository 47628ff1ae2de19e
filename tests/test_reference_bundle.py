"""The committed reference bundle: intact, loadable without naming it, and as accurate as its manifest says."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from leafscout.vision.bundle import default_bundle_path, load_bundle
from leafscout.vision.taxonomy import BACKGROUND


def test_reference_bundle_loads_and_decides_health_with_a_background_class():
    bundle = load_bundle(default_bundle_path(), threads=1)
    n = len(bundle.classes)
    assert bundle.background_class == BACKGROUND and bundle.classes[bundle.background_index] == BACKGROUND
    assert bundle.decides_health and 0 < bundle.abstain_below < 1 and bundle.ood_below is not None
    assert {"Peach___healthy", "Squash___Powdery_mildew"} <= set(bundle.classes)  # PlantDoc's extra classes
    for name in bundle.classes:
        info = bundle.taxonomy.info[name]
        assert info.health in ("healthy", "diseased", "background")
    probs = bundle.probs(np.zeros((2, 3, *bundle.spec.size), np.float32))
    assert probs.shape == (2, n)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    manifest = json.loads((default_bundle_path() / "manifest.json").read_text())
    assert "/work/" not in json.dumps(manifest) and not manifest["provenance"]["checkpoint"].startswith("/")
    assert sum(f["bytes"] for f in manifest["files"].values()) <= 5_000_000


def test_eval_without_a_path_uses_the_reference_bundle_and_reproduces_its_metrics(plantvillage_dir):
    if plantvillage_dir is None:
        pytest.skip("the shared PlantVillage data is not on this machine")
    manifest = json.loads((default_bundle_path() / "manifest.json").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "leafscout", "eval", "--data", str(plantvillage_dir), "--split", "test", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(done.stdout[done.stdout.index("{"):])
    recorded = manifest["metrics"]["per_source"]["plantvillage"]
    assert list(metrics["per_source"]) == ["plantvillage"]
    assert metrics["n"] == recorded["n"]
    assert abs(metrics["top1"] - recorded["top1"]) < 1e-9
    assert abs(metrics["health_accuracy"] - recorded["health_accuracy"]) < 1e-9
