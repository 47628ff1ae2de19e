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


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lenet_bn bundle trained for a few steps on synthetic leaves, exported through deploy (~10 s)."""
    from leafscout.deploy.export import export_bundle
    from leafscout.deploy.testing import make_tiny_run

    root = tmp_path_factory.getbasetemp() / "robot_tiny_bundle"
    if not (root / "bundle" / "manifest.json").is_file():
        calibration = {"temperature": 1.0, "abstain_below": 0.5}
        ckpt = make_tiny_run(root / "run", model_name="lenet_bn", per_class=40, steps=80, calibration=calibration)
        export_bundle(ckpt, root / "bundle")
    return root / "bundle"


def require_postgres() -> None:
    """PostgreSQL's server programs and psycopg; in CI a missing one fails, elsewhere it skips."""
    from leafscout.station.pg_server import find_pg_bin

    problem = None
    if find_pg_bin() is None:
        problem = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; make test installs "
                   "Debian's postgresql when run as root)")
    else:
        try:
            import psycopg  # noqa: F401
        except ModuleNotFoundError:
            problem = "psycopg is not installed (pip install 'psycopg[binary]')"
    if problem is not None:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on loopback for the whole session (fsync off), started on
    first use and stopped at the end; ``postgres_server.database()`` gives a fresh database."""
    require_postgres()
    from leafscout.station.pg_server import PostgresServer

    with PostgresServer(fast=True) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def db_target(request, tmp_path):
    """A fresh station database on each backend: a SQLite file path or a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "station.db"
    return request.getfixturevalue("postgres_server").database()
