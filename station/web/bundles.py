"""The offered bundles over HTTP, for robots only: ``GET /robot/bundles/<manifest sha256>/<file>``.

A robot signs each request with its own HMAC key (``leafscout.link.mqtt.auth_header``:
robot id, unix time, HMAC over method, path and time). No valid signature from a robot
the key directory knows, or a time more than 5 minutes off: 401. A robot the offer is not
for: 403. An unknown bundle or a name that is not one of its files: 404 (after the check,
so nobody learns what is offered without a key). Names are looked up in the offer's file
list, never joined onto a path, so ``..`` cannot leave the offer's folder.

Dashboard users do not reach these files through their sign-in: the bundle is for robots.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from leafscout.link.mqtt import AUTH_SCHEME, MessageError, parse_auth_header, verify_request
from leafscout.station.bundle_offer import URL_PREFIX, OfferStore
from leafscout.station.keys import KeyRing

__all__ = ["BundleOffers", "offers_from_args", "router"]

log = logging.getLogger(__name__)
router = APIRouter()


@dataclass(frozen=True)
class BundleOffers:
    """What the routes need: the offers directory and the robots' keys."""

    store: OfferStore
    keys: KeyRing


def offers_from_args(args: argparse.Namespace) -> BundleOffers | None:
    """``BundleOffers`` for ``--offers DIR`` and ``--keys DIR``, or None without ``--offers``."""
    if not getattr(args, "offers", None):
        return None
    if not getattr(args, "keys", None):
        raise ValueError("--offers needs --keys DIR: robots prove who they are with their own key")
    return BundleOffers(OfferStore(args.offers), KeyRing.from_dir(args.keys))


def _refuse(status: int, message: str) -> HTTPException:
    headers = {"WWW-Authenticate": AUTH_SCHEME} if status == 401 else None
    return HTTPException(status, message, headers=headers)


def _robot(request: Request, offers: BundleOffers) -> str:
    """The robot that signed this request; 401 otherwise."""
    client = request.client.host if request.client else "unknown"
    try:
        robot, when, sig = parse_auth_header(request.headers.get("authorization", ""))
    except MessageError as e:
        raise _refuse(401, str(e)) from None
    key = offers.keys.for_robot(robot)
    path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path  # as the robot sent it
    if key is None or not verify_request(key, request.method, path, when, sig):
        log.warning("bundle request for %s from %s refused: bad signature or time for robot %r",
                    request.url.path, client, robot)
        raise _refuse(401, "signature does not verify for this robot, or its time is more than 5 minutes off")
    return robot


@router.get(URL_PREFIX + "/{manifest_sha256}/{name}", include_in_schema=False)
def bundle_file(manifest_sha256: str, name: str, request: Request) -> FileResponse:
    offers: BundleOffers | None = getattr(request.app.state, "bundle_offers", None)
    if offers is None:
        raise HTTPException(404, "this station offers no bundles (--offers)")
    robot = _robot(request, offers)
    offer = offers.store.get(manifest_sha256)
    if offer is None:
        raise HTTPException(404, "no such offered bundle")
    if robot not in offer.robots:
        log.warning("robot %s asked for bundle %s offered to %s only", robot, manifest_sha256[:12], offer.robots)
        raise _refuse(403, f"bundle {manifest_sha256[:12]} is not offered to robot {robot}")
    path = offers.store.file(offer, name)
    if path is None:
        raise HTTPException(404, f"{name!r} is not a file of this bundle")
    return FileResponse(path, media_type="application/octet-stream")
