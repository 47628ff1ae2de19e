"""The base station's receivers: verify what arrives over MQTT and serial, store it once.

Every input passes the same gate before it can touch the database: size limit, HMAC
(per-robot keys, ``leafscout.station.keys``), robot allow-list, schema and limits
(``leafscout.link.records``), and the duplicate filter (record id).  Each message is checked and
stored on its own (a savepoint per record): a bad one never sinks its neighbours.
Anything that fails is counted in the ``rejected`` table under a reason (``too_large``,
``bad_hmac``, ``bad_crc``, ``malformed``, ``invalid``, ``unknown_robot``, ``bad_topic``,
``missing_context``, ``store_failed``, ``duplicate``...), logged at most once per reason
per minute, and never written.  A record refused for good (``invalid``, ``store_failed``)
whose id could be read is acknowledged as rejected, so the robot stops sending it.
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

from leafscout.link import protocol as P
from leafscout.link.mqtt import (
    DATA_KINDS,
    MAX_THUMBNAIL_BYTES,
    MessageError,
    ack_message,
    make_client,
    parse_mqtt_url,
    seal,
    topic,
    unseal,
)
from leafscout.link.ratelimit import RateLimitedLog
from leafscout.link.records import ID_PATTERN, RecordError, parse_record_id, record_from_dict, record_id
from leafscout.link.serial_port import PortReader
from leafscout.station.db import Record, StationDB, open_db
from leafscout.station.keys import KeyRing

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

_ROBOT = re.compile(r"^" + ID_PATTERN.pattern + r"$")


class Rejected(MessageError):
    """A message with a readable id whose record is refused for good: acknowledged as rejected."""

    def __init__(self, reason: str, message: str, robot_id: str, outbox_id: str, seq: int):
        super().__init__(reason, message)
        self.robot_id, self.outbox_id, self.seq = robot_id, outbox_id, seq


class StationError(RuntimeError):
    """The station cannot start with these settings."""


@dataclass(frozen=True)
class Accepted:
    robot_id: str
    seq: int
    record_id: str
    record: Record
    thumbnail: bytes | None = None
    outbox_id: str = ""


def check_robot(robot_id: str, allowed: frozenset[str] | None) -> None:
    if allowed is not None and robot_id not in allowed:
        raise MessageError("unknown_robot", f"robot {robot_id!r} is not in the allow-list {sorted(allowed)}")


def _key(keys: KeyRing | bytes | None, robot_id: str) -> bytes | None:
    """The key a robot's messages must carry; raises when signing is on and it has none."""
    if keys is None or isinstance(keys, bytes):
        return keys
    key = keys.for_robot(robot_id)
    if key is None:
        raise MessageError("bad_hmac", f"no key for robot {robot_id!r}: its messages cannot be verified")
    return key


def parse_record_message(topic_: str, payload: bytes, keys: KeyRing | bytes | None = None,
                         allowed: frozenset[str] | None = None) -> Accepted:
    """Verify one MQTT data message; raises ``MessageError`` (with a counter reason), or
    ``Rejected`` when the id is readable but the record is not acceptable."""
    parts = topic_.split("/")
    if len(parts) != 3 or parts[0] != "leafscout" or parts[2] not in DATA_KINDS or not _ROBOT.match(parts[1]):
        raise MessageError("bad_topic", f"topic {topic_!r} is not leafscout/<robot>/{{{','.join(DATA_KINDS)}}}")
    robot_id, kind = parts[1], parts[2]
    check_robot(robot_id, allowed)
    body = unseal(topic_, payload, _key(keys, robot_id))
    try:
        _, outbox_id, seq = parse_record_id(body.get("id"), robot_id)
    except RecordError as e:
        raise MessageError("malformed", str(e)) from None
    try:
        return _parse_body(robot_id, kind, outbox_id, seq, body)
    except MessageError as e:
        raise Rejected(e.reason, str(e), robot_id, outbox_id, seq) from None


def _parse_body(robot_id: str, kind: str, outbox_id: str, seq: int, body: dict) -> Accepted:
    unknown = set(body) - {"id", "record", "thumbnail"}
    if unknown:
        raise MessageError("invalid", f"unknown keys {sorted(map(str, unknown))[:5]}; expected id, record, thumbnail")
    try:
        record = record_from_dict(body.get("record"))
    except (RecordError, TypeError, ValueError, OverflowError) as e:
        raise MessageError("invalid", f"record: {e}") from None
    if record.robot_id != robot_id or record.kind != kind:
        raise MessageError("invalid", f"{record.kind} record of {record.robot_id!r} on the {kind} topic of {robot_id!r}")
    thumb = body.get("thumbnail")
    if thumb is not None:
        if not isinstance(thumb, str) or len(thumb) > MAX_THUMBNAIL_BYTES * 4 // 3 + 4:
            raise MessageError("invalid", f"thumbnail must be base64 JPEG up to {MAX_THUMBNAIL_BYTES} bytes")
        try:
            thumb = base64.b64decode(thumb, validate=True)
        except (binascii.Error, ValueError):
            raise MessageError("invalid", "thumbnail is not base64") from None
        if not thumb.startswith(b"\xff\xd8") or record.kind != "plant":
            raise MessageError("invalid", "thumbnail must be a JPEG attached to a plant record")
    return Accepted(robot_id, seq, body["id"], record, thumb, outbox_id)


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
            _limited.warning(f"{self.link}/{reason}", "%s: rejected input (%s): %s", self.link, reason, detail)

    def flush(self) -> None:
        for reason, n in self._counts.items():
            self.db.count_rejected(reason, f"{self.link}: {self._detail[reason]}", n)
        self._counts.clear()


class MqttReceiver:
    """Subscribes to every robot's topics; stores verified records; acks them to the robot."""

    def __init__(self, db: StationDB, url: str, keys: KeyRing | None = None,
                 allowed: frozenset[str] | None = None, client_id: str = "leafscout-station",
                 max_queue: int = 100_000, password: str | None = None):
        self.db, self.keys, self.allowed = db, keys, allowed
        self.settings = parse_mqtt_url(url, password)
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
            _limited.error("broker-refused", "broker %s refused the station: %s",
                           f"{self.settings.host}:{self.settings.port}", reason_code)
            return
        client.subscribe([(f"leafscout/+/{k}", 1) for k in (*DATA_KINDS, "status")])
        self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._queue.put_nowait((msg.topic, msg.payload))
        except queue.Full:  # the robot still has it and will send it again
            _limited.warning("overloaded", "station overloaded; dropping a message from %s", msg.topic[:100])

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
                _limited.error("batch-failed", "station: storing a batch of %d messages failed (%s)", len(batch),
                               "see the debug log")
                log.debug("batch failure", exc_info=True)

    def _parse(self, topic_: str, payload: bytes, rejects: _Rejects,
               rejected: dict[tuple[str, str], list[int]]) -> Accepted | None:
        """One message, isolated: whatever it contains, it costs only itself."""
        try:
            return parse_record_message(topic_, payload, self.keys, self.allowed)
        except Rejected as e:
            rejects.add(e.reason, f"{topic_[:100]}: {e}")
            rejected[(e.robot_id, e.outbox_id)].append(e.seq)
        except MessageError as e:
            rejects.add(e.reason, f"{topic_[:100]}: {e}")
        except Exception as e:  # noqa: BLE001 - a parser bug must not sink the batch
            rejects.add("malformed", f"{topic_[:100]}: {type(e).__name__}")
        return None

    def _process(self, batch: list[tuple[str, bytes]]) -> None:
        rejects = _Rejects(self.db, "mqtt")
        accepted: list[Accepted] = []
        acks: dict[tuple[str, str], list[int]] = defaultdict(list)
        rejected: dict[tuple[str, str], list[int]] = defaultdict(list)
        for topic_, payload in batch:
            if topic_.endswith("/status"):
                self._status(topic_, payload, rejects)
                continue
            a = self._parse(topic_, payload, rejects, rejected)
            if a is not None:
                accepted.append(a)
        fresh = self.db.insert_records([(a.record_id, a.record, a.thumbnail) for a in accepted], link="mqtt")
        self.stored += sum(1 for f in fresh if f)
        for a, new in zip(accepted, fresh):
            if new is None:
                rejects.add("store_failed", a.record_id)
                rejected[(a.robot_id, a.outbox_id)].append(a.seq)
                continue
            if not new:
                rejects.add("duplicate", a.record_id)
            acks[(a.robot_id, a.outbox_id)].append(a.seq)  # duplicates too: the robot lost our first ack
        rejects.flush()
        for robot_id, outbox_id in {*acks, *rejected}:
            self._ack(robot_id, outbox_id, acks.get((robot_id, outbox_id), []),
                      rejected.get((robot_id, outbox_id), []))

    def _ack(self, robot_id: str, outbox_id: str, ids: list[int], rejected: list[int]) -> None:
        t = topic(robot_id, "ack")
        try:
            key = _key(self.keys, robot_id)
        except MessageError:
            return
        for i in range(0, max(len(ids), len(rejected)), 1000):
            body = ack_message(outbox_id, ids[i:i + 1000], rejected[i:i + 1000])
            self.client.publish(t, seal(t, body, key), qos=1)

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
            rejects.add("malformed", f"status {payload[:20]!r} on {topic_[:100]!r}")


class SerialReceiver:
    """Reads frames from one serial port, stores verified records, acknowledges them."""

    def __init__(self, db: StationDB, url: str, keys: KeyRing | None = None,
                 allowed: frozenset[str] | None = None, baudrate: int = 115200):
        self.db, self.keys, self.allowed = db, keys, allowed
        self.stored = 0
        self.frames_ok = 0
        self._decoder = P.FrameDecoder(self._frame_key if keys is not None else None)
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

    def _frame_key(self, number: int, mtype: int, payload: bytes) -> bytes | None:
        """The key of the robot a frame claims to come from (HELLO names it; others: its binding)."""
        if mtype == P.MsgType.HELLO:
            try:
                name = P.decode_hello(payload)[0]
            except P.ProtocolError:
                return None
            if P.robot_number(name) != number:
                return None
        else:
            name = self.db.serial_robot(number)
        return self.keys.shared if name is None else self.keys.for_robot(name)

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
            except P.InvalidRecord as e:  # authentic but out of limits: refused for good
                rejects.add(e.reason, f"{item.type.name} seq {item.seq}: {e}")
                naks.append((item.robot, item.seq, P.NakReason.REJECTED))
                continue
            except (P.ProtocolError, MessageError) as e:
                rejects.add(getattr(e, "reason", "malformed"), f"{item.type.name} seq {item.seq}: {e}")
                continue
            except Exception as e:  # noqa: BLE001 - one frame's problem never sinks the read chunk
                rejects.add("malformed", f"{item.type.name} seq {item.seq}: {type(e).__name__}")
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
            self.stored += sum(1 for f in fresh if f)
            for (number, seq, a), new in zip(records, fresh):
                if new is None:
                    rejects.add("store_failed", a.record_id)
                    naks.append((number, seq, P.NakReason.REJECTED))
                    continue
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
        key = None if self.keys is None else self._frame_key(number, mtype, payload)
        if self.keys is not None and key is None:
            return  # a robot we cannot sign for would ignore the reply anyway
        self.reader.write(P.encode_frame(mtype, number, self._seq, payload, key))

    def _frame(self, f: P.Frame) -> Accepted | P.NakReason | None:
        """Apply one verified frame: None = ack it, NakReason = ask for context, Accepted = store."""
        if f.type in (P.MsgType.ACK, P.MsgType.NAK):
            raise P.ProtocolError(f"{f.type.name} frames go from the station to robots")
        if f.type == P.MsgType.HELLO:
            name, boot = P.decode_hello(f.payload)
            if not _ROBOT.match(name):
                raise P.ProtocolError(f"robot id {name!r} must match {_ROBOT.pattern}")
            check_robot(name, self.allowed)
            if P.robot_number(name) != f.robot:
                raise P.ProtocolError(f"robot number {f.robot} does not belong to {name!r}")
            bound = self.db.bind_serial_robot(f.robot, name)
            if bound != name:
                raise MessageError("unknown_robot", f"robot number {f.robot} is already bound to {bound!r}")
            if not self.db.serial_hello(name, boot.hex(), f.seq):
                raise MessageError("stale_hello", f"HELLO of {name!r} outbox {boot.hex()} seq {f.seq} is not newer")
            return None
        name = self.db.serial_robot(f.robot)
        boot = None if name is None else self.db.serial_boot(name)
        if name is None or boot is None:
            return P.NakReason.UNKNOWN_ROBOT
        check_robot(name, self.allowed)
        if f.type == P.MsgType.CLASS:
            index, cname = P.decode_class(f.payload)
            self.db.set_serial_class(name, boot, index, cname, f.seq)
            return None
        if f.type == P.MsgType.SURVEY:
            ctx = P.decode_survey(f.payload)
            self.db.set_serial_survey(name, boot, ctx.ref, ctx.survey_id, ctx.t0, ctx.lat0, ctx.lon0, f.seq)
            return None
        rid = record_id(name, boot, f.seq)
        if f.type == P.MsgType.HEARTBEAT:
            ref = P.heartbeat_ref(f.payload)
            ctx = None if ref is None else self._survey(name, boot, ref)
            if ref is not None and ctx is None:
                return P.NakReason.UNKNOWN_CONTEXT
            return Accepted(name, f.seq, rid, P.decode_heartbeat(f.payload, name, ctx), None, boot)
        ref = P.plant_ref(f.payload) if f.type == P.MsgType.PLANT else P.row_ref(f.payload)
        ctx = self._survey(name, boot, ref)
        if ctx is None:
            return P.NakReason.UNKNOWN_CONTEXT
        if f.type == P.MsgType.ROW:
            return Accepted(name, f.seq, rid, P.decode_row(f.payload, name, ctx), None, boot)
        cls = f.payload[7]
        cname = None if cls == P.NONE_U8 else self.db.serial_class(name, boot, cls)
        if cls != P.NONE_U8 and cname is None:
            return P.NakReason.UNKNOWN_CONTEXT
        return Accepted(name, f.seq, rid, P.decode_plant(f.payload, name, ctx, cname), None, boot)

    def _survey(self, name: str, boot: str, ref: int) -> P.SurveyContext | None:
        row = self.db.serial_survey(name, boot, ref)
        return None if row is None else P.SurveyContext(ref, *row)


class Station:
    """The receivers of one base station around one database; ``with Station(...) as st:``."""

    def __init__(self, db_path: str | Path, mqtt: str | None = None, serial: str | None = None,
                 hmac_key: bytes | None = None, robots: Iterable[str] | None = None,
                 baudrate: int = 115200, client_id: str = "leafscout-station", keys: KeyRing | None = None,
                 insecure: bool = False, mqtt_password: str | None = None, read_db: str | None = None):
        """``db_path``: a SQLite file or a ``postgresql://`` URL (several stations may share
        one); ``read_db``: where the dashboard reads (a replica). ``keys``: per-robot HMAC
        keys; ``hmac_key``: one key shared by all robots (weaker). Neither: unsigned input
        is accepted (``leafscout station`` needs ``--insecure`` for that)."""
        if mqtt is None and serial is None:
            raise StationError("a station needs at least one of mqtt= (broker URL) or serial= (port URL)")
        if keys is None and hmac_key is not None:
            keys = KeyRing(shared=hmac_key)
        self.keys, self.insecure = keys, insecure
        self.allowed = frozenset(robots) if robots else None
        self.db = open_db(db_path, read_target=read_db)
        try:
            self.db.set_flag("insecure", insecure)  # the dashboard shows a banner
            self.mqtt = (MqttReceiver(self.db, mqtt, keys, self.allowed, client_id, password=mqtt_password)
                         if mqtt else None)
            self.serial = SerialReceiver(self.db, serial, keys, self.allowed, baudrate) if serial else None
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
