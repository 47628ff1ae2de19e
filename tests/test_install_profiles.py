"""`pip install leafscout[robot]`: a fresh environment without torch runs a recorded field.

Builds the wheel from this checkout, installs it with only the ``robot`` extra into a new
virtual environment (dependencies come from the package index or pip's cache), and runs
the robot's commands there. Slow (a minute or two), so it runs once per suite.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from leafscout.robot.simulate import FieldConfig, simulate_run

REPO = Path(__file__).resolve().parents[1]
GENERIC = ("robot", "vision", "training", "deploy", "station", "link")
HEAVY = ("torch", "torchvision", "fastapi", "matplotlib", "onnx")

pytestmark = pytest.mark.slow


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools' build/ folder would otherwise keep files of modules since removed.
    src = out / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "bench_out", "demo_out", "runs", "*.egg-info", "__pycache__", ".pytest_cache"))
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src],
                timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (whl,) = out.glob("leafscout-*.whl")
    return whl


@pytest.fixture(scope="module")
def robot_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("robot-venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    done = _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[robot]"], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir


def test_the_wheel_installs_everything_inside_the_leafscout_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"leafscout"}, f"the wheel installs top-level {sorted(tops - {'leafscout'})}"
    for part in GENERIC:
        assert f"leafscout/{part}/__init__.py" in names, part
    assert "leafscout/vision/reference_bundle/manifest.json" in names
    assert any(n.startswith("leafscout/station/web/templates/") for n in names)


def test_the_robot_extra_pulls_no_training_or_station_stack(wheel: Path) -> None:
    meta = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist()
                                            if n.endswith(".dist-info/METADATA"))).decode()
    base = [line.split(":", 1)[1].strip() for line in meta.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert base, "no base requirements found in the wheel's METADATA"
    names = {re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower() for req in base}
    assert {"numpy", "onnxruntime", "opencv-python-headless", "pyserial", "paho-mqtt"} <= names
    assert not names & {h.lower() for h in HEAVY}, f"the robot's install requires {sorted(names & set(HEAVY))}"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("torch") for r in extras["train"])
    assert not any(r.startswith("torch==") for r in extras["train"]), "torch is a floor, not a pin"


def test_a_robot_only_install_runs_a_recorded_field_without_torch(robot_env: Path, tmp_path: Path) -> None:
    py, leafscout = robot_env / "bin" / "python", robot_env / "bin" / "leafscout"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    assert not [p for p in GENERIC if (site / p).exists()], "generic top-level packages in site-packages"
    probe = _run([py, "-c", "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (HEAVY,)])
    assert probe.stdout.strip() == "[]", f"the robot install has {probe.stdout.strip()}"

    # A field recorded on the workstation, replayed on the robot's install.
    run = simulate_run(tmp_path / "field", FieldConfig(rows=1, row_length_m=3.0, lines=1, fps=20.0, seed=11))
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = _run([py, "-X", "importtime", "-m", "leafscout", "run", "--camera", run / "field.avi",
                 "--gps", run / "gps.nmea", "--report", report, "--threads", "1"],
                cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "leafscout" in imported and "onnxruntime" in imported and "cv2" in imported
    assert not imported & set(HEAVY), f"the run imported {sorted(imported & set(HEAVY))}"
    truth = json.loads((run / "truth.json").read_text())
    counted = json.loads(report.read_text())["plants"]
    assert truth["plants_total"] > 0 and abs(counted - truth["plants_total"]) <= max(1, round(0.05 * truth["plants_total"]))

    ref = _run([py, "-c", "from leafscout.vision.bundle import default_bundle_path as d; print(d())"],
               cwd=tmp_path, env=env).stdout.strip()
    assert ref.startswith(str(site)), ref  # the packaged reference bundle, inside site-packages
    done = _run([leafscout, "verify", ref], cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "self-test" in done.stdout and "skipped" in done.stdout  # graph/parity checks need [train]

    done = _run([leafscout, "train", "--data", tmp_path, "--out", tmp_path / "t"], cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2 and "leafscout[train]" in done.stderr, done.stderr[-2000:]
