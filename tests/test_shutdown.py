"""A live run stopped by Ctrl-C or SIGTERM exits cleanly: report written, status "stopped", exit 0.

How fast it stops is a figure for the docs (docs/robot.md, section 5), not an assertion here;
the timeout below only keeps a hung process from hanging the suite.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _frames_so_far(status: Path) -> int:
    try:
        return json.loads(status.read_text())["camera"]["frames"]
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being replaced
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_live_run_stops_on_a_signal_and_writes_its_report(tmp_path: Path, sig: signal.Signals) -> None:
    report, status = tmp_path / "report.json", tmp_path / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "leafscout", "run", "--camera", "sim:rows=2,length=20,seed=3", "--live",
         "--report", str(report), "--status-file", str(status), "--threads", "1",
         "--state-dir", str(tmp_path / "state")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _frames_so_far(status) < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the signal: {proc.stderr.read()[-2000:]}"
        assert _frames_so_far(status) >= 20, "the live run never got going"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err, err[-2000:]
    assert "still blocked" not in err, err[-2000:]  # every capture thread was joined
    rep = json.loads(report.read_text())
    assert rep["mode"] == "live" and rep["frames"] >= 20
    assert json.loads(status.read_text())["state"] == "stopped"
