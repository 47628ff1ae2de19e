"""The base station's receivers: verify what arrives over MQTT and serial, store it once.

Every input passes the same gate before it can touch the database: size limit, HMAC
(when a key is configured), robot allow-list, schema (``robot.records``), and the
duplicate filter (record id).  Anything that fails is logged and counted in the
``rejected`` table under a reason (``too_large``, ``bad_hmac``, ``bad_crc``,
``malformed``, ``unknown_robot``, ``bad_topic``, ``duplicate``...) and never written.
No input can raise out of a receiver thread.

``Station`` runs the receivers of one process (``leafscout station``) in threads with
``start``/``stop``; a web app can be started next to it on the same ``StationDB``.
"""
from __future__ import annotations

import base64
import binascii
import logging
import queue
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from robot import protocol as P
from robot.mqtt_link import (DATA_KINDS, MAX_THUMBNAIL_BYTES, MessageError, make_client, parse_mqtt_url, seal,
                              topic, unseal)
from robot.outbox import record_id
from robot.records import RecordError, record_from_dict
from robot.serial_link import PortReader
from station.db import Record, StationDB, open_db

log = logging.getLogger(__name__)

_ID = re.compile(r"^(?P<robot>[^:]{1,128}):(?P<seq>[0-9]{1,19})$")
_ROBOT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class StationError(RuntimeError):
    """The station cannot start with these settings."""


@dataclass(frozen=True)
class Accepted:
    robot_id: str
    seq: int
    record_id: str
    record: Record
    thumbnail: bytes | None = None


def check_robot(robot_id: str, allowed: frozenset[str] | None) -> None:
    if allowed is not None and robot_id not in allowed:
        raise MessageError("unknown_robot", f"robot {robot_id!r} is not in the allow-list {sorted(allowed)}")


def parse_record_message(topic_: str, payload: bytes, key: bytes | None = None,
                         allowed: frozenset[str] | None = None) -> Accepted:
    """Verify one MQTT data message; raises ``MessageError`` (with a counter reason)."""
    parts = topic_.split("/")
    if len(parts) != 3 or parts[0] != "leafscout" or parts[2] not in DATA_KINDS or not _ROBOT.match(parts[1]):
        raise MessageError("bad_topic", f"topic {topic_!r} is not leafscout/<robot>/{{{','.join(DATA_KINDS)}}}")
    robot_id, kind = parts[1], parts[2]
    check_robot(robot_id, allowed)
    body = unseal(topic_, payload, key)
    unknown = set(body) - {"id", "record", "thumbnail"}
    if unknown:
        raise MessageError("malformed", f"unknown keys {sorted(unknown)}; expected id, record, thumbnail")
    m = _ID.match(body.get("id")) if isinstance(body.get("id"), str) else None
    if m is None or m["robot"] != robot_id:
        raise MessageError("malformed", f"id {body.get('id')!r} is not '{robot_id}:<seq>'")
    try:
        record = record_from_dict(body.get("record"))
    except (RecordError, TypeError) as e:
        raise MessageError("malformed", f"record: {e}") from None
    if record.robot_id != robot_id or record.kind != kind:
        raise MessageError("malformed", f"{record.kind} record of {record.robot_id!r} on topic {topic_!r}")
    thumb = body.get("thumbnail")
    if thumb is not None:
        if not isinstance(thumb, str) or len(thumb) > MAX_THUMBNAIL_BYTES * 4 // 3 + 4:
            raise MessageError("malformed", f"thumbnail must be base64 JPEG up to {MAX_THUMBNAIL_BYTES} bytes")
        try:
            thumb = base64.b64decode(thumb, validate=True)
        except (binascii.Error, ValueError):
            raise MessageError("malformed", "thumbnail is not base64") from None
        if not thumb.startswith(b"\xff\xd8") or record.kind != "plant":
            raise MessageError("malformed", "thumbnail must be a JPEG attached to a plant record")
    return Accepted(robot_id, int(m["seq"]), body["id"], record, thumb)


class _Rejects:
    """Counts rejections in memory and flushes them in one transaction per batch."""

    def __init__(self, db: StationDB, link: str):
        self.db, self.link = db, link
        self._counts: Counter = Counter()
        self._detail: dict[str, str] = {}

    def add(self, reason: str, detail: str) -> None:
        self._counts[reason] += 1
        self._detail[reason] = detail
        if reason != "duplicate":
            log.warning("%s: rejected input (%s): %s", self.link, reason, detail)

    def flush(self) -> None:
        for reason, n in self._counts.items():
            self.db.count_rejected(reason, f"{self.link}: {self._detail[reason]}", n)
        self._counts.clear()


class MqttReceiver:
    """Subscribes to every robot's topics; stores verified records; acks them to the robot."""

    def __init__(self, db: StationDB, url: str, key: bytes | None = None,
                 allowed: frozenset[str] | None = None, client_id: str = "leafscout-station",
                 max_queue: int = 100_000):
        self.db, self.key, self.allowed = db, key, allowed
        self.settings = parse_mqtt_url(url)
        self.connected = threading.Event()
        self.stored = 0
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._stop = threading.Event()
        self.client = make_client(self.settings, client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self._thread = threading.Thread(target=self._run, name="station-mqtt", daemon=True)

    def start(self) -> None:
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=5)
        self.client.loop_start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the station: %s", reason_code)
            return
        client.subscribe([(f"leafscout/+/{k}", 1) for k in (*DATA_KINDS, "status")])
        self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._queue.put_nowait((msg.topic, msg.payload))
        except queue.Full:  # the robot still has it and will send it again
            log.warning("station overloaded; dropping a message from %s", msg.topic)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._process(batch)
            except Exception:  # noqa: BLE001 - e.g. disk full: records stay unacked on the robot
                log.exception("station: storing a batch of %d messages failed", len(batch))

    def _process(self, batch: list[tuple[str, bytes]]) -> None:
        rejects = _Rejects(self.db, "mqtt")
        accepted: list[Accepted] = []
        for topic_, payload in batch:
            if topic_.endswith("/status"):
                self._status(topic_, payload, rejects)
                continue
            try:
                accepted.append(parse_record_message(topic_, payload, self.key, self.allowed))
            except MessageError as e:
                rejects.add(e.reason, f"{topic_[:100]}: {e}")
        fresh = self.db.insert_records([(a.record_id, a.record, a.thumbnail) for a in accepted], link="mqtt")
        self.stored += sum(fresh)
        acks: dict[str, list[int]] = defaultdict(list)
        for a, new in zip(accepted, fresh):
            if not new:
                rejects.add("duplicate", a.record_id)
            acks[a.robot_id].append(a.seq)  # duplicates too: the robot lost our first ack
        rejects.flush()
        for robot_id, seqs in acks.items():
            t = topic(robot_id, "ack")
            for i in range(0, len(seqs), 1000):
                self.client.publish(t, seal(t, {"ids": seqs[i:i + 1000]}, self.key), qos=1)

    def _status(self, topic_: str, payload: bytes, rejects: _Rejects) -> None:
        robot_id = topic_.split("/")[1]
        try:
            check_robot(robot_id, self.allowed)
        except MessageError as e:
            rejects.add(e.reason, str(e))
            return
        if payload in (b"online", b"offline") and _ROBOT.match(robot_id):
            self.db.set_link_status(robot_id, payload.decode())
        elif payload:  # an empty retained message only clears the topic
            rejects.add("malformed", f"status {payload[:20]!r} on {topic_[:100]}")


class SerialReceiver:
    """Reads frames from one serial port, stores verified records, acknowledges them."""

    def __init__(self, db: StationDB, url: str, key: bytes | None = None,
                 allowed: frozenset[str] | None = None, baudrate: int = 115200):
        self.db, self.key, self.allowed = db, key, allowed
        self.stored = 0
        self.frames_ok = 0
        self._decoder = P.FrameDecoder(key)
        self._seq = 0
        self.reader = PortReader(url, self._on_data, baudrate, name="station-serial")

    def start(self) -> None:
        self.reader.start()

    def stop(self) -> None:
        self.reader.stop()

    @property
    def peer(self) -> str | None:
        """For ``pty://``: the device path the robot should open."""
        return getattr(self.reader.port, "peer", None)

    def _on_data(self, data: bytes) -> None:
        rejects = _Rejects(self.db, "serial")
        records: list[tuple[int, int, Accepted]] = []  # (robot number, frame seq, record)
        acks: dict[int, list[int]] = defaultdict(list)
        naks: list[tuple[int, int, P.NakReason]] = []
        for item in self._decoder.feed(data):
            if isinstance(item, P.ProtocolError):
                rejects.add(item.reason, str(item))
                continue
            try:
                outcome = self._frame(item)
            except (P.ProtocolError, MessageError) as e:
                rejects.add(getattr(e, "reason", "malformed"), f"{item.type.name} seq {item.seq}: {e}")
                continue
            if isinstance(outcome, P.NakReason):
                rejects.add("missing_context", f"{item.type.name} seq {item.seq}: {outcome.name}")
                naks.append((item.robot, item.seq, outcome))
            elif isinstance(outcome, Accepted):
                records.append((item.robot, item.seq, outcome))
            else:
                acks[item.robot].append(item.seq)
            self.frames_ok += 1
        if records:
            fresh = self.db.insert_records([(a.record_id, a.record, None) for _, _, a in records], link="serial")
            self.stored += sum(fresh)
            for (number, seq, a), new in zip(records, fresh):
                if not new:
                    rejects.add("duplicate", a.record_id)
                acks[number].append(seq)
        rejects.flush()
        for number, seqs in acks.items():
            for i in range(0, len(seqs), P.MAX_ACKS):
                self._send(P.MsgType.ACK, number, P.encode_ack(seqs[i:i + P.MAX_ACKS]))
        for number, seq, reason in naks:
            self._send(P.MsgType.NAK, number, P.encode_nak(seq, reason))

    def _send(self, mtype: P.MsgType, number: int, payload: bytes) -> None:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self.reader.write(P.encode_frame(mtype, number, self._seq, payload, self.key))

    def _frame(self, f: P.Frame) -> Accepted | P.NakReason | None:
        """Apply one verified frame: None = ack it, NakReason = ask for context, Accepted = store."""
        if f.type in (P.MsgType.ACK, P.MsgType.NAK):
            raise P.ProtocolError(f"{f.type.name} frames go from the station to robots")
        if f.type == P.MsgType.HELLO:
            name = P.decode_hello(f.payload)
            if not _ROBOT.match(name):
                raise P.ProtocolError(f"robot id {name!r} must match {_ROBOT.pattern}")
            check_robot(name, self.allowed)
            if P.robot_number(name) != f.robot:
                raise P.ProtocolError(f"robot number {f.robot} does not belong to {name!r}")
            bound = self.db.bind_serial_robot(f.robot, name)
            if bound != name:
                raise MessageError("unknown_robot", f"robot number {f.robot} is already bound to {bound!r}")
            return None
        name = self.db.serial_robot(f.robot)
        if name is None:
            return P.NakReason.UNKNOWN_ROBOT
        check_robot(name, self.allowed)
        if f.type == P.MsgType.CLASS:
            index, cname = P.decode_class(f.payload)
            self.db.set_serial_class(name, index, cname, f.seq)
            return None
        if f.type == P.MsgType.SURVEY:
            ctx = P.decode_survey(f.payload)
            self.db.set_serial_survey(name, ctx.ref, ctx.survey_id, ctx.t0, ctx.lat0, ctx.lon0, f.seq)
            return None
        if f.type == P.MsgType.HEARTBEAT:
            ref = P.heartbeat_ref(f.payload)
            ctx = None if ref is None else self._survey(name, ref)
            if ref is not None and ctx is None:
                return P.NakReason.UNKNOWN_CONTEXT
            return Accepted(name, f.seq, record_id(name, f.seq), P.decode_heartbeat(f.payload, name, ctx))
        ref = P.plant_ref(f.payload) if f.type == P.MsgType.PLANT else P.row_ref(f.payload)
        ctx = self._survey(name, ref)
        if ctx is None:
            return P.NakReason.UNKNOWN_CONTEXT
        if f.type == P.MsgType.ROW:
            return Accepted(name, f.seq, record_id(name, f.seq), P.decode_row(f.payload, name, ctx))
        cls = f.payload[7]
        cname = None if cls == P.NONE_U8 else self.db.serial_class(name, cls)
        if cls != P.NONE_U8 and cname is None:
            return P.NakReason.UNKNOWN_CONTEXT
        return Accepted(name, f.seq, record_id(name, f.seq), P.decode_plant(f.payload, name, ctx, cname))

    def _survey(self, name: str, ref: int) -> P.SurveyContext | None:
        row = self.db.serial_survey(name, ref)
        return None if row is None else P.SurveyContext(ref, *row)


class Station:
    """The receivers of one base station around one database; ``with Station(...) as st:``."""

    def __init__(self, db_path: str | Path, mqtt: str | None = None, serial: str | None = None,
                 hmac_key: bytes | None = None, robots: Iterable[str] | None = None,
                 baudrate: int = 115200, client_id: str = "leafscout-station"):
        if mqtt is None and serial is None:
            raise StationError("a station needs at least one of mqtt= (broker URL) or serial= (port URL)")
        self.allowed = frozenset(robots) if robots else None
        self.db = open_db(db_path)
        try:
            self.mqtt = MqttReceiver(self.db, mqtt, hmac_key, self.allowed, client_id) if mqtt else None
            self.serial = SerialReceiver(self.db, serial, hmac_key, self.allowed, baudrate) if serial else None
        except Exception:
            self.db.close()
            raise

    def start(self) -> "Station":
        for r in (self.mqtt, self.serial):
            if r is not None:
                r.start()
        return self

    def stop(self) -> None:
        for r in (self.serial, self.mqtt):
            if r is not None:
                r.stop()
        self.db.close()

    def __enter__(self) -> "Station":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once every configured receiver is connected (its port open / broker session up)."""
        deadline = time.monotonic() + timeout
        events = [r.connected for r in (self.mqtt,) if r is not None]
        if self.serial is not None:
            events.append(self.serial.reader.connected)
        return all(e.wait(max(0.0, deadline - time.monotonic())) for e in events)
