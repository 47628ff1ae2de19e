"""The station's SQL on two databases: SQLite (a file, the default) and PostgreSQL (a URL).

Every schema statement and query is written once, in SQLite's spelling with ``?``
placeholders and standard upserts (``INSERT ... ON CONFLICT``), and kept to what both
databases accept: integer flags compared with ``= 1``, ``1=1`` for "no condition",
table-qualified columns in upserts. On PostgreSQL a :class:`PgConnection` translates the
few remaining differences as a statement is first run (cached):

- ``?`` placeholders become ``%s`` (a literal ``%`` becomes ``%%``);
- column types: ``REAL`` -> ``DOUBLE PRECISION`` (PostgreSQL's REAL is 4 bytes),
  ``INTEGER`` -> ``BIGINT`` (SQLite's integers are 64-bit), ``BLOB`` -> ``BYTEA``;
- ``group_concat(DISTINCT x)`` -> ``string_agg(DISTINCT x, ',')``;
- append order: the dashboard reads what was stored since its last look by ``rowid``
  (``WHERE rowid > ? ORDER BY rowid``). SQLite gives every table that integer; on
  PostgreSQL the tables marked ``/*rowid*/`` in the schema get a real column of that
  name (an identity column with a unique index). Writers on PostgreSQL take one advisory
  lock per transaction (:data:`WRITE_LOCK`), so, as in SQLite, transactions commit one at
  a time and ``rowid`` grows in commit order: a reader (or a replica) never sees a row
  before an earlier-numbered one.

Rows from PostgreSQL are :class:`Row` objects that behave like ``sqlite3.Row``: by index,
by column name, unpacked, or ``dict(row)``.
"""
from __future__ import annotations

import functools
import math
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# pg_advisory_xact_lock key of the station's writers (any constant; "leafscout" in ASCII-ish).
WRITE_LOCK = 0x1EAF5C0
ROWID_MARK = "/*rowid*/"


def is_postgres(target: str | Path) -> bool:
    """Whether a ``--db`` value names a PostgreSQL database (else it is a SQLite file)."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def url_has_password(url: str) -> bool:
    return urlsplit(url).password is not None


def redact(target: str | Path) -> str:
    """The database for messages and logs: a URL without its password."""
    if not is_postgres(target):
        return str(target)
    parts = urlsplit(str(target))
    if parts.password is None:
        return str(target)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


_TYPES = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bINTEGER\b"), "BIGINT"),
          (re.compile(r"\bBLOB\b"), "BYTEA"),
          (re.compile(r"group_concat\(DISTINCT ([\w.]+)\)"), r"string_agg(DISTINCT \1, ',')"))


@functools.lru_cache(maxsize=1024)
def to_postgres(sql: str) -> str:
    """One statement (or a schema script) in PostgreSQL's spelling; see the module docstring."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    for pattern, replacement in _TYPES:
        sql = pattern.sub(replacement, sql)
    return sql.replace(ROWID_MARK, "rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,")


def postgres_schema(schema: str) -> str:
    """A schema script for PostgreSQL (no placeholders, so ``%`` stays as it is)."""
    return to_postgres(schema).replace("%%", "%")


class Row(tuple):
    """A result row like ``sqlite3.Row``: ``r[0]``, ``r["label"]``, ``dict(r)``, unpacking."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"_index": {n: i for i, n in enumerate(names)}, "__slots__": ()})


def _row_factory(cursor) -> Any:
    names = tuple(c.name for c in cursor.description or ())
    return _row_class(names)


def _params(params: tuple | list) -> tuple:
    # SQLite stores a NaN as NULL; do the same, so both databases read back alike.
    return tuple(None if isinstance(p, float) and math.isnan(p) else p for p in params)


class PgConnection:
    """A psycopg 3 connection (autocommit; transactions are explicit BEGIN/COMMIT) that runs
    the station's SQLite-spelled statements. Not thread-safe by itself: callers lock, as
    with the SQLite connections."""

    def __init__(self, url: str, *, readonly: bool = False):
        try:
            import psycopg
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError("a postgresql:// database needs psycopg 3: pip install 'psycopg[binary]'",
                                      name="psycopg") from e

        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self._conn = psycopg.connect(url, autocommit=True, row_factory=_row_factory, connect_timeout=10)
        if readonly:
            self._conn.execute("SET default_transaction_read_only = on")

    def execute(self, sql: str, params: tuple | list = ()):
        """Run one statement; returns the cursor (``fetchone``, ``fetchall``, ``fetchmany``,
        iteration, ``rowcount``). Results are read into memory: use :meth:`stream` for many rows."""
        return self._conn.execute(to_postgres(sql), _params(params))

    def executescript(self, script: str) -> None:
        self._conn.execute(postgres_schema(script))

    def stream(self, sql: str, params: tuple | list = ()) -> Iterator[Row]:
        """Rows one at a time without holding the result in memory (the connection is busy
        until the iterator is exhausted or closed)."""
        with self._conn.cursor() as cur:
            yield from cur.stream(to_postgres(sql), _params(params), size=1000)

    @property
    def broken(self) -> bool:
        """The server went away (restart, network): open a new connection."""
        return self._conn.broken or self._conn.closed

    def in_recovery(self) -> bool:
        """True on a hot-standby replica (read-only: no schema changes)."""
        return bool(self._conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


Connection = Union[sqlite3.Connection, PgConnection]


def stream(conn: Connection, sql: str, params: tuple = ()) -> Iterator:
    """Rows of a query that may be long (exports), in bounded memory on either database."""
    if isinstance(conn, PgConnection):
        return conn.stream(sql, params)
    return iter(conn.execute(sql, params))


def is_broken(conn: Connection) -> bool:
    """Whether ``conn`` lost its server (PostgreSQL only; a SQLite file cannot go away)."""
    return isinstance(conn, PgConnection) and conn.broken


def db_errors(conn: Connection) -> tuple[type[BaseException], ...]:
    """The exceptions a statement on ``conn`` raises for database trouble."""
    return conn.errors if isinstance(conn, PgConnection) else (sqlite3.Error,)


def connect_readonly(target: str | Path) -> Connection:
    """A connection for pages and exports that cannot write: a SQLite file (waits briefly
    for a busy writer) or a PostgreSQL URL (a primary or a hot-standby replica)."""
    if is_postgres(target):
        return PgConnection(str(target), readonly=True)
    # Autocommit: no implicit transaction can pin an old snapshot and hide new records.
    conn = sqlite3.connect(str(target), check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn
