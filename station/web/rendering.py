"""The Jinja2 environment and the packaged assets, shared by the dashboard and the report."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"


def pretty_label(label: str) -> str:
    """'Tomato___Late_blight' -> 'Tomato: Late blight', for people rather than programs."""
    from leafscout.station.report import crop_and_disease

    crop, disease = crop_and_disease(label)
    if crop is None:
        return disease or label
    return f"{crop}: {disease or 'healthy'}"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Autoescaping environment over the packaged templates (undefined names are errors)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty_label"] = pretty_label
    return env


def stylesheet() -> str:
    """The dashboard's CSS, for inlining into self-contained files."""
    return (STATIC_DIR / "style.css").read_text(encoding="utf-8")


def map_script() -> str:
    """The field map's script (pan, zoom, click-through), for inlining into the report."""
    return (STATIC_DIR / "map.js").read_text(encoding="utf-8")
