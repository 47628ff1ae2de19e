"""Offering a model bundle to the robots: checked, stored where the web app serves it, announced.

``leafscout station offer-bundle DIR`` does three things:

1. checks the bundle as a robot would before installing it (it loads, its files match their
   hashes, its self-test passes, and with ``--pubkey`` its Ed25519 signature verifies), so a
   bundle every robot would refuse is never announced;
2. copies it into the offers directory, one folder per bundle named by the SHA-256 of its
   ``manifest.json`` (``<offers>/<sha256>/``, with ``offer.json``: version, robots, time);
   the station's web app serves those files to the robots listed there (``station.web.bundles``);
3. publishes a retained, HMAC-sealed ``BundleOffer`` on ``leafscout/<robot>/offer`` for each
   robot, and reads each one back: a broker whose ACL drops the station's offers is an
   error here, not a silence on the robots.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from leafscout.link.mqtt import (
    OFFER_KIND,
    BundleOffer,
    MessageError,
    offer_session,
    parse_mqtt_url,
    parse_offer,
    seal,
    topic,
    unseal,
)
from leafscout.link.files import write_atomic
from leafscout.link.records import ID_PATTERN
from leafscout.station.keys import KeyRing

__all__ = ["OfferError", "OfferStore", "StoredOffer", "announce", "check_bundle", "offer_url"]

log = logging.getLogger(__name__)

OFFER_FILE = "offer.json"
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"  # as in leafscout.vision.bundle
URL_PREFIX = "/robot/bundles"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class OfferError(ValueError):
    """A bundle that cannot be offered, or an offer the broker did not take."""


@dataclass(frozen=True)
class StoredOffer:
    """One offered bundle in the offers directory."""

    root: Path
    manifest_sha256: str
    version: str
    robots: tuple[str, ...]
    files: frozenset[str]  # what may be fetched: manifest.json, manifest.sig and the manifest's files
    offered: float

    def message(self, base_url: str) -> BundleOffer:
        return BundleOffer(self.version, self.manifest_sha256, offer_url(base_url, self.manifest_sha256),
                           self.offered)


def offer_url(base_url: str, manifest_sha256: str) -> str:
    """Where robots fetch the bundle: ``<station base URL>/robot/bundles/<sha256>/``."""
    return f"{base_url.rstrip('/')}{URL_PREFIX}/{manifest_sha256}/"


def check_bundle(src: Path, public_key: bytes | None) -> dict:
    """Load ``src`` (hashes, model, signature when a key is given) and run its self-test; the manifest."""
    from leafscout.vision.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(src, threads=1, public_key=public_key)
        result = bundle.self_test()
    except BundleError as e:
        raise OfferError(f"{src}: {e}") from e
    if result.ok is not True:  # robots refuse bundles without a passing self-test: do not announce one
        raise OfferError(f"{src}: self-test {'failed' if result.ok is False else 'missing'}: {result.detail}")
    if public_key is None:
        log.warning("%s: no --pubkey: the signature is checked only by the robots", src)
    return bundle.manifest


class OfferStore:
    """The offers directory (``--offers DIR``): ``<sha256>/`` folders the web app serves."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def add(self, src: str | os.PathLike, *, robots: list[str], public_key: bytes | None = None) -> StoredOffer:
        """Check bundle ``src`` and store it for ``robots``; offering it again updates the robot list."""
        import hashlib

        src = Path(src)
        manifest = check_bundle(src, public_key)
        raw = (src / MANIFEST).read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        names = [MANIFEST, *manifest["files"]] + ([SIGNATURE] if (src / SIGNATURE).is_file() else [])
        odd = [n for n in manifest["files"] if Path(n).name != n or n.startswith(".") or n in (MANIFEST, SIGNATURE)]
        if odd:  # robots would refuse them too; and nothing is copied from or to outside the folders
            raise OfferError(f"{src}: the manifest lists {odd}, not plain file names")
        target = self.root / sha
        if not (target / MANIFEST).is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            staging = self.root / f".staging-{sha[:12]}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                for name in names:
                    shutil.copyfile(src / name, staging / name)
                os.rename(staging, target)  # robots never see half a bundle
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        version = str((manifest.get("provenance") or {}).get("created") or "unversioned")[:64]
        info = {"manifest_sha256": sha, "version": version, "robots": sorted(robots), "files": sorted(names),
                "offered": time.time(), "source": str(src.resolve())}
        write_atomic(target / OFFER_FILE, json.dumps(info, indent=1) + "\n")
        return self._read(target)

    def get(self, manifest_sha256: str) -> StoredOffer | None:
        """The offer stored under this manifest hash, or None (also for anything that is not a hash)."""
        if not _SHA256.fullmatch(manifest_sha256):
            return None
        folder = self.root / manifest_sha256
        return self._read(folder) if (folder / OFFER_FILE).is_file() else None

    @staticmethod
    def _read(folder: Path) -> StoredOffer:
        info = json.loads((folder / OFFER_FILE).read_text())
        return StoredOffer(folder, info["manifest_sha256"], info["version"], tuple(info["robots"]),
                           frozenset(info["files"]), float(info["offered"]))

    def file(self, offer: StoredOffer, name: str) -> Path | None:
        """The path of ``name`` in ``offer`` when it is one of its files, else None (no traversal)."""
        if name not in offer.files:
            return None
        path = offer.root / name
        return path if path.is_file() else None


def announce(offer: StoredOffer, *, base_url: str, mqtt_url: str, password: str | None, keys: KeyRing,
             timeout_s: float = 10.0) -> list[str]:
    """Publish the offer, retained and sealed with each robot's key, and read each one back.

    Returns the robots it was announced to; ``MqttLinkError`` when the broker cannot be
    reached or refuses the station, ``OfferError`` when it does not deliver an offer back
    (its ACL must let the station write ``leafscout/+/offer``).
    """
    message = offer.message(base_url).to_dict()
    for robot in offer.robots:
        if not ID_PATTERN.fullmatch(robot) or keys.for_robot(robot) is None:
            raise OfferError(f"robot {robot!r} has no key in the key directory: it could not fetch the bundle")
    pending = {topic(r, OFFER_KIND): r for r in offer.robots}
    lock, echoed = threading.Lock(), threading.Event()

    def on_message(c, userdata, msg) -> None:
        robot = pending.get(msg.topic)
        if robot is None or msg.retain:  # the retained copy may be an older offer
            return
        try:
            body = parse_offer(unseal(msg.topic, msg.payload, keys.for_robot(robot)))
        except MessageError:
            return
        if body.manifest_sha256 == offer.manifest_sha256:
            with lock:
                pending.pop(msg.topic, None)
                if not pending:
                    echoed.set()

    with offer_session(parse_mqtt_url(mqtt_url, password), f"leafscout-offer-{os.getpid()}",
                       f"leafscout/+/{OFFER_KIND}", on_message, timeout_s) as client:
        for robot in offer.robots:
            t = topic(robot, OFFER_KIND)
            client.publish(t, seal(t, message, keys.for_robot(robot)), qos=1, retain=True).wait_for_publish(timeout_s)
        if not echoed.wait(timeout_s):
            raise OfferError(f"the broker did not take the offer for {sorted(pending.values())}: does its ACL let "
                             f"the station write leafscout/+/{OFFER_KIND} (docs/station.md)?")
    log.info("offered bundle %s (%s) to %s", offer.version, offer.manifest_sha256[:12], ", ".join(offer.robots))
    return list(offer.robots)
