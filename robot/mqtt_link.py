"""The network link: the outbox drained over MQTT (QoS 1) to the base station.

Topics, per robot (the broker's ACL lets robot ``r1`` write only ``leafscout/r1/#``):

* ``leafscout/<robot>/plant|row|heartbeat``: one record per message (robot -> station)
* ``leafscout/<robot>/status``: ``online`` / ``offline`` (retained; ``offline`` is the last will)
* ``leafscout/<robot>/ack``: ``{"outbox": "<outbox id>", "ids": [seq, ...], "rejected": [seq, ...]}``
  (station -> robot) once the station has *committed* those records (``ids``) or refused
  them for good (``rejected``: invalid, never to be sent again).  An ack for another
  outbox id (an outbox file that was replaced) is ignored.

A record leaves the outbox only on the station's ack, not on the broker's PUBACK: a
broker killed with ``kill -9`` loses what it had queued, the robot still has it and
sends it again; the station drops the duplicates by record id.

Message body: UTF-8 JSON ``{"id": "<robot>:<outbox id>:<seq>", "record": {...}, "thumbnail": <base64 JPEG>}``
(thumbnail optional).  With an HMAC key the payload is ``body + b"\\n" + hex tag`` where
tag = HMAC-SHA256(key, topic + "\\n" + body).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt

from leafscout.robot.outbox import Outbox, OutboxItem
from leafscout.robot.ratelimit import RateLimitedLog
from leafscout.robot.telemetry import LinkWorker

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

TOPIC_ROOT = "leafscout"
DATA_KINDS = ("plant", "row", "heartbeat")
MAX_MESSAGE_BYTES = 256 * 1024
MAX_THUMBNAIL_BYTES = 128 * 1024


class MqttLinkError(ValueError):
    """A broker URL or setting that cannot work."""


class MessageError(ValueError):
    """An MQTT payload that fails verification; ``reason`` is the station's counter name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None


def parse_mqtt_url(url: str, password: str | None = None) -> BrokerSettings:
    """``mqtt://user@host:1883`` or ``mqtts://user@host:8883?ca=/path/ca.pem``; ``password``
    (from a file or the environment) replaces one in the URL (visible in /proc: avoid)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise MqttLinkError(f"broker URL {redact_url(url)!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise MqttLinkError(f"broker URL {redact_url(url)!r} has no host")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as e:
        raise MqttLinkError(f"broker URL {redact_url(url)!r}: {e}") from e
    ca = parse_qs(parts.query).get("ca", [None])[0]
    if password is None and parts.password:
        password = unquote(parts.password)
    return BrokerSettings(parts.hostname, port, unquote(parts.username) if parts.username else None,
                          password, tls, ca)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, errors and printed commands)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
    except ValueError:
        return "<unparseable URL>"


def url_has_password(url: str) -> bool:
    """Whether a broker URL carries a password (refused on command lines: /proc/PID/cmdline is public)."""
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def make_client(settings: BrokerSettings, client_id: str) -> mqtt.Client:
    """A paho client with a persistent session, credentials and optional TLS."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                         protocol=mqtt.MQTTv311)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(ca_certs=settings.ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.reconnect_delay_set(min_delay=1, max_delay=4)
    client.max_queued_messages_set(0)
    return client


def topic(robot_id: str, kind: str) -> str:
    return f"{TOPIC_ROOT}/{robot_id}/{kind}"


def _tag(key: bytes, topic_: str, body: bytes) -> bytes:
    return hmac.new(key, topic_.encode() + b"\n" + body, hashlib.sha256).hexdigest().encode()


def seal(topic_: str, body: dict, key: bytes | None) -> bytes:
    """Serialize a message body, adding the HMAC tag when a key is configured."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    return raw + b"\n" + _tag(key, topic_, raw) if key else raw


def unseal(topic_: str, payload: bytes, key: bytes | None, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    """Check size and tag, parse JSON; raises ``MessageError`` with a counter name."""
    if len(payload) > max_bytes:
        raise MessageError("too_large", f"message of {len(payload)} bytes exceeds {max_bytes}")
    if key:
        body, sep, tag = payload.rpartition(b"\n")
        if not sep or not hmac.compare_digest(tag, _tag(key, topic_, body)):
            raise MessageError("bad_hmac", "HMAC tag missing or wrong")
    else:
        body = payload
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MessageError("malformed", f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MessageError("malformed", f"message must be a JSON object, got {type(obj).__name__}")
    return obj


def _int_list(body: dict, name: str) -> list[int]:
    v = body.get(name, [])
    if not isinstance(v, list) or not all(type(i) is int and 0 < i < 2 ** 63 for i in v):
        raise MessageError("malformed", f"ack: {name!r} must be a list of sequence numbers")
    return v


def parse_ack(body: dict, outbox_id: str) -> tuple[list[int], list[int]]:
    """(stored seqs, rejected seqs) of an ack addressed to outbox ``outbox_id``."""
    if body.get("outbox") != outbox_id:
        raise MessageError("malformed", f"ack for outbox {str(body.get('outbox'))[:40]!r}, not ours ({outbox_id})")
    return _int_list(body, "ids"), _int_list(body, "rejected")


def ack_message(outbox_id: str, ids: list[int], rejected: list[int] = ()) -> dict:
    body: dict = {"outbox": outbox_id, "ids": list(ids)}
    if rejected:
        body["rejected"] = list(rejected)
    return body


def record_message(item: OutboxItem) -> dict:
    body = {"id": item.record_id, "record": item.record.to_dict()}
    if item.thumbnail is not None and len(item.thumbnail) <= MAX_THUMBNAIL_BYTES:
        body["thumbnail"] = base64.b64encode(item.thumbnail).decode()
    elif item.thumbnail is not None:  # the station would refuse the whole message
        log.warning("thumbnail of %s is %d bytes > %d; sending the record without it",
                    item.record_id, len(item.thumbnail), MAX_THUMBNAIL_BYTES)
    return body


@dataclass
class MqttStats:
    published: int = 0
    republished: int = 0
    records_acked: int = 0
    connects: int = 0
    bad_acks: int = 0
    records_rejected: int = 0
    started: float = field(default_factory=time.monotonic)


class MqttLink(LinkWorker):
    """Robot side: publishes pending outbox records in order, removes them on the station's ack."""

    name = "mqtt"

    def __init__(self, url: str, robot_id: str, outbox: Outbox, key: bytes | None = None,
                 window: int = 500, ack_timeout: float = 15.0, keepalive: int = 5, password: str | None = None):
        if not 1 <= window <= 65535:
            raise MqttLinkError(f"window must be 1..65535 messages, got {window!r}")
        self.settings = parse_mqtt_url(url, password)
        self.robot_id, self.outbox, self.key = robot_id, outbox, key
        super().__init__(f"mqtt-sender-{robot_id}")
        self.window, self.ack_timeout, self.keepalive = window, ack_timeout, keepalive
        self.stats = MqttStats()
        self.connected = threading.Event()
        self._inflight: dict[int, float] = {}  # seq -> deadline for the station's ack
        self._last_ack = time.monotonic()
        self.client = make_client(self.settings, f"leafscout-robot-{robot_id}")
        self.client.will_set(topic(robot_id, "status"), "offline", qos=1, retain=True)
        self.client.max_inflight_messages_set(min(window, 1000))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> "MqttLink":
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.keepalive)
        self.client.loop_start()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop_worker()
        if self.connected.is_set():
            self.client.publish(topic(self.robot_id, "status"), "offline", qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho network thread -------------------------------------------------------
    def healthy(self) -> bool:
        """Connected, and the station acknowledged something lately (or nothing is waiting)."""
        return self.connected.is_set() and (
            not self._inflight or time.monotonic() - self._last_ack < self.ack_timeout)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            _limited.warning("refused", "broker %s:%d refused the connection: %s", self.settings.host,
                             self.settings.port, reason_code)
            return
        self.stats.connects += 1
        client.subscribe(topic(self.robot_id, "ack"), qos=1)
        client.publish(topic(self.robot_id, "status"), "online", qos=1, retain=True)
        self.connected.set()
        self._post("connected", True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self._post("connected", False)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            ids, rejected = parse_ack(unseal(msg.topic, msg.payload, self.key), self.outbox.outbox_id)
        except MessageError as e:
            self.stats.bad_acks += 1
            _limited.warning("bad-ack", "ignoring an ack on %s: %s", msg.topic, e)
            return
        self._post("ack", (ids, rejected))

    # -- sender thread -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - keep draining whatever one bad batch did (disk full...)
                _limited.error("step", "mqtt link step failed: %s: %s", type(e).__name__, e)
                log.debug("mqtt link step failed", exc_info=True)
                self._stop.wait(0.5)
            self._idle(0.1)

    def _step(self) -> None:
        acked: list[int] = []
        rejected: list[int] = []
        for kind, value in self._take_events():
            if kind == "ack":
                acked += value[0]
                rejected += value[1]
            else:
                self._inflight.clear()  # (re)connected or lost: send everything pending again, in order
        if acked:
            self._last_ack = time.monotonic()
            for seq in acked:
                self._inflight.pop(seq, None)
            self.stats.records_acked += self.outbox.remove(acked)
        if rejected:
            self._last_ack = time.monotonic()
            for seq in rejected:
                self._inflight.pop(seq, None)
            n = self.outbox.remove(rejected)
            self.outbox.count_rejected(n)
            self.stats.records_rejected += n
            log.error("the station rejected %d record(s) as invalid (removed): seqs %s", n, rejected[:10])
        if not self.connected.is_set():
            return
        now = time.monotonic()
        expired = [s for s, deadline in self._inflight.items() if deadline < now]
        for seq in expired:
            del self._inflight[seq]
        room = self.window - len(self._inflight)
        if room < max(1, self.window // 4) and not expired:
            return
        for item in self.outbox.pending(limit=room, exclude=self._inflight):
            if self._stop.is_set() or not self.connected.is_set():
                return
            t = topic(self.robot_id, item.kind)
            info = self.client.publish(t, seal(t, record_message(item), self.key), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            self._inflight[item.seq] = now + self.ack_timeout
            self.stats.published += 1
            if item.seq in expired:
                self.stats.republished += 1
