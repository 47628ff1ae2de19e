"""The serial link: the outbox drained over a radio modem or UART, one compact frame per record.

Ports and the thread that owns one (``PortReader``) are in ``leafscout.link.serial_port``.
``SerialLink`` is the robot side: a sliding window of
frames, acknowledgements, retransmission with backoff, and pacing to the configured
baud rate so a slow modem is never overrun.  The station side is in
``station/receiver.py``; the frame format is in ``link/protocol.py`` and docs/protocol.md.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable
from typing import Protocol as TypingProtocol

from leafscout.link import protocol as P
from leafscout.link.ratelimit import RateLimitedLog
from leafscout.link.records import UNCERTAIN, Heartbeat, PlantRecord, RowSummary
from leafscout.link.serial_port import PortReader
from leafscout.robot.outbox import Outbox, OutboxItem
from leafscout.robot.telemetry import LinkWorker

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)

BITS_PER_BYTE = 10  # start + 8 data + stop
BURST_BYTES = 128  # pacing slack: a UART FIFO (XBee and LoRa modems buffer 256+ bytes)


class HealthyLink(TypingProtocol):
    def healthy(self) -> bool: ...


class SerialLinkError(RuntimeError):
    """A serial port URL or setting that cannot work."""


@dataclass
class _InFlight:
    frame: bytes
    data_seq: int | None  # outbox seq for records; None for control frames
    context: tuple | None = None  # (key, value) learnt when a control frame is acked
    send_at: float = 0.0
    tries: int = 0


@dataclass
class SerialStats:
    frames_sent: int = 0
    retransmits: int = 0
    records_acked: int = 0
    bytes_sent: int = 0
    naks: int = 0
    bad_frames_in: int = 0
    unencodable: int = 0
    records_rejected: int = 0
    slow_mode: bool = False
    started: float = field(default_factory=time.monotonic)


class SerialLink(LinkWorker):
    """Robot side of the serial link: drains the outbox in frames, paced to ``baudrate``.

    Row summaries and heartbeats go before plant records.  With a network link
    (``other_link``, the MQTT link) plant records go over serial only while that link is
    unhealthy, and not when their backlog would take longer than ``plant_backlog_s`` to
    send at this baud rate ("slow mode": row summaries and heartbeats only, until the
    backlog is down to half of that); the network link carries them when it recovers.
    """

    name = "serial"

    def __init__(self, url: str, robot_id: str, outbox: Outbox, baudrate: int = 115200,
                 key: bytes | None = None, window: int = 32, rto: float | None = None,
                 max_backoff: float = 5.0, other_link: HealthyLink | None = None,
                 plant_backlog_s: float = 60.0, write_timeout: float = 0.5):
        if isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0:
            raise SerialLinkError(f"baudrate must be a positive integer, got {baudrate!r}")
        if not 1 <= window <= 255:
            raise SerialLinkError(f"window must be 1..255 frames, got {window!r}")
        super().__init__(f"serial-sender-{robot_id}")
        self.robot_id, self.outbox, self.baudrate, self.key = robot_id, outbox, baudrate, key
        self.number = P.robot_number(robot_id)
        self.window, self.max_backoff = window, max_backoff
        frame_time = 40 * BITS_PER_BYTE / baudrate
        self.rto = rto if rto is not None else 0.3 + 2 * window * frame_time
        self.other_link, self.plant_backlog_s = other_link, plant_backlog_s
        self.stats = SerialStats()
        self._inflight: dict[int, _InFlight] = {}
        self._ctx_ok: dict[tuple, object] = {}
        self._surveys: dict[str, P.SurveyContext] = {}
        self._next_ref = 0
        self._skip: set[int] = set()
        self._tx_free_at = 0.0
        self._slow_checked = -1e9
        self._decoder = P.FrameDecoder(key)
        self.reader = PortReader(url, self._on_data, baudrate, self._on_state, write_timeout=write_timeout,
                                 name=f"serial-reader-{robot_id}")

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> "SerialLink":
        self.reader.start()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop_worker()
        self.reader.stop()

    # -- reader thread -------------------------------------------------------------
    def _on_state(self, up: bool) -> None:
        self._post("state", up)

    def _on_data(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, P.ProtocolError):
                self.stats.bad_frames_in += 1
            elif item.robot == self.number and item.type in (P.MsgType.ACK, P.MsgType.NAK):
                self._post("frame", item)

    # -- sender thread -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._handle_events()
            if not self.reader.connected.is_set():
                self._idle(0.1)
                continue
            try:
                if len(self._inflight) <= self.window // 2:
                    self._fill_window()
            except Exception as e:  # noqa: BLE001 - a bad record (or a full disk) must not stop the link
                _limited.error("build", "serial link: building frames failed: %s: %s", type(e).__name__, e)
                log.debug("building frames failed", exc_info=True)
            due = min(self._inflight.items(), key=lambda kv: kv[1].send_at, default=None)
            now = time.monotonic()
            if due is None or due[1].send_at > now:
                self._idle(0.2 if due is None else min(0.2, due[1].send_at - now))
                continue
            try:
                self._transmit(due[1])
            except Exception as e:  # noqa: BLE001 - the sender thread must outlive any one frame
                _limited.error("send", "serial link: sending a frame failed (%s: %s); retrying later",
                               type(e).__name__, e)
                log.debug("sending a frame failed", exc_info=True)
                self._idle(0.1)

    def _transmit(self, entry: _InFlight) -> None:
        now = time.monotonic()
        if self._tx_free_at > now:  # pace to the baud rate: never faster than the wire
            self._stop.wait(self._tx_free_at - now)
            now = time.monotonic()
        if not self.reader.write(entry.frame):
            entry.send_at = now + min(self.rto, self.max_backoff)
            return
        # The virtual wire may lag real time by one UART FIFO (BURST_BYTES) so scheduling
        # jitter does not cost throughput; on average we never exceed the baud rate.
        self._tx_free_at = (max(now - BURST_BYTES * BITS_PER_BYTE / self.baudrate, self._tx_free_at)
                            + len(entry.frame) * BITS_PER_BYTE / self.baudrate)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(entry.frame)
        if entry.tries:
            self.stats.retransmits += 1
        entry.send_at = now + min(self.rto * 2 ** entry.tries, self.max_backoff)
        entry.tries += 1

    def _handle_events(self) -> None:
        acked: list[int] = []
        rejected: list[int] = []
        for kind, value in self._take_events():
            if kind == "state":
                # New connection or lost one: the station may have forgotten nothing, but
                # re-announcing contexts is cheap and makes a restarted station work.
                self._ctx_ok.clear()
                self._inflight.clear()
                continue
            frame: P.Frame = value
            try:
                if frame.type == P.MsgType.ACK:
                    for seq in P.decode_ack(frame.payload):
                        entry = self._inflight.pop(seq, None)
                        if entry is None:
                            continue
                        if entry.data_seq is not None:
                            acked.append(entry.data_seq)
                        elif entry.context is not None:
                            self._ctx_ok[entry.context[0]] = entry.context[1]
                else:
                    seq, reason = P.decode_nak(frame.payload)
                    self.stats.naks += 1
                    entry = self._inflight.pop(seq, None)
                    if reason == P.NakReason.REJECTED:
                        if entry is not None and entry.data_seq is not None:
                            rejected.append(entry.data_seq)
                    elif reason == P.NakReason.UNKNOWN_ROBOT:
                        self._ctx_ok.clear()
                    else:
                        self._ctx_ok = {k: v for k, v in self._ctx_ok.items() if k[0] == "hello"}
            except P.ProtocolError:
                self.stats.bad_frames_in += 1
        if acked:
            self.outbox.remove(acked)
            self.stats.records_acked += len(acked)
        if rejected:  # invalid at the station: sending them again would change nothing
            self.outbox.count_rejected(self.outbox.remove(rejected))
            self.stats.records_rejected += len(rejected)
            log.error("the station rejected %d record(s) as invalid (removed): seqs %s", len(rejected), rejected[:10])

    # -- building frames -----------------------------------------------------------
    def _kinds(self) -> list[str]:
        """Kinds to send, most important first: plants only when no healthy network link
        carries them, and not in slow mode (checked once a second)."""
        if self.other_link is not None and self.other_link.healthy():
            return ["row", "heartbeat"]
        now = time.monotonic()
        if self.other_link is not None and now >= self._slow_checked + 1.0:
            self._slow_checked = now
            backlog_s = self.outbox.depth("plant") * 32 * BITS_PER_BYTE / self.baudrate
            slow = backlog_s > self.plant_backlog_s * (0.5 if self.stats.slow_mode else 1.0)  # hysteresis
            if slow != self.stats.slow_mode:
                log.info("serial link %s slow mode (plant backlog: %.0f s of airtime)",
                         "enters" if slow else "leaves", backlog_s)
                self.stats.slow_mode = slow
        return ["row", "heartbeat"] if self.stats.slow_mode else ["row", "heartbeat", "plant"]

    def _fill_window(self) -> None:
        exclude = {e.data_seq for e in self._inflight.values() if e.data_seq is not None} | self._skip
        for kind in self._kinds():
            room = self.window - len(self._inflight)
            if room <= 0:
                return
            for item in self.outbox.pending([kind], limit=room, exclude=exclude):
                if not self._add(item):
                    return  # waiting for a context to be acknowledged

    def _add(self, item: OutboxItem) -> bool:
        record = item.record
        try:
            needed, payload_fn, mtype = self._plan(record)
        except P.EncodeError as e:
            log.warning("record %s cannot go over serial (%s); leaving it to other links", item.record_id, e)
            self._skip.add(item.seq)
            self.stats.unencodable += 1
            return True
        missing = [(k, v) for k, v in needed if self._ctx_ok.get(k) != v]
        if missing:
            pending_ctx = {e.context[0] for e in self._inflight.values() if e.context is not None}
            for key, value in missing:
                if key not in pending_ctx and len(self._inflight) < self.window:
                    self._send_context(key, value)
            return False
        try:
            frame = P.encode_frame(mtype, self.number, item.seq, payload_fn(), self.key)
        except P.EncodeError as e:
            log.warning("record %s cannot go over serial (%s)", item.record_id, e)
            self._skip.add(item.seq)
            self.stats.unencodable += 1
            return True
        self._inflight[item.seq] = _InFlight(frame, item.seq)
        return True

    def _plan(self, record: object) -> tuple[list[tuple], Callable[[], bytes], P.MsgType]:
        needed: list[tuple] = [(("hello",), self.robot_id)]
        if isinstance(record, PlantRecord):
            ctx = self._survey(record.survey_id, record.t, record.lat, record.lon, plant=record)
            needed.append((("survey", ctx.ref), ctx))
            if record.label != UNCERTAIN:
                P.encode_class(record.class_index, record.label)  # validates early
                needed.append((("class", record.class_index), record.label))
            return needed, lambda: P.encode_plant(record, ctx), P.MsgType.PLANT
        if isinstance(record, RowSummary):
            ctx = self._survey(record.survey_id, record.t)
            needed.append((("survey", ctx.ref), ctx))
            return needed, lambda: P.encode_row(record, ctx), P.MsgType.ROW
        if isinstance(record, Heartbeat):
            ctx = None if record.survey_id is None else self._survey(record.survey_id, record.t)
            if ctx is not None:
                needed.append((("survey", ctx.ref), ctx))
            return needed, lambda: P.encode_heartbeat(record, ctx), P.MsgType.HEARTBEAT
        raise P.EncodeError(f"unknown record type {type(record).__name__}")

    def _survey(self, survey_id: str, t: float, lat: float | None = None, lon: float | None = None,
                plant: PlantRecord | None = None) -> P.SurveyContext:
        """The current context of a survey; a new one when this plant does not fit it."""
        ctx = self._surveys.get(survey_id)
        if ctx is None or (plant is not None and not P.plant_fits(plant, ctx)):
            nan = float("nan")
            ctx = P.SurveyContext(self._next_ref, survey_id, t, nan if lat is None else lat,
                                  nan if lon is None else lon)
            P.encode_survey(ctx)  # validates the survey id length
            self._next_ref = (self._next_ref + 1) % P.NONE_U8
            self._surveys[survey_id] = ctx
        return ctx

    def _send_context(self, key: tuple, value: object) -> None:
        if key[0] == "hello":
            mtype, payload = P.MsgType.HELLO, P.encode_hello(self.robot_id, bytes.fromhex(self.outbox.outbox_id))
        elif key[0] == "class":
            mtype, payload = P.MsgType.CLASS, P.encode_class(key[1], value)
        else:
            mtype, payload = P.MsgType.SURVEY, P.encode_survey(value)
        seq = self.outbox.next_seq()
        self._inflight[seq] = _InFlight(P.encode_frame(mtype, self.number, seq, payload, self.key), None,
                                        (key, value))

    # -- metrics ---------------------------------------------------------------------
    def budget_frames_per_s(self, frame_len: int) -> float:
        """Frames per second the baud rate allows for frames of ``frame_len`` bytes."""
        return self.baudrate / (frame_len * BITS_PER_BYTE)
