"""NMEA over a real pty pair, recorded NMEA logs, and field geometry."""
from __future__ import annotations

import os
import tty
from pathlib import Path

import pytest

from leafscout.robot.camera import Frame
from leafscout.robot.gps import FieldGeometry, GpsError, GpsPosition, GpsReader, NmeaLog, NmeaParser, format_fix

T0 = 1780300800.0  # 2026-06-01T08:00:00Z


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_reads_fixes_over_a_pty_and_counts_bad_lines(pty_pair) -> None:
    master, port = pty_pair
    good = format_fix(52.123456, -1.654321, T0 + 3.5)
    corrupted = good[0][:-2] + ("00" if not good[0].endswith("00") else "11")  # wrong checksum
    with GpsReader(port, baudrate=9600) as gps:
        os.write(master, b"\x00\xffnoise that is not NMEA\r\n$GPXXX,garbage*ZZ\r\n")
        os.write(master, (corrupted + "\r\n").encode())
        os.write(master, "".join(s + "\r\n" for s in good).encode())
        fix = gps.wait_for_fix(timeout=5)
        assert fix.lat == pytest.approx(52.123456, abs=1e-6) and fix.lon == pytest.approx(-1.654321, abs=1e-6)
        assert fix.t == pytest.approx(T0 + 3.5, abs=0.01)
        later = format_fix(52.2, -1.7, T0 + 4.0)
        os.write(master, "".join(s + "\r\n" for s in later).encode())
        newer = gps.wait_for_fix(timeout=5, newer_than=fix)
        while newer.lat != pytest.approx(52.2, abs=1e-6):  # the GGA of the first pair may come first
            newer = gps.wait_for_fix(timeout=5, newer_than=newer)
        assert gps.latest().lat == pytest.approx(52.2, abs=1e-6)
    c = gps.counters
    assert c.checksum_errors == 1 and c.garbage >= 1 and c.fixes >= 3


def test_no_fix_within_timeout_is_a_clear_error(pty_pair) -> None:
    _, port = pty_pair
    with GpsReader(port) as gps, pytest.raises(GpsError, match="no GPS fix"):
        gps.wait_for_fix(timeout=0.2)


def test_missing_port_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GpsError, match="cannot open GPS port '/dev/ttyNOPE9'"):
        GpsReader("/dev/ttyNOPE9").start()


def test_receiver_without_fix_is_not_a_position() -> None:
    import pynmea2

    void = str(pynmea2.RMC("GP", "RMC", ("080000.00", "V", "", "", "", "", "", "", "010626", "", "")))
    p = NmeaParser()
    assert p.feed(void) is None
    assert p.counters.no_fix == 1 and p.counters.checksum_errors == 0


def test_recorded_log_is_interpolated_on_stream_time(tmp_path: Path) -> None:
    log = tmp_path / "gps.nmea"
    lines = format_fix(48.0, 11.0, T0) + format_fix(48.001, 11.002, T0 + 1.0)
    log.write_text("\r\n".join(["junk"] + lines) + "\r\n")
    nmea = NmeaLog(log)
    mid = nmea.at(0.5)
    assert mid.lat == pytest.approx(48.0005, abs=1e-6) and mid.lon == pytest.approx(11.001, abs=1e-6)
    assert mid.t == pytest.approx(T0 + 0.5, abs=0.01)
    assert nmea.counters.garbage == 1


@pytest.mark.parametrize("heading", [0.0, 90.0, 137.5, 270.0])
def test_field_geometry_maps_latlon_to_row_and_metre(heading: float, tmp_path: Path) -> None:
    field = FieldGeometry((48.1, 11.5), heading, 0.75, rows=10, row_length_m=50.0)
    for row, metre in [(0, 0.0), (3, 12.5), (9, 49.0)]:
        lat, lon = field.to_latlon(row, metre)
        got_row, got_metre = field.locate(lat, lon)
        assert got_row == row and got_metre == pytest.approx(metre, abs=1e-3)
    assert field.locate(*field.to_latlon(12, 1.0))[0] is None  # beyond the last row
    path = tmp_path / "field.json"
    path.write_text(__import__("json").dumps(field.to_json()))
    assert FieldGeometry.load(path) == field


def test_gps_position_gives_row_and_metre_per_frame(tmp_path: Path) -> None:
    field = FieldGeometry((48.0, 11.0), 90.0, 1.5, rows=2, row_length_m=10.0)
    lines = []
    for i in range(11):
        lines += format_fix(*field.to_latlon(1, float(i)), T0 + i)
    (tmp_path / "gps.nmea").write_text("\r\n".join(lines) + "\r\n")
    pos = GpsPosition(NmeaLog(tmp_path / "gps.nmea"), field).locate(Frame(None, 25, 2.5))
    assert pos.row == 1 and pos.metre == pytest.approx(2.5, abs=0.01) and pos.t == pytest.approx(T0 + 2.5, abs=0.01)


# -- stale fixes and dropouts --------------------------------------------------------------
def _send(master: int, lat: float, lon: float, t: float) -> None:
    os.write(master, "".join(s + "\r\n" for s in format_fix(lat, lon, t)).encode())


def test_live_dropout_is_flagged_stale_then_interpolated_when_fixes_return(pty_pair) -> None:
    import time

    from leafscout.robot.gps import FIX, INTERPOLATED, NO_FIX, STALE

    master, port = pty_pair
    field = FieldGeometry((48.0, 11.0), 90.0, 1.5, rows=2, row_length_m=10.0)
    with GpsReader(port) as gps:
        assert gps.baudrate == 115200  # 10 Hz GGA+RMC does not fit in 9600 baud
        where = GpsPosition(gps, field, max_age_s=0.05)
        assert where.locate(Frame(None, 0, time.time())).fix == NO_FIX  # nothing received yet
        _send(master, *field.to_latlon(1, 1.0), T0)
        first = gps.wait_for_fix(timeout=5)
        while first.quality != 4:  # RMC first (quality unknown yet), then GGA: RTK fixed
            first = gps.wait_for_fix(timeout=5, newer_than=first)
        fresh = where.locate(Frame(None, 1, time.time()))
        if fresh.fix == FIX:  # on a loaded machine the fix may already be older than 50 ms: then stale
            assert fresh.row == 1 and fresh.quality == 4 and fresh.age_s <= 0.05
        deadline = time.monotonic() + 10
        while (lost := where.locate(Frame(None, 2, time.time()))).fix != STALE:  # the receiver went quiet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert lost.lat is None and lost.row is None and lost.age_s >= 0.05 and lost.quality == 4
        assert where.fill(lost) is None  # the dropout goes on: nothing to interpolate from yet
        _send(master, *field.to_latlon(1, 3.0), T0 + 2.0)
        newer = gps.wait_for_fix(timeout=5, newer_than=first)
        while newer.t == first.t:
            newer = gps.wait_for_fix(timeout=5, newer_than=newer)
        filled = where.fill(lost)
    assert filled.fix == INTERPOLATED and filled.row == 1 and 1.0 <= filled.metre <= 3.0


def test_recorded_dropout_flags_the_records(tmp_path: Path) -> None:
    """A 2 s gap in a recorded NMEA log: plants seen in it are stored interpolated, the others with a fix."""
    import sqlite3

    from leafscout.cli import main
    from leafscout.robot.simulate import FieldConfig, simulate_run

    run = simulate_run(tmp_path / "field", FieldConfig(rows=1, row_length_m=4.0, lines=1, fps=20.0, seed=2))
    lines = (run / "gps.nmea").read_text().splitlines()
    start = NmeaLog(run / "gps.nmea").start
    parser = NmeaParser()
    kept = [ln for ln in lines if (f := parser.feed(ln)) is None or not 1.0 < f.t - start < 3.0]
    assert len(kept) < len(lines)
    (run / "gps.nmea").write_text("\r\n".join(kept) + "\r\n")
    report = tmp_path / "report.json"
    assert main(["run", "--camera", str(run / "field.avi"), "--gps", str(run / "gps.nmea"), "--db",
                 str(tmp_path / "survey.db"), "--report", str(report), "--threads", "1"]) == 0
    with sqlite3.connect(tmp_path / "survey.db") as db:
        plants = db.execute("SELECT t, fix, fix_quality, row, lat FROM plants ORDER BY plant_id").fetchall()
    by_fix = __import__("json").loads(report.read_text())["gps"]["plants_by_fix"]
    assert by_fix["interpolated"] >= 1 and by_fix["fix"] >= 1 and sum(by_fix.values()) == len(plants)
    for t, fix, quality, row, lat in plants:
        assert quality == 4 and row == 0 and lat is not None
        gap = 1.5 <= t - start <= 2.5
        assert fix == ("interpolated" if gap else "fix") or (1.0 < t - start < 3.0)  # edges: either


def test_live_plants_counted_in_a_dropout_wait_for_the_fixes_around_them(pty_pair) -> None:
    """The runtime holds plants whose position was stale, in order, and sends them interpolated once
    the GPS is back; plants with a fix behind them wait too (plant ids stay in order)."""
    import time

    from leafscout.link.records import PlantRecord
    from leafscout.robot.gps import FIX, INTERPOLATED, STALE
    from leafscout.robot.runtime import Runtime

    master, port = pty_pair
    field = FieldGeometry((48.0, 11.0), 90.0, 1.5, rows=2, row_length_m=10.0)
    with GpsReader(port) as gps:
        where = GpsPosition(gps, field, max_age_s=0.05)
        runtime = Runtime(None, None, None, positions=where)  # only the counting path is used here
        _send(master, *field.to_latlon(0, 1.0), T0)
        first = gps.wait_for_fix(timeout=5)
        now = time.time()

        def plant(i: int, fix: str, t: float = now) -> tuple[PlantRecord, None]:
            return PlantRecord("robot-1", "s", i, t, "Leaf___healthy", 0, 0.9, 5, fix=fix), None

        assert runtime._positioned([plant(0, STALE)]) == []  # held: the GPS has not come back
        assert runtime._positioned([plant(1, FIX)]) == []  # behind it, in order
        _send(master, *field.to_latlon(0, 3.0), T0 + 2.0)
        newer = gps.wait_for_fix(timeout=5, newer_than=first)
        while newer.t == first.t:
            newer = gps.wait_for_fix(timeout=5, newer_than=newer)
        out = runtime._positioned([])
    assert [r.plant_id for r, _ in out] == [0, 1]
    filled = out[0][0]
    assert filled.fix == INTERPOLATED and filled.row == 0 and 0.99 <= filled.metre <= 3.01 and filled.lat is not None
    assert out[1][0].fix == FIX and runtime.fix_counts == {INTERPOLATED: 1, FIX: 1}
    # A dropout the GPS never comes back from: released flagged at the end of the run.
    assert runtime._positioned([plant(2, STALE, time.time())]) == []  # after the last fix
    assert [r.fix for r, _ in runtime._positioned([], final=True)] == [STALE]
