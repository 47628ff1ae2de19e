"""A damaged recording must not pass for a survey: truncated, a corrupt chunk mid-file, a FIFO as input."""
from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest

from leafscout.cli import main
from leafscout.robot.camera import open_capture, source_kind
from leafscout.robot.cli import EXIT_RECORDING_DAMAGED
from leafscout.robot.simulate import FieldConfig, simulate_run

FIELD = FieldConfig(rows=1, row_length_m=2.0, lines=1, fps=20.0, seed=5)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run = simulate_run(tmp_path_factory.mktemp("rec"), FIELD)
    data = (run / "field.avi").read_bytes()
    out = {"intact": run / "field.avi", "truncated": run / "truncated.avi", "corrupt": run / "corrupt.avi"}
    out["truncated"].write_bytes(data[: int(len(data) * 0.6)])  # a copy cut short (full card, pulled cable)
    damaged = bytearray(data)
    movi = data[: data.rindex(b"idx1")]  # the frames, without the index at the end (which names them too)
    chunks = [i for i in range(len(movi)) if movi.startswith(b"00dc", i)]  # one AVI chunk per MJPG frame
    start = chunks[len(chunks) // 2] + 8  # 20 kB of garbage over a frame's JPEG header: it cannot be decoded
    damaged[start:start + 20_000] = random.Random(0).randbytes(20_000)
    out["corrupt"].write_bytes(bytes(damaged))
    return out


def _frames(spec: Path) -> tuple[list[int], object]:
    with open_capture(str(spec)) as cap:
        idx = []
        while (f := cap.read(timeout=30)) is not None:
            idx.append(f.index)
    return idx, cap.stats


def test_intact_recording_has_no_damage(recordings: dict[str, Path]) -> None:
    idx, stats = _frames(recordings["intact"])
    assert idx == list(range(len(idx))) and stats.lost == stats.truncated == 0


def test_truncated_recording_counts_the_missing_tail(recordings: dict[str, Path]) -> None:
    full, _ = _frames(recordings["intact"])
    idx, stats = _frames(recordings["truncated"])
    assert 0 < len(idx) < len(full) and stats.truncated == len(full) - len(idx) and stats.lost == 0


def test_lost_frames_mid_file_leave_a_gap_not_a_shift(recordings: dict[str, Path]) -> None:
    full, _ = _frames(recordings["intact"])
    idx, stats = _frames(recordings["corrupt"])
    assert stats.lost >= 1 and idx[-1] == full[-1]  # later frames keep their place (GPS time, tracker)
    assert len(idx) + stats.lost + stats.truncated == len(full)
    assert sorted(set(full) - set(idx)) and idx == sorted(idx)


@pytest.mark.parametrize("name", ["truncated", "corrupt"])
def test_run_over_a_damaged_recording_warns_counts_and_exits_non_zero(recordings: dict[str, Path], name: str,
                                                                       tmp_path: Path, capsys) -> None:
    report = tmp_path / "report.json"
    code = main(["run", "--camera", str(recordings[name]), "--report", str(report), "--threads", "1"])
    assert code == EXIT_RECORDING_DAMAGED
    assert "the recording is damaged" in capsys.readouterr().err
    cam = json.loads(report.read_text())["camera"]  # the report is still written: what was surveyed
    assert cam["truncated" if name == "truncated" else "lost"] > 0


def test_run_over_an_intact_recording_exits_zero(recordings: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert main(["run", "--camera", str(recordings["intact"]), "--report", str(report), "--threads", "1"]) == 0
    cam = json.loads(report.read_text())["camera"]
    assert cam["lost"] == cam["truncated"] == cam["corrupt"] == 0


def test_fifo_is_accepted_as_camera_input(recordings: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    assert source_kind(str(fifo)) == "fifo"
    data = recordings["intact"].read_bytes()

    def writer() -> None:  # what a camera pipeline does: write a stream into the named pipe
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=writer)
    t.start()
    idx, stats = _frames(fifo)
    t.join()
    full, _ = _frames(recordings["intact"])
    assert idx == full and stats.lost == stats.truncated == 0
