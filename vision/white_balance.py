"""Colour constancy: per-channel gains that undo a camera's or the sun's colour cast.

A warm cast makes healthy green leaves look yellow-brown to a classifier trained under
neutral light; a green cast makes bare soil look like vegetation. Both are fixed the
same way (von Kries): multiply each channel by a gain. The gains come from

- ``gray-world``: the frame's background (soil) is assumed to have the ``reference``
  colour on average (a neutral grey when no reference is given), so the gains map the
  measured background mean onto it;
- ``white-patch``: the brightest pixels are assumed white;
- ``fixed``: gains from the config (a calibrated camera under known light);
- ``off``: no correction.

Gains are normalised so the frame's brightness is unchanged (only chroma moves) and
clipped to ``max_gain``, so a frame that is all leaf cannot be pushed far off. With
``axis = "daylight"`` (the default) only the blue-versus-red part of a correction is
applied: that is how daylight, shade and a camera's white balance move colours, while
a different ground (yellow straw, grey gravel) differs in green too and is left alone.
A frame is only ever cooled (``max_warming`` 0): grey gravel and stones are bluer than brown
soil, gray-world cannot tell them from a cool light, and warming a frame turned healthy
leaves "diseased" for the classifier (measured in docs/localizer.md).

``paint_soil``: crops are painted the ``reference`` soil colour everywhere but the leaf,
so the ground the robot drives over (speckled soil, gravel, straw, weeds) is the ground the
classifier knows.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["WhiteBalance", "WhiteBalanceError", "MODES", "SOIL_BGR", "balance_gains", "apply_gains"]

MODES = ("off", "gray-world", "white-patch", "fixed")
AXES = ("daylight", "full")
# Mean colour of the brown soil the simulator draws and the classifier's training pastes
# leaves on: gray-world's default target, so a corrected frame looks like what the model saw.
# A field with other soil sets its own in robot.toml ([white_balance] reference).
SOIL_BGR = (40.0, 56.0, 98.0)


class WhiteBalanceError(ValueError):
    """A white-balance setting that cannot be used."""


@dataclass(frozen=True)
class WhiteBalance:
    """How to correct colour before classification; colours and gains are B, G, R."""

    mode: str = "off"
    reference: tuple[float, float, float] | None = None  # gray-world target of the background (None: neutral)
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # for mode "fixed"
    max_gain: float = 2.0  # no channel is scaled by more than this (or less than its inverse)
    white_percentile: float = 99.0  # white-patch: this percentile of each channel is taken as white
    axis: str = "daylight"  # daylight: correct only along blue-red (how daylight varies); full: every channel
    deadband: float = 0.1  # daylight: blue/red deviations (natural log) up to this are taken as the ground's own colour
    max_warming: float | None = 0.0  # daylight: warm a frame (log R - log B) by at most this; None: no limit
    paint_soil: bool = True  # crops: everything but the leaf painted the reference soil colour

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise WhiteBalanceError(f"white balance mode {self.mode!r} is not one of {', '.join(MODES)}")
        for name in ("reference", "gains"):
            v = getattr(self, name)
            if v is not None and (len(v) != 3 or min(v) <= 0):
                raise WhiteBalanceError(f"white balance {name} must be three positive numbers (B, G, R), got {v!r}")
        if self.max_gain < 1:
            raise WhiteBalanceError(f"white balance max_gain must be >= 1, got {self.max_gain}")
        if self.axis not in AXES:
            raise WhiteBalanceError(f"white balance axis {self.axis!r} is not one of {', '.join(AXES)}")
        if self.max_warming is not None and self.max_warming < 0:
            raise WhiteBalanceError(f"white balance max_warming must be >= 0, got {self.max_warming}")
        if self.deadband < 0:
            raise WhiteBalanceError(f"white balance deadband must be >= 0, got {self.deadband}")
        if not 50 <= self.white_percentile <= 100:
            raise WhiteBalanceError(f"white_percentile must be in [50, 100], got {self.white_percentile}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def soil_fill(self) -> tuple[float, float, float] | None:
        """The colour a crop shows around its leaf (the reference soil), or None to keep the frame's ground."""
        return (self.reference or SOIL_BGR) if self.paint_soil else None


def _normalised(gains: np.ndarray, max_gain: float, axis: str = "full", deadband: float = 0.0,
                max_warming: float | None = None) -> np.ndarray:
    if axis == "daylight":
        # keep only the blue-versus-red part (log B - log R): sun, shade and a camera's white balance move
        # colours along it, while a different ground (straw, gravel) moves them along green too
        d = np.log(gains[0]) - np.log(gains[2])
        k = np.sign(d) * max(0.0, abs(d) - deadband) / 2
        if max_warming is not None:
            k = max(k, -max_warming / 2)
        gains = np.exp(np.array([k, 0.0, -k]))
    gains = gains * (3.0 / gains.sum())  # brightness unchanged: only chroma moves
    return np.clip(gains, 1.0 / max_gain, max_gain).astype(np.float32)


def balance_gains(
    image: np.ndarray, config: WhiteBalance, background_bgr: np.ndarray | None = None
) -> np.ndarray:
    """Per-channel gains (B, G, R) for ``image`` under ``config``.

    ``background_bgr`` is the mean colour of the frame's background (soil), when the
    caller knows it (the localizer does); gray-world then ignores the leaves themselves.
    """
    if config.mode == "off":
        return np.ones(3, np.float32)
    if config.mode == "fixed":
        return _normalised(np.asarray(config.gains, np.float64), config.max_gain)
    if config.mode == "white-patch":
        white = np.percentile(image.reshape(-1, 3)[::7], config.white_percentile, axis=0)
        return _normalised(255.0 / np.maximum(white, 1.0), config.max_gain, config.axis)
    mean = np.asarray(background_bgr if background_bgr is not None else cv2.mean(image)[:3], np.float64)
    ref = np.asarray(config.reference if config.reference is not None else (1.0, 1.0, 1.0), np.float64)
    return _normalised(ref / ref.sum() / np.maximum(mean / max(mean.sum(), 1e-6), 1e-3), config.max_gain, config.axis,
                       config.deadband, config.max_warming)


def apply_gains(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """``image`` (uint8 BGR) with each channel scaled by its gain (a new array; a copy when all are 1)."""
    if np.allclose(gains, 1.0):
        return image.copy()
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gains[None, :], 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut.reshape(256, 1, 3))
