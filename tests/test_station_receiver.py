"""The station rejects forged, replayed, unknown and oversized input on both links, and never crashes."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import serial
from conftest import require_binary
from hypothesis import given
from hypothesis import strategies as st
from telemetry_faults import wait_for
from test_protocol import FUZZ, fuzz_settings

from leafscout.link import protocol as P
from leafscout.link.mqtt import MessageError, seal, topic, unseal
from leafscout.link.records import PlantRecord, RecordError, record_from_dict
from leafscout.station.broker import Broker
from leafscout.station.db import open_db
from leafscout.station.receiver import Station, StationError, parse_record_message

KEY = b"station-test-key-0123"
OB = "0123456789abcdef0123456789abcdef"  # an outbox id
T0 = 1_780_000_000.0
REPO = Path(__file__).resolve().parents[1]


def plant(i: int, robot_id: str = "r1") -> PlantRecord:
    return PlantRecord(robot_id, "s1", i, T0 + i, "Tomato___healthy", 0, 0.9, 3, row=1, metre=float(i))


def publisher(broker: Broker, user: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{user}")
    c.username_pw_set(user, broker.passwords[user])
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def send(c: mqtt.Client, t: str, payload: bytes) -> None:
    c.publish(t, payload, qos=1).wait_for_publish(5)


def test_mqtt_forged_replayed_unknown_and_oversized_input_is_rejected(tmp_path, db_target):
    require_binary("mosquitto")
    with Broker(tmp_path / "broker", ["r1", "r2"]) as broker, \
            Station(db_target, mqtt=broker.url("station"), hmac_key=KEY, robots=["r1"]) as st:
        assert st.wait_connected(10)
        r1, r2 = publisher(broker, "r1"), publisher(broker, "r2")
        acks: list[bytes] = []
        got_ack = threading.Event()
        r1.on_message = lambda c, u, m: (acks.append(m.payload), got_ack.set())
        r1.subscribe(topic("r1", "ack"), qos=1)
        t = topic("r1", "plant")
        good = seal(t, {"id": f"r1:{OB}:1", "record": plant(1).to_dict()}, KEY)
        send(r1, t, good)
        wait_for(lambda: st.db.record_count() == 1, 10, "the genuine record")
        assert got_ack.wait(5) and unseal(topic("r1", "ack"), acks[0], KEY) == {"outbox": OB, "ids": [1]}
        cases = {
            "bad_hmac": [seal(t, {"id": f"r1:{OB}:2", "record": plant(2).to_dict()}, b"wrong-key-wrong-key"),
                         seal(t, {"id": f"r1:{OB}:3", "record": plant(3).to_dict()}, None)],
            "duplicate": [good],  # replay of a genuine message
            "too_large": [b"x" * (1024 * 1024)],
            "malformed": [seal(t, {"id": f"r2:{OB}:5", "record": plant(5).to_dict()}, KEY),
                          seal(t, {"id": "r1:5", "record": plant(5).to_dict()}, KEY)],  # no outbox id
            "invalid": [seal(t, {"id": f"r1:{OB}:4", "record": {"kind": "plant"}}, KEY),
                        seal(t, {"id": f"r1:{OB}:6", "record": plant(6, "r2").to_dict()}, KEY),
                        seal(t, {"id": f"r1:{OB}:7", "record": plant(7).to_dict(), "thumbnail": "!!"}, KEY)],
        }
        for payloads in cases.values():
            for p in payloads:
                send(r1, t, p)
        t2 = topic("r2", "plant")
        send(r2, t2, seal(t2, {"id": f"r2:{OB}:1", "record": plant(1, "r2").to_dict()}, KEY))
        expected = {reason: len(p) for reason, p in cases.items()} | {"unknown_robot": 1}
        wait_for(lambda: all(st.db.rejected().get(k, 0) >= v for k, v in expected.items()), 10,
                 f"rejections {expected}")
        assert st.db.rejected() == expected
        assert st.db.record_count() == 1 and [p.plant_id for p in st.db.plants("s1")] == [1]
        for c in (r1, r2):
            c.loop_stop()
            c.disconnect()


def _frame(mtype: P.MsgType, seq: int, payload: bytes, key: bytes | None = KEY, robot_id: str = "r1") -> bytes:
    return P.encode_frame(mtype, P.robot_number(robot_id), seq, payload, key)


def test_serial_forged_replayed_unknown_and_oversized_input_is_rejected(tmp_path, db_target):
    tty = str(tmp_path / "tty")
    ctx = P.SurveyContext(0, "s1", T0, 48.0, 11.0)
    with Station(db_target, serial=f"pty://{tty}", hmac_key=KEY, robots=["r1"]) as st:
        assert st.wait_connected(5)
        port = serial.serial_for_url(tty, baudrate=115200, timeout=2)
        dec = P.FrameDecoder(KEY)

        def exchange(frame: bytes) -> list[P.Frame]:
            port.write(frame)
            data = port.read_until(b"\x00")
            return [f for f in dec.feed(data) if isinstance(f, P.Frame)]

        assert P.decode_ack(exchange(_frame(P.MsgType.HELLO, 1, P.encode_hello("r1", bytes.fromhex(OB))))[0].payload) == [1]
        exchange(_frame(P.MsgType.SURVEY, 2, P.encode_survey(ctx)))
        exchange(_frame(P.MsgType.CLASS, 3, P.encode_class(0, "Tomato___healthy")))
        first = dataclasses.replace(plant(1), health="healthy", fix="interpolated", fix_quality=5)
        data = _frame(P.MsgType.PLANT, 10, P.encode_plant(first, ctx))
        reply = exchange(data)
        assert reply[0].type == P.MsgType.ACK and P.decode_ack(reply[0].payload) == [10]
        assert exchange(data)[0].type == P.MsgType.ACK  # a replay is acknowledged again, stored once
        port.write(_frame(P.MsgType.PLANT, 11, P.encode_plant(plant(2), ctx), key=b"wrong-key-wrong-key"))
        port.write(_frame(P.MsgType.PLANT, 12, P.encode_plant(plant(3), ctx), key=None))
        port.write(_frame(P.MsgType.HELLO, 13, P.encode_hello("r9", bytes(16)), robot_id="r9"))
        port.write(os.urandom(1024 * 1024).replace(b"\x00", b"\x01") + b"\x00")  # a 1 MB "frame"
        nak = exchange(_frame(P.MsgType.PLANT, 14, P.encode_plant(plant(4, "r9"), ctx), robot_id="r9"))
        assert nak[0].type == P.MsgType.NAK and P.decode_nak(nak[0].payload) == (14, P.NakReason.UNKNOWN_ROBOT)
        port.close()
        expected = {"duplicate": 1, "bad_hmac": 2, "unknown_robot": 1, "malformed": 1, "missing_context": 1}
        wait_for(lambda: st.db.rejected() == expected, 10, f"rejections {expected}")
        assert [p.plant_id for p in st.db.plants("s1")] == [1]
        stored = st.db.plants("s1")[0]  # health and how its position was known survive the compact frame
        assert (stored.diseased, stored.uncertain, stored.fix, stored.fix_quality) == (False, False, "interpolated", 5)


def test_station_needs_a_link(tmp_path):
    with pytest.raises(StationError, match="at least one of mqtt="):
        Station(tmp_path / "s.db")


def _station_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "leafscout.cli", "station", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_station_cli_runs_both_links_and_stops_cleanly(tmp_path, db_target):
    require_binary("mosquitto")
    keys = tmp_path / "keys"
    for robot in ("r1", "r2"):
        assert subprocess.run([sys.executable, "-m", "leafscout.cli", "keys", "new", robot, "--dir", str(keys)],
                              cwd=REPO, capture_output=True).returncode == 0
    assert oct((keys / "r1.key").stat().st_mode & 0o777) == "0o600"
    r1_key = (keys / "r1.key").read_bytes().strip()
    with Broker(tmp_path / "broker", ["r1"]) as broker:
        tty = tmp_path / "tty"
        proc = _station_cli("--mqtt", broker.url("station", password=False), "--password-file",
                            str(broker.password_file("station")), "--serial", f"pty://{tty}",
                            "--db", str(db_target), "--keys", str(keys))
        try:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if "station ready" in line:
                    break
            assert any(str(os.path.realpath(tty)) in ln or "/dev/pts/" in ln for ln in lines), lines
            from leafscout.robot.telemetry import open_sinks
            with open_sinks(serial=str(tty), mqtt=broker.url("r1", password=False), outbox_path=tmp_path / "o.db",
                            robot_id="r1", hmac_key=r1_key, mqtt_password=broker.passwords["r1"]) as (sink,):
                for i in range(20):
                    sink.submit(plant(i))
                assert sink.flush()
                wait_for(lambda: sink.outbox.depth() == 0, 20, "both links to deliver")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert broker.passwords["station"] not in out + err
    with open_db(db_target) as db:
        assert sorted(p.plant_id for p in db.plants("s1")) == list(range(20))
        assert db.flags() == {"insecure": False}


def test_station_refuses_to_start_insecure_unless_told(tmp_path):
    """Before: with no options it accepted anonymous MQTT and unsigned records without a word."""
    url = "mqtt://127.0.0.1:1"
    for args, why in [(["--mqtt", url], "MQTT without credentials"),
                      (["--mqtt", "mqtt://station@127.0.0.1:1"], "MQTT without credentials"),
                      (["--serial", "loop://"], "unsigned records")]:
        proc = _station_cli(*args, "--db", str(tmp_path / "s.db"))
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and why in err, err
    proc = _station_cli("--mqtt", "mqtt://station:hunter2-secret@127.0.0.1:1", "--db", str(tmp_path / "s.db"))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "holds a password" in err and "hunter2-secret" not in err
    proc = _station_cli("--serial", "loop://", "--db", str(tmp_path / "s.db"), "--insecure")
    try:
        for line in proc.stdout:
            if "station ready" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "INSECURE station" in err
    with open_db(tmp_path / "s.db") as db:
        assert db.flags() == {"insecure": True}


def test_a_key_speaks_only_for_its_own_robot(tmp_path, db_target):
    """Before: one key shared by all robots, so any key holder could speak for any robot."""
    from leafscout.station.keys import KeyRing

    k1, k2 = b"r1-key-0123456789abcdef", b"r2-key-0123456789abcdef"
    ring = KeyRing({"r1": k1, "r2": k2})
    t = topic("r1", "plant")
    body = {"id": f"r1:{OB}:1", "record": plant(1).to_dict()}
    assert parse_record_message(t, seal(t, body, k1), ring).record == plant(1)
    for key in (k2, None, b"not-any-robots-key-at-all"):  # r2's key, anonymous, a stranger
        with pytest.raises(MessageError) as e:
            parse_record_message(t, seal(t, body, key), ring)
        assert e.value.reason == "bad_hmac"
    with pytest.raises(MessageError, match="no key for robot 'r3'"):
        parse_record_message(topic("r3", "plant"), seal(topic("r3", "plant"), body, k1), ring)
    # serial: r1's frames signed with r2's key are refused; with its own key accepted
    tty = str(tmp_path / "tty")
    with Station(db_target, serial=f"pty://{tty}", keys=ring) as st:
        assert st.wait_connected(5)
        port = serial.serial_for_url(tty, baudrate=115200, timeout=2)
        hello = P.encode_hello("r1", bytes.fromhex(OB))
        port.write(_frame(P.MsgType.HELLO, 1, hello, key=k2))
        port.write(_frame(P.MsgType.HELLO, 2, hello, key=None))
        port.write(_frame(P.MsgType.HELLO, 3, hello, key=k1))
        reply = [f for f in P.FrameDecoder(k1).feed(port.read_until(b"\x00")) if isinstance(f, P.Frame)]
        assert P.decode_ack(reply[0].payload) == [3]  # signed with r1's key, so r1 can check it
        port.close()
        wait_for(lambda: st.db.rejected().get("bad_hmac", 0) == 2, 5, "two refused HELLOs")


# -- property-based: random input never escapes the documented errors ----------------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(["leafscout/r1/plant", "leafscout/r1/row", "x/y", "leafscout/r1"]))
def test_fuzz_mqtt_payload_verifier(payload, t):
    for key in (None, KEY):
        try:
            parse_record_message(t, payload, key, frozenset({"r1"}))
        except MessageError as e:
            assert e.reason in {"too_large", "bad_topic", "unknown_robot", "bad_hmac", "malformed", "invalid"}


@fuzz_settings(400)  # structured JSON is slow to generate
@given(st.dictionaries(st.sampled_from(["id", "record", "thumbnail", "x"]), _json_values, max_size=4))
def test_fuzz_mqtt_message_structure(body):
    t = "leafscout/r1/plant"
    try:
        a = parse_record_message(t, json.dumps(body).encode(), None, None)
    except MessageError:
        return
    assert a.record.robot_id == "r1"


@fuzz_settings(400)
@given(st.dictionaries(st.sampled_from(["kind", "robot_id", "survey_id", "plant_id", "t", "label", "class_index",
                                        "confidence", "frames", "row", "queue_depth", "fps", "plants"]),
                       _json_values, max_size=10) | _json_values)
def test_fuzz_record_parser(d):
    try:
        record_from_dict(d)
    except RecordError:
        pass
