"""Who is asking, and may they: request dependencies, sign-in and sign-out.

Every page except sign-in needs a session cookie (from the sign-in form) or HTTP Basic
credentials (user name + password or token). Without them a request gets 401 (browsers
see the sign-in form); a viewer who tries to write gets 403 before the body is read,
so nothing is stored. Each principal, and each anonymous client address, has its own
token bucket: 429 with ``Retry-After`` when it is empty.
"""
from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING

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


class RateLimited(Exception):
    def __init__(self, wait_s: float):
        super().__init__(f"rate limit exceeded; retry in {wait_s:.1f} s")
        self.wait_s = wait_s


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


def principal(request: Request) -> Principal:
    """The signed-in user (session cookie or Basic credentials), after their rate limit."""
    state = station_state(request)
    found = state.sessions.get(request.cookies.get(SESSION_COOKIE))
    if found is None and (creds := _basic_credentials(request)) is not None:
        found = state.users.authenticate(*creds)
    _take_token(state, f"user:{found.name}" if found else f"addr:{_client(request)}")
    if found is None:
        raise NotAuthenticated()
    return found


def writer(who: Principal = Depends(principal)) -> Principal:
    """A principal allowed to store records (robot or admin)."""
    if not who.can_write:
        raise Forbidden(f"user {who.name!r} is a {who.role}; writing needs the robot or admin role")
    return who


@router.get("/signin", name="signin_form")
def signin_form(request: Request, next: str = "/") -> Response:
    return render(request, "signin.html", error=None, next=next)


@router.post("/signin", name="signin_submit")
def signin_submit(request: Request, name: str = Form(...), secret: str = Form(...), next: str = Form("/")) -> Response:
    state = station_state(request)
    _take_token(state, f"addr:{_client(request)}")  # slows down password guessing
    who = state.users.authenticate(name, secret)
    if who is None:
        log.info("failed sign-in for %r from %s", name, _client(request))
        return render(request, "signin.html", 401, error="Unknown user name or wrong password/token.", next=next)
    target = next if next.startswith("/") and not next.startswith("//") else "/"  # no open redirect
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, state.sessions.create(who), max_age=int(state.sessions.ttl_s),
                        httponly=True, samesite="strict", secure=state.secure_cookies)
    return response


@router.post("/signout", name="signout")
def signout(request: Request) -> Response:
    station_state(request).sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
