"""MQTT topics, payloads and their verification: what robot and station both speak.

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

import hashlib
import hmac
import json
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt

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
