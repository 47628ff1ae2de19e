"""What every camera source is: something that opens, yields frames and closes.

Sources differ only in where pixels come from (a V4L2 device, a stream, a video
file, a folder, the simulator); threading, watchdogs and recovery live in
``leafscout.robot.camera.capture`` so each source stays a few lines long.
"""
from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CameraError",
    "CameraNotFoundError",
    "SourceGoneError",
    "Frame",
    "FrameSource",
    "frame_problem",
    "frame_hash",
]


class CameraError(RuntimeError):
    """A camera source that cannot be opened or read."""


class CameraNotFoundError(CameraError):
    """The named device, file or folder does not exist."""


class SourceGoneError(CameraError):
    """A source that was working stopped answering (unplugged, stream dropped)."""


@dataclass
class Frame:
    """One captured image and where it sits in its stream.

    ``t`` is stream time in seconds: wall-clock for live devices, ``index / fps``
    for recordings (so replays do not depend on the clock). ``meta`` carries what
    a source knows besides pixels (the simulator's row and metre).
    """

    image: np.ndarray | None
    index: int
    t: float
    meta: dict[str, Any] = field(default_factory=dict)
    t_capture: float = 0.0  # time.monotonic() when the capture thread got it


def frame_problem(image: Any) -> str | None:
    """Why a frame must not be classified (``None`` when it is usable)."""
    if image is None:
        return "no image (decode failed)"
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        return f"not a uint8 array ({getattr(image, 'dtype', type(image).__name__)})"
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 16 or image.shape[1] < 16:
        return f"bad shape {image.shape}; expected HxWx3 with H, W >= 16"
    probe = image[::16, ::16]
    if int(probe.max()) == int(probe.min()):
        return "empty (a single flat colour)"
    return None


def frame_hash(image: np.ndarray) -> int:
    """Cheap fingerprint of a frame, for spotting a frozen camera (identical frames)."""
    return zlib.crc32(np.ascontiguousarray(image[::7, ::7]).data)


class FrameSource(ABC):
    """Base class of camera sources; use as a context manager.

    ``live`` sources run in real time and may drop frames; recordings are read in
    full. ``read`` returns ``None`` at the end of a recording and raises
    ``SourceGoneError`` when a live source fails.
    """

    live: bool = False
    fps: float | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self._index = 0
        # A recording's damage, known to the source only: frames it should hold that never decoded
        # (mid-file) and frames missing at its end (truncated), against its header's frame count.
        self.expected_frames: int | None = None
        self.lost_frames = 0
        self.missing_tail = 0

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame | None: ...

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def _next_index(self) -> int:
        i = self._index
        self._index += 1
        return i

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
