"""Fault injection shared by the telemetry tests and ``benchmarks/telemetry_bench.py``."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from leafscout.link import protocol as P
from leafscout.link.records import PlantRecord
from leafscout.robot.outbox import Outbox

REPO = Path(__file__).resolve().parents[1]

CTX = P.SurveyContext(0, "fault-survey", 1_780_000_000.0, 48.0, 11.0)
ROBOT = P.robot_number("r1")


@dataclass
class FaultStream:
    data: bytes
    intact: dict[int, bytes]  # seq -> payload of frames sent unharmed
    corrupted: set[int]  # seqs of frames with a flipped bit
    garbage_bursts: int


def plant_payload(i: int) -> bytes:
    r = PlantRecord("r1", CTX.survey_id, i, CTX.t0 + i * 0.1, "Tomato___healthy", i % 10, 0.9, 3,
                    row=i // 100, metre=(i % 100) * 0.3, lat=48.0 + (i % 1000) * 1e-6, lon=11.0)
    return P.encode_plant(r, CTX)


def fault_stream(n: int, seed: int = 0, garbage: float = 0.05, flips: float = 0.01,
                 key: bytes | None = None) -> FaultStream:
    """``n`` plant frames; random garbage bursts (with 0x00 and header-like bytes) before
    a fraction ``garbage`` of them, one flipped bit (never the delimiter) in ``flips``."""
    rng = random.Random(seed)
    out = bytearray()
    intact: dict[int, bytes] = {}
    corrupted: set[int] = set()
    bursts = 0
    header_like = P.HEADER.pack(P.VERSION << 4, int(P.MsgType.PLANT), ROBOT, 0)
    for seq in range(n):
        if rng.random() < garbage:
            bursts += 1
            junk = bytearray(rng.randbytes(rng.randint(1, 400)))
            for _ in range(rng.randint(0, 3)):  # delimiters and fake headers inside the noise
                pos = rng.randrange(len(junk) + 1)
                junk[pos:pos] = rng.choice([b"\x00", header_like, b"\x00" + header_like])
            out += junk
        payload = plant_payload(seq)
        frame = bytearray(P.encode_frame(P.MsgType.PLANT, ROBOT, seq, payload, key))
        if rng.random() < flips:
            bit = rng.randrange((len(frame) - 1) * 8)
            frame[bit // 8] ^= 1 << (bit % 8)
            corrupted.add(seq)
        else:
            intact[seq] = payload
        out += frame
    return FaultStream(bytes(out), intact, corrupted, bursts)


def decode_stream(data: bytes, key: bytes | None = None, chunk: int = 4096) -> tuple[list[P.Frame], int]:
    """Feed ``data`` in chunks the size a UART read returns; (frames, rejected chunks)."""
    dec = P.FrameDecoder(key)
    frames, rejected = [], 0
    for i in range(0, len(data), chunk):
        for item in dec.feed(data[i:i + chunk]):
            if isinstance(item, P.ProtocolError):
                rejected += 1
            else:
                frames.append(item)
    return frames, rejected


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition another thread or process makes true (e.g. rows in a database)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.05)


def run_and_kill(outbox: Path, rng: random.Random) -> list[int]:
    """Start a writer, SIGKILL it at a random point after its first commit; the seqs it accepted."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "leafscout.robot.telemetry", "--outbox", str(outbox), "--robot-id", "r1",
         "--synthetic", "1000000", "--rate", "0", "--print-committed", "--no-summaries",
         "--max-records", "100000000"],  # no drops by the bound: every accepted record must stay
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    first = threading.Event()
    raw = bytearray()

    def read() -> None:
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            raw.extend(chunk)
            if b"\n" in raw:
                first.set()

    reader = threading.Thread(target=read)
    reader.start()
    if not first.wait(60):
        proc.kill()
        raise AssertionError("the writer never committed anything")
    threading.Event().wait(rng.uniform(0.0, 0.25))  # a random point in the write loop
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    proc.stdout.close()
    complete = raw[: raw.rfind(b"\n") + 1]  # a line cut by the kill was not fully reported
    return [int(x) for x in complete.split()]


def crash_loop(outbox: Path, kills: int, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    accepted: set[int] = set()
    last_max = 0
    for _ in range(kills):
        seqs = run_and_kill(outbox, rng)
        if not seqs or min(seqs) <= last_max:
            raise AssertionError(f"a sequence number was reused after a crash (max before {last_max})")
        last_max = max(seqs)
        accepted.update(seqs)
        with Outbox(outbox) as ob:
            check = ob.integrity_check()
            missing = accepted - ob.seqs()
        if check != "ok":
            raise AssertionError(f"outbox integrity_check: {check}")
        if missing:
            raise AssertionError(f"{len(missing)} accepted records lost, e.g. {sorted(missing)[:5]}")
    return {"kills": kills, "accepted": len(accepted), "integrity_ok": kills}


# -- SIGKILL of the whole robot (`leafscout run`) at random points ------------------------
RUN_CAMERA = "sim:rows=2,length=5,seed=4"  # ~50 plants in under a second: cheap to kill many times


def _plants_in(db: Path) -> list[int]:
    import sqlite3

    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
            return [r[0] for r in c.execute("SELECT plant_id FROM plants WHERE survey_id='s1'")]
    except sqlite3.Error:  # not created yet, or mid-creation
        return []


def _run_cmd(tty: str, state: Path, survey_db: Path, bundle: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "leafscout", "run", "--camera", RUN_CAMERA, "--replay", "--threads", "1",
           "--db", str(survey_db), "--survey", "s1", "--robot-id", "r1", "--serial", tty, "--state-dir", str(state)]
    return cmd + (["--bundle", str(bundle)] if bundle else [])


def run_kill_loop(tmp: Path, kills: int, seed: int = 0, bundle: Path | None = None) -> dict[str, int]:
    """SIGKILL ``leafscout run`` ``kills`` times at random points while it counts plants, run it once
    more to the end, drain its outbox; every plant in its survey database must be at the station
    (and nothing else: the station's plants of the survey are exactly the robot's)."""
    from leafscout.station.receiver import Station

    rng = random.Random(seed)
    tty, state, survey_db = str(tmp / "tty"), tmp / "state", tmp / "survey.db"
    killed_while_counting = 0
    with Station(tmp / "station.db", serial=f"pty://{tty}") as st:
        if not st.wait_connected(5):
            raise AssertionError("the station's pty did not open")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for _ in range(kills):
            before = len(_plants_in(survey_db))
            proc = subprocess.Popen(_run_cmd(tty, state, survey_db, bundle), cwd=tmp, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: len(_plants_in(survey_db)) > before or proc.poll() is not None, 60, "a counted plant")
            threading.Event().wait(rng.uniform(0.0, 0.4))  # a random point in the counting
            killed_while_counting += proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        subprocess.run(_run_cmd(tty, state, survey_db, bundle), cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counted = set(_plants_in(survey_db))
        with Outbox(state / "outbox.db") as ob:
            check = ob.integrity_check()
        # drain what is still queued (the runs above exit when the recording ends)
        drain = subprocess.Popen([sys.executable, "-m", "leafscout.robot.telemetry", "--state-dir", str(state), "--robot-id",
                                  "r1", "--serial", tty, "--linger", "120"], cwd=tmp, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: {p.plant_id for p in st.db.plants("s1")} >= counted, 120, "every counted plant")
        finally:
            drain.kill()
            drain.wait()
        at_station = {p.plant_id for p in st.db.plants("s1")}
    if check != "ok":
        raise AssertionError(f"outbox integrity_check: {check}")
    missing, extra = counted - at_station, at_station - counted
    if missing or extra:
        raise AssertionError(f"{len(missing)} counted plants never reached the station (e.g. {sorted(missing)[:5]}); "
                             f"{len(extra)} at the station were never counted (e.g. {sorted(extra)[:5]})")
    return {"kills": kills, "killed_while_counting": killed_while_counting, "counted": len(counted)}
