"""Rendering a packaged template as an HTML response (the version and principal always set)."""
from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from leafscout import __version__

from .rendering import environment

_templates = Jinja2Templates(env=environment())


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("principal", None)
    return _templates.TemplateResponse(request, name, {"version": __version__, **context}, status_code=status_code)
