"""`make demo`: the whole system end to end, on built-in defaults, in a few minutes.

Each step runs the real `leafscout` command (printed before it runs, so you can repeat
it by hand): draw synthetic leaves (or use ``$LEAFSCOUT_DATA``), train, evaluate,
calibrate, export and verify a bundle, simulate a field from held-out leaves, then run
the robot over it with a serial link (pty pair) and MQTT (a local Mosquitto) into the
base station, and write the survey report. Output goes to ``demo_out/``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROBOT_ID = "robot-1"
SURVEY_ID = "demo"


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def leafscout(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one `leafscout` subcommand in a child process, echoing the command."""
    cmd = [sys.executable, "-m", "leafscout", *map(str, args)]
    print("$ leafscout " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    return subprocess.run(cmd, check=check)


def _wait_for_records(db: Path, expected: int, timeout: float) -> int:
    """Poll the station database until it holds ``expected`` plant records (or time runs out)."""
    from leafscout.station.db import open_db

    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline:
        if db.exists():
            with open_db(db) as station_db:
                stored = len(station_db.plants(SURVEY_ID))
            if stored >= expected:
                break
        time.sleep(0.5)  # the station is another process: nothing to wait on but its file
    return stored


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leafscout.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (replaced)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs on the demo data")
    parser.add_argument("--serve", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the dashboard running at the end (default: when run from a terminal)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.monotonic()

    data = os.environ.get("LEAFSCOUT_DATA")
    if data:
        _say(f"1/8 data: $LEAFSCOUT_DATA = {data}")
        data_dir = Path(data)
    else:
        _say("1/8 data: drawing synthetic leaves (set LEAFSCOUT_DATA=DIR to use a PlantVillage folder)")
        from leafscout.training.synthetic import generate_dataset

        data_dir = generate_dataset(out / "leaves", per_class=200, size=96, seed=0)
        print(f"synthetic leaves in {data_dir}")

    run = out / "run"
    _say("2/8 train the default BN model")
    leafscout("models")
    # The robot films leaves on soil, not on a studio backdrop: paste most training leaves on
    # random backgrounds (as the reference recipe) so the model cannot lean on the backdrop.
    leafscout("train", "--data", data_dir, "--model", "leafnet_bn", "--epochs", args.epochs, "--out", run,
              "--background-p", "0.5", "--no-progress")

    _say("3/8 evaluate on the held-out, leaf-grouped test split, then calibrate")
    leafscout("eval", run / "best.pt", "--data", data_dir, "--split", "test")
    leafscout("calibrate", run / "best.pt")

    bundle = out / "bundle"
    _say("4/8 fold BatchNorm, export ONNX fp32 + int8, parity gate; verify the bundle")
    # The int8 model is kept only if it passes its accuracy gate; the fp32 bundle always is.
    leafscout("export", run / "best.pt", "--out", bundle, "--int8", "--data", data_dir, check=False)
    if not (bundle / "manifest.json").is_file():
        raise SystemExit("export wrote no bundle: see its report above")
    leafscout("verify", bundle, "--data", data_dir)

    field = out / "field"
    _say("5/8 simulate a field from test-split leaves the model never trained on")
    leafscout("simulate", "--leaves", data_dir, "--split", run / "split.json", "--part", "test", "--out", field)

    _say("6/8 start Mosquitto and the base station (serial over a pty pair, MQTT on loopback)")
    from leafscout.station.broker import Broker

    broker = Broker(out / "mosquitto", robots=[ROBOT_ID]).start()
    keys = out / "keys"  # per-robot HMAC keys: the station keeps the directory, the robot its own file
    leafscout("keys", "new", ROBOT_ID, "--dir", keys)
    station_db = out / "station.db"
    users = out / "station_users.json"
    http_port = _free_port()
    serial_link = out / "serial-robot"
    viewer_password = "demo-viewer"
    subprocess.run(
        [sys.executable, "-m", "leafscout", "add-user", "viewer", "--role", "viewer", "--users", users,
         "--password-stdin"], input=viewer_password.encode(), check=True)
    # credentials from files, never on the command line (they would be readable in /proc)
    station_cmd = [
        sys.executable, "-m", "leafscout", "station", "--mqtt", broker.url("station", password=False),
        "--password-file", broker.password_file("station"), "--keys", keys,
        "--serial", f"pty://{serial_link}", "--db", station_db, "--robots", ROBOT_ID,
        "--http", f"127.0.0.1:{http_port}", "--users", users,
    ]
    print("$ leafscout " + " ".join(shlex.quote(str(a)) for a in station_cmd[3:]), flush=True)
    station = subprocess.Popen(list(map(str, station_cmd)))
    try:
        deadline = time.monotonic() + 20
        while not serial_link.exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the station creates the pty; nothing else to wait on
        if not serial_link.exists():
            raise RuntimeError("the station did not create its serial pty")

        _say("7/8 run the robot over the recording (camera + GPS log), sending over serial and MQTT")
        report = out / "robot_report.json"
        leafscout(
            "run", "--bundle", bundle, "--camera", field / "field.avi", "--gps", field / "gps.nmea",
            "--truth", field / "truth.json", "--report", report, "--db", out / "robot.db", "--survey", SURVEY_ID, "--robot-id", ROBOT_ID,
            "--serial", serial_link, "--mqtt", broker.url(ROBOT_ID, password=False),
            "--password-file", broker.password_file(ROBOT_ID), "--hmac-key-file", keys / f"{ROBOT_ID}.key",
            "--state-dir", out / "robot_state",
        )
        robot_report = json.loads(report.read_text())
        stored = _wait_for_records(station_db, robot_report["plants"], timeout=60)
        print(f"station stored {stored} of {robot_report['plants']} plant records")

        _say("8/8 survey report (HTML + CSV + farmOS GeoJSON)")
        leafscout("report", "--db", station_db, "--survey", SURVEY_ID, "--out", out / "report")
        truth = json.loads((field / "truth.json").read_text())
        print(f"\nplants counted {robot_report['plants']} (truth {len(truth['plants'])}), "
              f"diseased {robot_report['diseased']}, uncertain {robot_report['uncertain']}")
        print(f"report:     {out / 'report' / 'report.html'}")
        print(f"dashboard:  http://127.0.0.1:{http_port}/  (user 'viewer', password '{viewer_password}')")
        print(f"demo took {time.monotonic() - started:.0f} s")
        serve = sys.stdin.isatty() if args.serve is None else args.serve
        if serve:
            print("serving the dashboard; Ctrl+C to stop")
            try:
                station.wait()
            except KeyboardInterrupt:
                pass
    finally:
        station.send_signal(signal.SIGINT)
        try:
            station.wait(15)
        except subprocess.TimeoutExpired:
            station.kill()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
