"""``leafscout farmos export|push``: a survey as farmOS observation logs (see :mod:`leafscout.station.farmos`).

``export`` writes a JSON:API file (no server needed); ``push --url URL`` creates the
records on a farmOS server through farmOS.py (OAuth2 password grant: ``--user``, the
password from ``--password-stdin`` or ``$LEAFSCOUT_FARMOS_PASSWORD``), from a station
database or from a file ``export`` wrote.
"""
from __future__ import annotations

import argparse

PASSWORD_ENV = "LEAFSCOUT_FARMOS_PASSWORD"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("farmos", help="a survey as farmOS observation logs (per row and diseased stretch)",
                              description="A survey as farmOS records: a land asset for the field and observation "
                                          "logs (log--observation) for the survey, each row and each stretch of a "
                                          "row with disease, with WKT geometry and count/incidence quantities.")
    actions = p.add_subparsers(dest="action", required=True, metavar="{export,push}")
    export = actions.add_parser("export", help="write the records as a JSON:API file (no server needed)")
    _source_options(export, file_input=False)
    export.add_argument("--out", default="farmos.json", metavar="FILE", help="file to write (default: farmos.json)")
    export.set_defaults(func=_export)
    push = actions.add_parser("push", help="create the records on a farmOS server (farmOS.py, OAuth2)")
    push.add_argument("--url", required=True, metavar="URL", help="the farmOS server, e.g. https://farm.example.org")
    _source_options(push, file_input=True)
    push.add_argument("--user", required=True, metavar="NAME", help="farmOS user name")
    push.add_argument("--password-stdin", action="store_true",
                      help=f"read the password from standard input (default: ${PASSWORD_ENV})")
    push.add_argument("--client-id", default="farm", help="OAuth2 client id (default: farm, farmOS's own)")
    push.add_argument("--scope", default="farm_manager", help="OAuth2 scope (default: farm_manager)")
    push.set_defaults(func=_push)


def _source_options(p: argparse.ArgumentParser, *, file_input: bool) -> None:
    p.add_argument("--db", metavar="PATH|URL", help="station database: a SQLite file or a postgresql:// URL")
    p.add_argument("--survey", metavar="ID", help="survey id")
    if file_input:
        p.add_argument("--file", metavar="FILE", help="push this file from `leafscout farmos export` instead of --db")
    p.add_argument("--cell-m", type=float, default=10.0, metavar="M",
                   help="length of the row stretches that get a log of their own when diseased (default 10)")
    p.add_argument("--field-name", metavar="NAME", help="name of the land asset (default: 'leafscout field ID')")
    p.add_argument("--asset-id", metavar="UUID", help="link the logs to this existing land asset instead of making one")


def _resources(args: argparse.Namespace) -> list:
    import contextlib
    from pathlib import Path

    from leafscout.station.farmos import FarmOSError, farmos_resources, read_farmos_file
    from leafscout.station.sql import is_postgres
    from leafscout.station.web import queries

    if getattr(args, "file", None):
        return read_farmos_file(args.file)
    if not args.db or not args.survey:
        raise FarmOSError("give --db PATH and --survey ID" + (" (or --file FILE)" if hasattr(args, "file") else ""))
    if not is_postgres(args.db) and not Path(args.db).is_file():
        raise FarmOSError(f"no station database at {args.db!r}")
    with contextlib.closing(queries.connect_readonly(args.db)) as conn:
        return farmos_resources(conn, args.survey, cell_m=args.cell_m, field_name=args.field_name,
                                land_id=args.asset_id)


def _export(args: argparse.Namespace) -> int:
    import sys

    from leafscout.station.farmos import FarmOSError, write_farmos_file

    try:
        resources = _resources(args)
    except FarmOSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = write_farmos_file(resources, args.out, args.survey)
    logs = sum(r["type"] == "log--observation" for r in resources)
    print(f"{path}: {logs} observation logs, {len(resources)} records in all")
    return 0


def _push(args: argparse.Namespace) -> int:
    import os
    import sys

    from leafscout.station.farmos import FarmOSError, password_auth, push

    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else os.environ.get(PASSWORD_ENV)
    if not password:
        print(f"error: give the farmOS password on standard input (--password-stdin) or in ${PASSWORD_ENV}",
              file=sys.stderr)
        return 2
    try:
        resources = _resources(args)
        ids = push(resources, args.url, auth=password_auth(args.url, args.user, password, client_id=args.client_id,
                                                           scope=args.scope))
    except FarmOSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # network and OAuth errors from httpx / httpx_auth
        print(f"error: cannot push to {args.url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    logs = sum(r["type"] == "log--observation" for r in resources)
    print(f"{args.url}: created {len(ids)} records ({logs} observation logs)")
    return 0
