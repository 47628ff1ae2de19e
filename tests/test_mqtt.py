"""MQTT link against a real Mosquitto: delivery, outages, kill -9, credentials."""
from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from conftest import require_binary
from telemetry_faults import wait_for

from leafscout.link.mqtt import MqttLinkError, parse_mqtt_url, seal, topic
from leafscout.link.records import PlantRecord
from leafscout.robot.mqtt_link import MqttLink
from leafscout.robot.outbox import Outbox
from leafscout.robot.telemetry import Telemetry, synthetic_records
from leafscout.station.broker import Broker
from leafscout.station.receiver import Station

T0 = 1_780_000_000.0
JPEG = b"\xff\xd8\xff\xe0" + b"thumb" * 20


@pytest.fixture()
def broker(tmp_path):
    require_binary("mosquitto")
    require_binary("mosquitto_passwd")
    with Broker(tmp_path / "broker", ["r1", "r2"]) as b:
        yield b


def plants(n: int, start: int = 0) -> list[PlantRecord]:
    return [PlantRecord("r1", "s1", i, T0 + i * 0.1, "Tomato___Late_blight", 2, 0.8, 4, row=i // 100,
                        metre=(i % 100) * 0.3) for i in range(start, start + n)]


def robot(tmp_path, broker: Broker, **kw) -> Telemetry:
    outbox = Outbox(tmp_path / "outbox.db")
    return Telemetry(outbox, [MqttLink(broker.url("r1"), "r1", outbox, **kw)])


def test_records_and_thumbnails_arrive_once(tmp_path, broker):
    with Station(tmp_path / "s.db", mqtt=broker.url("station")) as st:
        assert st.wait_connected(10)
        with robot(tmp_path, broker).start() as sink:
            recs = list(synthetic_records("r1", "s1", 500, t0=T0))
            for i, r in enumerate(recs):
                sink.submit(r, JPEG if i == 0 else None)
            assert sink.flush()
            wait_for(lambda: sink.outbox.depth() == 0, 20, "the outbox to drain")
        assert st.db.record_count("plant") == 500 and st.db.record_count("heartbeat") == 10
        latest = {}
        for r in recs:
            if r.kind == "row":
                latest[r.row] = r.plants
        assert {r.row: r.plants for r in st.db.rows("s1")} == latest
        first = st.db.plants("s1")[0]
        assert first.has_thumbnail and st.db.thumbnail(first.record_id) == JPEG
        wait_for(lambda: st.db.robots()[0].link_status == "offline", 10, "the robot's offline status")
        assert st.db.rejected().get("duplicate", 0) == 0


def test_outage_backlog_drains_in_order_without_loss_or_duplicates(tmp_path, broker):
    """The network is down while 3,000 records queue up (an hour at 10/s in `make bench`)."""
    n = 3000
    with Station(tmp_path / "s.db", mqtt=broker.url("station")) as st:
        assert st.wait_connected(10)
        with robot(tmp_path, broker).start() as sink:
            link = sink.links[0]
            assert link.connected.wait(10)
            broker.stop()  # graceful: the broker keeps the station's session
            for r in plants(n):
                sink.submit(r)
            assert sink.flush(30) and sink.outbox.depth() == n
            broker.start()
            assert link.connected.wait(15)
            wait_for(lambda: sink.outbox.depth() == 0, 60, "the backlog to drain")
        wait_for(lambda: st.db.record_count() == n, 10, "every record at the station")
        stored = st.db.plants("s1")
        arrival = [int(r[0].split(":")[2]) for r in st.db._all("SELECT record_id FROM received ORDER BY rowid")]
    assert sorted(p.plant_id for p in stored) == list(range(n))  # none lost, none twice
    assert arrival == sorted(arrival), "the backlog did not drain in order"  # drain rate: make bench


def test_broker_killed_mid_burst_loses_nothing(tmp_path, broker):
    n = 4000
    with Station(tmp_path / "s.db", mqtt=broker.url("station")) as st:
        assert st.wait_connected(10)
        with robot(tmp_path, broker, ack_timeout=3.0).start() as sink:
            for r in plants(n):
                sink.submit(r)
            assert sink.flush()
            wait_for(lambda: st.db.record_count() > n // 4, 30, "the burst to be under way")
            broker.kill()  # kill -9 in the middle of the burst
            at_kill = st.db.record_count()
            broker.start()
            wait_for(lambda: sink.outbox.depth() == 0, 90, "the outbox to drain after the restart")
        wait_for(lambda: st.db.record_count() == n, 10, "every record at the station")
        ids = sorted(p.plant_id for p in st.db.plants("s1"))
    assert at_kill < n, "the kill came too late to test anything"
    assert ids == list(range(n))


def test_per_robot_credentials_and_topics(tmp_path, broker):
    with Station(tmp_path / "s.db", mqtt=broker.url("station")) as st:
        assert st.wait_connected(10)
        # r2 tries to publish as r1: the broker's ACL drops it silently
        spoof = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spoof")
        spoof.username_pw_set("r2", broker.passwords["r2"])
        spoof.connect("127.0.0.1", broker.port)
        spoof.loop_start()
        t = topic("r1", "plant")
        body = {"id": "r1:1", "record": plants(1)[0].to_dict()}
        spoof.publish(t, seal(t, body, None), qos=1).wait_for_publish(5)
        # a wrong password never gets a session
        bad = MqttLink(broker.url("r1").replace("r1-secret", "wrong"), "r1", Outbox(tmp_path / "o2.db"))
        bad.start()
        # r1 with its own credentials: delivered
        with robot(tmp_path, broker).start() as sink:
            sink.submit(plants(1, start=7)[0])
            wait_for(lambda: st.db.record_count() == 1, 10, "r1's own record")
        assert not bad.connected.wait(1.0)
        bad.close()
        bad.outbox.close()
        spoof.loop_stop()
        spoof.disconnect()
        assert [p.plant_id for p in st.db.plants("s1")] == [7]


def test_tls_with_a_private_ca(tmp_path):
    require_binary("mosquitto")
    require_binary("openssl")
    with Broker(tmp_path / "broker", ["r1"], tls=True) as broker:
        assert broker.url("r1").startswith("mqtts://")
        with Station(tmp_path / "s.db", mqtt=broker.url("station")) as st:
            assert st.wait_connected(10)
            with robot(tmp_path, broker).start() as sink:
                for r in plants(10):
                    sink.submit(r)
                assert sink.flush()
                wait_for(lambda: sink.outbox.depth() == 0, 20, "delivery over TLS")
            assert st.db.record_count() == 10
        # without the CA the robot refuses the broker's certificate
        insecure = MqttLink(broker.url("r1").split("?")[0], "r1", Outbox(tmp_path / "o3.db"))
        insecure.start()
        assert not insecure.connected.wait(1.5)
        insecure.close()
        insecure.outbox.close()


def test_bad_urls_are_named():
    with pytest.raises(MqttLinkError, match="scheme must be mqtt:// or mqtts://"):
        parse_mqtt_url("http://h:1")
    with pytest.raises(MqttLinkError, match="has no host"):
        parse_mqtt_url("mqtt://")
    s = parse_mqtt_url("mqtts://u:p%40ss@h?ca=/ca.pem")
    assert (s.host, s.port, s.username, s.password, s.tls, s.ca_file) == ("h", 8883, "u", "p@ss", True, "/ca.pem")


def test_passwords_never_in_urls_that_are_printed_or_logged(tmp_path, capsys):
    """Before: passwords went on the command line and were echoed in errors and a traceback."""
    from leafscout.cli import main
    from leafscout.link.mqtt import redact_url

    assert redact_url("mqtt://r1:s3cret@h:1883") == "mqtt://r1:***@h:1883"
    assert redact_url("mqtts://r1:s3cret@h?ca=/c.pem") == "mqtts://r1:***@h?ca=/c.pem"
    assert redact_url("mqtt://r1@h:1883") == "mqtt://r1@h:1883"
    with pytest.raises(MqttLinkError) as e:
        parse_mqtt_url("mqtt://r1:s3cret@h:notaport")
    assert "s3cret" not in str(e.value)
    rc = main(["run", "--camera", "sim:rows=1,length=1", "--threads", "1",
               "--mqtt", "mqtt://r1:s3cret@127.0.0.1:1", "--robot-id", "r1", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "holds a password" in err and "s3cret" not in err
    assert parse_mqtt_url("mqtt://r1@h", password="from-file").password == "from-file"
