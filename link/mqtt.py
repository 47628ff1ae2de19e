"""MQTT topics, payloads and their verification: what robot and station both speak.

Topics, per robot (the broker's ACL lets robot ``r1`` write only ``leafscout/r1/#``):

* ``leafscout/<robot>/plant|row|heartbeat``: one record per message (robot -> station)
* ``leafscout/<robot>/status``: ``online`` / ``offline`` (retained; ``offline`` is the last will)
* ``leafscout/<robot>/ack``: ``{"outbox": "<outbox id>", "ids": [seq, ...], "rejected": [seq, ...]}``
  (station -> robot) once the station has *committed* those records (``ids``) or refused
  them for good (``rejected``: invalid, never to be sent again).  An ack for another
  outbox id (an outbox file that was replaced) is ignored.
* ``leafscout/<robot>/offer``: a model bundle the station offers (station -> robot, retained):
  ``{"version": ..., "manifest_sha256": ..., "url": ".../robot/bundles/<sha256>/", "offered": t}``;
  the robot fetches ``url + file name`` over HTTP, each request signed with its own key
  (``auth_header``), and installs it between surveys (docs/robot.md, section 4).

A record leaves the outbox only on the station's ack, not on the broker's PUBACK: a
broker killed with ``kill -9`` loses what it had queued, the robot still has it and
sends it again; the station drops the duplicates by record id.

Message body: UTF-8 JSON ``{"id": "<robot>:<outbox id>:<seq>", "record": {...}, "thumbnail": <base64 JPEG>}``
(thumbnail optional).  With an HMAC key the payload is ``body + b"\\n" + hex tag`` where
tag = HMAC-SHA256(key, topic + "\\n" + body).
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator
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


def make_client(settings: BrokerSettings, client_id: str, *, clean_session: bool = False) -> mqtt.Client:
    """A paho client with credentials and optional TLS; a persistent session unless ``clean_session``
    (one-shot clients such as ``offer-bundle`` leave no session behind on the broker)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
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


# -- bundle offers (station -> robot) and the signed requests that fetch them ----------------
OFFER_KIND = "offer"
AUTH_SCHEME = "Leafscout-HMAC"
AUTH_MAX_SKEW_S = 300.0  # a signed request older or newer than this is refused (replay window)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_AUTH = re.compile(r"robot=(?P<robot>[A-Za-z0-9_.-]{1,64}),\s*time=(?P<time>[0-9]{1,12}),\s*sig=(?P<sig>[0-9a-f]{64})")


@dataclass(frozen=True)
class BundleOffer:
    """What the station announces; the robot trusts none of it beyond "where to look":
    the bundle's Ed25519 signature, hashes, version and self-test are checked on install."""

    version: str  # the manifest's provenance.created, for logs; the robot orders by the fetched manifest
    manifest_sha256: str  # the fetched manifest.json must hash to this
    url: str  # folder URL ending in "/": each file is url + its name
    offered: float  # unix time the station made the offer

    def to_dict(self) -> dict:
        return {"version": self.version, "manifest_sha256": self.manifest_sha256, "url": self.url,
                "offered": self.offered}


def parse_offer(body: dict) -> BundleOffer:
    """A ``BundleOffer`` from an unsealed message body; ``MessageError`` names the bad field."""
    version, sha, url, offered = (body.get(k) for k in ("version", "manifest_sha256", "url", "offered"))
    if not isinstance(version, str) or not 0 < len(version) <= 64:
        raise MessageError("malformed", f"offer: 'version' must be a short string, got {str(version)[:40]!r}")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise MessageError("malformed", "offer: 'manifest_sha256' must be 64 lowercase hex digits")
    if not isinstance(url, str) or len(url) > 2048 or not url.endswith("/") or \
            urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise MessageError("malformed", f"offer: 'url' must be an http(s) folder URL ending in /, got {str(url)[:80]!r}")
    if type(offered) not in (int, float) or offered < 0:
        raise MessageError("malformed", "offer: 'offered' must be a unix time")
    return BundleOffer(version, sha, url, float(offered))


def request_signature(key: bytes, method: str, path: str, when: int) -> str:
    """HMAC-SHA256 over the request line a robot sends and the second it signed it."""
    return hmac.new(key, f"{method.upper()}\n{path}\n{when}".encode(), hashlib.sha256).hexdigest()


def auth_header(robot_id: str, key: bytes, method: str, path: str, when: float | None = None) -> str:
    """The ``Authorization`` value a robot sends to fetch ``path`` from the station."""
    t = int(time.time() if when is None else when)
    return f"{AUTH_SCHEME} robot={robot_id}, time={t}, sig={request_signature(key, method, path, t)}"


def parse_auth_header(value: str) -> tuple[str, int, str]:
    """(robot id, signed time, signature) of an ``Authorization`` header; ``MessageError`` if malformed."""
    scheme, _, rest = value.strip().partition(" ")
    m = _AUTH.fullmatch(rest.strip())
    if scheme != AUTH_SCHEME or m is None:
        raise MessageError("malformed", f"expected Authorization: {AUTH_SCHEME} robot=ID, time=UNIX, sig=HEX")
    return m["robot"], int(m["time"]), m["sig"]


def verify_request(key: bytes, method: str, path: str, when: int, sig: str, now: float | None = None) -> bool:
    """Whether ``sig`` signs this request with ``key`` and ``when`` is within ``AUTH_MAX_SKEW_S`` of now."""
    now = time.time() if now is None else now
    if abs(now - when) > AUTH_MAX_SKEW_S:
        return False
    return hmac.compare_digest(sig, request_signature(key, method, path, when))


@contextlib.contextmanager
def offer_session(settings: BrokerSettings, client_id: str, subscription: str, on_message: Callable,
                  timeout_s: float = 10.0) -> Iterator[mqtt.Client]:
    """A short clean-session connection, subscribed to ``subscription`` (retained offers arrive
    right after), for ``offer-bundle`` and ``bundle fetch``; ``MqttLinkError`` when the broker
    cannot be reached, refuses the user or does not confirm the subscription in ``timeout_s``."""
    client = make_client(settings, client_id, clean_session=True)
    connected, subscribed = threading.Event(), threading.Event()
    refused: list[str] = []

    def on_connect(c, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
        else:
            c.subscribe(subscription, qos=1)
        connected.set()

    client.on_connect, client.on_message = on_connect, on_message
    client.on_subscribe = lambda *_: subscribed.set()
    where = f"{settings.host}:{settings.port}"
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except OSError as e:
        raise MqttLinkError(f"cannot reach the MQTT broker {where}: {e}") from e
    client.loop_start()
    try:
        if not connected.wait(timeout_s) or refused:
            raise MqttLinkError(f"the MQTT broker {where} did not accept {settings.username or 'anonymous'}: "
                                f"{refused[0] if refused else 'no answer'}")
        if not subscribed.wait(timeout_s):
            raise MqttLinkError(f"the MQTT broker {where} did not confirm the subscription to {subscription}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()
