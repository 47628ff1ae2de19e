"""Strict bundle loading: every corruption is its own clear error; the docs snippet really works."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leafscout.deploy.manifest import write_manifest
from leafscout.deploy.testing import make_tiny_bundle
from leafscout.training.data import read_image, scan_folder
from leafscout.vision.bundle import (
    INT8_NAME,
    PUBLIC_KEY_ENV,
    BundleClassCountError,
    BundleFormatError,
    BundleHashMismatch,
    BundleMissingFile,
    BundleShapeError,
    BundleSignatureError,
    default_bundle_path,
    load_bundle,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny trained run exported with fp32 and (gate disabled) int8."""
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny"), per_class=24, steps=40, calibration_images=32)


@pytest.fixture
def bundle(source: Path, tmp_path: Path) -> Path:
    """A private copy each test may corrupt."""
    return Path(shutil.copytree(source, tmp_path / "b"))


def _manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def _rewrite(b: Path, **changes) -> None:
    """Re-write the bundle consistently (embedded copy and hashes too) with ``changes`` applied."""
    m = _manifest(b)
    m.update(changes)
    write_manifest(b, m, extra_files=tuple(n for n in ("split.json.gz", "selftest.npz") if (b / n).is_file()))


def _data_dir(bundle: Path) -> Path:
    """The synthetic images the fixture's run was trained on (the root its split manifest recorded)."""
    import gzip

    return Path(json.loads(gzip.decompress((bundle / "split.json.gz").read_bytes()))["root"])


def test_load_gives_a_ready_classifier(bundle: Path) -> None:
    b = load_bundle(bundle)
    m = _manifest(bundle)
    assert b.is_int8 and b.classes == m["classes"] and b.input_name == "image"
    assert b.spec.size == (32, 32) and b.temperature == 1.0 and b.abstain_below is None
    assert b.session.get_providers() == ["CPUExecutionProvider"]
    fp32 = load_bundle(bundle, int8=False, threads=1)
    assert not fp32.is_int8
    sample = scan_folder(_data_dir(bundle)).samples[0]
    probs = fp32.classify([read_image(sample.path)])
    assert probs.shape == (1, 4) and np.isclose(probs.sum(), 1.0, atol=1e-5)
    x = fp32.spec.apply_batch([read_image(sample.path)] * 3)
    assert fp32.logits(x).shape == (3, 4)
    # Unavailable accelerators are skipped, CPU stays.
    gpu = load_bundle(bundle, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert "CPUExecutionProvider" in gpu.session.get_providers()


def test_flipped_byte_is_a_hash_mismatch(bundle: Path) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleHashMismatch, match=r"model\.onnx has sha256 [0-9a-f]{64}, manifest says"):
        load_bundle(bundle, int8=False)
    with pytest.raises(BundleHashMismatch):  # every listed file is checked, whichever model is used
        load_bundle(bundle, int8=True)


@pytest.mark.parametrize("victim", ["model.onnx", "manifest.json", "split.json.gz"])
def test_missing_files(bundle: Path, victim: str) -> None:
    (bundle / victim).unlink()
    with pytest.raises(BundleMissingFile, match=re.escape(victim)):
        load_bundle(bundle)


def test_missing_directory_and_missing_int8(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleMissingFile, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleMissingFile, match="is a file; pass the bundle directory"):
        load_bundle(bundle / "model.onnx")
    assert load_bundle(bundle / "manifest.json").classes  # the manifest's path is as good as its folder
    _rewrite(bundle)
    (bundle / INT8_NAME).unlink()
    _rewrite(bundle)  # a consistent fp32-only bundle
    assert not load_bundle(bundle).is_int8
    with pytest.raises(BundleMissingFile, match="--int8"):
        load_bundle(bundle, int8=True)


def test_unknown_format_version(bundle: Path) -> None:
    m = _manifest(bundle)
    m["format"] = "leafscout-bundle/2"
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleFormatError, match=r"'leafscout-bundle/2'.*reads 'leafscout-bundle/1'"):
        load_bundle(bundle)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        load_bundle(bundle)


@pytest.mark.parametrize("calibration, match", [({"temperature": 0, "abstain_below": None}, "temperature must be"),
                                                ({"temperature": 1.2, "abstain_below": 1.5}, "abstain_below must be"),
                                                ({"temperature": 1.2, "background_temperature": 0},
                                                 "background_temperature must be a number > 0"),
                                                ({"temperature": 1.2, "background_temperature": 0.5},
                                                 "background_temperature but the bundle has no background class")])
def test_bad_calibration_is_refused(bundle: Path, calibration: dict, match: str) -> None:
    _rewrite(bundle, calibration=calibration)
    with pytest.raises(BundleFormatError, match=match):
        load_bundle(bundle)


def test_hand_edited_manifest_is_caught(bundle: Path) -> None:
    m = _manifest(bundle)
    m["classes"] = list(reversed(m["classes"]))  # same count, wrong order: the silent killer
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleFormatError, match=r"disagrees with the manifest embedded.*\['classes'\]"):
        load_bundle(bundle)


def test_class_count_must_match_the_model_output(bundle: Path) -> None:
    m = _manifest(bundle)
    _rewrite(bundle, classes=m["classes"] + ["Leaf___extra"])
    with pytest.raises(BundleClassCountError, match="outputs 4 classes but the manifest lists 5"):
        load_bundle(bundle)


def test_input_shape_must_match_the_preprocessing(bundle: Path, source: Path) -> None:
    m = _manifest(bundle)
    _rewrite(bundle, preprocess={**m["preprocess"], "size": [48, 48]})
    with pytest.raises(BundleShapeError, match=r"takes input of shape \['batch', 3, 32, 32\].*\[N, 3, 48, 48\]"):
        load_bundle(bundle)
    b = load_bundle(source)
    with pytest.raises(BundleShapeError, match=r"got \[3, 32, 32\]; add a batch axis"):
        b.logits(np.zeros((3, 32, 32), np.float32))


def test_signature(bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    wrong = other.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    with pytest.raises(BundleSignatureError, match="no manifest.sig"):
        load_bundle(bundle, public_key=public)
    write_manifest(bundle, _manifest(bundle), extra_files=("split.json.gz",), sign_key=key_file)
    assert load_bundle(bundle, public_key=public).classes
    with pytest.raises(BundleSignatureError, match="does not verify"):
        load_bundle(bundle, public_key=wrong)
    (tmp_path / "pub").write_bytes(wrong)
    monkeypatch.setenv(PUBLIC_KEY_ENV, str(tmp_path / "pub"))
    with pytest.raises(BundleSignatureError, match="does not verify"):
        load_bundle(bundle)
    monkeypatch.delenv(PUBLIC_KEY_ENV)
    assert load_bundle(bundle).classes  # no key configured: signature not required


def _doc_snippet() -> str:
    text = (REPO / "docs" / "bundle.md").read_text()
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, "docs/bundle.md must contain a ```python snippet"
    return match.group(1)


def test_docs_snippet_matches_bundle_probs(bundle: Path, tmp_path: Path) -> None:
    snippet = _doc_snippet()
    assert len(snippet.strip().splitlines()) <= 25
    modules = {name.split(".")[0] for line in re.findall(r"^(?:import|from) (.+?)(?: import .*)?$", snippet, re.M)
               for name in re.split(r"\s*,\s*", line) for name in [name.split(" as ")[0].strip()]}
    assert modules <= {"json", "sys", "cv2", "numpy", "onnxruntime"}, modules
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    image = next(p for p in sorted(_data_dir(bundle).rglob("*.jpg")))
    out = subprocess.run([sys.executable, str(script), str(bundle), str(image)], capture_output=True, text=True,
                         check=True, timeout=120)
    got = json.loads(out.stdout)
    b = load_bundle(bundle, int8=False)
    want = b.classify([read_image(image)])[0]
    assert list(got) == b.classes
    assert np.allclose(list(got.values()), want, atol=1e-5)


def test_docs_snippet_applies_the_background_temperature(bundle: Path, tmp_path: Path) -> None:
    """A field bundle: crops whose best class is background are scaled by their own temperature."""
    from leafscout.vision.taxonomy import BACKGROUND, Taxonomy

    classes = _manifest(bundle)["classes"][:-1] + [BACKGROUND]
    _rewrite(bundle, classes=classes, taxonomy=Taxonomy.from_names(classes).to_json(), background_class=BACKGROUND,
             calibration={"temperature": 1.3, "abstain_below": None, "background_temperature": 0.4})
    b = load_bundle(bundle, int8=False)
    assert b.background_temperature == 0.4 and b.background_index == len(classes) - 1
    picked: dict[bool, Path] = {}  # best class is background -> an image
    for image in sorted(_data_dir(bundle).rglob("*.jpg")):
        logits = b.logits(b.spec.apply_batch([read_image(image)]))[0]
        picked.setdefault(bool(logits.argmax() == b.background_index), image)
        if len(picked) == 2:
            break
    assert set(picked) == {True, False}, "the fixture's model should call some images background and some not"
    script = tmp_path / "snippet.py"
    script.write_text(_doc_snippet())
    for is_background, image in picked.items():
        out = subprocess.run([sys.executable, str(script), str(bundle), str(image)], capture_output=True, text=True,
                             check=True, timeout=120)
        got = np.array(list(json.loads(out.stdout).values()))
        logits = b.logits(b.spec.apply_batch([read_image(image)]))[0]
        t = 0.4 if is_background else 1.3
        want = np.exp((logits - logits.max()) / t)
        np.testing.assert_allclose(got, want / want.sum(), atol=1e-5)
        np.testing.assert_allclose(got, b.classify([read_image(image)])[0], atol=1e-5)


def test_bundle_module_imports_without_torch() -> None:
    """The robot has numpy, OpenCV and onnxruntime only: vision/bundle.py must not need torch."""
    code = (
        "import sys, types; sys.modules['torch'] = None\n"
        f"pkg = types.ModuleType('vision'); pkg.__path__ = [{str(REPO / 'vision')!r}]; sys.modules['vision'] = pkg\n"
        "import vision.bundle as vb; assert vb.load_bundle and 'torch' not in [k for k, v in sys.modules.items() if v]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_default_bundle_path_is_inside_the_package() -> None:
    assert default_bundle_path() == REPO / "vision" / "reference_bundle"


def test_reference_bundle_ships_with_the_package() -> None:
    """Every file of the reference bundle must match pyproject's package-data, or pip install drops it."""
    import fnmatch
    import tomllib

    ref = default_bundle_path()
    if not (ref / "manifest.json").is_file():
        pytest.skip("no reference bundle committed yet")
    b = load_bundle(ref)
    assert b.manifest["model"]["name"] in ("leafnet_bn", "leafnet_bn_deep") and b.background_class == "background"
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    names = ["manifest.json", *json.loads((ref / "manifest.json").read_text())["files"]]
    missing = [n for n in names
               if not any(fnmatch.fnmatch(n, pat) for pat in data.get("*", []))
               and not any(fnmatch.fnmatch(f"reference_bundle/{n}", pat) for pat in data.get("leafscout.vision", []))]
    assert not missing, f"pyproject.toml package-data does not ship {missing} of {ref}"
    assert sum((ref / n).stat().st_size for n in names) <= 5 * 1024 * 1024


def test_self_test_catches_a_model_that_no_longer_gives_its_recorded_logits(bundle: Path) -> None:
    assert load_bundle(bundle, int8=False).self_test().ok
    with np.load(bundle / "selftest.npz") as z:
        arrays = dict(z)
    arrays["fp32_logits"] = arrays["fp32_logits"] + 0.01  # what another model (or a broken runtime) would give
    np.savez_compressed(bundle / "selftest.npz", **arrays)
    _rewrite(bundle)
    result = load_bundle(bundle, int8=False).self_test()
    assert result.ok is False and result.max_abs_diff == pytest.approx(0.01, rel=1e-3) and "allowed" in result.detail
