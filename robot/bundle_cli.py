"""`leafscout bundle install` and `leafscout bundle show`: the robot's installed models (robot.bundle_store)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]

# Exit codes of `bundle install` (docs/robot.md).
EXIT_REFUSED = 2  # bad signature, hash, self-test, unreadable bundle or key
EXIT_DOWNGRADE = 3  # older than the installed version, without --allow-downgrade


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
    show = actions.add_parser("show", help="the current and last-known-good bundle versions")
    show.add_argument("--bundles", type=Path, default=None, metavar="DIR", help="the bundles directory")
    show.set_defaults(func=_show)


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


def _show(args: argparse.Namespace) -> int:
    from .bundle_store import BundleStore

    store = BundleStore(args.bundles)
    print(f"bundles: {store.root}")
    for name, path in (("current", store.current), ("previous", store.previous)):
        print(f"  {name}: {store.version_of(path) or 'none'}" + (f" ({path})" if path else ""))
    return 0
