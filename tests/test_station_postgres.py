"""PostgreSQL for a fleet: several receivers write one database at once, each record is stored
once, the dashboard's incremental reads miss nothing, and dashboards and reports read a replica.

Real PostgreSQL (``postgres_server`` in conftest), real Mosquitto. The suites that run on
both databases (receiver, isolation, identity, map, report) are parametrized with
``db_target``; what is here only exists on PostgreSQL.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import require_binary, require_postgres
from fastapi.testclient import TestClient
from telemetry_faults import wait_for

from leafscout.link.mqtt import topic
from leafscout.link.records import PlantRecord
from leafscout.station.broker import Broker
from leafscout.station.db import open_db
from leafscout.station.receiver import Station
from leafscout.station.report_cli import register
from leafscout.station.web.aggregates import SurveyAggregates
from leafscout.station.web.app import create_app
from leafscout.station.web.auth import add_user
from leafscout.station.web.sample_data import fill_survey

T0 = 1_780_000_000.0
OB = "00112233445566778899aabbccddeeff"
REPO = Path(__file__).resolve().parents[1]


def plant(i: int, robot_id: str = "r1", survey_id: str = "s1") -> PlantRecord:
    return PlantRecord(robot_id, survey_id, i, T0 + i, "Tomato___Late_blight" if i % 4 == 0 else "Tomato___healthy",
                       1 if i % 4 == 0 else 0, 0.9, 3, row=i % 5, metre=float(i))


def test_two_receivers_on_one_stream_with_duplicates_store_each_record_once(tmp_path, postgres_server):
    """Two gateways (two station processes' receivers, other MQTT client ids) both get every
    message of one robot, which also sends each record twice: 4 copies of each record arrive."""
    require_binary("mosquitto")
    url, n = postgres_server.database(), 400
    with Broker(tmp_path / "broker", ["r1"]) as broker, \
            Station(url, mqtt=broker.url("station"), client_id="gateway-a") as a, \
            Station(url, mqtt=broker.url("station"), client_id="gateway-b") as b:
        assert a.wait_connected(10) and b.wait_connected(10)
        robot = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="r1")
        robot.username_pw_set("r1", broker.passwords["r1"])
        robot.connect("127.0.0.1", broker.port)
        robot.loop_start()
        try:
            t = topic("r1", "plant")
            for copy in range(2):
                for i in range(n):
                    body = json.dumps({"id": f"r1:{OB}:{i + 1}", "record": plant(i).to_dict()}).encode()
                    robot.publish(t, body, qos=1)
            wait_for(lambda: a.db.record_count() >= n and a.db.rejected().get("duplicate", 0) >= 3 * n, 60,
                     "both receivers to handle all 4 copies")
        finally:
            robot.loop_stop()
            robot.disconnect()
        assert a.db.record_count() == n
        assert sorted(p.plant_id for p in a.db.plants("s1")) == list(range(n))
        assert a.mqtt.stored + b.mqtt.stored == n  # each record stored by exactly one receiver
        rejected = a.db.rejected()  # more than 3n only if the broker redelivered (a receiver's session dropped)
        assert set(rejected) == {"duplicate"} and rejected["duplicate"] >= 3 * n
        (survey,) = a.db.surveys()
        assert (survey.plants, survey.diseased) == (n, n // 4)


def test_incremental_reads_miss_no_record_while_receivers_write_at_once(postgres_server):
    """The dashboard reads ``rowid > last``; rows must become visible in rowid order even with
    concurrent writers (else a row numbered below ``last`` that commits late is never read)."""
    url = postgres_server.database()
    writers = [open_db(url) for _ in range(3)]
    per_writer, batch = 600, 20
    conn = writers[0].reader()
    live = SurveyAggregates()

    def write(k: int) -> None:
        for start in range(0, per_writer, batch):
            writers[k].insert_records([(f"r{k}:{OB}:{i + 1}", plant(i, f"r{k}", "s"), None)
                                       for i in range(start, start + batch)])

    threads = [threading.Thread(target=write, args=(k,)) for k in range(len(writers))]
    try:
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            live.refresh(conn)  # reads while the writers commit
        for th in threads:
            th.join()
        assert live.summary(conn, "s").totals.plants == writers[0].record_count() == 3 * per_writer
    finally:
        conn.close()
        for db in writers:
            db.close()


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_dashboard_and_report_read_from_a_streaming_replica(tmp_path, postgres_server):
    url = postgres_server.database()
    replica = postgres_server.replica()
    replica_url = replica.url(url.rsplit("/", 1)[1])
    db = open_db(url, read_target=replica_url)
    try:
        truth = fill_survey(db, "north", row_incidence=(0.1, 0.5), plants_per_row=40)
        wait_for(lambda: postgres_server.caught_up(replica), 20, "the replica to replay the primary's WAL")
        with contextlib.closing(db.reader()) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # pages really read the replica
        token = add_user(tmp_path / "users.json", "v", "viewer")
        auth = {"Authorization": "Basic " + base64.b64encode(f"v:{token}".encode()).decode()}
        with TestClient(create_app(db, tmp_path / "users.json")) as c:
            totals = c.get("/api/surveys/north/summary", headers=auth).json()["totals"]
            assert (totals["plants"], totals["diseased"]) == (truth.plants, truth.diseased)
            assert c.get("/surveys/north/plants.csv", headers=auth).text.count("\n") == truth.plants + 1
    finally:
        db.close()
    # leafscout report on the replica alone: no schema writes on a read-only standby.
    out = tmp_path / "out"
    assert _cli(["report", "--db", replica_url, "--survey", "north", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "plants.csv").open(encoding="utf-8")))
    assert len(rows) == truth.plants and sum(r["diseased"] == "1" for r in rows) == truth.diseased


def _station_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leafscout.cli", "station", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_passwords_stay_out_of_db_urls_and_unreachable_databases_fail_cleanly(tmp_path):
    proc = _station_cli("--serial", "loop://", "--insecure", "--db", "postgresql://station:hunter2@127.0.0.1:1/x")
    assert proc.returncode == 2 and "holds a password" in proc.stderr and "hunter2" not in proc.stderr
    assert _cli(["report", "--db", "postgresql://station:hunter2@127.0.0.1:1/x", "--survey", "s"]) == 2
    proc = _station_cli("--serial", "loop://", "--insecure", "--db", "postgresql://station@127.0.0.1:1/x")
    assert proc.returncode == 2 and "cannot open station database" in proc.stderr, proc.stderr


def test_connection_rows_behave_like_sqlite_rows(postgres_server):
    with open_db(postgres_server.database()) as db:
        db.insert_record(f"r1:{OB}:1", plant(4), b"\xff\xd8jpeg")
        with contextlib.closing(db.reader()) as conn:
            row = conn.execute("SELECT record_id, plant_id, diseased FROM plants").fetchone()
        assert row[1] == row["plant_id"] == 4 and dict(row) == {"record_id": f"r1:{OB}:1", "plant_id": 4,
                                                                 "diseased": 1}
        record_id, plant_id, diseased = row
        assert db.thumbnail(record_id) == b"\xff\xd8jpeg" and db.plants("s1")[0].has_thumbnail
        assert db.integrity_check() == "ok"


@pytest.mark.parametrize("text,expected", [
    ("SELECT a FROM t WHERE b = ? AND c LIKE '5%'", "SELECT a FROM t WHERE b = %s AND c LIKE '5%%'"),
    ("CREATE TABLE x (/*rowid*/ a REAL, b INTEGER, c BLOB)",
     "CREATE TABLE x (rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE, a DOUBLE PRECISION, b BIGINT, c BYTEA)"),
    ("SELECT group_concat(DISTINCT s.robot_id) FROM s", "SELECT string_agg(DISTINCT s.robot_id, ',') FROM s"),
])
def test_statements_are_translated_once_for_postgres(text, expected):
    from leafscout.station.sql import to_postgres

    assert to_postgres(text) == expected


def test_receivers_and_pages_reconnect_after_the_database_server_restarts(tmp_path):
    """A restart of PostgreSQL cuts every connection: the batch in flight fails (it stays
    unacknowledged, so the robot resends it), the next one reconnects; pages do too."""
    require_postgres()
    from leafscout.station.pg_server import PostgresServer

    with PostgresServer() as server:  # its own server: restarting the session's would disturb other tests
        db = open_db(server.database())
        token = add_user(tmp_path / "users.json", "v", "viewer")
        auth = {"Authorization": "Basic " + base64.b64encode(f"v:{token}".encode()).decode()}
        try:
            assert db.insert_records([(f"r1:{OB}:1", plant(0), None)]) == [True]
            with TestClient(create_app(db, tmp_path / "users.json"), raise_server_exceptions=False) as c:
                assert c.get("/api/surveys/s1/summary", headers=auth).json()["totals"]["plants"] == 1
                readers = len(c.app.state.station.readers._all)  # one per web worker thread used so far
                server.restart()
                batch = [(f"r1:{OB}:2", plant(1), None)]
                try:
                    stored = db.insert_records(batch)
                except db.errors:  # the connection was found cut: this batch is not acknowledged
                    stored = db.insert_records(batch)  # the robot's resend
                assert stored == [True]
                # A page on a cut read connection fails once (500); that worker then reconnects.
                failed = 0
                while (r := c.get("/api/surveys/s1/summary", headers=auth)).status_code != 200 and failed < readers:
                    failed += 1
                assert r.status_code == 200 and r.json()["totals"]["plants"] == 2
        finally:
            db.close()
