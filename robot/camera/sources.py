"""Camera sources chosen by a string: device, stream, GStreamer pipeline, video file, folder, simulator.

``make_source(spec)`` returns an unopened source; ``leafscout.robot.camera.capture.Capture``
calls it again to reopen a source that stalled or vanished.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import cv2

from .base import CameraError, CameraNotFoundError, Frame, FrameSource, SourceGoneError

__all__ = ["OpenCVSource", "FolderSource", "make_source", "source_kind", "IMAGE_SUFFIXES", "SOURCE_FORMS"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SOURCE_FORMS = (
    "a video file, a folder of images, a named pipe (FIFO), /dev/videoN or a device index, "
    "rtsp://|http://|udp:// stream URL, a GStreamer pipeline containing '!', or sim[:key=value,...]"
)
MAX_DECODE_FAILURES = 64  # consecutive unreadable frames before a recording is taken as ended
_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "rtmp://")


def _available_devices() -> list[str]:
    return sorted(str(p) for p in Path("/dev").glob("video*"))


class OpenCVSource(FrameSource):
    """A V4L2 device, network stream, GStreamer pipeline or video file, read through OpenCV."""

    def __init__(self, target: str | int, *, live: bool, api: int = cv2.CAP_ANY, name: str | None = None) -> None:
        super().__init__(name or str(target))
        self.target = target
        self.live = live
        self.api = api
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        cap = cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"OpenCV could not open camera source {self.name!r}")
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 30.0
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT) if not self.live else 0
        self.expected_frames = int(count) if count and 0 < count < 1e9 else None
        log.info("opened %s (%.1f fps)", self.name, self.fps)

    def read(self) -> Frame | None:
        if self._cap is None:
            raise CameraError(f"{self.name!r} is not open")
        ok, image = self._cap.read()
        if not ok and self.live:
            raise SourceGoneError(f"camera {self.name!r} stopped delivering frames")
        failures = 0
        while not ok:  # a recording: a damaged frame mid-file, or the end (real or truncated)
            failures += 1
            if self.expected_frames is None or self._index >= self.expected_frames or failures > MAX_DECODE_FAILURES:
                self._end_of_recording()
                return None
            ok, image = self._cap.read()  # the demuxer resyncs on the next chunk
        index = self._index if self.live else self._stream_index()
        self.lost_frames += index - self._index  # frames the recording holds but that never decoded
        self._index = index + 1
        t = time.time() if self.live else index / self.fps
        return Frame(image, index, t)

    def _stream_index(self) -> int:
        """The frame's place in the recording from its timestamp, so a lost frame leaves a gap (the
        tracker and the GPS log see the true time) instead of shifting every later frame."""
        msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if not msec or msec < 0:
            return self._index
        return max(self._index, int(round(msec * self.fps / 1000.0)))

    def _end_of_recording(self) -> None:
        if self.expected_frames is not None and self._index < self.expected_frames:
            self.missing_tail = self.expected_frames - self._index
            log.warning("%s ends after frame %d of the %d its header announces: truncated or damaged",
                        self.name, self._index, self.expected_frames)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _natural_key(path: Path) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


class FolderSource(FrameSource):
    """Every image of a folder in natural name order, as a recording at ``fps``."""

    def __init__(self, folder: str | os.PathLike, *, fps: float = 10.0) -> None:
        super().__init__(str(folder))
        self.folder = Path(folder)
        self.fps = float(fps)
        self._files: list[Path] = []

    def open(self) -> None:
        if not self.folder.is_dir():
            raise CameraNotFoundError(f"image folder {self.folder} does not exist")
        files = [p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not files:
            raise CameraError(f"folder {self.folder} holds no images with suffix {', '.join(IMAGE_SUFFIXES)}")
        self._files = sorted(files, key=_natural_key)

    def read(self) -> Frame | None:
        if self._index >= len(self._files):
            return None
        path = self._files[self._index]
        index = self._next_index()
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # None for a corrupt file: counted, never classified
        return Frame(image, index, index / self.fps, {"file": path.name})


def source_kind(spec: str | int) -> str:
    """'sim', 'device', 'stream', 'gstreamer', 'folder', 'file' or 'fifo'; raises when none fits."""
    if isinstance(spec, int):
        return "device"
    s = str(spec).strip()
    if s == "sim" or s.startswith("sim:"):
        return "sim"
    if s.isdigit() or s.startswith("/dev/video"):
        return "device"
    if s.lower().startswith(_STREAM_SCHEMES):
        return "stream"
    if "!" in s:
        return "gstreamer"
    p = Path(s)
    if p.is_dir():
        return "folder"
    if p.is_file():
        return "file"
    if p.is_fifo():  # a camera pipeline writing into a named pipe (e.g. libcamera-vid -o FIFO)
        return "fifo"
    raise CameraNotFoundError(f"camera source {s!r} does not exist; expected {SOURCE_FORMS}")


def _device_source(spec: str | int) -> OpenCVSource:
    s = str(spec)
    path = Path(f"/dev/video{s}") if s.isdigit() else Path(s)
    if not path.exists():
        have = ", ".join(_available_devices()) or "none"
        raise CameraNotFoundError(f"camera device {path} does not exist (video devices here: {have})")
    return OpenCVSource(str(path), live=True, api=cv2.CAP_V4L2)


def make_source(spec: str | int, *, folder_fps: float = 10.0) -> FrameSource:
    """An unopened source for ``spec``; see ``SOURCE_FORMS`` for what is accepted."""
    kind = source_kind(spec)
    s = str(spec).strip()
    if kind == "sim":
        from leafscout.robot.simulate import SimSource

        return SimSource.from_spec(s[4:] if s.startswith("sim:") else "")
    if kind == "device":
        return _device_source(spec)
    if kind == "stream":
        return OpenCVSource(s, live=True, api=cv2.CAP_FFMPEG)
    if kind == "fifo":  # read like a recording (every frame; the pipe paces its writer), opened once a writer is
        return OpenCVSource(s, live=False, api=cv2.CAP_FFMPEG)
    if kind == "gstreamer":
        if not re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()):
            raise CameraError(
                f"{s!r} looks like a GStreamer pipeline, but this OpenCV build has no GStreamer support; "
                "use a device path, a stream URL or a file instead"
            )
        return OpenCVSource(s, live=True, api=cv2.CAP_GSTREAMER)
    if kind == "folder":
        return FolderSource(s, fps=folder_fps)
    return OpenCVSource(s, live=False, api=cv2.CAP_FFMPEG)
