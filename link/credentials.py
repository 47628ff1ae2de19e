"""Secrets both ends read the same way: HMAC key files and the MQTT password."""
from __future__ import annotations

import os
from pathlib import Path


class CredentialError(ValueError):
    """A key or password file that cannot be used; the message names the file and what is wrong."""


def read_key(path: str | Path | None) -> bytes | None:
    """An HMAC key file: its bytes with surrounding whitespace removed (at least 16 bytes)."""
    if path is None:
        return None
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise CredentialError(f"HMAC key in {str(path)!r} is {len(key)} bytes; use at least 16")
    return key


PASSWORD_ENV = "LEAFSCOUT_MQTT_PASSWORD"


def read_password(path: str | Path | None = None) -> str | None:
    """The MQTT password: from ``path`` (``--password-file``), else ``$LEAFSCOUT_MQTT_PASSWORD``,
    else None (then a password in the URL is used, which other users can read in /proc)."""
    if path is not None:
        pw = Path(path).read_text().strip()
        if not pw:
            raise CredentialError(f"password file {str(path)!r} is empty")
        return pw
    return os.environ.get(PASSWORD_ENV) or None
