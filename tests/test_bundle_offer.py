"""The station offers a bundle, the robot fetches it over signed HTTP and installs it between surveys.

Real parts throughout: Mosquitto on loopback (with the offer topic in its ACL), the station's
web app served by uvicorn on a free port, `leafscout station offer-bundle` and `leafscout
bundle fetch` through the CLI, and for the "during a run" case a real `leafscout run` process.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import require_binary
from telemetry_faults import wait_for
from test_bundle_install import _version, make_kit

from leafscout.cli import main
from leafscout.link.mqtt import BundleOffer, auth_header
from leafscout.robot.bundle_cli import EXIT_DEFERRED, EXIT_DOWNGRADE, EXIT_FETCH_FAILED, EXIT_REFUSED
from leafscout.robot.bundle_fetch import OFFER_NOTE, UPDATE_STATUS, update_from_offer
from leafscout.robot.bundle_store import BundleStore
from leafscout.robot.service_cli import unit_text
from leafscout.station.broker import Broker, free_port
from leafscout.station.bundle_offer import OfferError, OfferStore, announce
from leafscout.station.keys import KeyRing, new_key
from leafscout.station.web.app import create_app
from leafscout.station.web.bundles import BundleOffers
from leafscout.station.web.server import WebServer

# What docs/station.md tells the operator to add to the broker's ACL.
OFFER_ACL = "\nuser station\ntopic write leafscout/+/offer\n\npattern read leafscout/%u/offer\n"


@pytest.fixture(scope="module")
def kit(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_kit(tiny_bundle, tmp_path_factory.mktemp("offer"))


@pytest.fixture()
def site(tmp_path: Path, kit: dict):
    """Broker, keys for r1 and r2, the station's web app serving --offers, and r1's store with v1."""
    require_binary("mosquitto")
    require_binary("mosquitto_passwd")
    broker = Broker(tmp_path / "broker", ["r1", "r2"])
    with open(broker.dir / "acl", "a") as f:
        f.write(OFFER_ACL)
    keys = tmp_path / "keys"
    for robot in ("r1", "r2"):
        new_key(keys, robot)
    offers = tmp_path / "offers"
    app = create_app(tmp_path / "station.db", {},
                     bundle_offers=BundleOffers(OfferStore(offers), KeyRing.from_dir(keys)))
    store = tmp_path / "r1" / "bundles"
    BundleStore(store).install(kit["v1"], public_key=kit["pub"].read_bytes())
    with broker, WebServer(app, "127.0.0.1", 0) as web:
        yield {"broker": broker, "keys": keys, "offers": offers, "url": web.url, "store": store,
               "state": tmp_path / "r1" / "state", "tmp": tmp_path}


def offer(site: dict, bundle: Path, *extra: str) -> int:
    b = site["broker"]
    return main(["station", "offer-bundle", str(bundle), "--mqtt", b.url("station", password=False),
                 "--password-file", str(b.password_file("station")), "--keys", str(site["keys"]),
                 "--offers", str(site["offers"]), "--url", site["url"], *extra])


def fetch(site: dict, kit: dict, *extra: str, key: Path | None = None) -> int:
    b = site["broker"]
    return main(["bundle", "fetch", "--pubkey", str(kit["pub"]), "--bundles", str(site["store"]), "--robot-id", "r1",
                 "--mqtt", b.url("r1", password=False), "--password-file", str(b.password_file("r1")),
                 "--hmac-key-file", str(key or site["keys"] / "r1.key"), "--state-dir", str(site["state"]), *extra])


def current(site: dict) -> str:
    return BundleStore(site["store"]).current.name


def update_status(site: dict) -> dict:
    return json.loads((site["state"] / UPDATE_STATUS).read_text())


def test_offer_is_fetched_and_installed(site: dict, kit: dict, capsys) -> None:
    assert offer(site, kit["v2"], "--pubkey", str(kit["pub"])) == 0
    assert fetch(site, kit) == 0
    store = BundleStore(site["store"])
    assert store.current.name == _version(kit["v2"]) and store.previous.name == _version(kit["v1"])
    assert update_status(site)["state"] == "installed"
    # The next start (the service's ExecStartPre reads robot.toml): already current, nothing downloaded.
    b = site["broker"]
    config = site["tmp"] / "robot.toml"
    config.write_text(f'[mqtt]\nurl = "{b.url("r1", password=False)}"\npassword_file = "{b.password_file("r1")}"\n'
                      f'hmac_key_file = "{site["keys"] / "r1.key"}"\nstate_dir = "{site["state"]}"\n'
                      f'[bundle]\npath = "{site["store"]}"\n[survey]\nid = "s1"\nrobot_id = "r1"\n')
    assert main(["bundle", "fetch", "--config", str(config), "--pubkey", str(kit["pub"])]) == 0
    assert update_status(site)["state"] == "up-to-date"
    capsys.readouterr()
    assert main(["bundle", "show", "--bundles", str(site["store"]), "--state-dir", str(site["state"])]) == 0
    assert "last fetch: up-to-date" in capsys.readouterr().out
    assert not [p for p in site["store"].iterdir() if p.name.startswith(".fetch")]  # no download left behind


def test_bad_signature_is_refused_and_the_old_bundle_stays(site: dict, kit: dict, capsys) -> None:
    # A station that checks the signature does not even offer it ...
    assert offer(site, kit["forged"], "--pubkey", str(kit["pub"])) == 2
    assert "does not verify" in capsys.readouterr().err
    assert fetch(site, kit, "--wait", "1") == 0 and update_status(site)["state"] == "no-offer"
    # ... and when one offers it anyway (no --pubkey there), the robot refuses it.
    assert offer(site, kit["forged"]) == 0
    assert fetch(site, kit) == EXIT_REFUSED
    status = update_status(site)
    assert status["state"] == "refused" and "does not verify" in status["detail"]
    assert current(site) == _version(kit["v1"]) and BundleStore(site["store"]).previous is None


def test_older_version_is_refused(site: dict, kit: dict) -> None:
    BundleStore(site["store"]).install(kit["v2"], public_key=kit["pub"].read_bytes())
    assert offer(site, kit["v1"], "--pubkey", str(kit["pub"])) == 0
    assert fetch(site, kit) == EXIT_DOWNGRADE
    assert update_status(site)["state"] == "downgrade" and current(site) == _version(kit["v2"])


def _get(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_downloads_need_the_robots_own_key(site: dict, kit: dict) -> None:
    assert offer(site, kit["v2"], "--robots", "r1") == 0
    sha = next(p.name for p in site["offers"].iterdir() if not p.name.startswith("."))
    path = f"/robot/bundles/{sha}/model.onnx"
    url = site["url"] + path
    r1, r2 = ((site["keys"] / f"{r}.key").read_bytes().strip() for r in ("r1", "r2"))
    assert _get(url, {"Authorization": auth_header("r1", r1, "GET", path)}) == 200
    assert _get(url) == 401  # no credentials
    assert _get(url, {"Authorization": "Basic cjE6cjEtc2VjcmV0"}) == 401  # a dashboard-style login
    assert _get(url, {"Authorization": auth_header("r1", r2, "GET", path)}) == 401  # r2's key speaking for r1
    assert _get(url, {"Authorization": auth_header("r1", r1, "GET", path, time.time() - 3600)}) == 401  # replayed
    assert _get(url, {"Authorization": auth_header("r1", r1, "GET", "/robot/bundles/x")}) == 401  # another path
    assert _get(url, {"Authorization": auth_header("r2", r2, "GET", path)}) == 403  # not offered to r2
    for name in ("offer.json", "..%2F..%2Fkeys%2Fr1.key", "%2E%2E"):
        p = f"/robot/bundles/{sha}/{name}"
        assert _get(site["url"] + p, {"Authorization": auth_header("r1", r1, "GET", p)}) == 404
    # The robot with a wrong key: the download is refused, the bundle stays, the status says why.
    wrong = site["tmp"] / "wrong.key"
    wrong.write_text("0" * 64)
    assert fetch(site, kit, key=wrong) == EXIT_FETCH_FAILED
    assert current(site) == _version(kit["v1"])
    status = update_status(site)
    assert status["state"] == "failed"


def test_offer_during_a_run_is_installed_after_it(site: dict, kit: dict) -> None:
    b, state = site["broker"], site["state"]
    camera = f"rtsp://127.0.0.1:{free_port()}/cam"  # a camera that is not up: the survey runs, waiting for it
    run = subprocess.Popen(
        [sys.executable, "-m", "leafscout", "run", "--camera", camera, "--bundle", str(site["store"]),
         "--robot-id", "r1", "--survey", "s1", "--mqtt", b.url("r1", password=False),
         "--password-file", str(b.password_file("r1")), "--hmac-key-file", str(site["keys"] / "r1.key"),
         "--state-dir", str(state), "--status-file", str(state / "status.json"), "--db", str(state / "survey.db"),
         "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _running(state / "status.json", run.pid), 120, "the run's status file to say running")
        wait_for(lambda: _mqtt_up(state / "status.json"), 60, "the run's MQTT link")
        assert offer(site, kit["v2"], "--pubkey", str(kit["pub"])) == 0
        wait_for(lambda: (state / OFFER_NOTE).is_file(), 30, "the run to note the offer")
        assert fetch(site, kit) == EXIT_DEFERRED  # the survey keeps its model
        assert update_status(site)["state"] == "deferred" and current(site) == _version(kit["v1"])
    finally:
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    assert "offers bundle" in out  # the run logged the offer it heard
    assert fetch(site, kit, "--wait", "0.5") == 0  # the next start (ExecStartPre) installs it
    assert current(site) == _version(kit["v2"])


def _running(path: Path, pid: int) -> bool:
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return status.get("state") == "running" and status.get("pid") == pid


def _mqtt_up(path: Path) -> bool:
    try:
        return (json.loads(path.read_text()).get("links") or {}).get("mqtt") == "up"
    except (OSError, ValueError):
        return False


def test_a_survey_that_did_not_end_keeps_its_model(tmp_path: Path, kit: dict) -> None:
    """A run that crashed (systemd restarts it and it continues the survey) defers the update;
    a new survey does not wait for it. No station needed: the decision comes before any download."""
    store = BundleStore(tmp_path / "bundles")
    store.install(kit["v1"], public_key=kit["pub"].read_bytes())
    status = tmp_path / "status.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    status.write_text(json.dumps({"state": "running", "survey_id": "s1", "pid": int(dead.stdout)}))
    unreachable = BundleOffer("2026-12-02T10:00:00+00:00", "0" * 64,
                              f"http://127.0.0.1:{free_port()}/robot/bundles/{'0' * 64}/", time.time())
    common = {"robot_id": "r1", "key": b"k" * 32, "public_key": kit["pub"].read_bytes(), "run_status": status}
    assert update_from_offer(unreachable, store, survey_id="s1", **common).state == "deferred"
    tried = update_from_offer(unreachable, store, survey_id="s2", **common)  # a new survey: it tries, and fails
    assert tried.state == "failed" and "cannot download" in tried.detail
    assert store.current.name == _version(kit["v1"])


def test_the_service_fetches_before_each_start(tmp_path: Path) -> None:
    unit = unit_text(tmp_path / "robot.toml", user=True, update_pubkey=tmp_path / "release.pub")
    pre = next(ln for ln in unit.splitlines() if ln.startswith("ExecStartPre="))
    assert pre.startswith("ExecStartPre=-")  # a failed fetch never keeps the survey from starting
    assert f"bundle fetch --config {tmp_path / 'robot.toml'} --pubkey {tmp_path / 'release.pub'}" in pre
    assert "ExecStartPre" not in unit_text(tmp_path / "robot.toml", user=True)


def test_a_broker_that_drops_the_offer_is_an_error(tmp_path: Path, kit: dict) -> None:
    """Mosquitto acknowledges a publish its ACL forbids and drops it: offer-bundle reads its offers back."""
    require_binary("mosquitto")
    require_binary("mosquitto_passwd")
    broker = Broker(tmp_path / "broker", ["r1"])
    acl = broker.dir / "acl"
    acl.write_text("".join(ln for ln in acl.read_text().splitlines(keepends=True) if "offer" not in ln))
    new_key(tmp_path / "keys", "r1")
    stored = OfferStore(tmp_path / "offers").add(kit["v2"], robots=["r1"], public_key=kit["pub"].read_bytes())
    with broker, pytest.raises(OfferError, match="ACL"):
        announce(stored, base_url="http://127.0.0.1:1", mqtt_url=broker.url("station"), password=None,
                 keys=KeyRing.from_dir(tmp_path / "keys"), timeout_s=2.0)


def _up(url: str) -> bool:
    try:
        return _get(url) == 401
    except urllib.error.URLError:  # not listening yet
        return False


def test_the_station_command_serves_its_offers(site: dict, kit: dict, tmp_path: Path) -> None:
    """`leafscout station --http ... --offers DIR --keys DIR`: the running station serves what it offered."""
    assert offer(site, kit["v2"], "--robots", "r1") == 0
    sha = next(p.name for p in site["offers"].iterdir() if not p.name.startswith("."))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "leafscout", "station", "--serial", f"pty://{tmp_path / 'tty'}",
                             "--db", str(tmp_path / "cli.db"), "--keys", str(site["keys"]), "--insecure",
                             "--http", f"127.0.0.1:{port}", "--offers", str(site["offers"]),
                             "--users", str(tmp_path / "users.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        path = f"/robot/bundles/{sha}/manifest.json"
        url = f"http://127.0.0.1:{port}{path}"
        r1 = (site["keys"] / "r1.key").read_bytes().strip()
        wait_for(lambda: proc.poll() is not None or _up(f"http://127.0.0.1:{port}/robot/bundles/x/y"), 60,
                 "the station's web server")
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert _get(url, {"Authorization": auth_header("r1", r1, "GET", path)}) == 200
        assert _get(url) == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
