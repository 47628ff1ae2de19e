"""Record identity survives an outbox reset: nothing taken for a duplicate, contexts never mixed up.

Before: the id was ``robot:seq`` and the counter lived in the outbox file, so a deleted
outbox (or another working directory, or a new SD card) restarted at seq 1, the station
acknowledged the new records as duplicates and the robot deleted them; over serial the
station kept the old CLASS/SURVEY context ("larger sequence wins").
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require_binary
from telemetry_faults import wait_for

from leafscout.link.records import PlantRecord
from leafscout.robot.mqtt_link import MqttLink
from leafscout.robot.outbox import Outbox, default_state_dir, outbox_path
from leafscout.robot.serial_link import SerialLink
from leafscout.robot.telemetry import Telemetry
from leafscout.station.broker import Broker
from leafscout.station.receiver import Station

T0 = 1_780_000_000.0


def plants(n: int, start: int, label: str, index: int, survey: str, t0: float) -> list[PlantRecord]:
    return [PlantRecord("r1", survey, i, t0 + i * 0.5, label, index, 0.9, 3, row=1, metre=i * 0.1,
                        lat=48.0 + i * 1e-6, lon=11.0) for i in range(start, start + n)]


def _deliver(path: Path, make_link, records: list[PlantRecord]) -> str:
    """Send ``records`` through an outbox at ``path`` until the station acknowledged all; its outbox id."""
    outbox = Outbox(path)
    with Telemetry(outbox, [make_link(outbox)]).start() as sink:
        for r in records:
            sink.submit(r)
        assert sink.flush()
        wait_for(lambda: outbox.depth() == 0, 30, "the outbox to drain")
        return outbox.outbox_id


def _reset_survey(tmp_path: Path, st: Station, make_link) -> None:
    path = tmp_path / "state" / "outbox.db"
    path.parent.mkdir()
    first = _deliver(path, make_link, plants(40, 0, "Tomato___healthy", 0, "s1", T0))
    for f in path.parent.iterdir():  # the outbox is lost mid-survey (SD card swapped, file deleted)
        f.unlink()
    # the new outbox starts at seq 1 again, with another class table and a new survey origin
    second = _deliver(path, make_link, plants(40, 40, "Tomato___Late_blight", 0, "s1", T0 + 3600))
    assert first != second
    stored = {p.plant_id: p for p in st.db.plants("s1")}
    assert sorted(stored) == list(range(80)), "records of the new outbox were taken for duplicates"
    assert {stored[i].label for i in range(40)} == {"Tomato___healthy"}
    assert {stored[i].label for i in range(40, 80)} == {"Tomato___Late_blight"}, "old class context reused"
    assert stored[79].t == pytest.approx(T0 + 3600 + 79 * 0.5, abs=0.05), "old survey time origin reused"
    assert st.db.rejected().get("duplicate", 0) == 0


def test_outbox_reset_mid_survey_loses_nothing_over_mqtt(tmp_path, db_target):
    require_binary("mosquitto")
    with Broker(tmp_path / "broker", ["r1"]) as broker, Station(db_target, mqtt=broker.url("station")) as st:
        assert st.wait_connected(10)
        _reset_survey(tmp_path, st, lambda ob: MqttLink(broker.url("r1"), "r1", ob))


def test_outbox_reset_mid_survey_loses_nothing_over_serial(tmp_path, db_target):
    tty = str(tmp_path / "tty")
    with Station(db_target, serial=f"pty://{tty}") as st:
        assert st.wait_connected(5)
        _reset_survey(tmp_path, st, lambda ob: SerialLink(tty, "r1", ob))


def test_replayed_hello_of_an_old_outbox_cannot_take_over(tmp_path, db_target):
    """A HELLO is accepted once per (outbox id, seq): an old one played back changes nothing."""
    with Station(db_target, serial="loop://") as st:
        db = st.db
        assert db.serial_hello("r1", "a" * 32, 5)
        assert db.serial_hello("r1", "a" * 32, 5)  # retransmitted (our ACK was lost): acknowledged again
        assert not db.serial_hello("r1", "a" * 32, 4)
        assert db.serial_hello("r1", "b" * 32, 1)  # a new outbox: seqs start again
        assert not db.serial_hello("r1", "a" * 32, 5)  # replay of the old HELLO
        assert db.serial_boot("r1") == "b" * 32
        assert db.serial_hello("r1", "a" * 32, 9)  # the old card is back, with a newer HELLO
        assert db.serial_boot("r1") == "a" * 32


def test_outbox_lives_in_a_per_robot_state_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEAFSCOUT_STATE_DIR", str(tmp_path / "state"))
    assert default_state_dir("r1") == tmp_path / "state" / "r1"
    assert outbox_path("r1") == tmp_path / "state" / "r1" / "outbox.db"
    assert outbox_path("r1", tmp_path / "elsewhere") == tmp_path / "elsewhere" / "outbox.db"
    monkeypatch.delenv("LEAFSCOUT_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir("r1") == tmp_path / "xdg" / "leafscout" / "r1"
    assert not (tmp_path / "outbox.db").exists()
