"""The compact binary frame codec of the serial link (specified in docs/protocol.md).

A frame on the wire is ``COBS(header | payload | [tag] | crc) 0x00``:

* header (8 bytes, little endian): ``ver_flags`` u8 (version << 4 | flags), ``type`` u8,
  ``robot`` u16, ``seq`` u32;
* ``tag``: first 8 bytes of HMAC-SHA256(key, header | payload), present when flag bit 0 is set;
* ``crc``: CRC-32C (Castagnoli) over everything before it, u32 little endian.

This module is pure: bytes in, frames and typed payloads out, ``ProtocolError`` on
anything malformed.  Context (which survey a ``ref`` means, which class name an index
means) lives in the serial link and the station.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Iterator, Union

import crcmod.predefined
from cobs import cobs

from leafscout.link.records import (FIX_VALUES, HEALTH_VALUES, UNCERTAIN, Heartbeat, PlantRecord, RecordError,
                                    RowSummary, checked)

VERSION = 3  # 2: HELLO carries the outbox id; NAK reason 3 (rejected). 3: health and GPS fix in PLANT and HEARTBEAT
BOOT_LEN = 16  # the robot's outbox id (128 random bits) in HELLO
FLAG_HMAC = 0x01
HEADER = struct.Struct("<BBHI")
CRC = struct.Struct("<I")
TAG_LEN = 8
MAX_FRAME = 250  # bytes before COBS; keeps COBS overhead at exactly one byte
MAX_ENCODED = MAX_FRAME + 2  # COBS code byte + delimiter
crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")

NONE_U8, NONE_U16, NONE_I16, NONE_I32 = 0xFF, 0xFFFF, -0x8000, -0x80000000
MAX_NAME = 64


class MsgType(IntEnum):
    HELLO = 1  # robot -> station: robot name (binds the header's robot number)
    CLASS = 2  # robot -> station: class index -> class name
    SURVEY = 3  # robot -> station: survey ref -> survey id, time and position origin
    PLANT = 4
    ROW = 5
    HEARTBEAT = 6
    ACK = 0x10  # station -> robot: list of received seqs
    NAK = 0x11  # station -> robot: seq + reason (context missing)


class NakReason(IntEnum):
    UNKNOWN_ROBOT = 1  # send HELLO again
    UNKNOWN_CONTEXT = 2  # send CLASS / SURVEY again
    REJECTED = 3  # the record is invalid (out of range...): drop it, never send it again


class ProtocolError(ValueError):
    """A frame or payload that does not follow docs/protocol.md."""

    reason = "malformed"


class InvalidRecord(ProtocolError):
    """A well-formed, authentic frame whose record breaks the limits (docs/protocol.md):
    the station refuses it for good (NAK ``REJECTED``)."""

    reason = "invalid"


class CrcError(ProtocolError):
    reason = "bad_crc"


class AuthError(ProtocolError):
    reason = "bad_hmac"


class EncodeError(ValueError):
    """A value that the compact encoding cannot carry (the record stays for MQTT)."""


@dataclass(frozen=True)
class Frame:
    type: MsgType
    robot: int
    seq: int
    payload: bytes
    signed: bool = False


def robot_number(robot_id: str) -> int:
    """The uint16 robot number of the serial header: the first two bytes of SHA-256(name)."""
    return int.from_bytes(hashlib.sha256(robot_id.encode()).digest()[:2], "little")


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN]


# A key, or a function (robot number, message type, payload) -> that robot's key (None: no key).
KeySource = Union[bytes, Callable[[int, int, bytes], "bytes | None"], None]


def encode_frame(type: MsgType, robot: int, seq: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One complete wire frame, delimiter included."""
    flags = FLAG_HMAC if key else 0
    body = HEADER.pack(VERSION << 4 | flags, int(type), robot, seq) + payload
    if key:
        body += _tag(key, body)
    body += CRC.pack(crc32c(body))
    if len(body) > MAX_FRAME:
        raise EncodeError(f"frame of {len(body)} bytes exceeds the maximum of {MAX_FRAME}")
    return cobs.encode(body) + b"\x00"


def decode_frame(encoded: bytes, key: KeySource = None) -> Frame:
    """Decode the bytes between two delimiters; raises ``ProtocolError`` subclasses.

    ``key`` may be a function of (robot number, type, payload): per-robot keys, so a key
    speaks only for its own robot.  It returning None means "no key for this robot": the
    frame is refused (``AuthError``).
    """
    if len(encoded) > MAX_ENCODED:
        raise ProtocolError(f"frame of {len(encoded)} encoded bytes exceeds {MAX_ENCODED}")
    try:
        body = cobs.decode(encoded)
    except cobs.DecodeError as e:
        raise ProtocolError(f"bad COBS encoding: {e}") from e
    if len(body) < HEADER.size + CRC.size:
        raise ProtocolError(f"frame of {len(body)} bytes is shorter than header + CRC ({HEADER.size + CRC.size})")
    (crc,) = CRC.unpack_from(body, len(body) - CRC.size)
    body = body[: -CRC.size]
    if crc32c(body) != crc:
        raise CrcError("CRC-32C mismatch")
    ver_flags, type_, robot, seq = HEADER.unpack_from(body)
    if ver_flags >> 4 != VERSION:
        raise ProtocolError(f"protocol version {ver_flags >> 4}, expected {VERSION}")
    if ver_flags & 0x0F & ~FLAG_HMAC:
        raise ProtocolError(f"unknown flags 0x{ver_flags & 0x0F:x}")
    try:
        mtype = MsgType(type_)
    except ValueError:
        raise ProtocolError(f"unknown message type {type_}; expected one of {[int(t) for t in MsgType]}") from None
    signed = bool(ver_flags & FLAG_HMAC)
    if signed:
        if len(body) < HEADER.size + TAG_LEN:
            raise ProtocolError("signed frame too short for its tag")
        tag = body[-TAG_LEN:]
        body = body[:-TAG_LEN]
    if callable(key):
        key = key(robot, type_, body[HEADER.size:])
        if key is None:
            raise AuthError(f"no key for robot number 0x{robot:04x}")
    if signed:
        if key is not None and not hmac.compare_digest(tag, _tag(key, body)):
            raise AuthError("HMAC tag does not match")
    elif key is not None:
        raise AuthError("frame is not signed but an HMAC key is configured")
    return Frame(mtype, robot, seq, body[HEADER.size:], signed)


class FrameDecoder:
    """Splits a byte stream at 0x00 and decodes each frame; resynchronizes on garbage.

    ``feed`` yields a ``Frame`` per good frame and a ``ProtocolError`` per rejected chunk;
    it never raises. A chunk that fails is searched for a valid frame starting later in it
    (line noise right before a frame). Bytes that never see a delimiter are dropped once
    they exceed the largest possible frame.
    """

    def __init__(self, key: KeySource = None):
        self.key = key
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> Iterator[Frame | ProtocolError]:
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._buf += data[start:]
                if len(self._buf) > MAX_ENCODED:  # keep only what could still end in a frame
                    del self._buf[:-MAX_ENCODED]
                    self._overflow = True
                return
            chunk = bytes(self._buf) + data[start:end]
            self._buf.clear()
            start = end + 1
            if not chunk:  # back-to-back delimiters are allowed (line idle / resync)
                continue
            try:
                if self._overflow or len(chunk) > MAX_ENCODED:
                    self._overflow = False
                    raise ProtocolError("oversized frame (no delimiter within the maximum frame size)")
                yield decode_frame(chunk, self.key)
            except ProtocolError as e:
                yield e
                # Garbage without a 0x00 right before a frame glues onto it: look for a
                # frame that starts later in the chunk (its CRC must check out).
                frame = self._frame_in_tail(chunk)
                if frame is not None:
                    yield frame

    def _frame_in_tail(self, chunk: bytes) -> Frame | None:
        for i in range(max(1, len(chunk) - MAX_ENCODED), len(chunk) - HEADER.size - CRC.size):
            try:
                return decode_frame(chunk[i:], self.key)
            except ProtocolError:
                continue
        return None


# -- payloads ------------------------------------------------------------------------
_U24_MAX = (1 << 24) - 1


def _u24(v: int) -> bytes:
    return v.to_bytes(3, "little")


def _get_u24(b: bytes, off: int) -> int:
    return int.from_bytes(b[off:off + 3], "little")


def _text(s: str, what: str) -> bytes:
    raw = s.encode()
    if not 0 < len(raw) <= MAX_NAME:
        raise EncodeError(f"{what} {s!r} must be 1..{MAX_NAME} UTF-8 bytes")
    return raw


def _get_text(b: bytes, what: str) -> str:
    if not 0 < len(b) <= MAX_NAME:
        raise ProtocolError(f"{what} of {len(b)} bytes; expected 1..{MAX_NAME}")
    try:
        return b.decode()
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} is not UTF-8") from e


def _texts(values: tuple[str | None, ...], what: tuple[str, ...]) -> bytes:
    """Length-prefixed UTF-8 texts (length 0: None)."""
    out = b""
    for v, name in zip(values, what):
        raw = b"" if v is None else _text(v, name)
        out += bytes([len(raw)]) + raw
    return out


def _get_texts(b: bytes, what: tuple[str, ...]) -> tuple[str | None, ...]:
    out, i = [], 0
    for name in what:
        if i >= len(b):
            raise ProtocolError(f"{name} length is missing")
        n, i = b[i], i + 1
        if i + n > len(b):
            raise ProtocolError(f"{name} of {n} bytes runs past the payload")
        out.append(None if n == 0 else _get_text(b[i:i + n], name))
        i += n
    if i != len(b):
        raise ProtocolError(f"{len(b) - i} bytes after the last text")
    return tuple(out)


def encode_hello(robot_id: str, boot: bytes) -> bytes:
    """``boot``: the 16-byte outbox id; record ids of this robot's later frames carry it."""
    if len(boot) != BOOT_LEN:
        raise EncodeError(f"outbox id of {len(boot)} bytes; expected {BOOT_LEN}")
    return boot + _text(robot_id, "robot id")


def decode_hello(p: bytes) -> tuple[str, bytes]:
    """(robot id, 16-byte outbox id)."""
    if len(p) <= BOOT_LEN:
        raise ProtocolError(f"HELLO payload of {len(p)} bytes; expected > {BOOT_LEN}")
    return _get_text(p[BOOT_LEN:], "robot id"), p[:BOOT_LEN]


def encode_class(index: int, name: str) -> bytes:
    if not 0 <= index < NONE_U8:
        raise EncodeError(f"class index {index} out of range 0..{NONE_U8 - 1}")
    return bytes([index]) + _text(name, "class name")


def decode_class(p: bytes) -> tuple[int, str]:
    if len(p) < 2 or p[0] == NONE_U8:
        raise ProtocolError("CLASS payload needs an index (0..254) and a name")
    return p[0], _get_text(p[1:], "class name")


@dataclass(frozen=True)
class SurveyContext:
    """What a survey ``ref`` stands for: the id and the origin the offsets are from."""

    ref: int
    survey_id: str
    t0: float
    lat0: float = math.nan  # NaN: no position origin
    lon0: float = math.nan


_SURVEY = struct.Struct("<Bdii")


def _deg7(v: float) -> int:
    return NONE_I32 if math.isnan(v) else round(v * 1e7)


def encode_survey(ctx: SurveyContext) -> bytes:
    if not 0 <= ctx.ref < NONE_U8:
        raise EncodeError(f"survey ref {ctx.ref} out of range 0..{NONE_U8 - 1}")
    return _SURVEY.pack(ctx.ref, ctx.t0, _deg7(ctx.lat0), _deg7(ctx.lon0)) + _text(ctx.survey_id, "survey id")


def decode_survey(p: bytes) -> SurveyContext:
    if len(p) <= _SURVEY.size:
        raise ProtocolError(f"SURVEY payload of {len(p)} bytes; expected > {_SURVEY.size}")
    ref, t0, lat, lon = _SURVEY.unpack_from(p)
    if ref == NONE_U8 or not math.isfinite(t0):
        raise ProtocolError("SURVEY has an invalid ref or time origin")
    return SurveyContext(ref, _get_text(p[_SURVEY.size:], "survey id"), t0,
                         math.nan if lat == NONE_I32 else lat / 1e7, math.nan if lon == NONE_I32 else lon / 1e7)


# PLANT (21 bytes): ref u8, plant u24, dt u24 (0.1 s), class u8, conf u8, frames u8,
# row u16, metre u16 (0.1 m), dlat i16, dlon i16 (1e-6 deg from the survey origin),
# health u8, fix u8 (indexes into HEALTH_VALUES / FIX_VALUES), fix quality u8 (0xFF: none of them).
_PLANT_TAIL = struct.Struct("<BBBHHhhBBB")
PLANT_LEN = 1 + 3 + 3 + _PLANT_TAIL.size


def _code(value: str | None, values: tuple[str, ...]) -> int:
    return NONE_U8 if value is None else values.index(value)


def _value(code: int, values: tuple[str, ...], what: str) -> str | None:
    if code == NONE_U8:
        return None
    if code >= len(values):
        raise ProtocolError(f"{what} code {code}; expected 0..{len(values) - 1} or {NONE_U8}")
    return values[code]


def _quality(q: int | None) -> int:
    if q is not None and not 0 <= q < NONE_U8:
        raise EncodeError(f"fix quality {q} out of range 0..{NONE_U8 - 1}")
    return NONE_U8 if q is None else q


def plant_fits(r: PlantRecord, ctx: SurveyContext) -> bool:
    """Whether ``r`` can be expressed relative to ``ctx`` (else open a new survey ref)."""
    dt = round((r.t - ctx.t0) * 10)
    if not 0 <= dt <= _U24_MAX:
        return False
    for v, v0 in ((r.lat, ctx.lat0), (r.lon, ctx.lon0)):
        if v is not None and (math.isnan(v0) or not -0x7FFF <= round((v - v0) * 1e6) <= 0x7FFF):
            return False
    return True


def encode_plant(r: PlantRecord, ctx: SurveyContext) -> bytes:
    if not plant_fits(r, ctx):
        raise EncodeError(f"plant {r.plant_id} does not fit survey ref {ctx.ref} (time or position offset)")
    if not 0 <= r.plant_id <= _U24_MAX:
        raise EncodeError(f"plant id {r.plant_id} out of range 0..{_U24_MAX}")
    cls = NONE_U8 if r.label == UNCERTAIN else r.class_index
    if not 0 <= cls <= NONE_U8:
        raise EncodeError(f"class index {r.class_index} out of range 0..{NONE_U8 - 1}")
    row = NONE_U16 if r.row is None else r.row
    metre = NONE_U16 if r.metre is None else round(r.metre * 10)
    if not 0 <= row <= NONE_U16 or not 0 <= metre <= NONE_U16:
        raise EncodeError(f"row {r.row} / metre {r.metre} out of range 0..65534 / 0..6553.4")
    dlat = NONE_I16 if r.lat is None else round((r.lat - ctx.lat0) * 1e6)
    dlon = NONE_I16 if r.lon is None else round((r.lon - ctx.lon0) * 1e6)
    conf = min(255, max(0, round(r.confidence * 255)))
    return (bytes([ctx.ref]) + _u24(r.plant_id) + _u24(round((r.t - ctx.t0) * 10))
            + _PLANT_TAIL.pack(cls, conf, min(r.frames, 255), row, metre, dlat, dlon, _code(r.health, HEALTH_VALUES),
                               _code(r.fix, FIX_VALUES), _quality(r.fix_quality)))


def plant_ref(p: bytes) -> int:
    if len(p) != PLANT_LEN:
        raise ProtocolError(f"PLANT payload of {len(p)} bytes; expected {PLANT_LEN}")
    return p[0]


def decode_plant(p: bytes, robot_id: str, ctx: SurveyContext, class_name: str | None) -> PlantRecord:
    """``class_name``: the name the robot announced for this index (None if uncertain)."""
    plant_ref(p)
    cls, conf, frames, row, metre, dlat, dlon, health, fix, quality = _PLANT_TAIL.unpack_from(p, 7)
    if cls != NONE_U8 and class_name is None:
        raise ProtocolError(f"class index {cls} was never announced")
    try:
        return checked(PlantRecord(
            robot_id=robot_id, survey_id=ctx.survey_id, plant_id=_get_u24(p, 1),
            t=ctx.t0 + _get_u24(p, 4) / 10, label=UNCERTAIN if cls == NONE_U8 else class_name,
            class_index=-1 if cls == NONE_U8 else cls, confidence=conf / 255, frames=frames,
            row=None if row == NONE_U16 else row, metre=None if metre == NONE_U16 else metre / 10,
            lat=None if dlat == NONE_I16 or math.isnan(ctx.lat0) else round(ctx.lat0 + dlat / 1e6, 7),
            lon=None if dlon == NONE_I16 or math.isnan(ctx.lon0) else round(ctx.lon0 + dlon / 1e6, 7),
            health=_value(health, HEALTH_VALUES, "health"), fix=_value(fix, FIX_VALUES, "fix"),
            fix_quality=None if quality == NONE_U8 else quality,
        ))
    except RecordError as e:
        raise InvalidRecord(str(e)) from e


# ROW: ref u8, row u16, plants u32, diseased u32, uncertain u32, incidence/ci_lo/ci_hi u16
# (fraction * 65535), t f64.
_ROW = struct.Struct("<BHIIIHHHd")


def encode_row(r: RowSummary, ctx: SurveyContext) -> bytes:
    try:
        return _ROW.pack(ctx.ref, r.row, r.plants, r.diseased, r.uncertain,
                         *(round(min(1.0, max(0.0, v)) * 65535) for v in (r.incidence, r.ci_lo, r.ci_hi)), r.t)
    except struct.error as e:
        raise EncodeError(f"row summary out of range: {e}") from e


def row_ref(p: bytes) -> int:
    if len(p) != _ROW.size:
        raise ProtocolError(f"ROW payload of {len(p)} bytes; expected {_ROW.size}")
    return p[0]


def decode_row(p: bytes, robot_id: str, ctx: SurveyContext) -> RowSummary:
    row_ref(p)
    _, row, plants, dis, unc, inc, lo, hi, t = _ROW.unpack(p)
    try:
        return checked(RowSummary(robot_id, ctx.survey_id, row, plants, dis, unc, inc / 65535, lo / 65535,
                                  hi / 65535, t))
    except RecordError as e:
        raise InvalidRecord(str(e)) from e


# HEARTBEAT: t f64, queue u32, frames u32, fps f32, ref u8 (0xFF none), row u16,
# metre f32 (NaN none), lat/lon i32 (1e-7 deg), dropped u32 (0xFFFFFFFF none), gps u8 (FIX_VALUES index,
# 0xFF none), fix quality u8 (0xFF none), fix age f32 (s, NaN none), then three texts, each a length
# u8 and UTF-8 bytes: status (1..64), links and bundle (0..64; 0 = none).
NONE_U32 = 0xFFFFFFFF
_HB = struct.Struct("<dIIfBHfiiIBBf")
_HB_REF_OFFSET = struct.calcsize("<dIIf")


def encode_heartbeat(h: Heartbeat, ctx: SurveyContext | None) -> bytes:
    try:
        return _HB.pack(
            h.t, min(h.queue_depth, 0xFFFFFFFF), min(h.frames, 0xFFFFFFFF), h.fps,
            NONE_U8 if ctx is None else ctx.ref, NONE_U16 if h.row is None else h.row,
            math.nan if h.metre is None else h.metre, _deg7(math.nan if h.lat is None else h.lat),
            _deg7(math.nan if h.lon is None else h.lon),
            NONE_U32 if h.dropped is None else min(h.dropped, NONE_U32 - 1),
            _code(h.gps, FIX_VALUES), _quality(h.fix_quality), math.nan if h.fix_age_s is None else h.fix_age_s,
        ) + _texts((h.status, h.links, h.bundle), ("status", "links", "bundle"))
    except struct.error as e:
        raise EncodeError(f"heartbeat out of range: {e}") from e


def heartbeat_ref(p: bytes) -> int | None:
    if len(p) <= _HB.size:
        raise ProtocolError(f"HEARTBEAT payload of {len(p)} bytes; expected > {_HB.size}")
    ref = p[_HB_REF_OFFSET]
    return None if ref == NONE_U8 else ref


def decode_heartbeat(p: bytes, robot_id: str, ctx: SurveyContext | None) -> Heartbeat:
    heartbeat_ref(p)
    t, queue, frames, fps, _, row, metre, lat, lon, dropped, gps, quality, age = _HB.unpack_from(p)
    if not (math.isfinite(t) and math.isfinite(fps)):
        raise InvalidRecord("HEARTBEAT time or fps is not finite")
    status, links, bundle = _get_texts(p[_HB.size:], ("status", "links", "bundle"))
    if status is None:
        raise ProtocolError("HEARTBEAT status is empty")
    try:
        return checked(Heartbeat(
            robot_id, t, queue, frames, fps, status,
            None if ctx is None else ctx.survey_id,
            None if lat == NONE_I32 else lat / 1e7, None if lon == NONE_I32 else lon / 1e7,
            None if row == NONE_U16 else row, None if math.isnan(metre) else metre,
            None if dropped == NONE_U32 else dropped,
            _value(gps, FIX_VALUES, "gps"), None if quality == NONE_U8 else quality, None if math.isnan(age) else age,
            links, bundle,
        ))
    except RecordError as e:
        raise InvalidRecord(str(e)) from e


_U32 = struct.Struct("<I")
MAX_ACKS = 32


def encode_ack(seqs: list[int]) -> bytes:
    if not 0 < len(seqs) <= MAX_ACKS:
        raise EncodeError(f"an ACK carries 1..{MAX_ACKS} seqs, got {len(seqs)}")
    return struct.pack(f"<{len(seqs)}I", *seqs)


def decode_ack(p: bytes) -> list[int]:
    if not p or len(p) % 4 or len(p) > 4 * MAX_ACKS:
        raise ProtocolError(f"ACK payload of {len(p)} bytes; expected a multiple of 4 up to {4 * MAX_ACKS}")
    return list(struct.unpack(f"<{len(p) // 4}I", p))


def encode_nak(seq: int, reason: NakReason) -> bytes:
    return _U32.pack(seq) + bytes([reason])


def decode_nak(p: bytes) -> tuple[int, NakReason]:
    if len(p) != 5:
        raise ProtocolError(f"NAK payload of {len(p)} bytes; expected 5")
    try:
        return _U32.unpack_from(p)[0], NakReason(p[4])
    except ValueError:
        raise ProtocolError(f"unknown NAK reason {p[4]}") from None
