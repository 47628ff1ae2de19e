"""The network link: the outbox drained over MQTT (QoS 1) to the base station.

Topics, payloads and their verification live in ``leafscout.link.mqtt`` (the station speaks them too).
A record leaves the outbox only on the station's ack, not on the broker's PUBACK: a
broker killed with ``kill -9`` loses what it had queued, the robot still has it and
sends it again; the station drops the duplicates by record id.

A bundle the station offers (``leafscout/<robot>/offer``) is only noted here, in
``bundle_offer.json`` beside the outbox: a survey never switches models mid-run;
``leafscout bundle fetch`` installs it between surveys (``leafscout.robot.bundle_fetch``).
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from leafscout.link.mqtt import (
    MAX_THUMBNAIL_BYTES,
    OFFER_KIND,
    MessageError,
    MqttLinkError,
    make_client,
    parse_ack,
    parse_mqtt_url,
    parse_offer,
    seal,
    topic,
    unseal,
)
from leafscout.link.ratelimit import RateLimitedLog
from leafscout.robot.bundle_fetch import OFFER_NOTE, note_offer
from leafscout.robot.outbox import Outbox, OutboxItem
from leafscout.robot.telemetry import LinkWorker

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)


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
    offers: int = 0
    started: float = field(default_factory=time.monotonic)


class MqttLink(LinkWorker):
    """Robot side: publishes pending outbox records in order, removes them on the station's ack."""

    name = "mqtt"

    def __init__(self, url: str, robot_id: str, outbox: Outbox, key: bytes | None = None,
                 window: int = 500, ack_timeout: float = 15.0, keepalive: int = 5, password: str | None = None,
                 offer_file: str | Path | None = None):
        if not 1 <= window <= 65535:
            raise MqttLinkError(f"window must be 1..65535 messages, got {window!r}")
        self.settings = parse_mqtt_url(url, password)
        self.robot_id, self.outbox, self.key = robot_id, outbox, key
        super().__init__(f"mqtt-sender-{robot_id}")
        self.window, self.ack_timeout, self.keepalive = window, ack_timeout, keepalive
        self.stats = MqttStats()
        self.offer_file = Path(offer_file) if offer_file is not None else Path(outbox.path).with_name(OFFER_NOTE)
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
        client.subscribe(topic(self.robot_id, OFFER_KIND), qos=1)  # a broker ACL without it refuses just this
        client.publish(topic(self.robot_id, "status"), "online", qos=1, retain=True)
        self.connected.set()
        self._post("connected", True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self._post("connected", False)

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == topic(self.robot_id, OFFER_KIND):
            self._on_offer(msg)
            return
        try:
            ids, rejected = parse_ack(unseal(msg.topic, msg.payload, self.key), self.outbox.outbox_id)
        except MessageError as e:
            self.stats.bad_acks += 1
            _limited.warning("bad-ack", "ignoring an ack on %s: %s", msg.topic, e)
            return
        self._post("ack", (ids, rejected))

    def _on_offer(self, msg) -> None:
        if not msg.payload:  # the station withdrew its offer
            return
        try:
            offer = parse_offer(unseal(msg.topic, msg.payload, self.key))
            note_offer(self.offer_file, offer)
        except (MessageError, OSError) as e:
            _limited.warning("bad-offer", "ignoring a bundle offer on %s: %s", msg.topic, e)
            return
        self.stats.offers += 1
        log.info("the station offers bundle %s (manifest %s): installed between surveys (leafscout bundle fetch)",
                 offer.version, offer.manifest_sha256[:12])

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
