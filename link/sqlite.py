"""SQLite as both ends keep it: WAL, fsync on commit, a busy timeout (the outbox, the survey store, the station)."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_wal(path: str | Path, schema: str) -> sqlite3.Connection:
    """A connection in WAL mode with fsync on every commit, usable from any thread (lock it)."""
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(schema)
    return conn
