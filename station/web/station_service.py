"""The dashboard as a service of the ``leafscout station`` process (see ``leafscout.station.cli``).

``leafscout.station.cli`` runs ``SERVICES`` beside the receivers and lets ``OPTION_HOOKS`` add
options; hooking these two functions in adds ``--http HOST:PORT``, ``--users FILE`` and
``--tls-cert PEM --tls-key PEM`` (HTTPS, Secure cookies)::

    from leafscout.station.web.station_service import add_options, start_dashboard
    OPTION_HOOKS.append(add_options)
    SERVICES.append(start_dashboard)

The dashboard shares the receivers' ``StationDB`` (one writer connection) and reads
through its own read-only connections, so pages never wait for a receiver's commit.
"""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="serve the web dashboard here, e.g. 127.0.0.1:8080 (0.0.0.0:8080 for the whole "
                             "network); default: no dashboard")
    parser.add_argument("--users", metavar="FILE", default="station_users.json",
                        help="dashboard users file made by `leafscout add-user` (default: station_users.json)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve the dashboard over HTTPS with this certificate "
                                                           "(chain) file; needs --tls-key. Cookies are then Secure")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    add_basemap_options(parser)
    parser.add_argument("--http-rate", type=float, default=20.0, metavar="PER_S",
                        help="requests per second allowed per user or client address (default 20; burst 6x)")
    # Here, not in .bundles: building the parser must not import the web stack (a [robot] install has none).
    parser.add_argument("--offers", metavar="DIR",
                        help="directory of bundles offered to the robots (leafscout station offer-bundle), served "
                             "to them at /robot/bundles/ with --http; needs --keys")


def add_basemap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--basemap", metavar="IMAGE",
                        help="north-up image of the field (PNG/JPEG/WebP, e.g. a drone orthophoto) drawn under "
                             "GPS maps; needs --basemap-bounds")
    parser.add_argument("--basemap-bounds", metavar="W,S,E,N",
                        help="the image's west, south, east and north edges in WGS 84 degrees")


def basemap_from(args: argparse.Namespace):
    """The ``BasemapFile`` the options name, or None; ValueError when they do not fit."""
    from .app import BasemapFile

    image, bounds = getattr(args, "basemap", None), getattr(args, "basemap_bounds", None)
    if image is None and bounds is None:
        return None
    if image is None or bounds is None:
        raise ValueError("--basemap and --basemap-bounds go together")
    return BasemapFile.parse(image, bounds)


def start_dashboard(station, args: argparse.Namespace):
    """Start the dashboard for ``station.db`` when ``--http`` was given; returns it (``.close()``)."""
    if not getattr(args, "http", None):
        return None
    from .app import create_app
    from .bundles import offers_from_args
    from .server import WebServer, WebServerError, parse_address

    host, port = parse_address(args.http)
    tls = getattr(args, "tls_cert", None) is not None or getattr(args, "tls_key", None) is not None
    try:
        chosen = basemap_from(args)
        offers = offers_from_args(args)
    except ValueError as e:
        raise WebServerError(str(e)) from e
    app = create_app(station.db, args.users, rate_per_s=args.http_rate, burst=max(1, int(6 * args.http_rate)),
                     secure_cookies=tls, basemap=chosen, bundle_offers=offers)
    web = WebServer(app, host, port, tls_cert=getattr(args, "tls_cert", None),
                    tls_key=getattr(args, "tls_key", None)).start()
    print(f"dashboard at {web.url}", flush=True)
    return web
