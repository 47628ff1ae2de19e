"""NMEA over a real pty pair, recorded NMEA logs, and field geometry."""
from __future__ import annotations

import os
import tty
from pathlib import Path

import pytest

from robot.camera import Frame
from robot.gps import FieldGeometry, GpsError, GpsPosition, GpsReader, NmeaLog, NmeaParser, format_fix

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
