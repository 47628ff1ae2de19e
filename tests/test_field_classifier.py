"""The field classifier: taxonomy, box folders, multi-source splits, health decisions and eval."""
from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from leafscout.training.sources import SourceError, scan_box_folder, scan_sources
from leafscout.training.split import load_split, make_split
from leafscout.training.synthetic import generate_box_folder, generate_dataset
from leafscout.vision.classifier import UNCERTAIN_INDEX, LeafClassifier, decide_batch
from leafscout.vision.taxonomy import BACKGROUND, ClassInfo, Taxonomy, TaxonomyError, info_from_name

from conftest import SHARED_DATA


# -- taxonomy ---------------------------------------------------------------------------
def test_names_join_the_taxonomy_with_crop_health_and_disease() -> None:
    assert info_from_name("Corn_(maize)___Common_rust_") == ClassInfo("Corn (maize)", "diseased", "Common rust")
    assert info_from_name("Pepper,_bell___healthy") == ClassInfo("Pepper bell", "healthy", None)
    assert info_from_name("Peach___healthy").health == "healthy"
    assert info_from_name(BACKGROUND) == ClassInfo(None, "background", None)
    with pytest.raises(TaxonomyError, match="health must be one of"):
        ClassInfo("Tomato", "sick", "x")
    with pytest.raises(TaxonomyError, match="needs a disease"):
        ClassInfo("Tomato", "diseased", None)


def test_every_class_of_every_source_has_crop_health_and_disease(plantvillage_dir) -> None:
    dirs = [SHARED_DATA / n for n in ("plantvillage", "plantdoc", "cwfid")]
    if not all(d.is_dir() for d in dirs):
        pytest.skip("the shared data sets are not on this machine")
    ds = scan_sources(dirs, negatives_per_photo=0, soil_per_photo=1)
    tax = Taxonomy.from_names(ds.classes)
    assert len(ds.classes) == 37 and tax.background_index == ds.classes.index(BACKGROUND)
    for name in ds.classes:  # PlantDoc's extra classes (Peach, Soybean, Squash, Grape healthy) join too
        info = tax.info[name]
        assert info.health in ("healthy", "diseased", "background")
        assert (info.crop is None) == (name == BACKGROUND)
        assert (info.disease is not None) == (info.health == "diseased")
    assert {"Peach___healthy", "Soybean___healthy", "Squash___Powdery_mildew", "Grape___healthy"} <= set(ds.classes)


def test_taxonomy_group_probabilities_and_errors() -> None:
    tax = Taxonomy.from_names(["A___healthy", "A___rot", "B___spot", BACKGROUND])
    probs = np.array([[0.1, 0.3, 0.4, 0.2]], np.float32)
    np.testing.assert_allclose(tax.group_probs(probs), [[0.2, 0.1, 0.7]], rtol=1e-6)
    again = Taxonomy.from_json(tax.classes, json.loads(json.dumps(tax.to_json())))
    assert again.to_json() == tax.to_json() and again.background_index == 3
    with pytest.raises(TaxonomyError, match="lacks entries"):
        Taxonomy(["A___healthy", "A___rot"], {"A___healthy": info_from_name("A___healthy")})
    two = {"x": ClassInfo(None, "background", None), "y": ClassInfo(None, "background", None)}
    with pytest.raises(TaxonomyError, match="at most one background"):
        Taxonomy(["x", "y"], two)


# -- decisions ---------------------------------------------------------------------------
CLASSES = ["A___healthy", "A___rot", "B___spot", "B___healthy", BACKGROUND]


def test_health_is_decided_on_group_sums_with_abstain_and_ood_floor() -> None:
    tax = Taxonomy.from_names(CLASSES)
    probs = np.array([
        [0.30, 0.35, 0.35, 0.00, 0.00],  # diseased 0.70 though the best class has 0.35
        [0.45, 0.05, 0.00, 0.45, 0.05],  # healthy 0.90
        [0.10, 0.10, 0.10, 0.10, 0.60],  # background
        [0.30, 0.30, 0.00, 0.00, 0.40],  # background group wins (0.40 vs 0.30/0.30)
        [0.25, 0.25, 0.00, 0.25, 0.25],  # healthy 0.50 < abstain 0.6 -> uncertain
    ], np.float32)
    index, conf, health, gp = decide_batch(probs, tax, abstain_below=0.6)
    assert list(health) == ["diseased", "healthy", "background", "background", "uncertain"]
    assert index[0] in (1, 2) and index[1] in (0, 3) and index[2] == 4 and index[4] == UNCERTAIN_INDEX
    np.testing.assert_allclose(gp[:3], [0.70, 0.90, 0.60], rtol=1e-6)
    # The OOD floor: a plant decision whose best class is below it becomes uncertain.
    _, _, health, _ = decide_batch(probs, tax, abstain_below=0.6, ood_below=0.4)
    assert list(health) == ["uncertain", "healthy", "background", "background", "uncertain"]
    # Class mode (old bundles): uncertain below the threshold, health follows the class name.
    index, _, health, _ = decide_batch(probs[:2], Taxonomy.from_names(CLASSES), abstain_below=0.4, on_health=False)
    assert list(index) == [UNCERTAIN_INDEX, 0] and list(health) == ["uncertain", "healthy"]


def test_health_metrics_hand_checked() -> None:
    from leafscout.training.metrics import health_metrics

    tax = Taxonomy.from_names(CLASSES)
    eye = np.eye(5, dtype=np.float32)
    unsure = np.array([0.25, 0.25, 0.0, 0.25, 0.25], np.float32)
    #   truth                   decision
    rows = [
        (0, eye[0]),  # healthy   -> healthy  (right)
        (3, eye[1]),  # healthy   -> diseased (false alarm)
        (0, unsure),  # healthy   -> uncertain (not covered)
        (1, eye[2]),  # diseased  -> diseased (right health, wrong crop)
        (2, eye[3]),  # diseased  -> healthy  (miss)
        (2, eye[4]),  # diseased  -> background (miss, leaf called background)
        (4, eye[4]),  # background -> background
        (4, eye[0]),  # background -> healthy (background called plant)
    ]
    y = np.array([r[0] for r in rows])
    p = np.stack([r[1] for r in rows])
    m = health_metrics(y, p, tax, abstain_below=0.6)
    assert m["n_leaves"] == 6 and m["n_background"] == 2
    assert m["coverage"] == pytest.approx(5 / 6)
    assert m["health_accuracy"] == pytest.approx(2 / 5)
    assert m["false_alarm_rate"] == pytest.approx(1 / 2)
    assert m["miss_rate"] == pytest.approx(2 / 3)
    assert m["crop_accuracy"] == pytest.approx(2 / 5)  # rows 1 and 5 name the right crop
    assert m["leaves_called_background"] == pytest.approx(1 / 6)
    assert m["background_called_plant"] == pytest.approx(1 / 2)


# -- box folders ----------------------------------------------------------------------------
def _awkward_box_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("Tomato leaf\nTomato leaf late blight\nweed\n")
    (root / "pv_class_map.json").write_text(json.dumps({"Tomato leaf": "Tomato___healthy",
                                                        "Tomato leaf late blight": "Tomato___Late_blight"}))
    src = generate_box_folder(root / "gen", photos=4, seed=3)
    photos = sorted((src / "images").iterdir())
    names = ["blätter (1), late blight.jpg", "photo with spaces.jpg", "empty labels.jpg", "no labels.jpg"]
    for img, name in zip(photos, names):
        shutil.copy(img, root / "images" / name)
    (root / "labels" / "blätter (1), late blight.txt").write_text(
        "1 0.5 0.5 0.3 0.3\n"
        "0 1.4 1.4 0.2 0.2\n"  # outside the image
        "7 0.5 0.5 0.1 0.1\n"  # class index out of range
        "0 0.5 zero 0.1 0.1\n"  # not a number
        "2 0.2 0.2 0.2 0.2\n"  # weed: not a class we can name -> background
    )
    (root / "labels" / "photo with spaces.txt").write_text("0 0.25 0.25 0.3 0.3\n")
    (root / "labels" / "empty labels.txt").write_text("")
    shutil.rmtree(root / "gen")
    return root


def test_box_folder_loader_counts_every_skip_with_its_reason(tmp_path: Path, caplog) -> None:
    root = _awkward_box_folder(tmp_path / "field boxes")
    with caplog.at_level(logging.WARNING):
        folder = scan_box_folder(root)
    assert folder.names == ["Tomato___healthy", "Tomato___Late_blight", BACKGROUND]
    assert len(folder.photos) == 3  # the image without a label file is skipped
    why = " | ".join(r for _, r in folder.skipped)
    assert len(folder.skipped) == 4, folder.skipped
    for reason in ("outside the image", "out of range", "bad label line", "no label file"):
        assert reason in why
    assert "no label file" in caplog.text
    boxes = {p.name: b for p, b in folder.photos}
    assert [c for c, _ in boxes["blätter (1), late blight.jpg"]] == ["Tomato___Late_blight", BACKGROUND]
    assert boxes["empty labels.jpg"] == []

    ds = scan_sources([root])
    bg = ds.classes.index(BACKGROUND)
    empty = [s for s in ds.samples if s.path.name == "empty labels.jpg"]
    assert empty and all(s.label == bg for s in empty)  # a photo without leaves gives background windows
    leaf = next(s for s in ds.samples if s.path.name == "photo with spaces.jpg" and s.label != bg)
    windows = [s for s in ds.samples if s.path.name == "photo with spaces.jpg" and s.label == bg]
    for w in windows:  # background windows stay off the leaf box
        x0, y0, x1, y1 = w.box
        ix = max(0.0, min(x1, leaf.box[2]) - max(x0, leaf.box[0]))
        iy = max(0.0, min(y1, leaf.box[3]) - max(y0, leaf.box[1]))
        assert ix * iy <= 0.06 * (x1 - x0) * (y1 - y0)
    assert len(ds.bad_files) == 4
    assert scan_sources([root]).samples == ds.samples  # deterministic windows


def test_box_folder_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        scan_sources([tmp_path / "nowhere"])
    (tmp_path / "b" / "images").mkdir(parents=True)
    (tmp_path / "b" / "labels").mkdir()
    (tmp_path / "b" / "classes.txt").write_text("\n")
    with pytest.raises(SourceError, match="lists no classes"):
        scan_box_folder(tmp_path / "b")


def test_multi_source_split_keeps_every_photo_on_one_side_and_round_trips(tmp_path: Path) -> None:
    lab = generate_dataset(tmp_path / "lab", per_class=12, size=48, seed=1)
    field = generate_box_folder(tmp_path / "field", photos=40, seed=2)
    ds = scan_sources([lab, field])
    assert [s.name for s in ds.sources] == ["lab", "field"]
    split = make_split(ds, seed=0)
    parts_of = defaultdict(set)
    for s, part in split.items:
        parts_of[(s.source, s.group)].add(part)
    assert all(len(p) == 1 for p in parts_of.values())  # no photo (its leaves and background) on two sides
    field_parts = {p for (src, _), ps in parts_of.items() if src == 1 for p in ps}
    assert field_parts == {"train", "val", "test"}
    path = split.save(tmp_path / "run" / "split.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "leafscout-split/2" and [s["name"] for s in doc["sources"]] == ["lab", "field"]
    assert any("box" in it for it in doc["items"]) and all(it["path"][0] != "/" for it in doc["items"])
    moved = shutil.copytree(field, tmp_path / "elsewhere" / "field")
    again = load_split(path, roots={"field": moved})
    assert again.sha256 == split.sha256
    assert [(s.label, s.box, s.source, p) for s, p in again.items] == [(s.label, s.box, s.source, p) for s, p in split.items]
    assert all(s.path.is_file() for s, _ in again.items)
    assert all(str(s.path).startswith(str(moved)) for s, _ in again.items if s.source == 1)


# -- bundles ---------------------------------------------------------------------------------
def test_a_bundle_without_taxonomy_still_loads_with_health_from_names(tiny_bundle: Path, tmp_path: Path, caplog) -> None:
    from leafscout.deploy.manifest import write_manifest
    from leafscout.vision.bundle import BundleFormatError, load_bundle

    old = shutil.copytree(tiny_bundle, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    assert "taxonomy" in manifest and manifest["background_class"] is None  # what export writes now
    for key in ("taxonomy", "background_class"):
        manifest.pop(key)
    write_manifest(old, manifest, extra_files=tuple(n for n in manifest["files"] if not n.endswith(".onnx")))
    with caplog.at_level(logging.INFO, logger="leafscout.vision.bundle"):
        bundle = load_bundle(old)
    assert "no taxonomy" in caplog.text
    assert bundle.background_index is None and not bundle.decides_health
    clf = LeafClassifier(bundle)
    healthy = bundle.classes.index("Leaf___healthy")
    probs = np.full(len(bundle.classes), 0.01, np.float32)
    probs[healthy] = 1 - 0.01 * (len(bundle.classes) - 1)
    pred = clf.decide(probs)
    assert pred.index == healthy and clf.health(pred) == "healthy" and pred.is_plant

    manifest["taxonomy"] = Taxonomy.from_names(bundle.classes).to_json()
    manifest["background_class"] = "Leaf___healthy"  # disagrees with the taxonomy
    write_manifest(old, manifest, extra_files=tuple(n for n in manifest["files"] if not n.endswith(".onnx")))
    with pytest.raises(BundleFormatError, match="background_class"):
        load_bundle(old)


@pytest.fixture(scope="module")
def field_run(tmp_path_factory) -> Path:
    """A tiny lenet_bn trained on a lab folder plus a field box folder, field-calibrated."""
    from leafscout.training.calibration import calibrate_field
    from leafscout.training.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("fieldrun")
    lab = generate_dataset(tmp / "lab", per_class=30, size=48, seed=1)
    field = generate_box_folder(tmp / "field", photos=60, seed=2)
    run = train(TrainConfig(data=[lab, field], model="lenet_bn", epochs=3, out=tmp / "run", batch_size=32,
                            augment_preset="field", background_p=0.5, sampling="balanced", balance="none",
                            threads=1, progress=False, cache_dir=tmp / "cache"))
    calibrate_field(run / "best.pt", min_coverage=0.5, target_health_accuracy=0.5)
    return run


def test_train_calibrate_export_and_eval_a_field_model(field_run: Path, tmp_path: Path, capsys) -> None:
    from leafscout.deploy.export import export_bundle
    from leafscout.cli import main
    from leafscout.training.checkpoint import read_checkpoint
    from leafscout.vision.bundle import load_bundle

    ckpt = read_checkpoint(field_run / "best.pt")
    assert ckpt["classes"][-1] == BACKGROUND
    cal = ckpt["calibration"]
    assert cal["decide_on"] == "health" and cal["fit_sources"] == ["field"] and 0 <= cal["ood_below"] <= 1
    # The temperature minimises field-validation ECE (T = 1 is a candidate, so never worse than none),
    # and the honest figure, fitted on one half of the photos and scored on the other, is reported too.
    assert cal["temperature_objective"] == "ece" and cal["ece_after"] <= cal["ece_before"] + 1e-12
    assert cal["ece_after"] <= cal["ece_at_nll_temperature"] + 1e-12 and 0 <= cal["ece_cross_fitted"] <= 1
    spread = cal["ece_cross_fitted_resplits"]  # the same figure over 20 other splits by photo
    assert spread["n"] == 20 and 0 <= spread["min"] <= spread["mean"] <= spread["max"] <= 1
    assert (field_run / "reliability.png").is_file()
    split = json.loads((field_run / "split.json").read_text())
    assert {it.get("source") for it in split["items"]} == {0, 1}

    result = export_bundle(field_run / "best.pt", tmp_path / "bundle", int8=True, int8_max_drop=100.0,
                           calibration_images=16)
    manifest = result.manifest
    assert manifest["background_class"] == BACKGROUND and set(manifest["taxonomy"]) == set(manifest["classes"])
    assert manifest["calibration"]["decide_on"] == "health"
    assert set(manifest["metrics"]["per_source"]) == {"lab", "field"}
    assert "/" not in manifest["provenance"]["checkpoint"]  # no absolute path of this machine
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.decides_health and bundle.background_index == len(bundle.classes) - 1
    # The robot scales rows whose best class is background by their own temperature.
    from leafscout.deploy.manifest import write_manifest

    x = np.load(tmp_path / "bundle" / "selftest.npz")["inputs"]
    logits = bundle.logits(x)
    bg_t = 0.5
    write_manifest(tmp_path / "bundle", {**manifest, "calibration": {**manifest["calibration"],
                                                                     "background_temperature": bg_t}},
                   extra_files=("split.json.gz", "selftest.npz"))
    two = load_bundle(tmp_path / "bundle")
    assert two.background_temperature == bg_t
    probs, t = two.probs(x), float(manifest["calibration"]["temperature"])
    for row, p in zip(logits, probs):
        scale = bg_t if row.argmax() == two.background_index else t
        z = np.exp(row / scale - (row / scale).max())
        np.testing.assert_allclose(p, z / z.sum(), rtol=1e-5, atol=1e-7)
    write_manifest(tmp_path / "bundle", manifest, extra_files=("split.json.gz", "selftest.npz"))

    negatives = tmp_path / "negatives"
    negatives.mkdir()
    from leafscout.training.augment import random_background

    rng = np.random.default_rng(0)
    import cv2

    for i in range(6):
        cv2.imwrite(str(negatives / f"soil {i}.png"), random_background(rng, 80, 80))
    lab, field = split["sources"][0]["root"], split["sources"][1]["root"]
    assert main(["eval", str(tmp_path / "bundle"), "--data", lab, "--data", field,
                 "--negatives", str(negatives), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    for key in ("top1", "macro_f1", "ece", "health_accuracy", "false_alarm_rate", "miss_rate", "coverage",
                "negatives_called_plant"):
        assert key in m
    assert set(m["per_source"]) == {"lab", "field"} and m["negatives"]["n"] == 6
    test_n = sum(1 for it in split["items"] if it["split"] == "test")
    assert m["n"] == test_n
    assert 0.0 <= m["negatives_called_plant"] <= 1.0
    assert main(["eval", str(field_run / "best.pt"), "--data", field]) == 0  # a checkpoint, text report
    out = capsys.readouterr().out
    assert "health accuracy" in out and "decides on health" in out


def test_calibrate_cli_reports_the_field_temperatures(field_run: Path, tmp_path: Path, capsys) -> None:
    from leafscout.cli import main
    from leafscout.training.checkpoint import read_checkpoint

    for name in ("best.pt", "split.json"):
        shutil.copy(field_run / name, tmp_path / name)
    assert main(["calibrate", str(tmp_path / "best.pt")]) == 0
    out = capsys.readouterr().out
    cal = read_checkpoint(tmp_path / "best.pt")["calibration"]
    assert f"temperature      {cal['temperature']:.4f}" in out and "ECE (field val)" in out
    assert ("background T" in out) == (cal["background_temperature"] is not None)
    assert cal["ece_after"] <= cal["ece_single_temperature"] + 0.02  # the pair is fitted per side, not jointly
