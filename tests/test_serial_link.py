"""Robot serial link against the station's serial receiver: real ptys, a real faulty TCP line."""
from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import pytest
from telemetry_faults import wait_for

from leafscout.link.records import PlantRecord, RowSummary
from leafscout.robot.mqtt_link import MqttLink
from leafscout.robot.outbox import Outbox
from leafscout.robot.serial_link import BITS_PER_BYTE, BURST_BYTES, SerialLink, SerialLinkError
from leafscout.robot.telemetry import Telemetry, synthetic_records
from leafscout.station.broker import free_port
from leafscout.station.receiver import Station

KEY = b"serial-test-key-0123"


def test_pty_end_to_end_with_hmac(tmp_path):
    tty = str(tmp_path / "tty")
    with Station(tmp_path / "s.db", serial=f"pty://{tty}", hmac_key=KEY, robots=["r1"]) as st:
        assert st.wait_connected(5)
        outbox = Outbox(tmp_path / "o.db")
        sink = Telemetry(outbox, [SerialLink(tty, "r1", outbox, key=KEY)])
        with sink.start():
            recs = list(synthetic_records("r1", "s1", 300, t0=1_780_000_000.0))
            for r in recs:
                sink.submit(r)
            assert sink.flush()
            wait_for(lambda: sink.outbox.depth() == 0, 20, "the outbox to drain")
        plants = st.db.plants("s1")
        sent = [r for r in recs if isinstance(r, PlantRecord)]
        assert len(plants) == len(sent) == 300
        by_id = {p.plant_id: p for p in plants}
        for r in sent:
            p = by_id[r.plant_id]
            assert (p.label, p.class_index, p.row) == (r.label, r.class_index, r.row)
            assert p.t == pytest.approx(r.t, abs=0.05) and p.lat == pytest.approx(r.lat, abs=1e-6)
        assert len(st.db.rows("s1")) == 2 and st.db.robots()[0].link == "serial"
        assert st.db.track("s1"), "heartbeats went over serial"
        assert st.db.rejected().get("bad_hmac", 0) == 0


class FaultyLine:
    """A TCP 'cable' between two socket:// ports: injects garbage and bit flips, can be cut or stalled."""

    def __init__(self, garbage: float = 0.0, flips: float = 0.0, seed: int = 0):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.garbage, self.flips, self.rng = garbage, flips, random.Random(seed)
        self.stalled = threading.Event()  # robot->station direction stops being read
        self.generation = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                a, _ = self.server.accept()
                b, _ = self.server.accept()
            except OSError:
                return
            # who is who: the robot speaks first (HELLO); pump both ways symmetrically
            self._conns = [a, b]
            gen = self.generation
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst, gen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gen: int) -> None:
        while gen == self.generation and not self._stop.is_set():
            if self.stalled.is_set():
                self._stop.wait(0.05)
                continue
            try:
                data = bytearray(src.recv(4096))
            except OSError:
                return
            if not data:
                return
            if self.rng.random() < self.garbage:
                data[0:0] = self.rng.randbytes(self.rng.randint(1, 60)) + self.rng.choice([b"", b"\x00"])
            if self.rng.random() < self.flips:
                i = self.rng.randrange(len(data) * 8)
                data[i // 8] ^= 1 << (i % 8)
            try:
                dst.sendall(data)
            except OSError:
                return

    def cut(self) -> None:
        """Pull the cable: both ends see the connection drop and must reconnect."""
        self.generation += 1
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self.server.close()


def test_garbage_bit_flips_cut_cable_and_stalled_peer_are_survived(tmp_path):
    line = FaultyLine(garbage=0.05, flips=0.02, seed=5)
    try:
        with Station(tmp_path / "s.db", serial=line.url) as st:
            assert st.wait_connected(5)
            outbox = Outbox(tmp_path / "o.db")
            link = SerialLink(line.url, "r1", outbox, baudrate=230400, window=8, rto=0.2, max_backoff=0.5,
                              write_timeout=0.2)
            with Telemetry(outbox, [link]).start() as sink:
                recs = list(synthetic_records("r1", "s1", 600, t0=1_780_000_000.0, summaries=False))
                for r in recs[:300]:
                    sink.submit(r)
                wait_for(lambda: st.db.record_count() > 100, 20, "records before the cut")
                line.cut()
                wait_for(lambda: link.reader.reconnects >= 1, 10, "the robot to notice the cut")
                line.stalled.set()  # the station side stops reading: robot writes must time out
                for r in recs[300:]:
                    sink.submit(r)
                assert sink.flush(10), "submit/flush blocked while the line was stalled"
                wait_for(lambda: link.reader.write_timeouts > 0 or link.stats.retransmits > 0, 15,
                         "the stalled line to be noticed")
                line.stalled.clear()
                wait_for(lambda: outbox.depth() == 0, 60, "the outbox to drain after the faults")
            stored = st.db.record_count()
            rejected = st.db.rejected()
        assert stored == len(recs)  # every record exactly once
        assert rejected.get("bad_crc", 0) + rejected.get("malformed", 0) > 0, rejected
    finally:
        line.close()


def test_pacing_never_faster_than_the_baud_rate(tmp_path):
    tty = str(tmp_path / "tty")
    baud = 9600
    with Station(tmp_path / "s.db", serial=f"pty://{tty}") as st:
        assert st.wait_connected(5)
        outbox = Outbox(tmp_path / "o.db")
        recs = list(synthetic_records("r1", "s1", 60, t0=1_780_000_000.0, summaries=False))
        outbox.put_many([(r, None) for r in recs])
        link = SerialLink(tty, "r1", outbox, baudrate=baud).start()
        t0 = time.monotonic()
        try:
            wait_for(lambda: outbox.depth() == 0, 30, "the outbox to drain at 9600 baud")
        finally:
            link.close()
        elapsed = time.monotonic() - t0
    airtime = link.stats.bytes_sent * BITS_PER_BYTE / baud
    assert link.stats.bytes_sent > 60 * 32
    # slack: one FIFO of burst, and the last frame may still be "on the wire" when its ack arrives
    assert elapsed >= airtime - (BURST_BYTES + 40) * BITS_PER_BYTE / baud, (elapsed, airtime)


def test_slow_link_sends_only_row_summaries_when_mqtt_can_carry_plants(tmp_path):
    tty = str(tmp_path / "tty")
    with Station(tmp_path / "s.db", serial=f"pty://{tty}") as st:
        assert st.wait_connected(5)
        outbox = Outbox(tmp_path / "o.db")
        plants = [PlantRecord("r1", "s1", i, 1_780_000_000.0 + i, "Tomato___healthy", 0, 0.9, 3, row=i // 100)
                  for i in range(300)]
        rows = [RowSummary("r1", "s1", r, 100, 5, 1, 0.05, 0.02, 0.1, 1_780_000_100.0 + r) for r in range(3)]
        outbox.put_many([(r, None) for r in plants + rows])
        # an MQTT link whose broker is unreachable: unhealthy, so plants would go over serial...
        network = MqttLink(f"mqtt://r1:x@127.0.0.1:{free_port()}", "r1", outbox).start()
        # ...but 300 plants x 32 bytes at 2400 baud = 40 s of airtime > the 10 s allowed
        link = SerialLink(tty, "r1", outbox, baudrate=2400, other_link=network, plant_backlog_s=10).start()
        try:
            wait_for(lambda: len(st.db.rows("s1")) == 3, 20, "the row summaries")
            assert link.stats.slow_mode and not network.healthy()
            assert outbox.depth("plant") == 300 and not st.db.plants("s1")
        finally:
            link.close()
            network.close()


def test_bad_settings_are_named(tmp_path):
    with Outbox(tmp_path / "o.db") as ob:
        with pytest.raises(SerialLinkError, match="baudrate must be a positive integer, got 0"):
            SerialLink("loop://", "r1", ob, baudrate=0)
        with pytest.raises(SerialLinkError, match="window must be 1..255"):
            SerialLink("loop://", "r1", ob, window=0)


def test_missing_port_is_retried_with_backoff_until_it_appears(tmp_path):
    tty = tmp_path / "later"
    with Outbox(tmp_path / "o.db") as ob:
        ob.put(PlantRecord("r1", "s1", 1, 1_780_000_000.0, "Tomato___healthy", 0, 0.9, 3))
        link = SerialLink(str(tty), "r1", ob).start()
        try:
            assert not link.reader.connected.wait(0.3)
            with Station(tmp_path / "s.db", serial=f"pty://{tty}") as st:
                assert link.reader.connected.wait(5)
                wait_for(lambda: st.db.record_count() == 1, 10, "the record once the port exists")
        finally:
            link.close()
    assert Path(tty).exists() is False
