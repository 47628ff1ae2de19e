"""The serial frame codec: worked example from docs/protocol.md, round trips, fault streams, fuzzing."""
from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telemetry_faults import CTX, decode_stream, fault_stream

from leafscout.link import protocol as P
from leafscout.link.records import UNCERTAIN, Heartbeat, PlantRecord, RowSummary

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
KEY = b"leafscout-example-key"


def fuzz_settings(examples: int) -> settings:
    """``examples`` random inputs per test here; LEAFSCOUT_FUZZ_EXAMPLES=10000 in the benchmark."""
    n = int(os.environ.get("LEAFSCOUT_FUZZ_EXAMPLES", examples))
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


FUZZ = fuzz_settings(1500)


def _doc_hex_blocks() -> list[bytes]:
    blocks = re.findall(r"```\n((?:[0-9a-f]{2} )+[0-9a-f]{2})\n```", DOC.read_text())
    return [bytes.fromhex(b) for b in blocks]


def test_worked_example_in_protocol_doc_is_generated_from_the_codec():
    sys.path.insert(0, str(DOC.parent))
    import protocol_example

    assert protocol_example.markdown() in DOC.read_text(), "run: python docs/protocol_example.py"


def test_worked_example_in_protocol_doc_decodes():
    plain, signed, ack, nak = _doc_hex_blocks()[:4]
    assert len(plain) == 35 and plain.endswith(b"\x00")
    ctx = P.SurveyContext(3, "2026-06-01-north", 1780300800.0, 48.1371, 11.5754)
    f = P.decode_frame(plain[:-1])
    assert (f.type, f.robot, f.seq, f.signed) == (P.MsgType.PLANT, P.robot_number("r1"), 42, False)
    r = P.decode_plant(f.payload, "r1", ctx, "Tomato___Late_blight")
    assert (r.plant_id, r.class_index, r.frames, r.row, r.metre) == (1234, 7, 6, 12, 48.7)
    assert r.t == pytest.approx(ctx.t0 + 125.3) and r.confidence == pytest.approx(0.93, abs=1 / 255)
    assert (r.lat, r.lon) == (48.137143, 11.575388)
    assert (r.health, r.fix, r.fix_quality) == ("diseased", "fix", 4)
    fs = P.decode_frame(signed[:-1], key=KEY)
    assert fs.signed and fs.payload == f.payload
    with pytest.raises(P.AuthError):
        P.decode_frame(signed[:-1], key=b"another-key-of-16b")
    a = P.decode_frame(ack[:-1])
    assert a.type == P.MsgType.ACK and P.decode_ack(a.payload) == [42]
    n = P.decode_frame(nak[:-1])
    assert n.type == P.MsgType.NAK and P.decode_nak(n.payload) == (43, P.NakReason.REJECTED)
    # inline context frames in the doc decode too
    inline = re.findall(r"`((?:[0-9a-f]{2} )+00)`", DOC.read_text())
    frames = [P.decode_frame(bytes.fromhex(h)[:-1]) for h in inline]
    assert [f.type for f in frames] == [P.MsgType.HELLO, P.MsgType.CLASS]
    name, boot = P.decode_hello(frames[0].payload)
    assert name == "r1" and len(boot) == P.BOOT_LEN


def test_crc_is_crc32c_as_documented():
    assert P.crc32c(b"123456789") == 0xE3069283


def _same_plant(got: PlantRecord, want: PlantRecord) -> bool:
    """Equal up to the documented precision (0.1 s, 1/255, 1e-6 deg, frames saturate at 255)."""
    return (
        (got.robot_id, got.survey_id, got.plant_id, got.label, got.class_index, got.row, got.metre,
         got.health, got.fix, got.fix_quality)
        == (want.robot_id, want.survey_id, want.plant_id, want.label, want.class_index, want.row, want.metre,
            want.health, want.fix, want.fix_quality)
        and got.frames == min(want.frames, 255) and abs(got.t - want.t) <= 0.05
        and abs(got.confidence - want.confidence) <= 0.5 / 255
        and all(g == w if g is None or w is None else abs(g - w) <= 1e-6
                for g, w in ((got.lat, want.lat), (got.lon, want.lon)))
    )


@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip_of_every_message_type(key):
    n = P.robot_number("r7")
    plant = PlantRecord("r7", "s", 77, CTX.t0 + 3.4, "Apple___scab", 4, 0.5, 300, row=2, metre=1.5,
                        lat=48.0001, lon=10.9999, health="diseased", fix="interpolated", fix_quality=4)
    unc = PlantRecord("r7", "s", 78, CTX.t0, UNCERTAIN, -1, 0.3, 1, health=UNCERTAIN, fix="stale", fix_quality=1)
    row = RowSummary("r7", "s", 2, 40, 4, 1, 0.1, 0.05, 0.2, CTX.t0 + 9)
    hb = Heartbeat("r7", CTX.t0 + 1, 12, 900, 9.5, "degraded", "s", 48.0, 11.0, 2, 3.25, dropped=17,
                   gps="stale", fix_quality=1, fix_age_s=2.5, links="mqtt=down serial=up", bundle="2026.12.05")
    bare = Heartbeat("r7", CTX.t0 + 1, 0, 0, 0.0)  # no GPS, no links named, no bundle: all None again
    ctx = P.SurveyContext(0, "s", CTX.t0, CTX.lat0, CTX.lon0)
    cases = [
        (P.MsgType.HELLO, P.encode_hello("r7", bytes(range(16))), lambda p: P.decode_hello(p) == ("r7", bytes(range(16)))),
        (P.MsgType.CLASS, P.encode_class(4, "Apple___scab"), lambda p: P.decode_class(p) == (4, "Apple___scab")),
        (P.MsgType.SURVEY, P.encode_survey(ctx), lambda p: P.decode_survey(p) == ctx),
        (P.MsgType.PLANT, P.encode_plant(plant, ctx),
         lambda p: _same_plant(P.decode_plant(p, "r7", ctx, "Apple___scab"), plant)),
        (P.MsgType.PLANT, P.encode_plant(unc, ctx),
         lambda p: _same_plant(P.decode_plant(p, "r7", ctx, None), unc)),
        (P.MsgType.ROW, P.encode_row(row, ctx), lambda p: P.decode_row(p, "r7", ctx).plants == 40),
        (P.MsgType.HEARTBEAT, P.encode_heartbeat(hb, ctx), lambda p: P.decode_heartbeat(p, "r7", ctx) == hb),
        (P.MsgType.HEARTBEAT, P.encode_heartbeat(bare, None), lambda p: P.decode_heartbeat(p, "r7", None) == bare),
        (P.MsgType.ACK, P.encode_ack([1, 2**32 - 1]), lambda p: P.decode_ack(p) == [1, 2**32 - 1]),
        (P.MsgType.NAK, P.encode_nak(5, P.NakReason.UNKNOWN_CONTEXT),
         lambda p: P.decode_nak(p) == (5, P.NakReason.UNKNOWN_CONTEXT)),
    ]
    for mtype, payload, check in cases:
        wire = P.encode_frame(mtype, n, 99, payload, key)
        assert wire.count(0) == 1 and wire[-1] == 0
        f = P.decode_frame(wire[:-1], key)
        assert (f.type, f.robot, f.seq, f.signed) == (mtype, n, 99, key is not None)
        assert check(f.payload), mtype


def test_plant_frame_fits_in_35_bytes_and_43_signed():
    r = PlantRecord("r1", "s", 2**24 - 1, CTX.t0 + 1e6, "x", 254, 1.0, 9, row=65534, metre=6553.4,
                    lat=CTX.lat0 + 0.03, lon=CTX.lon0 - 0.03)
    payload = P.encode_plant(r, CTX)
    assert len(payload) == P.PLANT_LEN == 21
    assert len(P.encode_frame(P.MsgType.PLANT, 1, 2**32 - 1, payload)) <= 35
    assert len(P.encode_frame(P.MsgType.PLANT, 1, 2**32 - 1, payload, KEY)) <= 43


def test_values_the_compact_form_cannot_carry_are_refused_not_mangled():
    far = PlantRecord("r1", "s", 1, CTX.t0, "x", 1, 0.5, 1, lat=CTX.lat0 + 1.0, lon=CTX.lon0)
    assert not P.plant_fits(far, CTX)
    with pytest.raises(P.EncodeError, match="does not fit"):
        P.encode_plant(far, CTX)
    with pytest.raises(P.EncodeError, match="plant id"):
        P.encode_plant(PlantRecord("r1", "s", 2**24, CTX.t0, "x", 1, 0.5, 1), CTX)
    with pytest.raises(P.EncodeError, match="class index"):
        P.encode_class(255, "x")
    with pytest.raises(P.EncodeError, match="1..64"):
        P.encode_hello("r" * 65, bytes(16))


@pytest.mark.parametrize("mutation, error", [
    (lambda b: b[:5], P.ProtocolError),  # too short
    (lambda b: bytes([b[0] ^ 0x01]) + b[1:], P.ProtocolError),  # COBS / CRC broken
    (lambda b: b[:-3] + bytes([b[-3] ^ 0x40]) + b[-2:], P.CrcError),
])
def test_damaged_frames_are_rejected(mutation, error):
    wire = P.encode_frame(P.MsgType.HELLO, 1, 2, b"r1")[:-1]
    with pytest.raises(error):
        P.decode_frame(mutation(wire))


def test_wrong_version_unknown_type_and_unsigned_frames_are_rejected():
    from cobs import cobs

    def build(ver_flags: int, mtype: int) -> bytes:
        body = P.HEADER.pack(ver_flags, mtype, 1, 1) + b"r1"
        return cobs.encode(body + P.CRC.pack(P.crc32c(body)))

    with pytest.raises(P.ProtocolError, match="version 1, expected 3"):
        P.decode_frame(build(0x10, 1))  # version 1 frames carry no outbox id: refused
    with pytest.raises(P.ProtocolError, match="version 2, expected 3"):
        P.decode_frame(build(0x20, 1))  # version 2 plants carry no health or GPS fix: refused, not guessed
    with pytest.raises(P.ProtocolError, match="version 4"):
        P.decode_frame(build(0x40, 1))
    with pytest.raises(P.ProtocolError, match="unknown message type 99"):
        P.decode_frame(build(0x30, 99))
    with pytest.raises(P.AuthError, match="not signed"):
        P.decode_frame(build(0x30, 1), key=KEY)


def test_fault_stream_every_intact_frame_decoded_every_corrupted_one_rejected():
    # The full 20,000-frame run is in `make bench`; 4,000 frames keep this test quick.
    stream = fault_stream(4000, seed=7)
    assert stream.garbage_bursts > 150 and len(stream.corrupted) > 20
    frames, rejected = decode_stream(stream.data)
    got = {f.seq: f.payload for f in frames}
    assert len(frames) == len(got), "a frame was decoded twice"
    assert got == stream.intact
    assert rejected >= len(stream.corrupted)


def test_fault_stream_with_hmac():
    stream = fault_stream(1000, seed=3, key=KEY)
    frames, _ = decode_stream(stream.data, key=KEY, chunk=97)
    assert {f.seq: f.payload for f in frames} == stream.intact


def test_decoder_resynchronizes_after_a_long_run_without_delimiter():
    frame = P.encode_frame(P.MsgType.HELLO, 1, 2, b"r1")
    dec = P.FrameDecoder()
    out = list(dec.feed(b"\x55" * 5000)) + list(dec.feed(frame)) + list(dec.feed(frame))
    frames = [x for x in out if isinstance(x, P.Frame)]
    assert len(frames) == 2 and all(f.payload == b"r1" for f in frames)


# -- property-based: no input makes a decoder raise anything but its documented error --
_PAYLOAD_DECODERS = [
    P.decode_hello, P.decode_class, P.decode_survey, P.decode_ack, P.decode_nak,
    lambda p: P.decode_plant(p, "r1", CTX, "x"), lambda p: P.decode_row(p, "r1", CTX),
    lambda p: P.decode_heartbeat(p, "r1", CTX), lambda p: P.decode_heartbeat(p, "r1", None),
]


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_decode_frame(data):
    for key in (None, KEY):
        try:
            f = P.decode_frame(data, key)
        except P.ProtocolError:
            continue
        assert isinstance(f.type, P.MsgType)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_frame_decoder_stream(chunks):
    dec = P.FrameDecoder()
    for c in chunks:
        for item in dec.feed(c):
            assert isinstance(item, (P.Frame, P.ProtocolError))


@FUZZ
@given(st.binary(max_size=80))
def test_fuzz_payload_decoders(payload):
    for decode in _PAYLOAD_DECODERS:
        try:
            value = decode(payload)
        except P.ProtocolError:
            continue
        if isinstance(value, (PlantRecord, Heartbeat)):
            assert math.isfinite(value.t)
