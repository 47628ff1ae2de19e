"""The supervised service: the systemd unit, sd_notify over a real AF_UNIX datagram socket, the status file."""
from __future__ import annotations

import json
import os
import socket
import tty
from pathlib import Path

import pytest

from leafscout.cli import main
from leafscout.link.mqtt import BundleOffer
from leafscout.robot.bundle_fetch import OFFER_NOTE, UPDATE_STATUS, note_offer
from leafscout.robot.sdnotify import notify
from leafscout.robot.service_cli import STATUS_DEGRADED, STATUS_MISSING, UNIT_NAME
from leafscout.robot.simulate import FieldConfig, simulate_run
from leafscout.robot.status import STATUS_NAME, read_status


@pytest.fixture
def notify_socket(tmp_path: Path):
    """What systemd listens on: a datagram socket named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_notify_sends_one_datagram_per_call(notify_socket) -> None:
    sock, path = notify_socket
    assert notify("READY=1", "STATUS=hello", socket_path=path)
    assert sock.recv(4096) == b"READY=1\nSTATUS=hello"
    assert not notify("READY=1", socket_path="")  # not under systemd: nothing to do


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"leafscout-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("WATCHDOG=1", socket_path="@" + name)
        assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_run(tmp_path_factory.mktemp("svc"), FieldConfig(rows=1, row_length_m=12.0, lines=1, seed=4))


def test_run_speaks_sd_notify_and_keeps_a_status_file(field: Path, tmp_path: Path, notify_socket, monkeypatch,
                                                     capsys) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    status = tmp_path / STATUS_NAME
    assert main(["run", "--camera", str(field / "field.avi"), "--gps", str(field / "gps.nmea"),
                 "--status-file", str(status), "--threads", "1"]) == 0
    messages = _received(sock)
    assert messages[0].startswith("READY=1\nSTATUS=surveying survey-1")
    assert messages[-1].startswith("STOPPING=1")
    beats = [m for m in messages if m.startswith("WATCHDOG=1")]
    assert len(beats) >= 2 and all("STATUS=ok" in m and "gps fix" in m for m in beats)
    s = read_status(status)
    assert s["state"] == "stopped" and s["camera"]["frames"] > 0 and s["gps"]["fix"] == "fix"
    assert s["gps"]["quality"] == 4 and s["last_record"]["fix"] == "fix" and s["bundle"]
    assert set(s) >= {"camera", "gps", "links", "queue_depth", "last_record", "bundle", "updated"}
    capsys.readouterr()
    assert main(["status", "--status-file", str(status)]) == STATUS_DEGRADED  # stopped
    out = capsys.readouterr().out
    assert "gps     fix fix, quality 4" in out and "bundle  " in out and "last    plant" in out
    assert main(["status", "--status-file", str(tmp_path / "none.json")]) == STATUS_MISSING


def test_heartbeat_is_degraded_without_a_gps_fix(field: Path, tmp_path: Path, notify_socket, monkeypatch) -> None:
    """A live GPS port that sends nothing: heartbeats say degraded, plants are flagged 'none'."""
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        status = tmp_path / STATUS_NAME
        report = tmp_path / "report.json"
        assert main(["run", "--camera", str(field / "field.avi"), "--gps", os.ttyname(slave),
                     "--status-file", str(status), "--report", str(report), "--threads", "1"]) == 0
    finally:
        os.close(master)
        os.close(slave)
    beats = [m for m in _received(sock) if m.startswith("WATCHDOG=1")]
    assert beats and all("STATUS=degraded" in m and "gps none" in m for m in beats)
    s = read_status(status)
    assert s["gps"]["fix"] == "none" and s["last_record"]["fix"] == "none" and s["last_record"]["row"] is None
    by_fix = json.loads(report.read_text())["gps"]["plants_by_fix"]
    assert by_fix["none"] > 0 and by_fix["fix"] == by_fix["interpolated"] == 0


def test_service_install_writes_a_notify_unit_with_watchdog(tmp_path: Path, capsys) -> None:
    config = tmp_path / "robot.toml"
    config.write_text('[camera]\nsource = "/dev/video0"\n[survey]\nid = "north"\n')
    assert main(["service", "install", "--config", str(config), "--user", "--unit-dir", str(tmp_path)]) == 0
    unit = (tmp_path / UNIT_NAME).read_text()
    for line in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "WantedBy=default.target"):
        assert line in unit.splitlines()
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert exec_start.endswith(f"-m leafscout run --config {config.resolve()}")
    assert "systemctl --user daemon-reload" in capsys.readouterr().out


def test_service_install_refuses_a_bad_config(tmp_path: Path, capsys) -> None:
    config = tmp_path / "robot.toml"
    config.write_text("[camera]\nsorce = 1\n")
    assert main(["service", "install", "--config", str(config), "--unit-dir", str(tmp_path)]) == 2
    assert "sorce" in capsys.readouterr().err and not (tmp_path / UNIT_NAME).exists()


def test_status_finds_the_file_through_the_config(tmp_path: Path, capsys) -> None:
    state = tmp_path / "state"
    (state / "robot-7").mkdir(parents=True)
    (state / "robot-7" / STATUS_NAME).write_text(json.dumps({
        "robot_id": "robot-7", "survey_id": "north", "state": "running", "status": "ok", "updated": 4e9,
        "pid": 1, "camera": {"source": "/dev/video0", "fps": 18.0, "frames": 10}, "gps": None, "links": {},
        "queue_depth": 0, "dropped": 0, "last_record": None, "bundle": "x"}))
    config = tmp_path / "robot.toml"
    config.write_text(f'[survey]\nrobot_id = "robot-7"\n[mqtt]\nstate_dir = "{state / "robot-7"}"\n')
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "robot robot-7  survey north  running (ok)" in out and "offer " not in out
    # An offer the survey heard and the last fetch's outcome show up next to the status.
    note_offer(state / "robot-7" / OFFER_NOTE, BundleOffer("2026-12-05T05:00:00+00:00", "ab" * 32,
                                                            "http://station:8080/robot/bundles/abab/", 4e9))
    (state / "robot-7" / UPDATE_STATUS).write_text(json.dumps(
        {"state": "deferred", "detail": "survey north is under way", "updated_utc": "2026-12-05T05:01:00+00:00"}))
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "offer   2026-12-05T05:00:00+00:00 (manifest abababababab)" in out
    assert "update  last fetch 2026-12-05T05:01:00+00:00: deferred (survey north is under way)" in out
