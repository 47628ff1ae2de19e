"""A real PostgreSQL server on a free loopback port, for tests and benchmarks.

Debian's ``postgresql`` package puts ``initdb`` and ``pg_ctl`` under
``/usr/lib/postgresql/VERSION/bin`` (not on PATH). They refuse to run as root, so as root
the server runs as the ``postgres`` system user (``runuser``), in a fresh directory under
``/tmp`` that holds the data directory and the unix socket. ``fast=True`` turns off
fsync (tests: a crash loses nothing that matters); benchmarks keep PostgreSQL's defaults.
``database()`` makes a new empty database and returns its URL; ``replica()`` starts a
hot-standby streaming replica of the whole server (``pg_basebackup -R``), as a farm's
dashboard server would read from.
"""
from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from leafscout.station.broker import free_port

SUPERUSER = "leafscout"


class PostgresServerError(RuntimeError):
    """PostgreSQL is not installed or would not start."""


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` (or ``initdb`` on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    """``with PostgresServer() as pg: url = pg.database()``; stopped and removed on exit."""

    def __init__(self, *, fast: bool = True, bin_dir: Path | None = None, primary: "PostgresServer | None" = None):
        self.bin = bin_dir or find_pg_bin()
        if self.bin is None:
            raise PostgresServerError("PostgreSQL is not installed (apt-get install postgresql)")
        self.fast = fast
        self.port = free_port()
        self.dir: Path | None = None
        self.primary = primary  # set on a replica: its data comes from pg_basebackup of this server
        self._names = itertools.count(1)
        self._replicas: list[PostgresServer] = []

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:  # initdb and the server refuse root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PostgresServerError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")

    def start(self) -> "PostgresServer":
        self.dir = Path(tempfile.mkdtemp(prefix="leafscout-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        if self.primary is None:
            self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync",
                      "--locale=C")
        else:  # a copy of the primary that follows its WAL (standby.signal, primary_conninfo)
            self._run("pg_basebackup", "-d", f"host=127.0.0.1 port={self.primary.port} user={SUPERUSER}",
                      "-D", str(data), "-R", "--no-sync", "-X", "stream")
        settings = {"listen_addresses": "'127.0.0.1'", "port": str(self.port),
                    "unix_socket_directories": f"'{self.dir}'", "shared_buffers": "'32MB'",
                    "max_connections": "200"}
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        with open(data / "postgresql.conf", "a") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "server.log"), "-w", "-t", "30", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str | None = None) -> str:
        """A new empty database (``ldb1``, ``ldb2``... unless named); its URL."""
        import psycopg

        name = name or f"ldb{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return self.url(name)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every client connection is cut, as in a server reboot."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"), "-m", "fast", "-w",
                  "-t", "30", "restart")

    def replica(self) -> "PostgresServer":
        """Start a hot-standby replica of this server (stopped with it); its ``url(name)``
        reads the same databases, a moment behind."""
        replica = PostgresServer(fast=self.fast, bin_dir=self.bin, primary=self).start()
        self._replicas.append(replica)
        return replica

    def caught_up(self, replica: "PostgresServer") -> bool:
        """Whether ``replica`` has replayed everything this server has written so far."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        with psycopg.connect(replica.url(), autocommit=True) as conn:
            return conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]

    def stop(self) -> None:
        for replica in self._replicas:
            replica.stop()
        self._replicas.clear()
        if self.dir is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
