"""``leafscout station``: the base-station process (receivers now, web pages next to them).

``serve(station, args)`` is the one place where services run beside the receivers:
``SERVICES`` lists callables ``(station, args) -> closeable | None`` started after the
receivers and closed before them; ``OPTION_HOOKS`` add their options.  The web
dashboard (``station.web.station_service``: ``--http HOST:PORT``) is hooked in this way.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Callable

log = logging.getLogger(__name__)

# (station, args) -> object with .close() or None; started in order, closed in reverse.
SERVICES: list[Callable] = []
# (parser) -> None: extra options of the services above.
OPTION_HOOKS: list[Callable[[argparse.ArgumentParser], None]] = []


def _add_dashboard() -> None:
    """The web dashboard (``--http``), when its package is installed; its import is cheap."""
    try:
        from station.web.station_service import add_options, start_dashboard
    except ModuleNotFoundError as e:
        if e.name not in ("station.web", "station.web.station_service"):
            raise
        return
    OPTION_HOOKS.append(add_options)
    SERVICES.append(start_dashboard)


_add_dashboard()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "station", help="run the base station: receive robot telemetry and store it",
        description="Receive records from robots over MQTT and/or a serial radio, verify them "
                    "(schema, size, HMAC, robot allow-list), drop duplicates and store them in SQLite.",
    )
    p.add_argument("--mqtt", metavar="URL",
                   help="broker URL with the station's credentials, e.g. mqtt://station:secret@127.0.0.1:1883 "
                        "(mqtts://...?ca=/path/ca.pem for TLS)")
    p.add_argument("--serial", metavar="PORT",
                   help="serial port URL: /dev/ttyUSB0, socket://host:port, or pty://PATH to create a "
                        "pseudo-terminal whose robot end is linked at PATH")
    p.add_argument("--baud", type=int, default=115200, help="serial baud rate (default 115200)")
    p.add_argument("--db", required=True, metavar="PATH", help="station SQLite database (created if missing)")
    p.add_argument("--hmac-key-file", metavar="FILE",
                   help="shared HMAC-SHA256 key; when given, unsigned or wrongly signed input is rejected")
    p.add_argument("--robots", metavar="R1,R2",
                   help="comma-separated allow-list of robot ids; others are rejected (default: any)")
    p.add_argument("--client-id", default="leafscout-station", help="MQTT client id (persistent session)")
    for hook in OPTION_HOOKS:
        hook(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robot.telemetry import TelemetryError, read_key
    from station.receiver import Station, StationError

    if not args.mqtt and not args.serial:
        log.error("give --mqtt URL and/or --serial PORT")
        return 2
    try:
        key = read_key(args.hmac_key_file)
        robots = [r.strip() for r in args.robots.split(",") if r.strip()] if args.robots else None
        station = Station(args.db, mqtt=args.mqtt, serial=args.serial, hmac_key=key, robots=robots,
                          baudrate=args.baud, client_id=args.client_id)
    except (OSError, StationError, TelemetryError, ValueError) as e:
        log.error("cannot start the station: %s", e)
        return 2
    with station:
        return serve(station, args)


def serve(station: object, args: argparse.Namespace) -> int:
    """Start the extra services, then wait for SIGINT/SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = []
    try:
        for service in SERVICES:
            s = service(station, args)
            if s is not None:
                started.append(s)
        if station.serial is not None:
            station.serial.reader.connected.wait(5)
            if station.serial.peer:
                print(f"serial pty for the robot: {station.serial.peer}", flush=True)
        log.info("station running (db %s); Ctrl-C to stop", args.db)
        print("station ready", flush=True)
        stop.wait()
    finally:
        for s in reversed(started):
            s.close()
    log.info("station stopped; %s", station.db.rejected() or "nothing rejected")
    return 0
