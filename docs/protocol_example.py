"""Print the worked example of docs/protocol.md section 1.6 from the codec itself.

``python docs/protocol_example.py`` writes the markdown of that section; ``tests/test_protocol.py``
checks that docs/protocol.md contains exactly this text, so the hex never drifts from the code.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafscout.link import protocol as P
from leafscout.link.records import PlantRecord

KEY = b"leafscout-example-key"
OUTBOX_ID = bytes.fromhex("8f14e45fceea167a5a36dedd4bea2543")
CTX = P.SurveyContext(3, "2026-06-01-north", 1780300800.0, 48.1371, 11.5754)
PLANT = PlantRecord("r1", CTX.survey_id, 1234, CTX.t0 + 125.3, "Tomato___Late_blight", 7, 0.93, 6, row=12,
                    metre=48.7, lat=48.137143, lon=11.575388, health="diseased", fix="fix", fix_quality=4)


def _hex(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


def frames() -> dict[str, bytes]:
    n = P.robot_number("r1")
    return {
        "plain": P.encode_frame(P.MsgType.PLANT, n, 42, P.encode_plant(PLANT, CTX)),
        "signed": P.encode_frame(P.MsgType.PLANT, n, 42, P.encode_plant(PLANT, CTX), KEY),
        "ack": P.encode_frame(P.MsgType.ACK, n, 9, P.encode_ack([42])),
        "nak": P.encode_frame(P.MsgType.NAK, n, 10, P.encode_nak(43, P.NakReason.REJECTED)),
        "hello": P.encode_frame(P.MsgType.HELLO, n, 39, P.encode_hello("r1", OUTBOX_ID)),
        "class": P.encode_frame(P.MsgType.CLASS, n, 40, P.encode_class(7, "Tomato___Late_blight")),
    }


def markdown() -> str:
    f = frames()
    body = P.encode_plant(PLANT, CTX)
    header = P.HEADER.pack(P.VERSION << 4, int(P.MsgType.PLANT), P.robot_number("r1"), 42)
    crc = P.crc32c(header + body)
    signed_body = header[:0] + bytes([P.VERSION << 4 | P.FLAG_HMAC]) + header[1:] + body
    tag = P._tag(KEY, signed_body)
    return f"""Robot `r1` (number `0x{P.robot_number('r1'):04x}`), outbox id `{OUTBOX_ID.hex()}`, outbox seq 42
(record id `r1:{OUTBOX_ID.hex()}:42`), survey ref 3 whose context is `t0 = 1780300800.0`,
`lat0 = 48.1371`, `lon0 = 11.5754`; class 7 = `Tomato___Late_blight`.
The plant: id 1234, `t = t0 + 125.3 s`, class 7, confidence 0.93, seen in 6 frames, row
12, metre 48.7, lat 48.137143, lon 11.575388, health diseased, position from a current RTK fix
(GGA quality 4).

Wire bytes ({len(f['plain'])}, no HMAC):

```
{_hex(f['plain'])}
```

After COBS decoding ({len(header) + len(body) + 4} bytes):

```text
{header[0]:02x}                 ver_flags: version {P.VERSION}, no flags
{header[1]:02x}                 type PLANT
{_hex(header[2:4])}              robot 0x{P.robot_number('r1'):04x} ("r1")
{_hex(header[4:8])}        seq 42              -> record id "r1:<outbox id>:42"
{_hex(body[0:1])}                 survey ref 3
{_hex(body[1:4])}           plant id 1234
{_hex(body[4:7])}           dt 1253 -> 125.3 s
{_hex(body[7:8])}                 class 7
{_hex(body[8:9])}                 confidence 237/255 = 0.929
{_hex(body[9:10])}                 frames 6
{_hex(body[10:12])}              row 12
{_hex(body[12:14])}              metre 487 -> 48.7
{_hex(body[14:16])}              dlat 43 -> 48.1371 + 0.000043 = 48.137143
{_hex(body[16:18])}              dlon -12 -> 11.5754 - 0.000012 = 11.575388
{_hex(body[18:19])}                 health 1 -> "diseased"
{_hex(body[19:20])}                 fix 0 -> "fix"
{_hex(body[20:21])}                 fix quality 4
{_hex(crc.to_bytes(4, 'little'))}        CRC-32C 0x{crc:08x} over the {len(header) + len(body)} bytes above
```

The same frame signed with key `{KEY.decode()}` (ASCII):

```
{_hex(f['signed'])}
```

(`ver_flags` = `0x{P.VERSION << 4 | P.FLAG_HMAC:02x}`, tag `{_hex(tag)}`, then the CRC.)
The station's reply, ACK of seq 42 (station frame counter 9):

```
{_hex(f['ack'])}
```

A NAK with reason 3 (rejected: the record with seq 43 broke a limit; drop it), station frame counter 10:

```
{_hex(f['nak'])}
```

The context frames that precede it: HELLO (seq 39, with the outbox id) `{_hex(f['hello'])}`,
CLASS 7 (seq 40) `{_hex(f['class'])}`.
`tests/test_protocol.py` decodes these bytes from this file, and checks that this section is
exactly what `python docs/protocol_example.py` prints (the example is generated from the codec).
"""


if __name__ == "__main__":
    sys.stdout.write(markdown())
