"""`leafscout bundle install|fetch|show`: the robot's installed models (robot.bundle_store, robot.bundle_fetch)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["register"]

# Exit codes of `bundle install` (docs/robot.md).
EXIT_REFUSED = 2  # bad signature, hash, self-test, unreadable bundle or key
EXIT_DOWNGRADE = 3  # older than the installed version, without --allow-downgrade
EXIT_FETCH_FAILED = 4  # `bundle fetch`: broker or station unreachable, download refused (401/403/404), bad hash
EXIT_DEFERRED = 5  # `bundle fetch`: a survey is running; the offer waits for its end


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bundle", help="install a signed model bundle on the robot, show the installed ones",
                              description="The robot's bundles directory: versions/, current and previous "
                              "(last-known-good). `leafscout run` without --bundle uses current, and falls "
                              "back to previous when current fails to load or self-test.")
    actions = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    inst = actions.add_parser(
        "install", help="verify a bundle (signature, hashes, self-test) and make it current",
        description="Verify SRC's Ed25519 signature with KEY, every file hash, and each model's self-test on "
        "its stored samples; refuse an older version; then switch to it atomically. The bundle it replaces "
        f"stays as last-known-good. Exit 0 installed (or already current), {EXIT_REFUSED} refused, "
        f"{EXIT_DOWNGRADE} a downgrade refused.")
    inst.add_argument("src", type=Path, metavar="SRC", help="bundle directory (written by leafscout export --sign)")
    inst.add_argument("--pubkey", type=Path, required=True, metavar="KEY",
                      help="Ed25519 public key file (PEM or 32 raw bytes) the bundle must be signed with")
    inst.add_argument("--allow-downgrade", action="store_true", help="install even if older than the current one")
    inst.add_argument("--bundles", type=Path, default=None, metavar="DIR",
                      help="the bundles directory (default $LEAFSCOUT_BUNDLES, else bundles/ in the state directory)")
    inst.set_defaults(func=_install)
    fetch = actions.add_parser(
        "fetch", help="install the bundle the station offers (between surveys: the service's ExecStartPre)",
        description="Read the bundle the station offers to this robot (the retained MQTT offer, else the one the "
        "last survey noted), download it over HTTP with requests signed by the robot's key, and install it as "
        "`bundle install` does (signature, hashes, downgrade refusal, self-test, atomic switch, last-known-good). "
        "Nothing is installed while a survey runs. The outcome goes to the log and to bundle_update.json in the "
        f"state directory. Exit 0 installed, already current or nothing offered; {EXIT_REFUSED} refused; "
        f"{EXIT_DOWNGRADE} a downgrade refused; {EXIT_FETCH_FAILED} the offer or download failed; "
        f"{EXIT_DEFERRED} a survey is running.")
    fetch.add_argument("--pubkey", type=Path, required=True, metavar="KEY",
                       help="Ed25519 public key file the bundle must be signed with")
    _robot_options(fetch)
    fetch.add_argument("--survey", default=None,
                       help="the survey the next run continues (default [survey] id of --config): while the last "
                       "run of it did not end, nothing is installed")
    fetch.add_argument("--wait", type=float, default=5.0, metavar="S",
                       help="how long to wait for the broker and its retained offer (default 5 s)")
    fetch.add_argument("--ca", type=Path, default=None, metavar="PEM",
                       help="CA certificate of an https:// station with its own certificate")
    fetch.add_argument("--allow-downgrade", action="store_true", help="install an offered older version too")
    fetch.set_defaults(func=_fetch)
    show = actions.add_parser("show", help="the current and last-known-good bundle versions, the last update")
    _robot_options(show)
    show.set_defaults(func=_show)


def _robot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="the robot.toml the robot runs with: robot_id, [mqtt] url, password_file, hmac_key_file, "
                   "state_dir, outbox and [bundle] path (when it names a bundles directory); flags win")
    p.add_argument("--bundles", type=Path, default=None, metavar="DIR", help="the bundles directory")
    p.add_argument("--robot-id", default=None, help="this robot's id (default robot-1)")
    p.add_argument("--mqtt", default=None, help="broker URL mqtt://ROBOT@host:port (no password in it)")
    p.add_argument("--password-file", type=Path, default=None, help="file with this robot's MQTT password")
    p.add_argument("--hmac-key-file", type=Path, default=None, help="this robot's key file (signs the download)")
    p.add_argument("--state-dir", type=Path, default=None, help="the robot's state directory")


def _install(args: argparse.Namespace) -> int:
    from leafscout.vision.bundle import BundleError

    from .bundle_store import BundleStore, DowngradeError

    store = BundleStore(args.bundles)
    try:
        key = args.pubkey.read_bytes()
        result = store.install(args.src, public_key=key, allow_downgrade=args.allow_downgrade)
    except DowngradeError as e:
        print(f"leafscout bundle install: refused: {e}", file=sys.stderr)
        return EXIT_DOWNGRADE
    except (BundleError, OSError) as e:
        print(f"leafscout bundle install: refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    if not result.changed:
        print(f"{result.detail}; nothing to do")
        return 0
    print(f"installed {result.version} -> {result.path}")
    print(f"  self-test: {result.detail}")
    print(f"  last-known-good: {result.previous or 'none'}")
    return 0


@dataclass(frozen=True)
class _Robot:
    """Where this robot keeps things, from the flags, else --config, else the defaults of `leafscout run`."""

    robot_id: str
    mqtt: str | None
    password_file: Path | None
    hmac_key_file: Path | None
    state_dir: Path
    offer_note: Path
    store: Any  # BundleStore
    survey_id: str | None


def _resolve(args: argparse.Namespace) -> _Robot:
    from .bundle_fetch import OFFER_NOTE
    from .bundle_store import BundleStore
    from .config import load_config
    from .outbox import default_state_dir

    cfg = load_config(args.config) if args.config is not None else None
    m = cfg.mqtt if cfg else None

    def pick(flag: Path | None, value: str | None) -> Path | None:
        return flag if flag is not None else Path(value) if value else None

    robot_id = args.robot_id or (cfg.survey.robot_id if cfg else None) or "robot-1"
    state_dir = pick(args.state_dir, m and m.state_dir) or default_state_dir(robot_id)
    outbox = Path(m.outbox) if m and m.outbox else state_dir / "outbox.db"
    bundles = args.bundles
    if bundles is None and cfg and cfg.bundle.path:
        if BundleStore.is_store(cfg.bundle.path):
            bundles = Path(cfg.bundle.path)
        else:
            print(f"leafscout bundle: warning: [bundle] path = {cfg.bundle.path!r} is a bundle, not a bundles "
                  "directory: runs keep using it, whatever is installed", file=sys.stderr)
    return _Robot(robot_id, args.mqtt or (m.url if m else None), pick(args.password_file, m and m.password_file),
                  pick(args.hmac_key_file, m and m.hmac_key_file), Path(state_dir),
                  outbox.with_name(OFFER_NOTE), BundleStore(bundles),
                  getattr(args, "survey", None) or (cfg.survey.id if cfg else None))


def _fetch(args: argparse.Namespace) -> int:
    from leafscout.link.credentials import CredentialError, read_key, read_password
    from leafscout.link.mqtt import MqttLinkError

    from .bundle_fetch import (
        UPDATE_STATUS,
        FetchError,
        UpdateResult,
        offer_from_broker,
        read_noted_offer,
        report,
        update_from_offer,
    )
    from .config import ConfigError
    from .status import STATUS_NAME

    try:
        robot = _resolve(args)
        public_key = args.pubkey.read_bytes()
        key = read_key(robot.hmac_key_file)
    except (ConfigError, CredentialError, OSError) as e:
        print(f"leafscout bundle fetch: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    status_path = robot.state_dir / UPDATE_STATUS
    offer, problem = read_noted_offer(robot.offer_note), None
    if robot.mqtt:  # the broker's retained offer is the latest; the noted one stands in when it cannot be read
        try:
            offer = offer_from_broker(robot.mqtt, robot.robot_id, key, password=read_password(robot.password_file),
                                      wait_s=args.wait)
        except (FetchError, MqttLinkError, CredentialError, OSError) as e:  # unreachable, refused, bad seal
            problem = str(e)
            print(f"leafscout bundle fetch: warning: {e}; using the offer the last survey noted, if any",
                  file=sys.stderr)
    if offer is None and problem is not None:
        version = robot.store.version_of(robot.store.current)
        result = report(UpdateResult("failed", problem, None, str(version) if version else None), status_path)
    else:
        result = update_from_offer(offer, robot.store, robot_id=robot.robot_id, key=key, public_key=public_key,
                                   status_path=status_path, run_status=robot.state_dir / STATUS_NAME,
                                   survey_id=robot.survey_id, allow_downgrade=args.allow_downgrade, cafile=args.ca)
    print(f"bundle fetch: {result.state}: {result.detail}", file=sys.stdout if result.ok else sys.stderr)
    return {"installed": 0, "up-to-date": 0, "no-offer": 0, "deferred": EXIT_DEFERRED, "refused": EXIT_REFUSED,
            "downgrade": EXIT_DOWNGRADE}.get(result.state, EXIT_FETCH_FAILED)


def _show(args: argparse.Namespace) -> int:
    from .bundle_fetch import UPDATE_STATUS, read_noted_offer, read_update_status
    from .config import ConfigError

    try:
        robot = _resolve(args)
    except ConfigError as e:
        print(f"leafscout bundle show: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    store = robot.store
    print(f"bundles: {store.root}")
    for name, path in (("current", store.current), ("previous", store.previous)):
        print(f"  {name}: {store.version_of(path) or 'none'}" + (f" ({path})" if path else ""))
    offer = read_noted_offer(robot.offer_note)
    if offer is not None:
        print(f"offered: {offer.version} (manifest {offer.manifest_sha256[:12]}) at {offer.url}")
    update = read_update_status(robot.state_dir / UPDATE_STATUS)
    if update is not None:
        print(f"last fetch: {update.get('state')} at {update.get('updated_utc')}: {update.get('detail')}")
    return 0
