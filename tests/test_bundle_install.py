"""`leafscout bundle install`: signature, hashes, downgrade, self-test, atomic switch, last-known-good."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from leafscout.deploy.manifest import write_manifest
from leafscout.cli import main
from leafscout.robot.bundle_cli import EXIT_DOWNGRADE, EXIT_REFUSED
from leafscout.robot.bundle_store import STORE_ENV, BundleStore, bundle_version, load_run_bundle


def _keypair(d: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _variant(src: Path, out: Path, created: str, sign_key: Path | None, *, break_selftest: bool = False) -> Path:
    """A consistent copy of ``src`` (hashes, embedded manifest) with another creation time, signed."""
    shutil.copytree(src, out)
    m = json.loads((out / "manifest.json").read_text())
    m["provenance"]["created"] = created
    if break_selftest:  # recorded logits the models do not reproduce
        with np.load(out / "selftest.npz") as z:
            arrays = {k: z[k] for k in z.files}
        for k in ("fp32_logits", "int8_logits"):
            if k in arrays:
                arrays[k] = arrays[k] + 3.0
        np.savez(out / "selftest.npz", **arrays)
    extra = tuple(n for n in ("split.json.gz", "split.json", "selftest.npz") if (out / n).is_file())
    write_manifest(out, m, extra_files=extra, sign_key=sign_key)
    return out


@pytest.fixture(scope="module")
def kit(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_kit(tiny_bundle, tmp_path_factory.mktemp("install"))


def make_kit(tiny_bundle: Path, d: Path) -> dict:
    """A release key pair and signed variants of ``tiny_bundle``: v1 < v2, forged, unsigned, badtest."""
    priv, pub = _keypair(d, "release")
    other, _ = _keypair(d, "intruder")
    return {
        "pub": pub,
        "v1": _variant(tiny_bundle, d / "v1", "2026-12-01T10:00:00+00:00", priv),
        "v2": _variant(tiny_bundle, d / "v2", "2026-12-02T10:00:00+00:00", priv),
        "forged": _variant(tiny_bundle, d / "forged", "2026-12-03T10:00:00+00:00", other),
        "unsigned": _variant(tiny_bundle, d / "unsigned", "2026-12-03T10:00:00+00:00", None),
        "badtest": _variant(tiny_bundle, d / "badtest", "2026-12-04T10:00:00+00:00", priv, break_selftest=True),
    }


def _install(kit: dict, store: Path, name: str, *extra: str) -> int:
    return main(["bundle", "install", str(kit[name]), "--pubkey", str(kit["pub"]), "--bundles", str(store), *extra])


def _version(b: Path) -> str:
    return bundle_version(json.loads((b / "manifest.json").read_text())).name


def test_install_switches_and_keeps_last_known_good(kit: dict, tmp_path: Path) -> None:
    store = tmp_path / "bundles"
    assert _install(kit, store, "v1") == 0
    s = BundleStore(store)
    assert s.current.name == _version(kit["v1"]) and s.previous is None
    assert (store / "current").is_symlink() and not (store / "current").readlink().is_absolute()
    assert _install(kit, store, "v2") == 0
    assert s.current.name == _version(kit["v2"]) and s.previous.name == _version(kit["v1"])
    assert _install(kit, store, "v2") == 0  # already current: nothing changes
    assert s.previous.name == _version(kit["v1"])
    assert sorted(p.name for p in (store / "versions").iterdir()) == sorted([_version(kit["v1"]), _version(kit["v2"])])


def test_bad_signature_or_tampered_file_is_refused(kit: dict, tmp_path: Path, capsys) -> None:
    store = tmp_path / "bundles"
    assert _install(kit, store, "v1") == 0
    assert _install(kit, store, "forged") == EXIT_REFUSED
    assert "does not verify" in capsys.readouterr().err
    assert _install(kit, store, "unsigned") == EXIT_REFUSED
    assert "no manifest.sig" in capsys.readouterr().err
    tampered = Path(shutil.copytree(kit["v2"], tmp_path / "tampered"))
    with open(tampered / "model.onnx", "ab") as f:  # signature still fine: the manifest is unchanged
        f.write(b"\0")
    kit2 = {**kit, "tampered": tampered}
    assert _install(kit2, store, "tampered") == EXIT_REFUSED
    assert "sha256" in capsys.readouterr().err
    s = BundleStore(store)
    assert s.current.name == _version(kit["v1"]) and s.previous is None
    assert [p.name for p in (store / "versions").iterdir()] == [_version(kit["v1"])]  # no staging left behind


def test_downgrade_refused_unless_allowed(kit: dict, tmp_path: Path, capsys) -> None:
    store = tmp_path / "bundles"
    assert _install(kit, store, "v1") == 0 and _install(kit, store, "v2") == 0
    assert _install(kit, store, "v1") == EXIT_DOWNGRADE
    assert "--allow-downgrade" in capsys.readouterr().err
    s = BundleStore(store)
    assert s.current.name == _version(kit["v2"])
    assert _install(kit, store, "v1", "--allow-downgrade") == 0
    assert s.current.name == _version(kit["v1"]) and s.previous.name == _version(kit["v2"])


def test_failing_self_test_is_refused(kit: dict, tmp_path: Path, capsys) -> None:
    store = tmp_path / "bundles"
    assert _install(kit, store, "v1") == 0
    assert _install(kit, store, "badtest") == EXIT_REFUSED
    assert "self-test failed" in capsys.readouterr().err
    assert BundleStore(store).current.name == _version(kit["v1"])


def test_runtime_falls_back_to_last_known_good(kit: dict, tmp_path: Path, monkeypatch, caplog) -> None:
    store = tmp_path / "bundles"
    assert _install(kit, store, "v1") == 0 and _install(kit, store, "v2") == 0
    s = BundleStore(store)
    # The current bundle breaks on the robot's disk after install: its self-test fails (files consistent).
    current = s.current
    shutil.rmtree(current)
    _variant(kit["v2"], current, "2026-12-02T10:00:00+00:00", None, break_selftest=True)
    monkeypatch.setenv(STORE_ENV, str(store))
    with caplog.at_level(logging.WARNING, logger="leafscout.robot.bundle_store"):
        bundle = load_run_bundle(None, threads=1)  # what `leafscout run` without --bundle loads
    assert bundle.path == s.previous and bundle.store_slot == "previous"
    assert "self-test failed" in caplog.text and "last-known-good" in caplog.text
    # Current unreadable (a file missing): the same fallback, also when the store is named by --bundle.
    (current / "model.onnx").unlink()
    assert load_run_bundle(store, threads=1).path == s.previous
    # Nothing usable at all: a clear error, not the reference bundle behind the robot's back.
    shutil.rmtree(s.previous)
    with pytest.raises(Exception, match="no usable bundle"):
        load_run_bundle(store, threads=1)


def test_run_without_store_uses_reference_bundle(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "empty"))
    from leafscout.vision.bundle import default_bundle_path

    assert load_run_bundle(None, threads=1).path == default_bundle_path()
