"""Who is asking, and may they: request dependencies, sign-in and sign-out.

Every page except sign-in needs a session cookie (from the sign-in form) or HTTP Basic
credentials (user name + password or token). Without them a request gets 401 (browsers
see the sign-in form); a viewer who tries to write gets 403 before the body is read,
so nothing is stored. Each principal, and each anonymous client address, has its own
token bucket for pages: 429 with ``Retry-After`` when it is empty (thumbnails and
static files are outside that budget: a gallery page shows dozens).

Password checks: a secret not verified before is only checked (scrypt) when neither
the account nor the client address is locked out (:class:`~.ratelimit.LoginGuard`);
failures are logged with the account and the address. Writes (sign-in, sign-out,
records) refuse cross-site requests (``Origin``, ``Sec-Fetch-Site``), and records
must be ``application/json``, so a form on another site or port cannot post with a
signed-in user's cookie.
"""
from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from .auth import Principal
from .pages import render

if TYPE_CHECKING:
    from .app import StationState

log = logging.getLogger(__name__)

SESSION_COOKIE = "leafscout_session"
router = APIRouter()


class NotAuthenticated(Exception):
    """No valid session or credentials."""


class Forbidden(Exception):
    """Signed in, but the role does not allow this."""


class UnsupportedMediaType(Exception):
    """A write that is not JSON."""


class RateLimited(Exception):
    def __init__(self, wait_s: float):
        super().__init__(f"rate limit exceeded; retry in {wait_s:.1f} s")
        self.wait_s = wait_s


class LockedOut(RateLimited):
    """Too many wrong secrets for this account or from this address (answered late: a tarpit)."""

    def __init__(self, wait_s: float):
        super().__init__(wait_s)
        self.args = (f"too many failed sign-ins; locked out for another {wait_s:.0f} s",)


def station_state(request: Request) -> "StationState":
    return request.app.state.station


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        name, sep, secret = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, secret) if sep else None


def _take_token(state: "StationState", key: str) -> None:
    wait = state.limiter.acquire(key)
    if wait > 0:
        raise RateLimited(wait)


def check_secret(request: Request, name: str, secret: str) -> Principal | None:
    """``name``'s principal if ``secret`` is right; raises RateLimited while the account or
    the client is locked out (before any scrypt), and counts and logs each failure."""
    state = station_state(request)
    cached = state.users.cached(name, secret)
    if cached is not None:
        return cached
    client = _client(request)
    account_key, client_key = f"account:{name}", f"client:{client}"
    wait = max(state.logins.wait(account_key), state.client_logins.wait(client_key))
    if wait > 0:
        log.warning("refused sign-in for %r from %s: locked out for another %.0f s", name, client, wait)
        raise LockedOut(wait)
    who = state.users.authenticate(name, secret)
    if who is None:
        lockout = max(state.logins.failed(account_key), state.client_logins.failed(client_key))
        log.warning("failed sign-in for %r from %s%s", name, client,
                    f"; locked out for {lockout:.0f} s" if lockout else "")
        return None
    state.logins.succeeded(account_key)
    return who


def _identify(request: Request) -> Principal | None:
    state = station_state(request)
    state.users.reload_if_changed()
    sid = request.cookies.get(SESSION_COOKIE)
    found = state.sessions.get(sid)
    if found is not None and (found := state.users.current(found)) is None:
        state.sessions.drop(sid)  # removed from the users file, or given a new secret
    if found is None and (creds := _basic_credentials(request)) is not None:
        found = check_secret(request, *creds)
    return found


def principal(request: Request) -> Principal:
    """The signed-in user (session cookie or Basic credentials), after their page rate limit."""
    found = _identify(request)
    _take_token(station_state(request), f"user:{found.name}" if found else f"addr:{_client(request)}")
    if found is None:
        raise NotAuthenticated()
    return found


def asset_viewer(request: Request) -> Principal:
    """The signed-in user, without spending their page budget (thumbnails)."""
    found = _identify(request)
    if found is None:
        _take_token(station_state(request), f"addr:{_client(request)}")
        raise NotAuthenticated()
    return found


def same_origin(request: Request) -> None:
    """Refuse a write that a page of another site, or another port of this host, made."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        host = request.headers.get("host", "")
        if origin == "null" or parts.scheme != request.url.scheme or parts.netloc.lower() != host.lower():
            raise Forbidden(f"cross-origin request refused (Origin {origin!r} is not {request.url.scheme}://{host})")


def writer(request: Request, who: Principal = Depends(principal)) -> Principal:
    """A principal allowed to store records (robot or admin), in a same-origin JSON request."""
    same_origin(request)
    if not who.can_write:
        raise Forbidden(f"user {who.name!r} is a {who.role}; writing needs the robot or admin role")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("records must be sent as application/json")
    return who


@router.get("/signin", name="signin_form")
def signin_form(request: Request, next: str = "/") -> Response:
    return render(request, "signin.html", error=None, next=next)


@router.post("/signin", name="signin_submit")
def signin_submit(request: Request, name: str = Form(...), secret: str = Form(...), next: str = Form("/")) -> Response:
    same_origin(request)
    state = station_state(request)
    _take_token(state, f"addr:{_client(request)}")
    who = check_secret(request, name, secret)
    if who is None:
        return render(request, "signin.html", 401, error="Unknown user name or wrong password/token.", next=next)
    target = next if next.startswith("/") and not next.startswith("//") else "/"  # no open redirect
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, state.sessions.create(who), max_age=int(state.sessions.ttl_s),
                        httponly=True, samesite="strict", secure=state.secure_cookies)
    return response


@router.post("/signout", name="signout")
def signout(request: Request) -> Response:
    same_origin(request)
    station_state(request).sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict",
                           secure=station_state(request).secure_cookies)
    return response
