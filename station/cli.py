"""``leafscout station``: the base-station process (receivers now, web pages next to them),
``leafscout station offer-bundle DIR`` (offer a model bundle to the robots: station.bundle_offer)
and ``leafscout keys new ROBOT`` (per-robot HMAC key files).

``serve(station, args)`` is the one place where services run beside the receivers:
``SERVICES`` lists callables ``(station, args) -> closeable | None`` started after the
receivers and closed before them; ``OPTION_HOOKS`` add their options.  The web
dashboard (``leafscout.station.web.station_service``: ``--http HOST:PORT``) is hooked in this way.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

import tomllib

from leafscout.link.credentials import PASSWORD_ENV

log = logging.getLogger(__name__)

# (station, args) -> object with .close() or None; started in order, closed in reverse.
SERVICES: list[Callable] = []
# (parser) -> None: extra options of the services above.
OPTION_HOOKS: list[Callable[[argparse.ArgumentParser], None]] = []


def _add_dashboard() -> None:
    """The web dashboard (``--http``), when its package is installed; its import is cheap."""
    try:
        from leafscout.station.web.station_service import add_options, start_dashboard
    except ModuleNotFoundError as e:
        if e.name not in ("leafscout.station.web", "leafscout.station.web.station_service"):
            raise
        return
    OPTION_HOOKS.append(add_options)
    SERVICES.append(start_dashboard)


_add_dashboard()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "station", help="run the base station: receive robot telemetry and store it",
        description="Receive records from robots over MQTT and/or a serial radio, verify them "
                    "(schema, limits, size, per-robot HMAC, robot allow-list), drop duplicates and store them in "
                    "SQLite, or in PostgreSQL shared by several stations. Secure by default: it refuses to start "
                    "without MQTT credentials and record signing (--keys) unless --insecure is given.",
    )
    p.add_argument("--config", metavar="FILE", type=Path,
                   help="TOML file with any of: mqtt, password, password_file, serial, baud, db, keys, "
                        "hmac_key_file, robots (a list), client_id, insecure; options on the command line win")
    p.add_argument("--mqtt", metavar="URL",
                   help="broker URL with the station's user, e.g. mqtt://station@127.0.0.1:1883 "
                        "(mqtts://...?ca=/path/ca.pem for TLS); the password comes from --password-file, "
                        f"${PASSWORD_ENV} or the config file, never from the command line")
    p.add_argument("--password-file", metavar="FILE", help="file holding the station's MQTT password")
    p.add_argument("--serial", metavar="PORT",
                   help="serial port URL: /dev/ttyUSB0, socket://host:port, or pty://PATH to create a "
                        "pseudo-terminal whose robot end is linked at PATH")
    p.add_argument("--baud", type=int, default=None, help="serial baud rate (default 115200)")
    p.add_argument("--db", metavar="PATH|URL",
                   help="station database: a SQLite file (created if missing) or a postgresql://USER@HOST/DB URL "
                        "shared by several receivers (password from PGPASSWORD or ~/.pgpass, never the URL); "
                        "required")
    p.add_argument("--read-db", metavar="URL",
                   help="PostgreSQL database the dashboard reads from (a streaming replica of --db); default --db")
    p.add_argument("--keys", metavar="DIR",
                   help="directory of per-robot HMAC keys (<robot>.key, made by `leafscout keys new ROBOT`): "
                        "a robot's records must be signed with its own key")
    p.add_argument("--hmac-key-file", metavar="FILE",
                   help="one HMAC key shared by all robots (weaker than --keys: any holder speaks for any robot)")
    p.add_argument("--robots", metavar="R1,R2",
                   help="comma-separated allow-list of robot ids; others are rejected (default: the robots of "
                        "--keys, else any)")
    p.add_argument("--client-id", default=None, help="MQTT client id (persistent session)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="accept anonymous MQTT and unsigned records (a warning at every start, a banner on the "
                        "dashboard); for a bench, never for a field")
    for hook in OPTION_HOOKS:
        hook(p)
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="station_command", metavar="ACTION", required=False)
    _register_offer(actions)

    k = subparsers.add_parser("keys", help="per-robot HMAC keys for signed telemetry",
                              description="Make the key files that let a robot sign its records: the station keeps "
                                          "the directory (--keys DIR), each robot gets a copy of its own file "
                                          "(leafscout run --hmac-key-file).")
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = ks.add_parser("new", help="write DIR/ROBOT.key (64 hex digits, mode 0600)")
    new.add_argument("robot", metavar="ROBOT", help="robot id ([A-Za-z0-9_.-], 1..64 characters)")
    new.add_argument("--dir", default="keys", help="key directory of the station (default ./keys)")
    new.add_argument("--force", action="store_true", help="replace an existing key (the robot needs the new one)")
    new.set_defaults(func=_keys_new)


def _keys_new(args: argparse.Namespace) -> int:
    from leafscout.station.keys import KeyFileError, new_key

    try:
        path = new_key(args.dir, args.robot, force=args.force)
    except (KeyFileError, OSError) as e:
        print(f"leafscout keys: error: {e}", file=sys.stderr)
        return 2
    print(f"{path}  (copy it to robot {args.robot} and run it with --hmac-key-file; keep it secret)")
    return 0


OFFER_SETTINGS = ("mqtt", "password", "password_file", "keys", "robots", "offers", "url", "pubkey", "insecure")
# Every key of a station config file: `leafscout station` and `offer-bundle` read the same file.
CONFIG_KEYS = frozenset({*OFFER_SETTINGS, "serial", "baud", "db", "read_db", "hmac_key_file", "client_id"})


def _register_offer(actions: argparse._SubParsersAction) -> None:
    o = actions.add_parser(
        "offer-bundle", help="offer a model bundle to the robots (MQTT announcement, authenticated HTTP download)",
        description="Check bundle DIR (it loads, its hashes match, its self-test passes; with --pubkey its "
                    "signature verifies), copy it into --offers DIR, which the station's web app serves to the "
                    "robots at URL/robot/bundles/, and announce it on leafscout/ROBOT/offer (retained, sealed "
                    "with each robot's key). Robots install it between surveys (leafscout bundle fetch). "
                    "Exit 0 offered, 2 refused or not announced.")
    o.add_argument("src", type=Path, metavar="DIR", help="the bundle (written by leafscout export --sign)")
    o.add_argument("--config", metavar="FILE", type=Path,
                   help=f"TOML file with any of: {', '.join(OFFER_SETTINGS)} (other station settings are ignored); "
                        "options on the command line win")
    o.add_argument("--mqtt", metavar="URL", help="broker URL with the station's user (password from --password-file, "
                                                  f"${PASSWORD_ENV} or the config file)")
    o.add_argument("--password-file", metavar="FILE", help="file holding the station's MQTT password")
    o.add_argument("--keys", metavar="DIR", help="the station's per-robot key directory (required: the offer is "
                                                  "sealed with, and downloads are signed by, each robot's key)")
    o.add_argument("--robots", metavar="R1,R2", help="robots to offer it to (default: every robot of --keys)")
    o.add_argument("--offers", metavar="DIR", type=Path,
                   help="the offers directory the station's web app serves (leafscout station --offers DIR); required")
    o.add_argument("--url", metavar="URL", help="the station's web address as the robots reach it, e.g. "
                                                 "https://base.local:8443 (required)")
    o.add_argument("--pubkey", metavar="KEY", type=Path,
                   help="Ed25519 public key the bundle must be signed with (checked before it is offered)")
    o.add_argument("--insecure", action="store_true", default=None, help="allow a broker without credentials")
    o.set_defaults(func=_offer_bundle)


def _offer_settings(args: argparse.Namespace) -> str | None:
    """Fill unset offer-bundle options from --config; returns the MQTT password it holds, if any."""
    cfg: dict = {}
    if args.config is not None:
        with open(args.config, "rb") as f:
            cfg = tomllib.load(f)
        unknown = set(cfg) - CONFIG_KEYS
        if unknown:
            raise ValueError(f"{args.config}: unknown settings {sorted(unknown)}")
    for name in ("mqtt", "password_file", "keys", "offers", "url", "pubkey", "insecure"):
        if getattr(args, name) is None and cfg.get(name) is not None:
            setattr(args, name, Path(cfg[name]) if name in ("offers", "pubkey") else cfg[name])
    if args.robots is None and cfg.get("robots"):
        args.robots = ",".join(cfg["robots"])
    return cfg.get("password")


def _offer_bundle(args: argparse.Namespace) -> int:
    from leafscout.link.credentials import CredentialError, read_password
    from leafscout.link.mqtt import MqttLinkError, parse_mqtt_url, url_has_password
    from leafscout.station.bundle_offer import OfferError, OfferStore, announce
    from leafscout.station.keys import KeyFileError, KeyRing

    def fail(message: object) -> int:
        print(f"leafscout station offer-bundle: error: {message}", file=sys.stderr)
        return 2

    try:
        password = _offer_settings(args)
        missing = [f"--{n}" for n in ("mqtt", "keys", "offers", "url") if not getattr(args, n)]
        if missing:
            return fail(f"give {', '.join(missing)} (or set them in --config)")
        if url_has_password(args.mqtt):
            return fail(f"the --mqtt URL holds a password (readable in /proc by every user): put it in "
                        f"--password-file, ${PASSWORD_ENV} or the config file")
        if args.password_file is not None or os.environ.get(PASSWORD_ENV):
            password = read_password(args.password_file)
        if not (parse_mqtt_url(args.mqtt).username and password) and not args.insecure:
            return fail("MQTT without credentials (user in --mqtt, password in --password-file); "
                        "--insecure for a bench")
        keys = KeyRing.from_dir(args.keys)
        robots = [r.strip() for r in args.robots.split(",") if r.strip()] if args.robots else sorted(keys.robots)
        public_key = args.pubkey.read_bytes() if args.pubkey is not None else None
        offer = OfferStore(args.offers).add(args.src, robots=robots, public_key=public_key)
        announced = announce(offer, base_url=args.url, mqtt_url=args.mqtt, password=password, keys=keys)
    except (OfferError, KeyFileError, CredentialError, MqttLinkError, OSError, ValueError,
            tomllib.TOMLDecodeError) as e:
        return fail(e)
    print(f"offered {offer.version} (manifest {offer.manifest_sha256[:12]}) to {', '.join(announced)}")
    print(f"  served at {offer.message(args.url).url}  (leafscout station --http ... --offers {args.offers})")
    return 0


_DEFAULTS = {"baud": 115200, "client_id": "leafscout-station", "insecure": False}


def _apply_config(args: argparse.Namespace) -> str | None:
    """Fill unset options from --config; returns the MQTT password from the config file, if any."""
    cfg: dict = {}
    if args.config is not None:
        with open(args.config, "rb") as f:
            cfg = tomllib.load(f)
        unknown = set(cfg) - CONFIG_KEYS  # url and pubkey are offer-bundle's
        if unknown:
            raise ValueError(f"{args.config}: unknown settings {sorted(unknown)}")
    for name in ("mqtt", "serial", "baud", "db", "read_db", "keys", "hmac_key_file", "client_id", "insecure",
                 "password_file"):
        if getattr(args, name) is None:
            setattr(args, name, cfg.get(name, _DEFAULTS.get(name)))
    if getattr(args, "offers", None) is None and cfg.get("offers"):  # --offers: served by the dashboard
        args.offers = cfg["offers"]
    if args.robots is None and cfg.get("robots"):
        args.robots = ",".join(cfg["robots"])
    return cfg.get("password")


def _security(args: argparse.Namespace, password: str | None) -> tuple[str | None, object]:
    """(MQTT password, key ring): refuses what is insecure unless --insecure."""
    from leafscout.link.credentials import read_key, read_password
    from leafscout.link.mqtt import parse_mqtt_url, url_has_password
    from leafscout.station.keys import KeyRing
    from leafscout.station.receiver import StationError
    from leafscout.station.sql import is_postgres
    from leafscout.station.sql import url_has_password as url_has_db_password

    if args.password_file is not None or os.environ.get(PASSWORD_ENV):
        password = read_password(args.password_file)
    problems = []
    if args.mqtt:
        settings = parse_mqtt_url(args.mqtt)
        if url_has_password(args.mqtt):
            raise StationError("the --mqtt URL holds a password (readable in /proc by every user): put it in "
                               f"--password-file, ${PASSWORD_ENV} or the config file")
        if not settings.username or not password:
            problems.append("MQTT without credentials (user in --mqtt, password in --password-file, "
                            f"${PASSWORD_ENV} or the config file)")
    if args.keys:
        keys = KeyRing.from_dir(args.keys)
    elif args.hmac_key_file:
        keys = KeyRing(shared=read_key(args.hmac_key_file))
        log.warning("one HMAC key shared by all robots: any key holder can speak for any robot; prefer --keys DIR")
    else:
        keys = None
        problems.append("unsigned records (no --keys DIR: make keys with `leafscout keys new ROBOT`)")
    for option, value in (("--db", args.db), ("--read-db", args.read_db)):
        if value and is_postgres(value) and url_has_db_password(value):
            raise StationError(f"the {option} URL holds a password (readable in /proc by every user): put it in "
                               "PGPASSWORD or ~/.pgpass (PostgreSQL's password file)")
    if problems and not args.insecure:
        raise StationError("refusing to start an insecure station: " + "; ".join(problems)
                           + ". Fix that, or pass --insecure for a bench setup")
    if args.insecure:
        log.warning("INSECURE station: %s", "; ".join(problems) or "--insecure given")
    return password, keys


def run(args: argparse.Namespace) -> int:
    from leafscout.link.credentials import CredentialError
    from leafscout.link.mqtt import MqttLinkError, redact_url
    from leafscout.station.db import StationDBError
    from leafscout.station.keys import KeyFileError
    from leafscout.station.receiver import Station, StationError
    from leafscout.station.sql import is_postgres

    try:
        password = _apply_config(args)
        if not args.db:
            raise StationError("give --db PATH (or db in the config file)")
        if not args.mqtt and not args.serial:
            log.error("give --mqtt URL and/or --serial PORT")
            return 2
        password, keys = _security(args, password)
        robots = [r.strip() for r in args.robots.split(",") if r.strip()] if args.robots else None
        if robots is None and keys is not None and keys.keys:
            robots = sorted(keys.robots)
        if args.read_db and not is_postgres(args.read_db):
            raise StationError(f"--read-db must be a postgresql:// URL, got {args.read_db!r}")
        station = Station(args.db, read_db=args.read_db, mqtt=args.mqtt, serial=args.serial, keys=keys, robots=robots,
                          baudrate=args.baud, client_id=args.client_id, insecure=bool(args.insecure),
                          mqtt_password=password)
    except (OSError, StationError, StationDBError, CredentialError, KeyFileError, MqttLinkError, ValueError,
            tomllib.TOMLDecodeError) as e:
        log.error("cannot start the station: %s", e)
        return 2
    if args.mqtt:
        log.info("station MQTT broker: %s", redact_url(args.mqtt))
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
        log.info("station running (db %s); Ctrl-C to stop", station.db.name)
        print("station ready", flush=True)
        stop.wait()
    finally:
        for s in reversed(started):
            s.close()
    log.info("station stopped; %s", station.db.rejected() or "nothing rejected")
    return 0
