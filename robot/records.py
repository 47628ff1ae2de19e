"""What the robot reports: plant records, row summaries and heartbeats.

These plain dataclasses are the contract between the runtime (which makes them),
the telemetry links (which carry them) and the station (which stores them).
``to_dict``/``from_dict`` give the JSON form used over MQTT and in the outbox;
``from_dict`` validates, so a malformed message is rejected with a clear reason.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

UNCERTAIN = "uncertain"


class RecordError(ValueError):
    """A record that does not match its schema."""


def is_diseased(label: str) -> bool:
    """A plant is diseased when its class name does not contain 'healthy' (uncertain is neither)."""
    return label != UNCERTAIN and "healthy" not in label.lower()


def _check(cls: type, d: dict[str, Any]) -> dict[str, Any]:
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
    for name, kinds in cls._types.items():
        value = out.get(name)
        if isinstance(value, bool) or (value is not None and not isinstance(value, kinds)):
            raise RecordError(f"{cls.__name__}.{name}: expected {kinds}, got {type(out[name]).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise RecordError(f"{cls.__name__}.{name}: not a finite number")
        if isinstance(value, str) and len(value) > 128:
            raise RecordError(f"{cls.__name__}.{name}: longer than 128 characters")
    return out


_NUM = (int, float)


class _Record:
    """JSON form shared by every record type: ``{"kind": ..., **fields}``, validated on the way in."""

    kind: ClassVar[str]
    _types: ClassVar[dict]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        d = dict(d)
        if d.pop("kind", cls.kind) != cls.kind:
            raise RecordError(f"not a {cls.kind} record")
        return cls(**_check(cls, d))


@dataclass(frozen=True)
class PlantRecord(_Record):
    """One plant, counted once, with its final label."""

    kind: ClassVar[str] = "plant"
    _types: ClassVar[dict] = {
        "robot_id": str, "survey_id": str, "plant_id": int, "t": _NUM, "label": str,
        "class_index": int, "confidence": _NUM, "frames": int, "row": int, "metre": _NUM,
        "lat": _NUM, "lon": _NUM,
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

    @property
    def diseased(self) -> bool:
        return is_diseased(self.label)

    @property
    def uncertain(self) -> bool:
        return self.label == UNCERTAIN


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
        "survey_id": str, "lat": _NUM, "lon": _NUM, "row": int, "metre": _NUM,
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


RECORD_TYPES: dict[str, type] = {c.kind: c for c in (PlantRecord, RowSummary, Heartbeat)}


def record_from_dict(d: dict[str, Any]) -> PlantRecord | RowSummary | Heartbeat:
    kind = d.get("kind") if isinstance(d, dict) else None
    if not isinstance(kind, str) or kind not in RECORD_TYPES:
        got = kind if isinstance(d, dict) else type(d).__name__
        raise RecordError(f"unknown record kind {got!r}; expected one of {sorted(RECORD_TYPES)}")
    return RECORD_TYPES[d["kind"]].from_dict(d)
