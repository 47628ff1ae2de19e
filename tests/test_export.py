"""Export end to end on a really trained tiny run: ONNX graph, parity gate, int8 gate, CLI, verify."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from leafscout.deploy.data import SPLIT_MANIFEST_NAME, load_images
from leafscout.deploy.errors import BundleExistsError, DeployDataError, ParityError
from leafscout.deploy.evaluate import evaluate_bundle
from leafscout.deploy.export import export_bundle, selftest_samples
from leafscout.deploy.fold import FoldError
from leafscout.deploy.onnx_export import op_counts
from leafscout.deploy.testing import make_tiny_run
from leafscout.deploy.verify import verify_bundle
from leafscout.cli import main
from leafscout.training.checkpoint import checkpoint_preprocess, load_checkpoint, save_checkpoint
from leafscout.training.split import load_split
from leafscout.vision.bundle import FORMAT, INT8_NAME, load_bundle, softmax


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A lenet_bn trained well enough on synthetic leaves that int8 keeps its accuracy."""
    return make_tiny_run(tmp_path_factory.mktemp("run") / "run", model_name="lenet_bn", per_class=100, steps=400)


@pytest.fixture(scope="module")
def bundle(run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    export_bundle(run, out, int8=True)
    return out


def _test_images(run: Path, bundle: Path):
    b = load_bundle(bundle, int8=False)
    split = load_split(run.parent / SPLIT_MANIFEST_NAME)
    return b, *load_images(split.samples("test"), b.spec)


def test_onnx_graph_is_clean_and_folded(bundle: Path) -> None:
    model = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    ops = op_counts(model)
    assert ops["BatchNormalization"] == 0 and ops["Conv"] == 2 and ops["Gemm"] == 3
    assert model.opset_import[0].version >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and out.name == "logits"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # dynamic batch
        assert sess.run(None, {"image": np.zeros((n, 3, 32, 32), np.float32)})[0].shape == (n, 4)


def test_manifest_is_complete(run: Path, bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format"] == FORMAT
    assert m["classes"] == ["Leaf___blight", "Leaf___healthy", "Leaf___rust", "Leaf___spot"]
    assert m["preprocess"] == {"size": [32, 32], "color": "RGB", "interpolation": "area", "scale": 1 / 255,
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert set(m["files"]) == {"model.onnx", INT8_NAME, "split.json.gz", "selftest.npz"}
    assert m["model"]["name"] == "lenet_bn" and m["model"]["bn_folded"] is True
    assert m["model"]["args"] == {"num_classes": 4} and m["model"]["params"] > 0 and m["model"]["macs"] > 0
    assert m["metrics"]["split"] == "test" and m["metrics"]["fp32"]["n"] == m["metrics"]["int8"]["n"] > 0
    assert "calibration" not in m  # the checkpoint has none
    prov = m["provenance"]
    assert prov["checkpoint_sha256"] and prov["split_manifest_sha256"] == load_split(run.parent / "split.json").sha256
    assert prov["created"] and prov["versions"]["leafscout"]
    embedded = json.loads({p.key: p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props}["leafscout.manifest"])
    assert embedded == {k: v for k, v in m.items() if k != "files"}


def test_selftest_keeps_its_size_whatever_the_input_size(bundle: Path) -> None:
    with np.load(bundle / "selftest.npz") as z:  # 32x32 inputs: the full 16, with the logits of both models
        assert z["inputs"].shape[0] == z["fp32_logits"].shape[0] == z["int8_logits"].shape[0] == 16
    assert [selftest_samples((s, s)) for s in (32, 96, 112, 128, 512)] == [16, 16, 11, 9, 4]


def test_parity_against_pytorch_with_bn(run: Path, bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["parity"]["ok"] and len(m["parity"]["pairs"]) == 3
    assert all(p["max_abs_diff"] <= 1e-4 and p["top1_agreement"] == 1.0 for p in m["parity"]["pairs"])
    # Independently: the checkpoint's BN model against the loaded bundle, on the same images.
    b, x, y = _test_images(run, bundle)
    model, _ = load_checkpoint(run)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = b.logits(x)
    assert np.abs(ref - got).max() <= 1e-4
    assert (ref.argmax(1) == got.argmax(1)).all()
    assert abs(m["metrics"]["fp32"]["top1"] - (got.argmax(1) == y).mean()) < 1e-12


def test_int8_is_static_qdq_per_channel_and_passes_the_gate(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    q = m["quantization"]
    assert q["written"] and q["gate"]["ok"] and q["gate"]["drop_points"] <= 0.5 and q["calibration_images"] > 0
    model = onnx.load(str(bundle / INT8_NAME))
    ops = op_counts(model)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0 and ops["BatchNormalization"] == 0
    inits = {i.name: i for i in model.graph.initializer}
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[1] in inits and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
    assert per_channel, "expected per-channel weight scales"
    weights = [onnx.numpy_helper.to_array(inits[n.input[0]]) for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    limit = 64 if q["reduce_range"] else 127  # 7-bit weights when that recipe was the more accurate one
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= limit
    assert [t["reduce_range"] for t in q["tried"]] in ([True, False], [False, True])
    b8 = load_bundle(bundle)  # int8 is the default when present
    assert b8.is_int8 and b8.classes == m["classes"]


def test_int8_gate_forced_failure_writes_no_int8(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    rc = main(["export", str(run), "--out", str(out), "--int8", "--int8-max-drop", "-1"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "int8 was asked for but not written" in captured.err and "REJECTED" in captured.err
    assert (out / "model.onnx").is_file() and not (out / INT8_NAME).exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantization"]["requested"] and not m["quantization"]["written"]
    assert "allowed -1" in m["quantization"]["reason"] and m["metrics"]["int8"] is None
    assert not load_bundle(out).is_int8


def test_parity_failure_writes_nothing(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    with pytest.raises(ParityError, match=r"(?s)parity gate failed.*FAIL") as err:
        export_bundle(run, out, parity_tolerance=0.0)
    assert not err.value.report.ok
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half bundle, no temp dir left


def test_export_refuses_existing_out_and_unfoldable_models(run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleExistsError, match="--force"):
        export_bundle(run, tmp_path / "b")
    after = make_tiny_run(tmp_path / "after", model_name="lenet_bn_after", steps=2, data_dir=run.parent / "data")
    assert main(["export", str(after), "--out", str(tmp_path / "a")]) == 1
    assert "FoldError" in capsys.readouterr().err and not (tmp_path / "a").exists()
    with pytest.raises(FoldError, match="follows ReLU"):
        export_bundle(after, tmp_path / "a")


def test_export_without_split_or_images_says_what_is_missing(run: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.pt"
    shutil.copy(run, lonely)
    with pytest.raises(DeployDataError, match="split.json"):
        export_bundle(lonely, tmp_path / "b")
    with pytest.raises(DeployDataError, match="--data"):
        export_bundle(run, tmp_path / "b", data=tmp_path / "nowhere")


def test_calibration_is_copied_and_used(run: Path, tmp_path: Path) -> None:
    model, ckpt = load_checkpoint(run)
    ckpt_dir = tmp_path / "calibrated"
    ckpt_dir.mkdir()
    shutil.copy(run.parent / SPLIT_MANIFEST_NAME, ckpt_dir / SPLIT_MANIFEST_NAME)
    calibrated = save_checkpoint(
        ckpt_dir / "best.pt", model, model_name=ckpt["model"]["name"], model_args=ckpt["model"]["args"],
        classes=ckpt["classes"], preprocess=checkpoint_preprocess(ckpt), epoch=ckpt["epoch"],
        split_manifest_sha256=ckpt["split_manifest_sha256"], calibration={"temperature": 1.7, "abstain_below": 0.6},
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("how this bundle was made")
    (tmp_path / "b" / "stale.onnx").write_text("from an older export")
    result = export_bundle(calibrated, tmp_path / "b", overwrite=True)
    assert result.manifest["calibration"] == {"temperature": 1.7, "abstain_below": 0.6}
    assert (tmp_path / "b" / "README.md").read_text() == "how this bundle was made"  # kept on --force
    assert not (tmp_path / "b" / "stale.onnx").exists()
    b = load_bundle(tmp_path / "b")
    assert b.temperature == 1.7 and b.abstain_below == 0.6
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert np.allclose(b.probs(x), softmax(b.logits(x) / 1.7), atol=1e-6)


def test_verify_and_eval_reproduce_the_manifest(run: Path, bundle: Path, tmp_path: Path, capsys) -> None:
    # The manifest names its checkpoint by file name and hash only (no path of the exporting machine).
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "skip pytorch parity" in out  # no checkpoint here, but the stored samples still check parity:
    assert "ok   self-test model.onnx" in out and f"ok   self-test {INT8_NAME}" in out
    assert load_bundle(bundle, int8=False).self_test().ok and load_bundle(bundle).self_test().n > 0
    assert main(["verify", str(bundle), "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    assert "bundle OK" in out and "ok   pytorch parity" in out and "ok   int8 gate" in out and "ok   metrics int8" in out
    m = json.loads((bundle / "manifest.json").read_text())
    assert evaluate_bundle(bundle, int8=False)["top1"] == pytest.approx(m["metrics"]["fp32"]["top1"])
    assert evaluate_bundle(bundle)["top1"] == pytest.approx(m["metrics"]["int8"]["top1"])

    moved = tmp_path / "moved"
    shutil.copytree(bundle, moved)
    (moved / "model.onnx").write_bytes((moved / "model.onnx").read_bytes() + b"\0")
    report = verify_bundle(moved)
    assert not report.ok and "BundleHashMismatch" in report.format()
    assert main(["verify", str(moved)]) == 1
    report = verify_bundle(bundle, data=tmp_path / "elsewhere")
    assert not report.ok and "FAIL images" in report.format() and "--data" in report.format()
