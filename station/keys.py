"""Per-robot HMAC keys: a key speaks only for its own robot.

The station keeps one key file per robot in a directory (``<dir>/<robot>.key``, 64 hex
digits, mode 0600), written by ``leafscout keys new ROBOT``; the robot gets a copy of its
own file (``leafscout run --hmac-key-file``).  A record signed with robot A's key on
robot B's topic (or with B's serial number) fails verification.  ``KeyRing(shared=...)``
is the old single shared key (any holder can speak for any robot: logged as a warning).
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from leafscout.link.records import ID_PATTERN, RecordError, check_id

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16


class KeyFileError(ValueError):
    """A key file or key directory that cannot be used."""


def read_key_file(path: str | Path) -> bytes:
    """A key file's bytes with surrounding whitespace removed (at least 16 bytes)."""
    key = Path(path).read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"HMAC key in {str(path)!r} is {len(key)} bytes; use at least {MIN_KEY_BYTES}")
    return key


class KeyRing:
    """Robot id -> HMAC key; ``shared`` (if given) is used for robots without their own key."""

    def __init__(self, keys: dict[str, bytes] | None = None, shared: bytes | None = None):
        self.keys = dict(keys or {})
        self.shared = shared

    @classmethod
    def from_dir(cls, path: str | Path) -> "KeyRing":
        d = Path(path)
        if not d.is_dir():
            raise KeyFileError(f"key directory {str(d)!r} does not exist (create keys with: leafscout keys new ROBOT)")
        keys = {}
        for f in sorted(d.glob("*.key")):
            if not ID_PATTERN.fullmatch(f.stem):
                raise KeyFileError(f"key file {f.name!r}: the name must be <robot id>.key")
            keys[f.stem] = read_key_file(f)
        if not keys:
            raise KeyFileError(f"no <robot>.key files in {str(d)!r} (create one with: leafscout keys new ROBOT)")
        return cls(keys)

    def for_robot(self, robot_id: str) -> bytes | None:
        return self.keys.get(robot_id, self.shared)

    @property
    def robots(self) -> frozenset[str]:
        return frozenset(self.keys)


def new_key(directory: str | Path, robot_id: str, force: bool = False) -> Path:
    """Write ``<directory>/<robot_id>.key`` (32 random bytes as hex, mode 0600); returns its path."""
    try:
        check_id("robot id", robot_id)
    except RecordError as e:
        raise KeyFileError(str(e)) from None
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{robot_id}.key"
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; --force replaces it (the robot then needs the new file)") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)
    return path
