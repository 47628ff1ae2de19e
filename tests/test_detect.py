"""`leafscout detect` on generated images with known leaves: boxes, masks and JSON keys."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from leafscout.cli import main
from leafscout.robot.simulate import LeafImage, paste_leaf, soil_texture
from leafscout.training.synthetic import draw_leaf

CLASSES = ("Leaf___healthy", "Leaf___rust", "Leaf___spot")  # blight can be soil-brown all over (a known limit)


def leaf_image(seed: int, centres: list[tuple[int, int]], w: int = 640, h: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """Soil with one synthetic leaf at each centre, and the true leaf mask (bool)."""
    rng = np.random.default_rng(seed)
    frame = soil_texture(rng, h, w)
    truth = np.zeros((h, w), np.uint8)
    for k, (cx, cy) in enumerate(centres):
        img, mask = draw_leaf(rng, CLASSES[k % len(CLASSES)], 160)
        ys, xs = np.nonzero(mask)
        leaf = LeafImage("x", img[ys.min():ys.max() + 1, xs.min():xs.max() + 1],
                         mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1], "test")
        angle = float(rng.uniform(0, 360))
        paste_leaf(frame, leaf, cx, cy, 100, angle)
        shape = LeafImage("x", np.full_like(leaf.image, 255), leaf.mask, "test")
        drawn = np.zeros((h, w, 3), np.uint8)  # the same paste, of a white leaf on black: the true mask
        paste_leaf(drawn, shape, cx, cy, 100, angle)
        truth |= (drawn[:, :, 0] > 127).astype(np.uint8)
    return frame, truth.astype(bool)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("detect")
    (root / "dir").mkdir()
    layouts = {"three": [(120, 120), (330, 250), (520, 380)], "one": [(300, 200)]}
    out = {}
    for i, (name, centres) in enumerate(layouts.items()):
        image, truth = leaf_image(i, centres)
        path = root / "dir" / f"{name}.png"
        cv2.imwrite(str(path), image)
        out[name] = (path, centres, truth)
    bare = root / "bare.jpg"
    cv2.imwrite(str(bare), soil_texture(np.random.default_rng(9), 300, 400))
    out["bare"] = (bare, [], None)
    return out


def test_detect_writes_boxes_masks_and_json(images: dict, tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    rc = main(["detect", str(images["three"][0].parent), str(images["bare"][0]), "--bundle", str(tiny_bundle),
               "--json", str(out), "--masks", str(tmp_path / "masks"), "--annotate", str(tmp_path / "ann"),
               "--threads", "1"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert isinstance(doc, list) and len(doc) == 3  # one entry per image: the folder's two, then the bare one
    by_name = {Path(e["image"]).stem: e for e in doc}
    for entry in doc:
        assert set(entry) == {"image", "width", "height", "detections"}
        for d in entry["detections"]:
            assert set(d) == {"box", "class", "health", "confidence"}
            assert d["health"] in ("healthy", "diseased", "uncertain", "background")
            assert 0.0 <= d["confidence"] <= 1.0 and d["class"] in CLASSES + ("Leaf___blight",)
    assert by_name["bare"]["detections"] == [] and (by_name["bare"]["width"], by_name["bare"]["height"]) == (400, 300)
    for name in ("three", "one"):
        path, centres, truth = images[name]
        entry = by_name[name]
        assert (entry["width"], entry["height"]) == (640, 480)
        boxes = [d["box"] for d in entry["detections"]]
        assert len(boxes) == len(centres)
        for cx, cy in centres:  # each leaf has its own box, around it
            assert sum(x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in boxes) == 1
        mask = cv2.imread(str(tmp_path / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (480, 640) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        veg = mask == 255
        iou = (veg & truth).sum() / (veg | truth).sum()
        assert iou > 0.8, iou
        annotated = cv2.imread(str(tmp_path / "ann" / f"{name}.jpg"))
        assert annotated.shape == (480, 640, 3)
        assert np.abs(annotated.astype(int) - cv2.imread(str(path)).astype(int)).max() > 100  # something drawn
    bare_mask = cv2.imread(str(tmp_path / "masks" / "bare.png"), cv2.IMREAD_UNCHANGED)
    assert bare_mask.shape == (300, 400) and not bare_mask.any()


def test_detect_reports_missing_inputs(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["detect", str(tmp_path / "nope.jpg"), "--bundle", str(tiny_bundle), "--json", str(tmp_path / "o.json")])
    assert rc == 2 and "no such image or folder" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


class FakeClassifier:
    """Test double of LeafClassifier: the first crop is background, the rest a plant of class 1."""

    classes = ["background", "Leaf___healthy"]

    def classify(self, crops):
        from leafscout.vision.classifier import Prediction

        return [Prediction(-1, 0.9, 0, "background", 0.9) if i == 0 else Prediction(1, 0.8, 1, "healthy", 0.8)
                for i in range(len(crops))]

    def health(self, pred) -> str:
        return pred.health


def test_the_classifiers_health_decides_background(images: dict) -> None:
    from leafscout.training.data import read_image
    from leafscout.vision.detect import Detector

    found = Detector(FakeClassifier())(read_image(images["three"][0]))
    assert [d.health for d in found.detections] == ["background", "healthy", "healthy"]
    assert found.detections[0].to_json()["class"] == "background" and found.mask is None
    boxes_only = Detector(None)(read_image(images["three"][0]), mask=True)
    assert [d.health for d in boxes_only.detections] == ["uncertain"] * 3 and boxes_only.mask.shape == (480, 640)


def test_the_classifier_sees_the_leaf_on_the_reference_soil_after_the_gains(images: dict) -> None:
    """The robot's loop and `leafscout detect` crop alike: square, colour-corrected, and everything
    but the leaf painted the soil colour the model knows (exactly that colour after the gains)."""
    from leafscout.training.data import read_image
    from leafscout.vision.detect import leaf_crop
    from leafscout.vision.localize import LeafLocalizer, square_crop
    from leafscout.vision.white_balance import SOIL_BGR, apply_gains

    image = read_image(images["one"][0])
    (d,) = LeafLocalizer()(image)
    gains = np.array([1.2, 1.0, 0.8], np.float32)
    crop = leaf_crop(image, d.box, d, margin=0.1, gains=gains, fill=SOIL_BGR)
    assert np.abs(crop[0, 0].astype(int) - np.array(SOIL_BGR)).max() <= 1  # the corner was soil
    c = crop.shape[0] // 2
    plain = apply_gains(square_crop(image, d.box, 0.1), gains)
    assert (crop[c - 3 : c + 3, c - 3 : c + 3] == plain[c - 3 : c + 3, c - 3 : c + 3]).all()  # the leaf, corrected
    assert (leaf_crop(image, d.box, d, margin=0.1, gains=gains, fill=None) == plain).all()  # painting off
    assert (leaf_crop(image, d.box, None, margin=0.1, fill=SOIL_BGR) == square_crop(image, d.box, 0.1)).all()
