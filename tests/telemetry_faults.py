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

from robot import protocol as P
from robot.outbox import Outbox
from robot.records import PlantRecord

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
        [sys.executable, "-m", "robot.telemetry", "--outbox", str(outbox), "--robot-id", "r1",
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
