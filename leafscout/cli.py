"""The `leafscout` command. Each subsystem owns its subcommands in its own ``cli`` module.

Subsystem modules expose ``register(subparsers)``; each subcommand sets ``func`` to a
callable taking the parsed args and returning an exit code. Heavy imports stay inside
those callables so ``leafscout --help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# Order is the order shown in --help.
_COMMAND_MODULES = (
    "leafscout.training.cli",
    "leafscout.deploy.eval_cli",
    "leafscout.training.study_cli",
    "leafscout.deploy.cli",
    "leafscout.robot.cli",
    "leafscout.robot.bundle_cli",
    "leafscout.robot.service_cli",
    "leafscout.station.cli",
    "leafscout.station.report_cli",
    "leafscout.station.web.users_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leafscout",
        description="Find diseased plants from a field robot: train, deploy, run, report.",
    )
    parser.add_argument("--version", action="version", version=f"leafscout {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # subsystem not written yet
                continue
            raise
        module.register(sub)
    return parser


# Third-party packages that only an extra installs: a command that needs one names the extra.
_EXTRA_OF = {
    "torch": "train", "onnx": "train", "onnxscript": "train", "PIL": "train",
    "fastapi": "station", "uvicorn": "station", "jinja2": "station", "multipart": "station",
    "geojson": "station", "jsonschema": "station", "farmOS": "station", "psycopg": "station",
    "matplotlib": "train,station",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The install extra that provides the module ``error`` is about, if any (for a clear message)."""
    return _EXTRA_OF.get((error.name or "").split(".")[0])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:
        extra = missing_extra(e)
        if extra is None:
            raise
        print(f"leafscout {args.command}: needs the package {e.name!r}, which this install leaves out: "
              f"pip install 'leafscout[{extra}]' (the robot's own install is leafscout[robot])", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
