"""Who may see and who may write: the users file, hashed secrets and roles.

The station keeps no plain secrets. Each user has one secret (a password they chose,
or a random token the station generated) stored as a salted scrypt hash in a JSON
users file::

    {"format": "leafscout-users/1",
     "users": {"alice": {"role": "viewer", "secret": "scrypt$16384$8$1$<salt>$<hash>"}}}

Roles: ``viewer`` reads pages and exports; ``robot`` may also post records, but only
its own (the user name is the robot id); ``admin`` may do everything. The station
re-reads the file when it changes (``leafscout add-user``, ``leafscout users remove``). Robots normally
write over MQTT with broker credentials; the HTTP write path exists for links without
a broker, and this file is what keeps viewers from using it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROLES = ("viewer", "robot", "admin")
WRITE_ROLES = frozenset({"robot", "admin"})
USERS_FORMAT = "leafscout-users/1"
# scrypt cost: ~16 MiB and ~50 ms per check; verified secrets are cached (see UserStore).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_SECRET_LEN = 8


class AuthError(Exception):
    """Base class for access problems."""


class UsersFileError(AuthError):
    """The users file is missing, malformed, or a user entry is invalid."""


@dataclass(frozen=True)
class Principal:
    """A signed-in user, as the request handlers see it."""

    name: str
    role: str
    stamp: str = field(default="", repr=False, compare=False)  # the secret hash it signed in with

    @property
    def can_write(self) -> bool:
        return self.role in WRITE_ROLES


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    """Salted scrypt hash in the self-describing form stored in the users file."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against a stored hash; False for a malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(secret.encode("utf-8"), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=128 * int(n) * int(r) * 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def new_token() -> str:
    """A random token for a robot or a user who does not pick a password."""
    return secrets.token_urlsafe(24)


def _check_entry(name: str, entry: object, path: Path) -> dict:
    if not _NAME.match(name):
        raise UsersFileError(f"{path}: bad user name {name!r}; expected 1-64 of letters, digits, '_', '.', '-'")
    if not isinstance(entry, dict) or not isinstance(entry.get("secret"), str):
        raise UsersFileError(f"{path}: user {name!r} needs an object with a 'secret' hash")
    if entry.get("role") not in ROLES:
        raise UsersFileError(f"{path}: user {name!r} has role {entry.get('role')!r}; expected one of {ROLES}")
    return entry


def read_users(path: str | Path) -> dict[str, dict]:
    """Users from a users file (name -> {"role", "secret"}); an absent file means no users."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsersFileError(f"cannot read users file {path}: {e}") from e
    if not isinstance(data, dict) or data.get("format") != USERS_FORMAT or not isinstance(data.get("users"), dict):
        raise UsersFileError(f"{path} is not a leafscout users file (expected format {USERS_FORMAT!r})")
    return {name: _check_entry(name, entry, path) for name, entry in data["users"].items()}


def add_user(path: str | Path, name: str, role: str, secret: str | None = None) -> str:
    """Add or replace a user in the users file and return their secret (generated when None)."""
    if role not in ROLES:
        raise UsersFileError(f"unknown role {role!r}; expected one of {ROLES}")
    if not _NAME.match(name):
        raise UsersFileError(f"bad user name {name!r}; expected 1-64 of letters, digits, '_', '.', '-'")
    if secret is not None and len(secret) < MIN_SECRET_LEN:
        raise UsersFileError(f"password for {name!r} is {len(secret)} characters; need at least {MIN_SECRET_LEN}")
    path = Path(path)
    users = read_users(path)
    secret = secret if secret is not None else new_token()
    users[name] = {"role": role, "secret": hash_secret(secret)}
    _write_users(path, users)
    log.info("users file %s: %s is now a %s", path, name, role)
    return secret


def remove_user(path: str | Path, name: str) -> None:
    """Remove a user from the users file; a running station drops their sessions at its next request."""
    path = Path(path)
    users = read_users(path)
    if name not in users:
        raise UsersFileError(f"no user {name!r} in {path}; users: {sorted(users) or 'none'}")
    del users[name]
    _write_users(path, users)
    log.info("users file %s: removed %s", path, name)


def _write_users(path: Path, users: dict[str, dict]) -> None:
    # Rewritten atomically with mode 0600: a crash never leaves half a file, other local
    # accounts cannot read the hashes, and a running station sees a new inode (reload).
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"format": USERS_FORMAT, "users": users}, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _file_signature(path: Path | None) -> tuple | None:
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)


_DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(32))}"


class UserStore:
    """Checks user names and secrets against the hashed entries.

    scrypt is deliberately slow, so a secret that verified once is remembered by its
    SHA-256 (in memory only) and API clients sending it on every request stay fast; at
    most one scrypt runs at a time, so password guessing cannot take every core.
    A store read from a file re-reads it when it changes (``reload_if_changed``): new
    users can sign in, removed ones lose their sessions, without a restart.
    """

    def __init__(self, users: dict[str, dict], *, path: str | Path | None = None):
        for name, entry in users.items():
            _check_entry(name, entry, Path("<users>"))
        self._users = dict(users)
        self._verified: dict[bytes, Principal] = {}
        self._lock = threading.Lock()
        self._scrypt = threading.Semaphore(1)
        self.path = Path(path) if path is not None else None
        self._signature = _file_signature(self.path)

    @classmethod
    def from_file(cls, path: str | Path) -> "UserStore":
        # Signature first: a change between the stat and the read is picked up next time.
        signature = _file_signature(Path(path))
        store = cls(read_users(path), path=path)
        store._signature = signature
        return store

    def __len__(self) -> int:
        return len(self._users)

    def reload_if_changed(self) -> bool:
        """Re-read the users file if it changed since the last look (one ``stat``); True if reloaded.

        A file that no longer parses is logged and the previous users stay in force.
        """
        signature = _file_signature(self.path)
        if self.path is None or signature == self._signature:
            return False
        try:
            users = read_users(self.path)
        except UsersFileError as e:
            log.error("keeping the previous users: %s", e)
            self._signature = signature
            return False
        with self._lock:
            self._users, self._signature = users, signature
            self._verified.clear()
        log.info("users file %s reloaded: %d users", self.path, len(users))
        return True

    def current(self, principal: Principal) -> Principal | None:
        """``principal`` as the users file says now: None once removed or given a new secret."""
        entry = self._users.get(principal.name)
        if entry is None or entry["secret"] != principal.stamp:
            return None
        return principal if entry["role"] == principal.role else Principal(principal.name, entry["role"],
                                                                           principal.stamp)

    def cached(self, name: str, secret: str) -> Principal | None:
        """The principal if this exact secret verified before (no scrypt), else None."""
        with self._lock:
            return self._verified.get(self._cache_key(name, secret))

    @staticmethod
    def _cache_key(name: str, secret: str) -> bytes:
        return hashlib.sha256(f"{name}\0{secret}".encode("utf-8")).digest()

    def authenticate(self, name: str, secret: str) -> Principal | None:
        """The principal for a correct name and secret, else None (unknown names cost the same)."""
        cached = self.cached(name, secret)
        if cached is not None:
            return cached
        entry = self._users.get(name)
        # Unknown users still pay one scrypt, so timing does not reveal which names exist.
        stored = entry["secret"] if entry else _DUMMY_HASH
        with self._scrypt:
            ok = verify_secret(secret, stored)
        if not ok or entry is None:
            return None
        principal = Principal(name, entry["role"], stored)
        with self._lock:
            self._verified[self._cache_key(name, secret)] = principal
        return principal


class SessionStore:
    """Server-side sign-in sessions: the cookie holds a random id, never a secret or a name."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def create(self, principal: Principal) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[1] > now}
            self._items[sid] = (principal, now + self.ttl_s)
        return sid

    def get(self, sid: str | None) -> Principal | None:
        if not sid:
            return None
        with self._lock:
            item = self._items.get(sid)
            if item is None or item[1] <= time.monotonic():
                self._items.pop(sid, None)
                return None
            return item[0]

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._items.pop(sid or "", None)
