"""Installing the bundle the station offers, between surveys: ``leafscout bundle fetch``.

The station announces a bundle on ``leafscout/<robot>/offer`` (retained, sealed with the
robot's key; ``leafscout.link.mqtt.BundleOffer``). Two things on the robot use it:

* the running survey's MQTT link only *notes* the offer (``bundle_offer.json`` beside the
  outbox, and a log line): a survey never changes its model mid-run;
* ``leafscout bundle fetch`` (the service's ``ExecStartPre``, so before every survey, or by
  hand between two) reads the offer from the broker (else the noted one), downloads the
  files over HTTP, each request signed with the robot's key, checks the manifest against the
  offered hash and installs it through ``BundleStore.install``: the Ed25519 signature,
  hashes, downgrade refusal, self-test, atomic switch and last-known-good of ``bundle
  install``. While a survey runs (its ``status.json`` says running and its process lives)
  it installs nothing and says so.

Every outcome, good or bad, is logged and written to ``bundle_update.json`` in the state
directory; a failed download or install leaves the current bundle as it was.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from leafscout.link.files import write_atomic
from leafscout.link.mqtt import (
    OFFER_KIND,
    BundleOffer,
    MessageError,
    auth_header,
    offer_session,
    parse_mqtt_url,
    parse_offer,
    topic,
    unseal,
)
from leafscout.vision.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleError, file_sha256

from .bundle_store import BundleStore, DowngradeError

__all__ = [
    "OFFER_NOTE",
    "UPDATE_STATUS",
    "FetchError",
    "UpdateResult",
    "download",
    "note_offer",
    "offer_from_broker",
    "read_noted_offer",
    "read_update_status",
    "report",
    "run_in_progress",
    "update_from_offer",
]

log = logging.getLogger(__name__)

OFFER_NOTE = "bundle_offer.json"  # the last offer the running survey heard
UPDATE_STATUS = "bundle_update.json"  # the last fetch: what happened and why
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 1 << 30
HTTP_TIMEOUT_S = 30.0


class FetchError(RuntimeError):
    """The offer could not be read or the bundle not downloaded (network, station refused, bad hash)."""


class HttpRefused(FetchError):
    """The station answered with an HTTP error (401 the robot's key, 403 not offered to it, 404)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _write_json(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")  # `leafscout bundle show` never reads half a file


def note_offer(path: str | os.PathLike, offer: BundleOffer) -> None:
    """Remember an offer heard during a survey (installed by the next ``bundle fetch``)."""
    _write_json(Path(path), {**offer.to_dict(), "noted": time.time()})


def read_noted_offer(path: str | os.PathLike) -> BundleOffer | None:
    """The offer ``note_offer`` wrote, or None when there is none (or it is unreadable)."""
    try:
        return parse_offer(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return None


def offer_from_broker(url: str, robot_id: str, key: bytes | None, *, password: str | None = None,
                      wait_s: float = 5.0) -> BundleOffer | None:
    """The retained offer for ``robot_id``; None when the broker holds none within ``wait_s``.

    ``MqttLinkError`` when the broker cannot be reached or refuses the robot; ``FetchError``
    when the offer's seal does not verify with ``key`` (a wrong key file, or not the station's).
    """
    t = topic(robot_id, OFFER_KIND)
    found: list[BundleOffer | MessageError] = []
    got = threading.Event()

    def on_message(c, userdata, msg) -> None:
        if msg.topic != t or not msg.payload:  # an empty retained message withdraws the offer
            return
        try:
            found.append(parse_offer(unseal(msg.topic, msg.payload, key)))
        except MessageError as e:
            found.append(e)
        got.set()

    with offer_session(parse_mqtt_url(url, password), f"leafscout-fetch-{robot_id}", t, on_message, wait_s):
        got.wait(wait_s)  # a retained message comes right after the subscription, if there is one
    if found and isinstance(found[-1], MessageError):
        raise FetchError(f"the offer on {t} does not verify with this robot's key ({found[-1]})")
    return found[-1] if found else None


def run_in_progress(status_path: str | os.PathLike, survey_id: str | None = None) -> str | None:
    """Why a survey counts as under way (None when none is): its status file says running and
    its process lives, or it says running for ``survey_id`` (a run that crashed: systemd's
    restart continues that survey, which must keep its model)."""
    try:
        status = json.loads(Path(status_path).read_text())
        pid = int(status.get("pid") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if status.get("state") != "running" or pid == os.getpid():
        return None
    alive = False
    if pid > 0:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            pass
        except PermissionError:
            alive = True  # another user's process
    if alive:
        return f"survey {status.get('survey_id')} is running (pid {pid})"
    if survey_id is not None and status.get("survey_id") == survey_id:
        return f"survey {survey_id} did not end (its run stopped without finishing: it continues at this start)"
    return None


def _get(url: str, dest: Path, robot_id: str, key: bytes, max_bytes: int, context: ssl.SSLContext | None) -> str:
    """Download ``url`` to ``dest`` with a signed request; its SHA-256."""
    request = urllib.request.Request(url, headers={"Authorization": auth_header(robot_id, key, "GET",
                                                                                urlsplit(url).path)})
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=context) as response, \
                open(dest, "wb") as out:
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{url}: larger than {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode("utf-8", "replace")
        raise HttpRefused(f"the station refused {url}: HTTP {e.code} {detail}", e.code) from None
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"cannot download {url}: {getattr(e, 'reason', e)}") from e
    return digest.hexdigest()


def download(offer: BundleOffer, dest: str | os.PathLike, *, robot_id: str, key: bytes,
             cafile: str | os.PathLike | None = None) -> Path:
    """Fetch the offered bundle into ``dest``: the manifest (it must hash to the offered
    SHA-256), its signature and every file it lists. Nothing is trusted yet: install checks it."""
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    got = _get(offer.url + MANIFEST_NAME, dest / MANIFEST_NAME, robot_id, key, MAX_MANIFEST_BYTES, context)
    if got != offer.manifest_sha256:
        raise FetchError(f"{offer.url}{MANIFEST_NAME} has sha256 {got}, the offer says {offer.manifest_sha256}")
    from leafscout.vision.bundle import read_manifest

    files = read_manifest(dest)["files"]
    for name in files:
        if Path(name).name != name or name in (MANIFEST_NAME, SIGNATURE_NAME) or name.startswith("."):
            raise FetchError(f"the manifest lists {name!r}, not a plain file name")
        _get(offer.url + name, dest / name, robot_id, key, MAX_FILE_BYTES, context)
    try:
        _get(offer.url + SIGNATURE_NAME, dest / SIGNATURE_NAME, robot_id, key, MAX_MANIFEST_BYTES, context)
    except HttpRefused as e:
        if e.status != 404:
            raise
        (dest / SIGNATURE_NAME).unlink(missing_ok=True)  # unsigned: install refuses it and says why
    return dest


@dataclass(frozen=True)
class UpdateResult:
    """``state``: installed, up-to-date, no-offer, deferred, refused, downgrade or failed."""

    state: str
    detail: str
    offer: BundleOffer | None = None
    version: str | None = None  # the bundle current after this attempt

    @property
    def ok(self) -> bool:
        return self.state in ("installed", "up-to-date", "no-offer")

    def to_dict(self) -> dict:
        return {"state": self.state, "detail": self.detail, "offer": self.offer.to_dict() if self.offer else None,
                "current": self.version, "updated": time.time(),
                "updated_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def read_update_status(path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _manifest_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return file_sha256(path / MANIFEST_NAME)
    except OSError:
        return None


def update_from_offer(offer: BundleOffer | None, store: BundleStore, *, robot_id: str, key: bytes | None,
                      public_key: bytes, status_path: str | os.PathLike | None = None,
                      run_status: str | os.PathLike | None = None, survey_id: str | None = None,
                      allow_downgrade: bool = False, cafile: str | os.PathLike | None = None) -> UpdateResult:
    """Install ``offer`` unless it is current, a survey is under way (``run_status``, the
    runtime's status.json; ``survey_id``, the survey the next run continues), or a check
    fails; write ``status_path``."""
    result = _update(offer, store, robot_id=robot_id, key=key, public_key=public_key, run_status=run_status,
                     survey_id=survey_id, allow_downgrade=allow_downgrade, cafile=cafile)
    return report(result, status_path)


def report(result: UpdateResult, status_path: str | os.PathLike | None) -> UpdateResult:
    """Log ``result`` and write it to ``status_path`` (``bundle_update.json``) when given."""
    level = logging.INFO if result.ok else logging.WARNING if result.state == "deferred" else logging.ERROR
    log.log(level, "bundle update: %s: %s", result.state, result.detail)
    if status_path is not None:
        _write_json(Path(status_path), result.to_dict())
    return result


def _update(offer: BundleOffer | None, store: BundleStore, *, robot_id: str, key: bytes | None,
            public_key: bytes, run_status: str | os.PathLike | None, survey_id: str | None,
            allow_downgrade: bool, cafile: str | os.PathLike | None) -> UpdateResult:
    current = store.version_of(store.current)
    now = str(current) if current else None
    if offer is None:
        return UpdateResult("no-offer", "the station offers no bundle", None, now)
    if _manifest_sha256(store.current) == offer.manifest_sha256:
        return UpdateResult("up-to-date", f"the offered bundle ({offer.version}) is current", offer, now)
    busy = run_in_progress(run_status, survey_id) if run_status is not None else None
    if busy is not None:
        return UpdateResult("deferred", f"{busy}; the offer is installed after it", offer, now)
    if key is None:
        return UpdateResult("failed", "no HMAC key (--hmac-key-file): the robot cannot sign its download",
                            offer, now)
    staging = store.root / f".fetch-{offer.manifest_sha256[:12]}-{os.getpid()}"
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        src = download(offer, staging, robot_id=robot_id, key=key, cafile=cafile)
        result = store.install(src, public_key=public_key, allow_downgrade=allow_downgrade)
    except DowngradeError as e:
        return UpdateResult("downgrade", str(e), offer, now)
    except BundleError as e:  # InstallError, signature, hashes, self-test, format
        return UpdateResult("refused", str(e), offer, now)
    except (FetchError, OSError) as e:
        return UpdateResult("failed", str(e), offer, now)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    version = str(result.version)
    if not result.changed:
        return UpdateResult("up-to-date", result.detail, offer, version)
    return UpdateResult("installed", f"{version} is current (last-known-good: {result.previous or 'none'}); "
                        f"self-test {result.detail}", offer, version)
