"""``create_app``: the dashboard's ASGI app for one station database.

Routes live in :mod:`leafscout.station.web.access` (sign-in, who may do what) and
:mod:`leafscout.station.web.routes` (pages, downloads, the write endpoint); this module wires
them to one :class:`StationState`, maps the access errors to 401/403/404/413/415/422/429
and adds the security headers to every response (:class:`SecurityHeaders`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from leafscout import __version__
from leafscout.station.db import StationDB, open_db, read_rows
from leafscout.station.sql import Connection, is_broken

from . import access, bundles, queries, routes
from .aggregates import SurveyAggregates, SurveySummary
from .auth import SessionStore, UserStore
from .pages import render
from .ratelimit import LoginGuard, RateLimiter, retry_after_header
from .rendering import STATIC_DIR

log = logging.getLogger(__name__)


class _Readers:
    """One read-only connection per worker thread (``connect()``), all closed at shutdown."""

    def __init__(self, connect: Callable[[], Connection]):
        self.connect = connect
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def get(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and is_broken(conn):  # the PostgreSQL server restarted
            with self._lock:
                self._all.remove(conn)
            conn.close()
            conn = None
        if conn is None:
            conn = self._local.conn = self.connect()
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


RENDERINGS_KEPT = 96  # field maps, time charts and summary JSON of the surveys looked at last


@dataclass
class StationState:
    """What every request handler shares (``request.app.state.station``)."""

    db: StationDB
    owns_db: bool
    users: UserStore
    sessions: SessionStore
    limiter: RateLimiter
    logins: LoginGuard  # failed sign-ins per account
    client_logins: LoginGuard  # failed sign-ins per client address
    readers: _Readers
    aggregates: SurveyAggregates
    secure_cookies: bool
    login_tarpit_s: float
    basemap: "BasemapFile | None" = None

    rendered: dict = field(default_factory=dict)  # (survey, kind) -> (summary, rendering)
    rendered_lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self, conn: Connection, survey_id: str) -> SurveySummary:
        """The survey's statistics; the same object for as long as no record changes them."""
        return self.aggregates.summary(conn, survey_id, read_rows(conn, survey_id))

    def rendering(self, summary: SurveySummary, kind: str, make: Callable[[SurveySummary], Any]) -> Any:
        """``make(summary)``, remembered until the survey's statistics change (a page view
        between two records renders nothing again: the map alone is thousands of cells)."""
        key = (summary.survey_id, kind)
        with self.rendered_lock:
            hit = self.rendered.get(key)
        if hit is not None and hit[0] is summary:
            return hit[1]
        value = make(summary)
        with self.rendered_lock:
            self.rendered.pop(key, None)
            self.rendered[key] = (summary, value)
            while len(self.rendered) > RENDERINGS_KEPT:  # the least recently made go first
                del self.rendered[next(iter(self.rendered))]
        return value


@dataclass(frozen=True)
class BasemapFile:
    """A north-up image of the field (PNG/JPEG/WebP) and its bounds: west, south, east, north
    (WGS 84 degrees), e.g. a drone orthophoto exported from QGIS. No tiles from the internet."""

    path: Path
    bounds: tuple[float, float, float, float]

    MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}

    @classmethod
    def parse(cls, path: str | Path, bounds: str) -> "BasemapFile":
        """From ``--basemap IMAGE --basemap-bounds WEST,SOUTH,EAST,NORTH``; ValueError names the problem."""
        path = Path(path)
        if path.suffix.lower() not in cls.MEDIA_TYPES or not path.is_file():
            raise ValueError(f"basemap {str(path)!r} must be an existing {'/'.join(cls.MEDIA_TYPES)} file")
        try:
            west, south, east, north = (float(x) for x in bounds.split(","))
        except ValueError:
            raise ValueError(f"basemap bounds {bounds!r}: expected WEST,SOUTH,EAST,NORTH in degrees") from None
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise ValueError(f"basemap bounds {bounds!r}: need west < east and south < north inside WGS 84")
        return cls(path, (west, south, east, north))

    @property
    def media_type(self) -> str:
        return self.MEDIA_TYPES[self.path.suffix.lower()]

    def data_url(self) -> str:
        """The image inline, for the self-contained report."""
        import base64

        return f"data:{self.media_type};base64," + base64.b64encode(self.path.read_bytes()).decode("ascii")


def _user_store(users: UserStore | str | Path | dict) -> UserStore:
    if isinstance(users, UserStore):
        return users
    if isinstance(users, dict):
        return UserStore(users)
    return UserStore.from_file(users)


def create_app(
    db: StationDB | str | Path,
    users: UserStore | str | Path | dict,
    *,
    rate_per_s: float = 20.0,
    burst: int = 120,
    session_ttl_s: float = 12 * 3600,
    secure_cookies: bool = False,
    login_failures: int = 5,
    client_login_failures: int = 20,
    login_tarpit_s: float = 1.0,
    basemap: "BasemapFile | None" = None,
    bundle_offers: "bundles.BundleOffers | None" = None,
) -> FastAPI:
    """Build the dashboard for a station database.

    ``db`` is an open ``StationDB`` (shared with the receivers) or a path or URL to open
    (pages read through ``StationDB.reader()``: a PostgreSQL replica when it names one);
    ``users`` a ``UserStore``, a users-file path, or the file's ``users`` mapping.
    ``rate_per_s``/``burst`` set each principal's token bucket. Set ``secure_cookies``
    when the station is served over HTTPS. ``login_failures`` wrong secrets for one
    account within a minute (``client_login_failures`` from one address) lock it out for
    a minute, then 2, 4, ... up to an hour; each refused attempt is answered after
    ``login_tarpit_s``. ``basemap`` is an image of the field drawn under GPS maps.
    ``bundle_offers`` serves offered model bundles to the robots (:mod:`.bundles`).
    """
    owns_db = not isinstance(db, StationDB)
    station_db = open_db(db) if owns_db else db
    store = _user_store(users)
    if len(store) == 0:
        log.warning("no users configured: nobody can sign in (add one with `leafscout add-user`)")
    station_db.ensure_indexes(queries.INDEXES)
    state = StationState(station_db, owns_db, store, SessionStore(session_ttl_s), RateLimiter(rate_per_s, burst),
                         LoginGuard(login_failures), LoginGuard(client_login_failures),
                         _Readers(station_db.reader), SurveyAggregates(), secure_cookies, login_tarpit_s, basemap)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Read what is already stored once, before the first page is asked for.
        await run_in_threadpool(lambda: state.aggregates.refresh(state.readers.get()))
        yield
        state.readers.close()
        if state.owns_db:
            state.db.close()

    app = FastAPI(title="leafscout station", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.station = state
    app.state.bundle_offers = bundle_offers
    app.add_middleware(SecurityHeaders, hsts=secure_cookies)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(access.router)
    app.include_router(routes.router)
    app.include_router(bundles.router)
    _add_error_pages(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"ok": True}

    return app


def _add_error_pages(app: FastAPI) -> None:
    def detail(status: int, message: str, headers: dict | None = None) -> Response:
        return JSONResponse({"detail": message}, status, headers=headers)

    @app.exception_handler(access.NotAuthenticated)
    async def _unauthenticated(request: Request, _exc: Exception) -> Response:
        if "text/html" in request.headers.get("accept", ""):  # a browser: show the sign-in form
            return render(request, "signin.html", 401, error=None, next=request.url.path)
        return detail(401, "sign in or send HTTP Basic credentials (user name, password or token)",
                      {"WWW-Authenticate": 'Basic realm="leafscout station"'})

    @app.exception_handler(access.Forbidden)
    async def _forbidden(request: Request, exc: Exception) -> Response:
        return detail(403, str(exc))

    @app.exception_handler(access.RateLimited)
    async def _rate_limited(request: Request, exc: access.RateLimited) -> Response:
        headers = {"Retry-After": retry_after_header(exc.wait_s)}
        if not isinstance(exc, access.LockedOut):
            return detail(429, str(exc), headers)
        # A guesser that ignores Retry-After waits anyway, without holding a thread or the CPU,
        # so eight guessing threads cost the station a few requests a second, not its cores.
        await asyncio.sleep(access.station_state(request).login_tarpit_s)
        if "text/html" in request.headers.get("accept", ""):  # a browser: the sign-in form says why
            response = render(request, "signin.html", 429, error=f"{str(exc).capitalize()}.", next="/")
            response.headers.update(headers)
            return response
        return detail(429, str(exc), headers)

    @app.exception_handler(routes.NotFound)
    async def _not_found(request: Request, exc: Exception) -> Response:
        return detail(404, str(exc))

    @app.exception_handler(access.UnsupportedMediaType)
    async def _not_json(request: Request, exc: Exception) -> Response:
        return detail(415, str(exc))

    @app.exception_handler(routes.BadFilter)
    async def _bad_filter(request: Request, exc: Exception) -> Response:
        return detail(422, str(exc))

    @app.exception_handler(routes.BodyTooLarge)
    async def _too_large(request: Request, exc: Exception) -> Response:
        return detail(413, str(exc))


# Everything the pages use is served by the station itself; inline style attributes
# (SVG colours) are allowed, inline scripts are not.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
_SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware: CSP (unless the route set its own), frame, sniffing and referrer
    headers on every response; HSTS when served over HTTPS."""

    def __init__(self, app, *, hsts: bool = False):
        self.app = app
        self.extra = [*_SECURITY_HEADERS]
        if hsts:
            self.extra.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                headers += [h for h in self.extra if h[0] not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
