"""What the robot reports: plant records, row summaries and heartbeats.

These plain dataclasses are the contract between the runtime (which makes them),
the telemetry links (which carry them) and the station (which stores them).
``to_dict``/``from_dict`` give the JSON form used over MQTT and in the outbox;
``from_dict`` validates, so a malformed message is rejected with a clear reason.

Limits (docs/protocol.md, "Limits"): ids (``robot_id``, ``survey_id``) are 1..64
characters of ``[A-Za-z0-9_.-]``; other strings are valid UTF-8 (no lone surrogates, no
control characters) of 1..128 bytes; integers are counts >= 0 below 2^53 (``class_index``
may be -1); probabilities are in [0, 1]; times are finite unix seconds in
[0, now + 1 day]; latitude in [-90, 90], longitude in [-180, 180]; every float finite.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

UNCERTAIN = "uncertain"
HEALTH_VALUES = ("healthy", "diseased", UNCERTAIN)  # what a plant record's health may be


class RecordError(ValueError):
    """A record that does not match its schema."""


def is_diseased(label: str) -> bool:
    """A plant is diseased when its class name does not contain 'healthy' (uncertain is neither)."""
    return label != UNCERTAIN and "healthy" not in label.lower()


ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_TEXT_BYTES = 128
MAX_COUNT = 2 ** 53  # exact in a double, fits SQLite's int64
MAX_FUTURE_S = 86_400.0  # a record may be stamped at most one day ahead of the checker's clock
_UNIT = (0.0, 1.0)
# Inclusive (low, high) per numeric field name; "t" is checked against the clock.
_RANGES: dict[str, tuple[float, float]] = {
    "plant_id": (0, MAX_COUNT), "class_index": (-1, MAX_COUNT), "frames": (0, MAX_COUNT),
    "row": (0, MAX_COUNT), "plants": (0, MAX_COUNT), "diseased": (0, MAX_COUNT), "uncertain": (0, MAX_COUNT),
    "queue_depth": (0, MAX_COUNT), "dropped": (0, MAX_COUNT), "confidence": _UNIT, "incidence": _UNIT, "ci_lo": _UNIT, "ci_hi": _UNIT,
    "lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "fps": (0.0, 1e6), "metre": (-1e7, 1e7),
    "fix_quality": (0, 99), "fix_age_s": (0.0, 1e9),
}
FIX_VALUES = ("fix", "stale", "interpolated", "none")  # how a position was known (robot.gps.FIX_STATES)
_IDS = ("robot_id", "survey_id")


def check_id(what: str, value: object) -> str:
    """A robot or survey id: 1..64 characters of ``[A-Za-z0-9_.-]``; raises ``RecordError``."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise RecordError(f"{what} {str(value)[:80]!r} must be 1..64 characters of [A-Za-z0-9_.-]")
    return value


RECORD_ID_PATTERN = re.compile(r"(?P<robot>[A-Za-z0-9_.-]{1,64}):(?P<outbox>[0-9a-f]{32}):(?P<seq>[1-9][0-9]{0,18})")
MAX_SEQ = 2 ** 63 - 1


def parse_record_id(record_id: object, robot_id: str | None = None) -> tuple[str, str, int]:
    """``"<robot>:<outbox id>:<seq>"`` -> (robot, outbox id, seq); raises ``RecordError``.

    ``robot_id``: the robot the id must belong to (ids are the station's duplicate filter:
    a foreign prefix could shadow another robot's records).
    """
    m = RECORD_ID_PATTERN.fullmatch(record_id) if isinstance(record_id, str) else None
    if m is None or int(m["seq"]) > MAX_SEQ or (robot_id is not None and m["robot"] != robot_id):
        want = f"{robot_id or '<robot>'}:<32 hex digits>:<1..2^63-1>"
        raise RecordError(f"record id {str(record_id)[:100]!r} is not {want}")
    return m["robot"], m["outbox"], int(m["seq"])


def check_text(what: str, value: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Valid UTF-8 (no lone surrogates), no control characters, 1..``max_bytes`` bytes."""
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise RecordError(f"{what}: not valid UTF-8 (lone surrogate)") from None
    if not 0 < n <= max_bytes:
        raise RecordError(f"{what}: {n} UTF-8 bytes, longer than {max_bytes} bytes or empty")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value):
        raise RecordError(f"{what}: contains control characters")
    return value


def _check_value(where: str, name: str, value: object, now: float) -> None:
    if isinstance(value, str):
        if name in _IDS:
            check_id(where, value)
        else:
            check_text(where, value)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordError(f"{where}: not a finite number")
    if name == "t":
        if not 0.0 <= value <= now + MAX_FUTURE_S:
            raise RecordError(f"{where}: time {value!r} is not within [0, now + {MAX_FUTURE_S:.0f} s]")
        return
    lo, hi = _RANGES.get(name, (-MAX_COUNT, MAX_COUNT))
    if not lo <= value <= hi:
        raise RecordError(f"{where}: {value!r} is out of range [{lo}, {hi}]")


def _check(cls: type, d: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise RecordError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise RecordError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    out = {}
    for name, f in names.items():
        if name not in d:
            if f.default is not MISSING:  # optional field
                continue
            raise RecordError(f"{cls.__name__}: missing key {name!r}")
        if d[name] is None and f.default is MISSING:
            raise RecordError(f"{cls.__name__}.{name}: required, got null")
        out[name] = d[name]
    now = time.time() if now is None else now
    for name, kinds in cls._types.items():
        value = out.get(name)
        if isinstance(value, bool) or (value is not None and not isinstance(value, kinds)):
            raise RecordError(f"{cls.__name__}.{name}: expected {kinds}, got {type(out[name]).__name__}")
        if value is not None:
            _check_value(f"{cls.__name__}.{name}", name, value, now)
    return out


_NUM = (int, float)


class _Record:
    """JSON form shared by every record type: ``{"kind": ..., **fields}``, validated on the way in."""

    kind: ClassVar[str]
    _types: ClassVar[dict]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], now: float | None = None) -> Any:
        """``now``: the clock the time limit is checked against (default: time.time())."""
        d = dict(d)
        if d.pop("kind", cls.kind) != cls.kind:
            raise RecordError(f"not a {cls.kind} record")
        return cls(**_check(cls, d, now))


@dataclass(frozen=True)
class PlantRecord(_Record):
    """One plant, counted once, with its final label."""

    kind: ClassVar[str] = "plant"
    _types: ClassVar[dict] = {
        "robot_id": str, "survey_id": str, "plant_id": int, "t": _NUM, "label": str,
        "class_index": int, "confidence": _NUM, "frames": int, "row": int, "metre": _NUM,
        "lat": _NUM, "lon": _NUM, "health": str, "fix": str, "fix_quality": int,
    }
    robot_id: str
    survey_id: str
    plant_id: int
    t: float  # unix seconds (recording time for replays)
    label: str  # class name, or "uncertain"
    class_index: int  # -1 when uncertain
    confidence: float  # calibrated probability of the label
    frames: int  # frames the plant was seen in
    row: int | None = None
    metre: float | None = None  # distance along the row
    lat: float | None = None
    lon: float | None = None
    # "healthy" | "diseased" | "uncertain", decided through the bundle's taxonomy; None in
    # records from robots before it (health then follows the class name).
    health: str | None = None
    # How the position was known (FIX_VALUES): "stale" or "none" leave row/lat/lon empty, "interpolated"
    # fills them from the fixes around a GPS dropout; None without a GPS. GGA fix quality with it.
    fix: str | None = None
    fix_quality: int | None = None

    def __post_init__(self) -> None:
        if self.health is not None and self.health not in HEALTH_VALUES:
            raise RecordError(f"PlantRecord.health must be one of {HEALTH_VALUES} or null, got {self.health!r}")
        if self.fix is not None and self.fix not in FIX_VALUES:
            raise RecordError(f"PlantRecord.fix must be one of {FIX_VALUES} or null, got {self.fix!r}")

    @property
    def diseased(self) -> bool:
        return self.health == "diseased" if self.health is not None else is_diseased(self.label)

    @property
    def uncertain(self) -> bool:
        return self.label == UNCERTAIN or self.health == UNCERTAIN


@dataclass(frozen=True)
class RowSummary(_Record):
    """Field statistics of one row so far (what goes out when the link is slow)."""

    kind: ClassVar[str] = "row"
    _types: ClassVar[dict] = {
        "robot_id": str, "survey_id": str, "row": int, "plants": int, "diseased": int,
        "uncertain": int, "incidence": _NUM, "ci_lo": _NUM, "ci_hi": _NUM, "t": _NUM,
    }
    robot_id: str
    survey_id: str
    row: int
    plants: int
    diseased: int
    uncertain: int
    incidence: float
    ci_lo: float
    ci_hi: float
    t: float


@dataclass(frozen=True)
class Heartbeat(_Record):
    """Liveness and link health, sent periodically."""

    kind: ClassVar[str] = "heartbeat"
    _types: ClassVar[dict] = {
        "robot_id": str, "t": _NUM, "queue_depth": int, "frames": int, "fps": _NUM, "status": str,
        "survey_id": str, "lat": _NUM, "lon": _NUM, "row": int, "metre": _NUM, "dropped": int,
        "gps": str, "fix_quality": int, "fix_age_s": _NUM, "links": str, "bundle": str,
    }
    robot_id: str
    t: float
    queue_depth: int
    frames: int
    fps: float
    status: str = "ok"
    survey_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    row: int | None = None
    metre: float | None = None
    dropped: int | None = None  # records the robot lost so far (outbox full, unreadable, disk full)
    # status is "degraded" when the GPS fix is stale or absent or a link is down (robot.status):
    gps: str | None = None  # FIX_VALUES of the newest position; None without a GPS
    fix_quality: int | None = None
    fix_age_s: float | None = None
    links: str | None = None  # e.g. "mqtt=up serial=down"
    bundle: str | None = None  # the model bundle's version (robot.bundle_store)


RECORD_TYPES: dict[str, type] = {c.kind: c for c in (PlantRecord, RowSummary, Heartbeat)}


def checked(record: Any) -> Any:
    """``record`` itself when it passes the same checks as ``from_dict`` (limits above); raises ``RecordError``."""
    type(record).from_dict(record.to_dict())
    return record


def record_from_dict(d: dict[str, Any], now: float | None = None) -> PlantRecord | RowSummary | Heartbeat:
    """Parse and check a record's JSON form; ``now=math.inf`` skips the "not in the future" limit
    (records read back from the robot's own outbox: a clock set back must not make them unreadable)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if not isinstance(kind, str) or kind not in RECORD_TYPES:
        got = kind if isinstance(d, dict) else type(d).__name__
        raise RecordError(f"unknown record kind {got!r}; expected one of {sorted(RECORD_TYPES)}")
    return RECORD_TYPES[d["kind"]].from_dict(d, now)


def record_id(robot_id: str, outbox_id: str, seq: int) -> str:
    """The id the station deduplicates on: stable across links and retransmissions, unique
    across outbox files (``outbox_id`` is random, 128 bits)."""
    return f"{robot_id}:{outbox_id}:{seq}"
