"""Full-size telemetry fault runs (the test suite runs the same cases scaled down).

    .venv/bin/python benchmarks/telemetry_bench.py [--only NAME ...] [--out bench_out/telemetry.json]

Cases: ``frames`` (20,000 frames, garbage bursts before 5%, a flipped bit in 1%),
``serial`` (115200 baud over a pty: offered 92% and 120% of the budget), ``outage``
(broker down for an hour of records at 10/s: 36,000 records, then drain), ``kill9``
(broker killed with -9 mid-burst of 10,000), ``crash`` (200 SIGKILLs of a writer),
``run_crash`` (200 SIGKILLs of ``leafscout run`` while it counts plants, every counted
plant at the station; the test suite kills it 25 times), ``isolation`` (the hypothesis
property "no valid record near an invalid one is lost" with 20,000 batches),
``submit`` (camera-loop cost of ``submit``), ``fuzz`` (10,000 random inputs per
decoder/parser via the hypothesis tests).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from telemetry_faults import crash_loop, decode_stream, fault_stream, run_kill_loop, wait_for  # noqa: E402

from leafscout.link.records import PlantRecord
from leafscout.robot.mqtt_link import MqttLink  # noqa: E402
from leafscout.robot.outbox import Outbox  # noqa: E402
from leafscout.robot.serial_link import BITS_PER_BYTE, SerialLink  # noqa: E402
from leafscout.robot.telemetry import Telemetry  # noqa: E402
from leafscout.station.broker import Broker  # noqa: E402
from leafscout.station.db import open_db  # noqa: E402
from leafscout.station.receiver import Station  # noqa: E402

T0 = 1_780_000_000.0
log = logging.getLogger("telemetry_bench")


def submit_all(sink: Telemetry, records: list, chunk: int = 2000) -> None:
    """Time-compressed production: as fast as the outbox commits, never overflowing the queue."""
    for i in range(0, len(records), chunk):
        for r in records[i:i + chunk]:
            sink.submit(r)
        sink.flush(60)


def plants(n: int) -> list[PlantRecord]:
    return [PlantRecord("r1", "s1", i, T0 + i * 0.1, "Tomato___Late_blight", 2, 0.8, 4, row=i // 100,
                        metre=(i % 100) * 0.3) for i in range(n)]


def bench_frames(n: int = 20_000) -> dict:
    stream = fault_stream(n, seed=2026)
    t = time.perf_counter()
    frames, rejected = decode_stream(stream.data)
    took = time.perf_counter() - t
    got = {f.seq: f.payload for f in frames}
    return {
        "frames": n, "garbage_bursts": stream.garbage_bursts, "corrupted": len(stream.corrupted),
        "intact": len(stream.intact), "intact_decoded": sum(got.get(s) == p for s, p in stream.intact.items()),
        "corrupted_decoded": len(set(got) & stream.corrupted),
        "spurious_frames": len(set(got) - set(stream.intact)),
        "rejected_chunks": rejected, "bytes": len(stream.data), "decode_s": round(took, 3),
    }


class StationProcess:
    """``leafscout station`` in its own process, as in the field (another machine)."""

    def __init__(self, db: Path, *args: str):
        self.db = db
        # --insecure: a bench on loopback measures throughput, not signing (the tests cover that)
        self.proc = subprocess.Popen([sys.executable, "-m", "leafscout.cli", "station", "--insecure", "--db", str(db),
                                      *args],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if "station ready" in line:
                break
        else:
            raise RuntimeError("the station process did not start")

    def count(self) -> int:
        with open_db(self.db) as db:
            return db.record_count()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stdout.close()


def _serial_run(tmp: Path, offered_fraction: float, seconds: float, baud: int = 115200) -> dict:
    budget = baud / (32 * BITS_PER_BYTE)
    rate = offered_fraction * budget
    n = int(rate * seconds)
    tty = str(tmp / f"tty{offered_fraction}")
    station = StationProcess(tmp / f"serial{offered_fraction}.db", "--serial", f"pty://{tty}", "--baud", str(baud))
    try:
        outbox = Outbox(tmp / f"serial_outbox{offered_fraction}.db")
        link = SerialLink(tty, "r1", outbox, baudrate=baud)
        with Telemetry(outbox, [link]).start() as sink:
            recs = plants(n)
            sink.submit(recs[0])
            wait_for(lambda: outbox.depth() == 0 and link.stats.records_acked == 1, 10, "contexts")
            depths, start = [], time.monotonic()
            for i, r in enumerate(recs[1:], 1):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the producer's own clock
                sink.submit(r)
                if i % 100 == 0:
                    depths.append(outbox.depth())
            produced_s = time.monotonic() - start
            wait_for(lambda: outbox.depth() == 0, 120, "drain")
            elapsed = time.monotonic() - start
        stored = station.count()
    finally:
        station.close()
    achieved = (n - 1) / elapsed
    return {
        "baud": baud, "frame_bytes": 32, "budget_frames_s": round(budget, 1), "offered_frames_s": round(rate, 1),
        "records": n, "stored": stored, "seconds": round(elapsed, 2), "produce_seconds": round(produced_s, 2),
        "achieved_frames_s": round(achieved, 1), "fraction_of_budget": round(achieved / budget, 3),
        "outbox_depth_max": max(depths), "outbox_depth_median": statistics.median(depths),
        "retransmits": link.stats.retransmits,
        "line_kbit_s": round(link.stats.bytes_sent * 10 / elapsed / 1000, 1),
    }


def bench_serial(tmp: Path) -> dict:
    return {"offered_92pct": _serial_run(tmp, 0.92, 10.0), "offered_120pct": _serial_run(tmp, 1.2, 10.0)}


def bench_outage(tmp: Path, n: int = 36_000) -> dict:
    """An hour of records at 10/s while the network is down (time-compressed), then the drain."""
    with Broker(tmp / "broker_outage", ["r1"]) as broker, \
            Station(tmp / "outage.db", mqtt=broker.url("station")) as st:
        st.wait_connected(10)
        outbox = Outbox(tmp / "outage_outbox.db")
        link = MqttLink(broker.url("r1"), "r1", outbox)
        with Telemetry(outbox, [link]).start() as sink:
            link.connected.wait(10)
            broker.stop()
            t = time.monotonic()
            submit_all(sink, plants(n))
            queued_s = time.monotonic() - t
            depth = outbox.depth()
            broker.start()
            link.connected.wait(30)
            t = time.monotonic()
            wait_for(lambda: outbox.depth() == 0, 600, "the backlog to drain")
            drain_s = time.monotonic() - t
        wait_for(lambda: st.db.record_count() == n, 30, "all records stored")
        ids = [p.plant_id for p in st.db.plants("s1")]
        rejected = st.db.rejected()
    return {
        "records": n, "queued_while_down": depth, "queue_seconds": round(queued_s, 2),
        "drain_seconds": round(drain_s, 2), "drain_records_s": round(n / drain_s, 1),
        "stored": len(ids), "lost": n - len(set(ids)), "duplicates_stored": len(ids) - len(set(ids)),
        "duplicates_rejected": rejected.get("duplicate", 0),
    }


def bench_kill9(tmp: Path, n: int = 10_000) -> dict:
    with Broker(tmp / "broker_kill", ["r1"]) as broker, Station(tmp / "kill.db", mqtt=broker.url("station")) as st:
        st.wait_connected(10)
        outbox = Outbox(tmp / "kill_outbox.db")
        link = MqttLink(broker.url("r1"), "r1", outbox, ack_timeout=3.0)
        with Telemetry(outbox, [link]).start() as sink:
            submit_all(sink, plants(n))
            wait_for(lambda: st.db.record_count() > n // 3, 60, "burst under way")
            broker.kill()
            at_kill = st.db.record_count()
            t = time.monotonic()
            broker.start()
            wait_for(lambda: outbox.depth() == 0, 300, "drain after restart")
            recover_s = time.monotonic() - t
        wait_for(lambda: st.db.record_count() == n, 30, "all records stored")
        ids = [p.plant_id for p in st.db.plants("s1")]
        rejected = st.db.rejected()
    return {"records": n, "stored_at_kill": at_kill, "recovery_seconds": round(recover_s, 2),
            "stored": len(ids), "lost": n - len(set(ids)), "duplicates_stored": len(ids) - len(set(ids)),
            "duplicates_rejected": rejected.get("duplicate", 0), "republished": link.stats.republished}


def bench_crash(tmp: Path, kills: int = 200) -> dict:
    t = time.monotonic()
    result = crash_loop(tmp / "crash_outbox.db", kills=kills, seed=2026)
    return {**result, "lost": 0, "seconds": round(time.monotonic() - t, 1)}


def bench_run_crash(tmp: Path, kills: int = 200) -> dict:
    t = time.monotonic()
    d = tmp / "run_crash"
    d.mkdir()
    result = run_kill_loop(d, kills=kills, seed=2026)
    return {**result, "lost": 0, "seconds": round(time.monotonic() - t, 1)}


def bench_isolation(examples: int = 20_000) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "property",
           "tests/test_isolation.py"]
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "LEAFSCOUT_FUZZ_EXAMPLES": str(examples)})
    return {"batches": examples, "returncode": proc.returncode,
            "summary": proc.stdout.strip().splitlines()[-1], "seconds": round(time.monotonic() - t, 1)}


def bench_submit(tmp: Path, n: int = 2_000, rate: float = 100.0) -> dict:
    """submit() latency at 100 records/s (10x the field rate) while the writer fsyncs."""
    recs = plants(n)
    with Telemetry(Outbox(tmp / "submit_outbox.db")).start() as sink:
        lat = []
        start = time.monotonic()
        for i, r in enumerate(recs):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            t = time.perf_counter_ns()
            sink.submit(r)
            lat.append(time.perf_counter_ns() - t)
        t = time.monotonic()
        sink.flush(120)
        flush_s = time.monotonic() - t
    lat.sort()
    with Outbox(tmp / "fsync_outbox.db") as ob:  # why submit() must not commit itself: one fsync per put
        put = []
        for r in recs[:200]:
            t = time.perf_counter_ns()
            ob.put(r)
            put.append(time.perf_counter_ns() - t)
    put.sort()
    return {"records": n, "rate_s": rate, "overflows": sink.queue_overflows,
            "direct_put_p50_ms": round(put[100] / 1e6, 2), "direct_put_p99_ms": round(put[198] / 1e6, 2),
            "submit_p50_us": round(lat[n // 2] / 1000, 1), "submit_p99_us": round(lat[n * 99 // 100] / 1000, 1),
            "submit_max_us": round(lat[-1] / 1000, 1), "commit_tail_s": round(flush_s, 2)}


def bench_fuzz(examples: int = 10_000) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "fuzz",
           "tests/test_protocol.py", "tests/test_station_receiver.py"]
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "LEAFSCOUT_FUZZ_EXAMPLES": str(examples)})
    return {"examples_per_test": examples, "returncode": proc.returncode,
            "summary": proc.stdout.strip().splitlines()[-1], "seconds": round(time.monotonic() - t, 1)}


CASES = {"frames": lambda tmp: bench_frames(), "serial": bench_serial, "outage": bench_outage,
         "kill9": bench_kill9, "crash": bench_crash, "run_crash": bench_run_crash,
         "isolation": lambda tmp: bench_isolation(), "submit": bench_submit, "fuzz": lambda tmp: bench_fuzz()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    ap.add_argument("--out", default="bench_out/telemetry.json", help="where to write the JSON results")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CASES:
            t = time.monotonic()
            results[name] = CASES[name](Path(tmp))
            print(f"{name} ({time.monotonic() - t:.0f} s): {json.dumps(results[name])}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
