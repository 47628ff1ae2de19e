"""``leafscout report``: the survey report, CSV and GeoJSON, from a station database, offline."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a survey's HTML report, plant CSV and farmOS GeoJSON from a station database",
        description="Write report.html (self-contained), plants.csv and observations.geojson for one "
                    "survey. Works offline on a copy of the station database and streams (bounded memory); "
                    "the GeoJSON is checked while it is written.",
    )
    p.add_argument("--db", required=True, metavar="PATH|URL",
                   help="station database written by `leafscout station`: a SQLite file, or a postgresql:// URL "
                        "(a primary or a read replica; password from PGPASSWORD or ~/.pgpass, never the URL)")
    p.add_argument("--survey", metavar="ID", help="survey id to report on (default: list the surveys and stop)")
    p.add_argument("--out", default="report_out", metavar="DIR",
                   help="folder for the three files (created; default: report_out)")
    from leafscout.station.web.station_service import add_basemap_options

    add_basemap_options(p)
    p.set_defaults(func=_run)
    # The farmOS export sits beside the report (same data, another destination).
    from leafscout.station.farmos_cli import register as register_farmos

    register_farmos(subparsers)


def _run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from leafscout.station.db import StationDBError, open_db
    from leafscout.station.report import ReportError, write_report
    from leafscout.station.sql import is_postgres, redact, url_has_password

    if is_postgres(args.db) and url_has_password(args.db):
        print("error: the --db URL holds a password (readable in /proc by every user): use PGPASSWORD or "
              "~/.pgpass", file=sys.stderr)
        return 2
    if not is_postgres(args.db) and not Path(args.db).is_file():
        print(f"error: no station database at {args.db!r}", file=sys.stderr)
        return 2
    if not args.survey:
        try:
            with open_db(args.db) as db:
                surveys = db.surveys()
        except StationDBError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not surveys:
            print(f"{redact(args.db)} holds no surveys yet")
        for s in surveys:
            print(f"{s.survey_id}\t{s.plants} plants\t{s.diseased} diseased\trobots {','.join(s.robots)}")
        print("choose one with --survey ID", file=sys.stderr)
        return 2 if surveys else 1
    from leafscout.station.web.station_service import basemap_from

    try:
        paths = write_report(args.db, args.survey, args.out, basemap=basemap_from(args))
    except (ReportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if paths.problems:  # checked while written (station.report.ObservationChecker)
        print(f"error: {paths.geojson} is not valid: " + "; ".join(paths.problems[:5]), file=sys.stderr)
        return 1
    print(f"{paths.html}\n{paths.csv}\n{paths.geojson}")
    print(f"{paths.plants} plants; {paths.features} observations in the GeoJSON "
          f"({paths.skipped_without_position} plants without a GPS position are only in the CSV)")
    return 0
