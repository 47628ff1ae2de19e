"""Image folder loading: awkward names, odd formats, bad files, leaf groups, synthetic leaves."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from leafscout.training.data import ImageReadError, decode_cached, default_data_dir, read_image, scan_folder
from leafscout.training.synthetic import SYNTHETIC_CLASSES, draw_leaf, generate_dataset

RED_BGR = (0, 0, 255)


def _red_rgb(size: int = 24) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = 255  # RGB red
    return img


@pytest.fixture()
def awkward_folder(tmp_path: Path) -> Path:
    """PlantVillage-style names with spaces, commas and parentheses; mixed formats; bad files."""
    root = tmp_path / "plant village (copy)"
    a = root / "Pepper,_bell___Bacterial_spot"
    b = root / "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    red = _red_rgb()
    Image.fromarray(red).save(a / "0a1b2c3d-0000-4000-8000-000000000001___RS_Erly.B 7 (1).JPG")
    Image.fromarray(red).save(a / "0a1b2c3d-0000-4000-8000-000000000001___second photo.jpg")  # same leaf
    Image.fromarray(red).convert("RGBA").save(a / "rgba leaf, alpha.png")
    Image.fromarray(red).save(a / "png inside.jpg", format="PNG")
    Image.fromarray(red).convert("CMYK").save(b / "cmyk (print).jpg", format="JPEG", quality=95)
    Image.fromarray(red).convert("L").save(b / "grey.jpg", format="JPEG")
    cv2.imwrite(str(b / "sixteen bit.png"), np.full((8, 8, 3), 65535, np.uint16))
    (b / "empty.jpg").write_bytes(b"")
    (b / "notes, not an image.jpg").write_text("this is text")
    (b / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def test_read_image_converts_every_format_to_bgr(awkward_folder: Path) -> None:
    a = awkward_folder / "Pepper,_bell___Bacterial_spot"
    b = awkward_folder / "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot"
    for path in [*a.iterdir(), b / "cmyk (print).jpg"]:
        img = read_image(path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, path
        centre = img[12, 12].astype(int)
        assert abs(centre[2] - 255) <= 6 and centre[0] <= 6 and centre[1] <= 6, (path, centre)
    grey = read_image(b / "grey.jpg")
    assert grey.shape == (24, 24, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    assert read_image(b / "sixteen bit.png").max() == 255


@pytest.mark.parametrize("name, content, reason", [
    ("empty.jpg", b"", "empty file"),
    ("text.jpg", b"hello, not a jpeg", "cannot decode"),
    ("broken.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 64, "cannot decode"),
])
def test_read_image_errors_name_the_path(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as e:
        read_image(path)
    assert str(path) in str(e.value)
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "missing.jpg")


def test_scan_folder_lists_classes_groups_and_bad_files(awkward_folder: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="leafscout.training.data"):
        ds = scan_folder(awkward_folder)
    assert ds.classes == sorted(["Pepper,_bell___Bacterial_spot", "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot"])
    names = {s.path.name: s for s in ds.samples}
    assert set(names) == {
        "0a1b2c3d-0000-4000-8000-000000000001___RS_Erly.B 7 (1).JPG",
        "0a1b2c3d-0000-4000-8000-000000000001___second photo.jpg",
        "rgba leaf, alpha.png", "png inside.jpg", "cmyk (print).jpg", "grey.jpg", "sixteen bit.png",
    }
    pepper = ds.classes.index("Pepper,_bell___Bacterial_spot")
    assert names["png inside.jpg"].label == pepper
    # Two photos of one leaf share its UUID group; other files are their own group.
    assert names["0a1b2c3d-0000-4000-8000-000000000001___second photo.jpg"].group == "0a1b2c3d-0000-4000-8000-000000000001"
    assert names["0a1b2c3d-0000-4000-8000-000000000001___RS_Erly.B 7 (1).JPG"].group == "0a1b2c3d-0000-4000-8000-000000000001"
    assert names["grey.jpg"].group == "grey"
    bad = {p.name: reason for p, reason in ds.bad_files}
    assert bad == {"empty.jpg": "empty file", "notes, not an image.jpg": "not an image (unknown file signature)"}
    for name in bad:  # reported, with the path, never silently
        assert any(name in r.getMessage() for r in caplog.records)


def test_groups_from_csv_override_file_names(awkward_folder: Path, tmp_path: Path) -> None:
    csv = tmp_path / "groups.csv"
    rel = Path(awkward_folder.name) / "Pepper,_bell___Bacterial_spot" / "png inside.jpg"
    csv.write_text(f'file,cls,group\n"{rel.as_posix()}",x,leaf-42\n')
    ds = scan_folder(awkward_folder, groups_csv=csv)
    groups = {s.path.name: s.group for s in ds.samples}
    assert groups["png inside.jpg"] == "leaf-42"
    assert groups["grey.jpg"] == "grey"  # not in the CSV: falls back to the file name
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path,label\n")
    with pytest.raises(ValueError, match="group"):
        scan_folder(awkward_folder, groups_csv=bad_csv)


def test_scan_folder_rejects_non_layouts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "only_one_class").mkdir()
    with pytest.raises(ValueError, match="one sub-folder per class"):
        scan_folder(tmp_path)


def test_decode_cached_reports_undecodable_files_and_reuses_cache(awkward_folder: Path, tmp_path: Path, caplog) -> None:
    ds = scan_folder(awkward_folder)
    broken = ds.samples[0].path.with_name("truncated header.jpg")
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 32)  # passes the signature check, cannot decode
    paths = [s.path for s in ds.samples] + [broken]

    def small(img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (8, 8), interpolation=cv2.INTER_AREA)

    with caplog.at_level(logging.WARNING, logger="leafscout.training.data"):
        arrays, ok = decode_cached(paths, small, "t1", cache_dir=tmp_path / "cache", progress=False)
    assert arrays.shape == (len(paths), 8, 8, 3) and ok[:-1].all() and not ok[-1]
    assert any("truncated header.jpg" in r.getMessage() for r in caplog.records)
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    again, ok2 = decode_cached(paths, lambda im: None, "t1", cache_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(again, arrays) and np.array_equal(ok2, ok)  # from cache, transform unused
    decode_cached(paths, small, "t2", cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # another transform, another cache


def test_default_data_dir_prefers_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEAFSCOUT_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("LEAFSCOUT_DATA", "synthetic")
    assert default_data_dir() is None


def test_real_plantvillage_folder_scans_with_csv_groups(plantvillage_dir, plantvillage_csv) -> None:
    if plantvillage_dir is None or plantvillage_csv is None:
        pytest.skip("shared PlantVillage data not present")
    ds = scan_folder(plantvillage_dir)
    assert len(ds.classes) == 32 and len(ds.samples) >= 11_000
    assert not ds.bad_files
    # Groups come from the CSV (leaf UUIDs), one per image after de-duplication.
    assert len({s.group for s in ds.samples}) == len(ds.samples)
    png_as_anything = [s for s in ds.samples if s.path.suffix.lower() == ".png"]
    for s in png_as_anything[:2]:
        assert read_image(s.path).shape[2] == 3


def test_draw_leaf_masks_the_leaf_and_lesions_stay_inside() -> None:
    rng = np.random.default_rng(0)
    for cls in SYNTHETIC_CLASSES:
        img, mask = draw_leaf(rng, cls, 96)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 255}
        leaf = mask > 0
        assert 0.08 < leaf.mean() < 0.6
        # The backdrop is one plain grey: every pixel outside the mask has the same value.
        outside = img[~leaf]
        assert (outside == outside[0]).all() and outside[0][0] == outside[0][1] == outside[0][2]
    with pytest.raises(ValueError, match="Leaf___healthy"):
        draw_leaf(rng, "Leaf___unknown", 64)


def test_diseased_leaves_have_more_brown_or_orange_than_healthy() -> None:
    def lesion_fraction(cls: str) -> float:
        rng = np.random.default_rng(3)
        fr = []
        for _ in range(20):
            img, mask = draw_leaf(rng, cls, 96)
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            lesion = (hsv[..., 0] < 30) & (mask > 0)  # brown/orange/yellow hues
            fr.append(lesion.sum() / (mask > 0).sum())
        return float(np.mean(fr))

    healthy = lesion_fraction("Leaf___healthy")
    for cls in SYNTHETIC_CLASSES:
        if cls != "Leaf___healthy":
            assert lesion_fraction(cls) > healthy + 0.02, cls


def test_generate_dataset_writes_plantvillage_layout(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "syn", per_class=3, size=48, seed=5)
    ds = scan_folder(root)
    assert ds.classes == sorted(SYNTHETIC_CLASSES)
    assert len(ds.samples) == 3 * len(SYNTHETIC_CLASSES) and not ds.bad_files
    assert len({s.group for s in ds.samples}) == len(ds.samples)  # one leaf per file, no cross-class clash
    assert read_image(ds.samples[0].path).shape == (48, 48, 3)
