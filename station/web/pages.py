"""Rendering a packaged template as an HTML response (the version and principal always set).

Templates build links with ``url_for(name, **params)``, which here returns a path, not
an absolute URL built from the request's ``Host`` header; the routes' ``anyid``
convertor percent-encodes the ids in it (:class:`leafscout.station.web.routes.IdConvertor`).
"""
from __future__ import annotations

from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from leafscout import __version__

from .rendering import environment


def link(request: Request, name: str, /, **params: Any) -> str:
    """The path of route ``name`` (ids percent-encoded by their convertor)."""
    return str(request.app.url_path_for(name, **params))


@jinja2.pass_context
def _url_for(context: dict, name: str, /, **params: Any) -> str:
    return link(context["request"], name, **params)


_env = environment().overlay()
_env.globals["url_for"] = _url_for  # Jinja2Templates only sets its own when none is there
_templates = Jinja2Templates(env=_env)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("principal", None)
    return _templates.TemplateResponse(request, name, {"version": __version__, **context}, status_code=status_code)
