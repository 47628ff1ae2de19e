"""The station's web dashboard: field map, statistics, gallery and exports, behind sign-in.

``create_app(db, users=...)`` builds the ASGI app; ``WebServer`` runs it beside the
receivers in the station process. Importing this package stays cheap: FastAPI and
uvicorn load only when those names are used.
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "WebServer", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("WebServer", "serve"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
