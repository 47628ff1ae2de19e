"""Where the robot is: NMEA 0183 from a serial GPS, a recorded NMEA log, or the simulator.

Ports are pyserial URLs (``/dev/ttyUSB0``, a pty, ``loop://``), so the same reader
runs on hardware and in tests. A reader thread keeps the latest fix; garbage lines
and checksum errors are counted, never fatal. A regular file given as the port is a
recorded log: positions are then looked up by stream time, so replays are exact.
``FieldGeometry`` turns latitude/longitude into (row, metre along the row).
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import pynmea2
import serial

from .camera import Frame

__all__ = [
    "GpsError",
    "Fix",
    "FIX",
    "STALE",
    "INTERPOLATED",
    "NO_FIX",
    "FIX_STATES",
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_BAUD",
    "Position",
    "NmeaCounters",
    "NmeaParser",
    "GpsReader",
    "NmeaLog",
    "FieldGeometry",
    "PositionSource",
    "FramePosition",
    "GpsPosition",
    "format_fix",
    "write_nmea_log",
]

log = logging.getLogger(__name__)

EARTH_RADIUS_M = 6_371_008.8


class GpsError(RuntimeError):
    """A GPS port or NMEA log that cannot be used."""


@dataclass(frozen=True)
class Fix:
    """A position fix: degrees, unix time of the fix, and receiver quality."""

    lat: float
    lon: float
    t: float
    quality: int = 1
    sats: int | None = None


# How a position was known (``Position.fix``, ``PlantRecord.fix``, ``Heartbeat.gps``):
FIX = "fix"  # a fix no older than the configured age (``max_age_s``)
STALE = "stale"  # the newest fix is older than that: no position is given (it would be the wrong row)
INTERPOLATED = "interpolated"  # a dropout: between the fixes around it, once they came back
NO_FIX = "none"  # no fix at all (or none around it in a recording)
FIX_STATES = (FIX, STALE, INTERPOLATED, NO_FIX)
DEFAULT_MAX_AGE_S = 0.5  # 5 sentences of a 10 Hz receiver: a plant is ~0.5 m away at 1 m/s
DEFAULT_BAUD = 115200  # 10 Hz GGA+RMC is ~1.5 kB/s: 9600 baud (960 B/s) cannot carry it


@dataclass(frozen=True)
class Position:
    """What a plant record needs to know about where it was seen, and how well that is known."""

    t: float | None = None
    lat: float | None = None
    lon: float | None = None
    row: int | None = None
    metre: float | None = None
    fix: str | None = None  # one of FIX_STATES; None where no GPS is used (simulator positions, none)
    quality: int | None = None  # GGA fix quality (1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float)
    age_s: float | None = None  # age of the fix when the frame was taken

    @property
    def known(self) -> bool:
        return self.fix in (FIX, INTERPOLATED) or (self.fix is None and self.lat is not None)


@dataclass
class NmeaCounters:
    lines: int = 0
    fixes: int = 0
    checksum_errors: int = 0
    garbage: int = 0
    no_fix: int = 0  # well-formed sentences saying the receiver has no fix


class NmeaParser:
    """Turns NMEA lines into fixes (GGA and RMC); everything else is counted and ignored."""

    def __init__(self) -> None:
        self.counters = NmeaCounters()
        self._date: dt.date | None = None
        self._quality = 1  # RMC carries no quality: it keeps the last GGA's (RTK stays RTK)

    def feed(self, line: bytes | str) -> Fix | None:
        text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
        text = text.strip()
        if not text:
            return None
        self.counters.lines += 1
        try:
            msg = pynmea2.parse(text, check=True)
        except pynmea2.ChecksumError:
            self.counters.checksum_errors += 1
            return None
        except (pynmea2.ParseError, ValueError, AttributeError):
            self.counters.garbage += 1
            return None
        fix = self._fix(msg)
        if fix is not None:
            self.counters.fixes += 1
        return fix

    def _fix(self, msg: Any) -> Fix | None:
        try:
            if isinstance(msg, pynmea2.RMC):
                if msg.datestamp:
                    self._date = msg.datestamp
                if msg.status != "A":
                    self.counters.no_fix += 1
                    return None
                return Fix(msg.latitude, msg.longitude, self._unix(msg.timestamp), self._quality)
            if isinstance(msg, pynmea2.GGA):
                if not msg.gps_qual or int(msg.gps_qual) == 0:
                    self.counters.no_fix += 1
                    return None
                sats = int(msg.num_sats) if msg.num_sats else None
                self._quality = int(msg.gps_qual)
                return Fix(msg.latitude, msg.longitude, self._unix(msg.timestamp), int(msg.gps_qual), sats)
        except (TypeError, ValueError):  # empty or malformed fields in a sentence with a valid checksum
            self.counters.garbage += 1
        return None

    def _unix(self, stamp: dt.time | None) -> float:
        if stamp is None:
            return time.time()
        date = self._date or dt.datetime.now(dt.timezone.utc).date()
        tz = stamp.tzinfo or dt.timezone.utc
        return dt.datetime.combine(date, stamp.replace(tzinfo=tz)).timestamp()


class GpsReader:
    """Reads NMEA from a serial URL in a thread; ``latest()`` is the newest fix. Use with ``with``."""

    def __init__(self, url: str, *, baudrate: int = DEFAULT_BAUD, timeout: float = 0.2,
                 history_s: float = 120.0) -> None:
        self.url = url
        self.baudrate = baudrate
        self.timeout = timeout
        self.parser = NmeaParser()
        self._fix: Fix | None = None
        self._fix_mono = 0.0
        self._history: collections.deque[tuple[float, Fix]] = collections.deque()  # (time.time() received, fix)
        self._history_s = history_s
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._port: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def counters(self) -> NmeaCounters:
        return self.parser.counters

    def start(self) -> "GpsReader":
        try:
            self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self.timeout)
        except (serial.SerialException, ValueError) as e:
            raise GpsError(f"cannot open GPS port {self.url!r}: {e}") from e
        self._thread = threading.Thread(target=self._run, name=f"gps-{self.url}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._port is not None:
            self._port.close()
            self._port = None

    def __enter__(self) -> "GpsReader":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        port = self._port
        while port is not None and not self._stop.is_set():
            try:
                line = port.readline()
            except (serial.SerialException, OSError) as e:
                self.error = e
                log.warning("GPS port %s failed: %s", self.url, e)
                return
            if not line:
                continue
            fix = self.parser.feed(line)
            if fix is not None:
                now = time.time()
                with self._cond:
                    self._fix, self._fix_mono = fix, time.monotonic()
                    self._history.append((now, fix))
                    while self._history and self._history[0][0] < now - self._history_s:
                        self._history.popleft()
                    self._cond.notify_all()

    def latest(self, max_age_s: float | None = None) -> Fix | None:
        """The newest fix, or None when there is none (or it is older than ``max_age_s``)."""
        with self._cond:
            if self._fix is None or (max_age_s is not None and time.monotonic() - self._fix_mono > max_age_s):
                return None
            return self._fix

    def newest(self) -> tuple[Fix, float] | None:
        """The newest fix and its age in seconds (by the monotonic clock), or None."""
        with self._cond:
            return None if self._fix is None else (self._fix, time.monotonic() - self._fix_mono)

    def around(self, t: float) -> tuple[Fix, float, Fix, float] | None:
        """The fixes received just before and just after robot-clock time ``t`` (with their receipt
        times), or None while no fix after ``t`` has come yet (a dropout still going on)."""
        with self._cond:
            history = list(self._history)
        before = [h for h in history if h[0] <= t]
        after = [h for h in history if h[0] > t]
        if not before or not after:
            return None
        (t0, f0), (t1, f1) = before[-1], after[0]
        return f0, t0, f1, t1

    def wait_for_fix(self, timeout: float, *, newer_than: Fix | None = None) -> Fix:
        """Block until a fix (other than ``newer_than``) arrives; ``GpsError`` after ``timeout`` s."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._fix is not None and self._fix is not newer_than, timeout)
            if not ok:
                raise GpsError(f"no GPS fix from {self.url!r} within {timeout} s ({self.parser.counters})")
            return self._fix  # type: ignore[return-value]


class NmeaLog:
    """A recorded NMEA file; ``at(t)`` interpolates the fix ``t`` seconds after the first one,
    ``gap(t)`` is how far ``t`` lies from the nearest recorded fix (a dropout in the log)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        parser = NmeaParser()
        try:
            lines = self.path.read_bytes().splitlines()
        except OSError as e:
            raise GpsError(f"cannot read NMEA log {self.path}: {e}") from e
        by_time: dict[float, Fix] = {}
        for line in lines:  # the first RMC's date applies to GGA lines logged before it
            if b"RMC" in line[:6]:
                parser.feed(line)
                break
        parser.counters = NmeaCounters()
        for line in lines:
            fix = parser.feed(line)
            if fix is not None:
                by_time[fix.t] = fix
        if not by_time:
            raise GpsError(f"{self.path} holds no GPS fixes (GGA/RMC); {parser.counters}")
        self.counters = parser.counters
        self.fixes = [by_time[t] for t in sorted(by_time)]
        self.start = self.fixes[0].t
        self._t = np.array([f.t - self.start for f in self.fixes])
        self._lat = np.array([f.lat for f in self.fixes])
        self._lon = np.array([f.lon for f in self.fixes])
        self._quality = np.array([f.quality for f in self.fixes])

    def at(self, t: float) -> Fix:
        i = min(int(np.searchsorted(self._t, t)), len(self._t) - 1)
        return Fix(
            float(np.interp(t, self._t, self._lat)), float(np.interp(t, self._t, self._lon)), self.start + t,
            int(self._quality[i]),
        )

    def gap(self, t: float) -> tuple[float, bool]:
        """(seconds to the nearest fix, whether ``t`` lies between two fixes)."""
        i = int(np.searchsorted(self._t, t))
        near = min(abs(self._t[j] - t) for j in (i - 1, i) if 0 <= j < len(self._t))
        return float(near), 0 < i < len(self._t)


def format_fix(lat: float, lon: float, t: float, *, speed_m_s: float = 0.0, course_deg: float = 0.0) -> list[str]:
    """GGA and RMC sentences (with checksums) for a fix: what the simulator's receiver sends."""
    when = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    hms = when.strftime("%H%M%S.") + f"{when.microsecond // 10000:02d}"

    def dm(value: float, deg_digits: int) -> str:
        a = abs(value)
        d = int(a)
        return f"{d:0{deg_digits}d}{(a - d) * 60:09.6f}"

    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    gga = pynmea2.GGA("GP", "GGA", (hms, dm(lat, 2), ns, dm(lon, 3), ew, "4", "12", "0.8", "10.0", "M", "47.0", "M", "", ""))
    rmc = pynmea2.RMC(
        "GP", "RMC",
        (hms, "A", dm(lat, 2), ns, dm(lon, 3), ew, f"{speed_m_s * 1.943844:.2f}", f"{course_deg % 360:.1f}",
         when.strftime("%d%m%y"), "", ""),
    )
    return [str(rmc), str(gga)]  # RMC first: it carries the date that GGA's time needs


@dataclass(frozen=True)
class FieldGeometry:
    """Straight parallel rows: row 0 starts at ``origin`` and runs along ``heading_deg`` (from north).

    Row ``r`` lies ``r * row_spacing_m`` to the right of row 0 (seen along the heading).
    """

    origin: tuple[float, float]
    heading_deg: float
    row_spacing_m: float
    rows: int
    row_length_m: float

    def __post_init__(self) -> None:
        if self.row_spacing_m <= 0 or self.rows < 1 or self.row_length_m <= 0:
            raise GpsError(f"field needs row_spacing_m > 0, rows >= 1, row_length_m > 0; got {self}")
        object.__setattr__(self, "origin", (float(self.origin[0]), float(self.origin[1])))

    def _axes(self) -> tuple[np.ndarray, np.ndarray]:
        h = math.radians(self.heading_deg)
        along = np.array([math.sin(h), math.cos(h)])  # (east, north)
        across = np.array([math.cos(h), -math.sin(h)])  # to the right of the heading
        return along, across

    def _enu(self, lat: float, lon: float) -> np.ndarray:
        lat0, lon0 = self.origin
        north = math.radians(lat - lat0) * EARTH_RADIUS_M
        east = math.radians(lon - lon0) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
        return np.array([east, north])

    def to_latlon(self, row: float, metre: float) -> tuple[float, float]:
        along, across = self._axes()
        east, north = along * metre + across * row * self.row_spacing_m
        lat0, lon0 = self.origin
        lat = lat0 + math.degrees(north / EARTH_RADIUS_M)
        lon = lon0 + math.degrees(east / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
        return lat, lon

    def locate(self, lat: float, lon: float) -> tuple[int | None, float]:
        """(row, metre along it); row is None off the field (outside the rows)."""
        along, across = self._axes()
        v = self._enu(lat, lon)
        row = int(round(float(v @ across) / self.row_spacing_m))
        return (row if 0 <= row < self.rows else None), float(v @ along)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["origin"] = list(self.origin)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FieldGeometry":
        keys = {"origin", "heading_deg", "row_spacing_m", "rows", "row_length_m"}
        if not isinstance(d, dict) or set(d) != keys:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise GpsError(f"field geometry needs exactly the keys {sorted(keys)}, got {got}")
        return cls(**{**d, "origin": tuple(d["origin"])})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FieldGeometry":
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise GpsError(f"cannot read field geometry {path}: {e}") from e


class PositionSource(Protocol):
    def locate(self, frame: Frame) -> Position: ...


class FramePosition:
    """Positions the simulator attaches to each frame (row, metre, lat, lon)."""

    def locate(self, frame: Frame) -> Position:
        m = frame.meta
        return Position(m.get("t_unix"), m.get("lat"), m.get("lon"), m.get("row"), m.get("metre"))


class GpsPosition:
    """Positions from a live GPS reader or a recorded NMEA log, mapped to rows by a field geometry.

    A fix older than ``max_age_s`` is stale: the position is then left unknown (flagged
    ``STALE``, or ``NO_FIX`` before the first fix) rather than put in the row the robot has
    left. ``fill(position)`` later turns such a position into one interpolated between the
    fixes around it, once the GPS is back (live); a recording's gaps are interpolated at once.
    """

    def __init__(self, gps: GpsReader | NmeaLog, field: FieldGeometry | None = None, *,
                 max_age_s: float = DEFAULT_MAX_AGE_S):
        if max_age_s <= 0:
            raise GpsError(f"the GPS max fix age must be > 0 s, got {max_age_s}")
        self.gps = gps
        self.field = field
        self.max_age_s = max_age_s
        self.last: Position = Position(fix=NO_FIX)  # for heartbeats and the status file

    def locate(self, frame: Frame) -> Position:
        if isinstance(self.gps, NmeaLog):
            self.last = self._recorded(frame.t)
            return self.last
        newest = self.gps.newest()
        if newest is None:
            self.last = Position(t=frame.t, fix=NO_FIX)
        elif newest[1] > self.max_age_s:
            self.last = Position(t=frame.t, fix=STALE, quality=newest[0].quality, age_s=round(newest[1], 3))
        else:
            self.last = self._position(newest[0], FIX, round(newest[1], 3))
        return self.last

    def _recorded(self, t: float) -> Position:
        fix = self.gps.at(t)
        distance, inside = self.gps.gap(t)
        if distance <= self.max_age_s:
            return self._position(fix, FIX, round(distance, 3))
        if inside:
            return self._position(fix, INTERPOLATED, round(distance, 3))
        return Position(t=fix.t, fix=NO_FIX)

    def _position(self, fix: Fix, state: str, age_s: float | None) -> Position:
        row, metre = self.field.locate(fix.lat, fix.lon) if self.field else (None, None)
        return Position(fix.t, fix.lat, fix.lon, row, metre, state, fix.quality, age_s)

    def fill(self, where: Position) -> Position | None:
        """A live position lost in a dropout, interpolated between the fixes received around its time
        (``where.t``, the robot's clock); None while the GPS has not come back yet."""
        if where.known or where.t is None or isinstance(self.gps, NmeaLog):
            return where
        around = self.gps.around(where.t)
        if around is None:
            return None
        f0, t0, f1, t1 = around
        w = (where.t - t0) / (t1 - t0) if t1 > t0 else 0.0
        fix = Fix(f0.lat + w * (f1.lat - f0.lat), f0.lon + w * (f1.lon - f0.lon), f0.t + w * (f1.t - f0.t),
                  min(f0.quality, f1.quality))
        return self._position(fix, INTERPOLATED, round(min(where.t - t0, t1 - where.t), 3))


def write_nmea_log(path: str | os.PathLike, sentences: Iterable[str]) -> Path:
    path = Path(path)
    path.write_text("".join(s + "\r\n" for s in sentences), encoding="ascii")
    return path
