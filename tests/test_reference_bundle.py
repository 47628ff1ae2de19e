"""The committed reference bundle: intact, loadable without naming it, and as accurate as its manifest says."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vision.bundle import default_bundle_path, load_bundle


def test_reference_bundle_loads_and_classifies():
    bundle = load_bundle(default_bundle_path(), threads=1)
    assert len(bundle.classes) == 32
    probs = bundle.probs(np.zeros((2, 3, *bundle.spec.size), np.float32))
    assert probs.shape == (2, 32)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert bundle.abstain_below is not None and 0 < bundle.abstain_below < 1


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
    recorded = manifest["metrics"]
    recorded = recorded.get("int8", recorded.get("fp32", recorded))
    assert metrics["n"] == 1730
    assert abs(metrics["top1"] - recorded["top1"]) < 1e-9
