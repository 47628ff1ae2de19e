"""Shared fixtures: where real data lives, system dependencies, small synthetic sets."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LEAFSCOUT_SHARED", REPO.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """Path of a system program; in CI a missing one fails the test, elsewhere it skips."""
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if path is None:
        msg = f"system program {name!r} is not installed (make test installs it when run as root)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def plantvillage_dir() -> Path | None:
    """The shared real PlantVillage folder, or None when this machine has none."""
    d = SHARED_DATA / "plantvillage"
    return d if d.is_dir() else None


@pytest.fixture(scope="session")
def plantvillage_csv() -> Path | None:
    p = SHARED_DATA / "plantvillage.csv"
    return p if p.is_file() else None
