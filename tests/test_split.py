"""Leaf-grouped stratified splits: deterministic, no leaf on two sides, manifests that round-trip."""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leafscout.training.checkpoint import file_sha256
from leafscout.training.data import Dataset, Sample
from leafscout.training.split import PARTS, SplitError, load_split, make_split


def _dataset(root: Path, layout: list[list[int]]) -> Dataset:
    """``layout[c]`` = images per leaf group of class c (files need not exist for splitting)."""
    classes = [f"Crop___disease_{c}" for c in range(len(layout))]
    samples = []
    for c, groups in enumerate(layout):
        for g, n in enumerate(groups):
            for i in range(n):
                samples.append(Sample(root / classes[c] / f"leaf{c}-{g}___photo {i}.jpg", c, f"leaf{c}-{g}"))
    return Dataset(root=root, classes=classes, samples=samples)


def _check_invariants(split, ds: Dataset) -> None:
    part_of_group = defaultdict(set)
    for s, part in split.items:
        part_of_group[s.group].add(part)
    assert all(len(parts) == 1 for parts in part_of_group.values()), "a leaf sits on two sides"
    assert sorted(str(s.path) for s, _ in split.items) == sorted(str(s.path) for s in ds.samples)
    groups_per_class = defaultdict(set)
    for s in ds.samples:
        groups_per_class[s.label].add(s.group)
    for label, groups in groups_per_class.items():
        if len(groups) >= 3:
            for part in PARTS:
                assert any(s.label == label for s in split.samples(part)), (label, part)


def test_split_is_deterministic_grouped_and_stratified(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, [[1] * 40, [2, 1, 3, 1, 1, 2, 1, 1, 1, 1], [1, 1, 1], [5, 5]])
    a, b = make_split(ds, seed=7), make_split(ds, seed=7)
    assert a.items == b.items and a.sha256 == b.sha256
    _check_invariants(a, ds)
    counts = a.counts()
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    assert 26 <= sum(1 for s in a.samples("train") if s.label == 0) <= 30  # ~70% of 40 leaves
    # Two groups only: both train (nothing meaningful to hold out)
    assert all(p == "train" for s, p in a.items if s.label == 3)
    c = make_split(ds, seed=8)
    assert c.items != a.items and c.sha256 != a.sha256


def test_split_does_not_depend_on_sample_order(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, [[1] * 20, [1] * 15])
    rev = Dataset(root=ds.root, classes=ds.classes, samples=ds.samples[::-1])
    part = {str(s.path): p for s, p in make_split(ds).items}
    assert all(part[str(s.path)] == p for s, p in make_split(rev).items)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=12), min_size=2, max_size=5), st.integers(0, 99))
def test_split_invariants_hold_for_any_group_structure(layout: list[list[int]], seed: int) -> None:
    ds = _dataset(Path("/data"), layout)
    _check_invariants(make_split(ds, seed=seed), ds)


def test_manifest_round_trip_hash_and_repointed_root(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "orig", [[1] * 10, [1] * 10])
    split = make_split(ds, seed=3)
    expected_hash = split.sha256
    path = split.save(tmp_path / "run" / "split.json")
    assert split.sha256 == expected_hash == file_sha256(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "leafscout-split/1" and doc["seed"] == 3 and doc["classes"] == ds.classes
    assert set(doc["items"][0]) == {"path", "label", "group", "split"}
    assert not Path(doc["items"][0]["path"]).is_absolute()

    loaded = load_split(path)
    assert loaded.sha256 == split.sha256 and loaded.classes == split.classes
    assert loaded.items == split.items
    moved = load_split(path, root=tmp_path / "elsewhere")
    assert moved.sha256 == split.sha256  # the same split, only found somewhere else
    assert all(str(s.path).startswith(str(tmp_path / "elsewhere")) for s, _ in moved.items)
    assert [s.path.name for s in moved.samples("test")] == [s.path.name for s in split.samples("test")]


def test_bad_requests_and_manifests_are_named(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, [[1] * 5, [1] * 5])
    with pytest.raises(SplitError, match="sum"):
        make_split(ds, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(SplitError, match="'valid'.*train"):
        make_split(ds).samples("valid")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(SplitError, match="other/9"):
        load_split(bad)
    with pytest.raises(SplitError, match="cannot read"):
        load_split(tmp_path / "missing.json")


def test_real_plantvillage_split_keeps_leaves_apart(plantvillage_dir) -> None:
    if plantvillage_dir is None:
        pytest.skip("shared PlantVillage data not present")
    from leafscout.training.data import scan_folder

    ds = scan_folder(plantvillage_dir)
    split = make_split(ds, seed=0)
    _check_invariants(split, ds)
    counts = split.counts()
    assert abs(counts["test"] / len(ds.samples) - 0.15) < 0.01
    assert split.sha256 == hashlib.sha256(split.canonical_bytes()).hexdigest()
