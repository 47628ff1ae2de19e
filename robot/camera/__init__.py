"""Camera sources behind one interface, chosen by a string, captured in a thread.

    with open_capture("/dev/video0") as cam:      # or a file, a folder, rtsp://..., sim:...
        while (frame := cam.read()) is not None:
            ...
"""
from __future__ import annotations

from .base import CameraError, CameraNotFoundError, Frame, FrameSource, SourceGoneError, frame_hash, frame_problem
from .capture import CameraStats, Capture
from .sources import SOURCE_FORMS, FolderSource, OpenCVSource, make_source, source_kind

__all__ = [
    "CameraError",
    "CameraNotFoundError",
    "CameraStats",
    "Capture",
    "FolderSource",
    "Frame",
    "FrameSource",
    "OpenCVSource",
    "SOURCE_FORMS",
    "SourceGoneError",
    "frame_hash",
    "frame_problem",
    "make_source",
    "open_capture",
    "source_kind",
]


def open_capture(spec: str | int, *, live: bool | None = None, folder_fps: float = 10.0, **kwargs) -> Capture:
    """A ``Capture`` for the source named by ``spec`` (not started; use ``with``)."""
    first = [make_source(spec, folder_fps=folder_fps)]  # fail now, with the clear error, on a bad name

    def factory() -> FrameSource:  # the first source is used as is; reopening makes fresh ones
        return first.pop() if first else make_source(spec, folder_fps=folder_fps)

    return Capture(factory, live=live, **kwargs)
