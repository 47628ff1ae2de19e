"""`leafscout service install` (a systemd unit for the robot loop) and `leafscout status` (what it is doing)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

__all__ = ["register", "unit_text", "UNIT_NAME"]

UNIT_NAME = "leafscout-robot.service"
# `leafscout status` exit codes (docs/robot.md)
STATUS_OK, STATUS_DEGRADED, STATUS_MISSING = 0, 1, 2
STALE_AFTER_S = 30.0  # a running robot's status file not updated for this long: the loop hangs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("service", help="run the robot as a supervised systemd service",
                              description="Write a systemd unit that runs `leafscout run --config FILE`: "
                              "Type=notify (ready once the loop runs), a watchdog the loop's heartbeats feed, "
                              "restart on failure.")
    actions = p.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    inst = actions.add_parser("install", help=f"write {UNIT_NAME} for a robot.toml")
    inst.add_argument("--config", type=Path, required=True, metavar="FILE", help="the robot.toml the service runs")
    inst.add_argument("--user", action="store_true",
                      help="a user unit (~/.config/systemd/user) instead of a system one (/etc/systemd/system)")
    inst.add_argument("--unit-dir", type=Path, default=None, help="write the unit here instead")
    inst.add_argument("--update-pubkey", type=Path, default=None, metavar="KEY",
                      help="install the bundle the station offers before each start (ExecStartPre=leafscout bundle "
                      "fetch --pubkey KEY): signed with this Ed25519 public key, between surveys, never mid-run")
    inst.add_argument("--watchdog-sec", type=int, default=30,
                      help="systemd restarts the service when the loop sends no heartbeat for this long (default 30)")
    inst.set_defaults(func=_install)

    p = subparsers.add_parser("status", help="the running robot: camera, GPS, links, queue, last record, bundle",
                              description="Read the status file the robot loop keeps current (status.json in the "
                              f"state directory). Exit {STATUS_OK} ok, {STATUS_DEGRADED} degraded, stopped or not "
                              f"updating, {STATUS_MISSING} no status file.")
    p.add_argument("--status-file", type=Path, default=None, help="the status file (default: the robot's)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="the robot.toml the robot runs with: its robot_id and state_dir locate the status file")
    p.add_argument("--robot-id", default=None, help="the robot whose state directory holds it (default robot-1)")
    p.add_argument("--state-dir", type=Path, default=None, help="the robot's state directory")
    p.add_argument("--json", action="store_true", help="print the status file as it is")
    p.set_defaults(func=_status)


def unit_text(config: Path, *, user: bool, watchdog_sec: int = 30, python: str | None = None,
              update_pubkey: Path | None = None) -> str:
    """The systemd unit that runs the robot loop from ``config`` (an absolute path); with
    ``update_pubkey`` it first installs the bundle the station offers (``leafscout bundle fetch``)."""
    leafscout = [python or sys.executable, "-m", "leafscout"]
    exec_start = shlex.join([*leafscout, "run", "--config", str(config)])
    # "-": a failed update is reported (log, bundle_update.json) and the survey starts on the current bundle.
    pre = "" if update_pubkey is None else "ExecStartPre=-" + shlex.join(
        [*leafscout, "bundle", "fetch", "--config", str(config), "--pubkey", str(update_pubkey)]) + "\n"
    return f"""# Written by `leafscout service install`; see docs/robot.md.
[Unit]
Description=leafscout field robot (camera, classifier, telemetry)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
{pre}ExecStart={exec_start}
WorkingDirectory={config.parent}
WatchdogSec={watchdog_sec}
Restart=on-failure
RestartSec=5
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy={"default.target" if user else "multi-user.target"}
"""


def _install(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config

    config = args.config.resolve()
    try:
        load_config(config)  # a service that cannot start is found now, not in the journal
    except ConfigError as e:
        print(f"leafscout service install: error: {e}", file=sys.stderr)
        return 2
    if args.watchdog_sec < 10:
        print(f"leafscout service install: error: --watchdog-sec must be >= 10 (heartbeats come every 5 s), "
              f"got {args.watchdog_sec}", file=sys.stderr)
        return 2
    pubkey = args.update_pubkey.resolve() if args.update_pubkey is not None else None
    if pubkey is not None and not pubkey.is_file():
        print(f"leafscout service install: error: --update-pubkey {pubkey}: no such file", file=sys.stderr)
        return 2
    unit_dir = args.unit_dir or (Path.home() / ".config/systemd/user" if args.user else Path("/etc/systemd/system"))
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        path = unit_dir / UNIT_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(unit_text(config, user=args.user, watchdog_sec=args.watchdog_sec, update_pubkey=pubkey))
        tmp.replace(path)
    except OSError as e:
        print(f"leafscout service install: error: cannot write the unit: {e}", file=sys.stderr)
        return 2
    ctl = "systemctl --user" if args.user else "sudo systemctl"
    print(f"wrote {path}")
    print(f"start it:  {ctl} daemon-reload && {ctl} enable --now {UNIT_NAME}")
    print(f"watch it:  leafscout status   ({ctl} status {UNIT_NAME}; journalctl {'--user ' if args.user else ''}"
          f"-u {UNIT_NAME})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .status import default_status_path, format_status, read_status

    robot_id, state_dir = args.robot_id, args.state_dir
    if args.config is not None:
        try:
            settings = load_config(args.config)
        except ConfigError as e:
            print(f"leafscout status: error: {e}", file=sys.stderr)
            return STATUS_MISSING
        robot_id = robot_id or settings.survey.robot_id
        state_dir = state_dir or settings.mqtt.state_dir
    path = args.status_file or default_status_path(robot_id or "robot-1", state_dir)
    try:
        status = read_status(path)
    except (OSError, ValueError) as e:
        print(f"leafscout status: no status at {path} ({e}); is the robot running (live, or with --status-file)?",
              file=sys.stderr)
        return STATUS_MISSING
    from .bundle_fetch import OFFER_NOTE, UPDATE_STATUS, read_noted_offer, read_update_status

    # Model updates: the offer the survey heard (installed by the next `bundle fetch`) and the last fetch.
    offer = read_noted_offer(Path(path).parent / OFFER_NOTE)
    status["bundle_offer"] = offer.to_dict() if offer else None
    status["bundle_update"] = read_update_status(Path(path).parent / UPDATE_STATUS)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print(format_status(status))
    age = time.time() - float(status.get("updated", 0))
    if status.get("state") == "running" and age > STALE_AFTER_S:
        print(f"leafscout status: warning: not updated for {age:.0f} s: the loop may hang", file=sys.stderr)
        return STATUS_DEGRADED
    return STATUS_OK if status.get("state") == "running" and status.get("status") in ("ok", "starting") \
        else STATUS_DEGRADED
