"""The field's hard cases for the simulator, each a small named function.

``leafscout simulate --conditions speckled,weeds,warm`` combines any of them. There
are four kinds, applied at different points of rendering a row:

- ``soil``: the ground itself (replaces the plain brown soil): speckled, gravel, chroma;
- ``ground``: things lying on the soil under the leaves: clods, stones, straw, grass,
  seedlings, weeds (grass and seedlings);
- ``layout``: where plants grow: touching, overlapping (closer spacing), bare (a
  stretch of each row without plants);
- ``frame``: what the camera does to each picture: exposure, white-balance, shadows,
  blur, noise.

Every function draws with the ``rng`` it is given, so a field stays reproducible by seed.
Colours are BGR uint8.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

__all__ = ["Condition", "CONDITIONS", "parse_conditions", "ConditionError", "SOIL_TEXTURES"]


class ConditionError(ValueError):
    """An unknown or badly combined condition."""


Rng = np.random.Generator


# -- soil --------------------------------------------------------------------------------------------
def _base_soil(rng: Rng, h: int, w: int, base: np.ndarray, blotch: float, grain: float) -> np.ndarray:
    low = rng.normal(0, 1, (max(2, h // 40), max(2, w // 40), 1)).astype(np.float32)
    low = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)[:, :, None] * blotch
    return np.clip(base + low + rng.normal(0, grain, (h, w, 1)).astype(np.float32), 0, 255)


def speckled_soil(rng: Rng, h: int, w: int) -> np.ndarray:
    """Coarse colour-speckled soil: 2-6 px grains of many mineral colours, some of them greenish."""
    soil = _base_soil(rng, h, w, np.array([45, 58, 90], np.float32), 10, 6).astype(np.uint8)
    n = w * h // 60
    xs, ys = rng.integers(0, w, n), rng.integers(0, h, n)
    colours = rng.integers(30, 200, (n, 3))
    colours[: n // 6, 1] = np.minimum(255, colours[: n // 6, 1] + 50)  # green-tinted grains: the trap
    for x, y, r, c in zip(xs, ys, rng.integers(1, 4, n), colours):
        cv2.circle(soil, (int(x), int(y)), int(r), tuple(int(v) for v in c), -1)
    return soil


def gravel_soil(rng: Rng, h: int, w: int) -> np.ndarray:
    """Gravel: packed grey and ochre stones 4-14 px with light tops and dark gaps."""
    soil = _base_soil(rng, h, w, np.array([70, 75, 80], np.float32), 8, 10).astype(np.uint8)
    n = w * h // 90
    for x, y, r, g in zip(rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(2, 8, n),
                          rng.integers(70, 200, n)):
        tint = rng.integers(-12, 20)
        stone = (int(g - tint), int(g), int(g + tint))
        cv2.ellipse(soil, (int(x), int(y)), (int(r), int(r * rng.uniform(0.5, 1))), float(rng.uniform(0, 180)), 0, 360,
                    stone, -1)
    return soil


def chroma_soil(rng: Rng, h: int, w: int) -> np.ndarray:
    """Soil under strong per-pixel chroma noise (a cheap sensor in poor light): every hue, green too."""
    soil = _base_soil(rng, h, w, np.array([40, 55, 95], np.float32), 12, 4)
    chroma = rng.normal(0, 16, (h, w, 3)).astype(np.float32)
    return np.clip(soil + chroma - chroma.mean(axis=2, keepdims=True), 0, 255).astype(np.uint8)


# -- things on the ground ------------------------------------------------------------------------
def _count(h: int, w: int, per_mpx: float) -> int:
    return int(round(per_mpx * h * w / 1e6))


def clods(rng: Rng, ground: np.ndarray) -> None:
    """Dark clods of earth, 10-40 px, lit from one side."""
    h, w = ground.shape[:2]
    for _ in range(_count(h, w, 300)):
        c = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(5, 20)), int(rng.integers(4, 14)))
        angle = float(rng.uniform(0, 180))
        shade = rng.uniform(0.45, 0.8)
        colour = tuple(int(v * shade) for v in (45, 60, 95))
        cv2.ellipse(ground, c, axes, angle, 0, 360, colour, -1)
        lit = (c[0] - axes[0] // 3, c[1] - axes[1] // 3)
        cv2.ellipse(ground, lit, (axes[0] // 2, axes[1] // 2), angle, 0, 360, tuple(int(v * 1.3) for v in colour), -1)


def stones(rng: Rng, ground: np.ndarray) -> None:
    """Grey and reddish stones, 5-30 px, with a highlight."""
    h, w = ground.shape[:2]
    for _ in range(_count(h, w, 250)):
        c = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(3, 15)), int(rng.integers(3, 11)))
        g = int(rng.integers(90, 210))
        tint = int(rng.integers(-10, 25))
        cv2.ellipse(ground, c, axes, float(rng.uniform(0, 180)), 0, 360, (g - tint, g, g + tint), -1)
        cv2.circle(ground, (c[0] - axes[0] // 3, c[1] - axes[1] // 3), max(1, axes[1] // 3),
                   (min(255, g + 40),) * 3, -1)


def straw(rng: Rng, ground: np.ndarray) -> None:
    """Straw mulch: pale yellow stalks, 20-90 px long, covering most of the soil."""
    h, w = ground.shape[:2]
    for _ in range(_count(h, w, 9000)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length, a = rng.uniform(20, 90), rng.uniform(0, np.pi)
        dx, dy = np.cos(a) * length / 2, np.sin(a) * length / 2
        v = rng.uniform(0.65, 1.0)
        colour = (int(v * rng.uniform(90, 140)), int(v * rng.uniform(165, 200)), int(v * rng.uniform(195, 230)))
        cv2.line(ground, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), colour, int(rng.integers(2, 5)),
                 cv2.LINE_AA)


def _green(rng: Rng) -> tuple[int, int, int]:
    return int(rng.integers(30, 70)), int(rng.integers(120, 190)), int(rng.integers(40, 110))


def grass(rng: Rng, ground: np.ndarray) -> None:
    """Grass weeds: tufts of thin green blades (2-4 px wide, 25-70 px long) between the plants."""
    h, w = ground.shape[:2]
    for _ in range(_count(h, w, 60)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        colour = _green(rng)
        for _ in range(int(rng.integers(3, 8))):
            a, length = rng.uniform(0, 2 * np.pi), rng.uniform(25, 70)
            end = (int(x + np.cos(a) * length), int(y + np.sin(a) * length))
            cv2.line(ground, (int(x), int(y)), end, colour, int(rng.integers(2, 5)), cv2.LINE_AA)


def seedlings(rng: Rng, ground: np.ndarray) -> None:
    """Weed seedlings: two to four small round leaves, 4-9 px each."""
    h, w = ground.shape[:2]
    for _ in range(_count(h, w, 120)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        colour = _green(rng)
        for k in range(int(rng.integers(2, 5))):
            a = k * 2 * np.pi / 4 + rng.uniform(-0.3, 0.3)
            r = int(rng.integers(4, 10))
            cv2.ellipse(ground, (int(x + np.cos(a) * r), int(y + np.sin(a) * r)), (r, max(2, r // 2)),
                        float(np.degrees(a)), 0, 360, colour, -1)


def weeds(rng: Rng, ground: np.ndarray) -> None:
    """Grass tufts and seedlings together."""
    grass(rng, ground)
    seedlings(rng, ground)


# -- the camera ---------------------------------------------------------------------------------
def exposure(rng: Rng, frame: np.ndarray, t: float) -> np.ndarray:
    """Auto-exposure hunting: brightness x0.55-1.5, drifting over seconds."""
    s = float(np.sin(0.7 * t))
    gain = 1.5**s if s > 0 else 0.55 ** (-s)
    return cv2.convertScaleAbs(frame, alpha=gain)


def white_balance(rng: Rng, frame: np.ndarray, t: float) -> np.ndarray:
    """A warm cast (low sun, wrong camera white balance): red x1.25, blue x0.7."""
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * np.array([0.7, 1.0, 1.25], np.float32), 0, 255)
    return cv2.LUT(frame, lut.astype(np.uint8).reshape(256, 1, 3))


def shadows(rng: Rng, frame: np.ndarray, t: float) -> np.ndarray:
    """The robot's own shadow: a soft-edged band at 45 % brightness sweeping across the picture."""
    h, w = frame.shape[:2]
    x = np.arange(w, dtype=np.float32)
    centre = (0.5 + 0.45 * np.sin(0.9 * t)) * w
    inside = np.clip((w * 0.18 - np.abs(x - centre)) / 12.0, 0, 1)  # soft edges, 12 px
    shade = (1.0 - 0.55 * inside)[None, :, None]
    return (frame * shade).astype(np.uint8)


def blur(rng: Rng, frame: np.ndarray, t: float) -> np.ndarray:
    """Motion blur along the direction of travel, 9 px (a slow shutter at 1 m/s)."""
    return cv2.blur(frame, (9, 1))


def noise(rng: Rng, frame: np.ndarray, t: float) -> np.ndarray:
    """Sensor noise: Gaussian, sigma 8 grey levels per channel."""
    return np.clip(frame + rng.normal(0, 8, frame.shape).astype(np.float32), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str  # soil | ground | layout | frame
    apply: Callable | None  # soil: (rng, h, w) -> img; ground: (rng, img) in place; frame: (rng, img, t) -> img
    doc: str


def _c(name: str, kind: str, fn: Callable | None, doc: str | None = None) -> Condition:
    return Condition(name, kind, fn, (doc or (fn.__doc__ or "")).strip().splitlines()[0])


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    _c("speckled", "soil", speckled_soil), _c("gravel", "soil", gravel_soil), _c("chroma", "soil", chroma_soil),
    _c("clods", "ground", clods), _c("stones", "ground", stones), _c("straw", "ground", straw),
    _c("grass", "ground", grass), _c("seedlings", "ground", seedlings), _c("weeds", "ground", weeds),
    _c("touching", "layout", None, "Plants one leaf length apart along each line: leaves touch."),
    _c("overlapping", "layout", None, "Plants 0.75 leaf lengths apart: neighbouring leaves overlap."),
    _c("bare", "layout", None, "A bare stretch (a third of each row) without plants."),
    _c("exposure", "frame", exposure), _c("white-balance", "frame", white_balance), _c("shadows", "frame", shadows),
    _c("blur", "frame", blur), _c("noise", "frame", noise),
)}
SOIL_TEXTURES = ("plain", *(n for n, c in CONDITIONS.items() if c.kind == "soil"))
SPACING = {"touching": 1.0, "overlapping": 0.75}  # plant spacing along a line, in leaf lengths


def parse_conditions(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"straw,weeds"`` -> ``("straw", "weeds")``, checked: known names, at most one soil, one spacing."""
    names = [s.strip() for s in (spec.replace("+", ",").split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ConditionError(f"unknown condition {unknown[0]!r}; known: {', '.join(CONDITIONS)}")
    soils = [n for n in names if CONDITIONS[n].kind == "soil"]
    spacings = [n for n in names if n in SPACING]
    if len(soils) > 1 or len(spacings) > 1:
        raise ConditionError(f"choose one soil ({', '.join(soils)}) and one spacing ({', '.join(spacings)}) at most")
    return tuple(dict.fromkeys(names))
