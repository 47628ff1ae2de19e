"""Capture in its own thread, with a watchdog that reopens a failing camera.

Live sources hand the loop only the newest frame (a one-slot buffer: older ones
are dropped and counted, so a slow stage never makes the robot fall behind).
Recordings go through a bounded queue and every frame is processed, so a replay
is deterministic. In live mode a supervisor thread watches ``time.monotonic``:
no frame (stall), only identical frames (freeze), only broken frames, or a read
error (gone) trigger a reopen with exponential backoff. A reader blocked inside a
driver call cannot be interrupted in Python, so it is abandoned (its generation
number goes stale) and closes its own source if it ever returns.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from .base import CameraError, Frame, FrameSource, frame_hash, frame_problem

__all__ = ["Capture", "CameraStats"]

log = logging.getLogger(__name__)

_END = object()


@dataclass
class CameraStats:
    """Counters of what happened to frames between the source and the loop."""

    frames_read: int = 0  # everything the source returned, bad frames included
    delivered: int = 0  # handed to the loop
    dropped: int = 0  # live: replaced by a newer frame before the loop took it
    corrupt: int = 0  # undecodable or empty: skipped, never classified
    frozen: int = 0  # identical to the previous frame (live): skipped
    stalls: int = 0  # watchdog: no frame at all for ``watchdog_s``
    freezes: int = 0  # watchdog: only identical or broken frames for ``watchdog_s``
    disconnects: int = 0  # the source raised while reading
    reopens: int = 0  # successful reopens after any of the above
    lost: int = 0  # recording: frames mid-file that never decoded (a gap in the frame timestamps)
    truncated: int = 0  # recording: frames its header announces that are missing at the end

    @property
    def damaged(self) -> int:
        """Frames of a recording that were not processed: lost, missing at the end, or undecodable."""
        return self.lost + self.truncated + self.corrupt

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Capture:
    """Threaded capture from ``factory()`` sources; use as a context manager.

    ``live`` defaults to the source's own kind; a recording read with ``live=True``
    is paced at its frame rate, as a camera would deliver it.
    """

    def __init__(
        self,
        factory: Callable[[], FrameSource],
        *,
        live: bool | None = None,
        watchdog_s: float = 1.2,
        startup_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        queue_size: int = 16,
        check_every_s: float = 0.05,
        threaded: bool = True,
    ) -> None:
        if watchdog_s <= 0 or backoff_s[0] <= 0 or backoff_s[1] < backoff_s[0]:
            raise ValueError(f"need watchdog_s > 0 and 0 < backoff min <= max; got {watchdog_s}, {backoff_s}")
        self._factory = factory
        self._live_arg = live
        self.live = bool(live)
        self.fps: float | None = None
        self.name = ""
        self.watchdog_s = watchdog_s
        self.startup_s = max(startup_s, watchdog_s)  # cameras may take a while to send their first frame
        self._since_open = 0  # frames accepted from the current source
        self._backoff_min, self._backoff_max = backoff_s
        self._delay = backoff_s[0]
        self._check_every = check_every_s
        self.stats = CameraStats()
        self._stop = threading.Event()
        self._gen = 0
        self._incidents: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._ended = False
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._last_new = self._last_arrival = 0.0
        self._last_hash: int | None = None
        self._last_reject = "freeze"
        self._pace = False
        self._threaded = threaded
        self._sync_source: FrameSource | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "Capture":
        """Open the source now, so a missing device or a broken file fails here with a clear error.

        A live source that is there but not up yet (a stream camera still booting, a FIFO's
        writer not started) is waited for with backoff instead: ``read`` times out meanwhile.
        """
        source: FrameSource | None = self._factory()
        try:
            source.open()
        except CameraError as e:
            if not (source.live and self._live_arg is not False):
                raise
            log.warning("camera %s is not up yet (%s); waiting for it with backoff", source.name, e)
            self.name, self.live = source.name, True
            self._last_new = self._last_arrival = time.monotonic()
            return self._start_thread(self._supervise, None)
        self.name, self.fps = source.name, source.fps
        self.live = source.live if self._live_arg is None else bool(self._live_arg)
        self._pace = self.live and not source.live
        self._last_new = self._last_arrival = time.monotonic()
        if not self.live and not self._threaded:
            self._sync_source = source  # read() decodes in the caller's thread: exact per-stage timing
            return self
        return self._start_thread(self._supervise if self.live else self._replay, source)

    def _start_thread(self, target: Callable[[FrameSource | None], None], source: FrameSource | None) -> "Capture":
        thread = threading.Thread(target=target, args=(source,), name=f"capture-{self.name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def close(self) -> None:
        """Stop and join every capture thread (readers too: a source closed while the interpreter
        shuts down can abort the process); one stuck in a driver call is named in a warning."""
        self._stop.set()
        self._gen += 1
        deadline = time.monotonic() + 2.0
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("camera threads still blocked in the driver after 2 s: %s", ", ".join(stuck))
        self._finish()
        if self._sync_source is not None:
            self._sync_source.close()
            self._sync_source = None

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop's side -------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame (live: the newest one); ``None`` at the end of the stream.

        Raises ``TimeoutError`` when nothing arrives within ``timeout`` seconds.
        """
        if self._sync_source is not None:
            return self._read_here()
        if self.live:
            with self._cond:
                if not self._cond.wait_for(lambda: self._slot is not None or self._ended, timeout):
                    raise TimeoutError(f"no frame from {self.name!r} within {timeout} s")
                frame, self._slot = self._slot, None
        else:
            try:
                frame = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no frame from {self.name!r} within {timeout} s") from None
            if frame is _END:
                self._queue.put(_END)  # later reads see the end too
                frame = None
        if frame is None:
            if self._error is not None:
                raise CameraError(f"camera {self.name!r} failed: {self._error}") from self._error
            return None
        self.stats.delivered += 1
        return frame

    def _read_here(self) -> Frame | None:
        source = self._sync_source
        while source is not None and (frame := source.read()) is not None:
            if self._usable(frame):
                self.stats.delivered += 1
                return frame
        if source is not None:
            self._collect(source)
        return None

    def _collect(self, source: FrameSource) -> None:
        """Add what a recording's source knows about its damage to the stats (once per source)."""
        if getattr(source, "_collected", False):
            return
        source._collected = True  # type: ignore[attr-defined]
        self.stats.lost += getattr(source, "lost_frames", 0)
        self.stats.truncated += getattr(source, "missing_tail", 0)

    # -- capture threads -------------------------------------------------------------
    def _finish(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        if self.live:
            return
        if not self._stop.is_set():
            self._deliver(_END)  # blocks like a frame would: the marker must not be lost on a full queue
        else:
            try:
                self._queue.put_nowait(_END)
            except queue.Full:  # closed while full: nobody is reading any more
                pass

    def _deliver(self, frame: Frame | object) -> None:
        if self.live:
            with self._cond:
                if self._slot is not None:
                    self.stats.dropped += 1
                self._slot = frame
                self._cond.notify()
            return
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.1)
                return
            except queue.Full:
                continue

    def _accept(self, frame: Frame) -> None:
        self._since_open += 1
        if self._usable(frame):
            self._last_new = time.monotonic()
            self._delay = self._backoff_min
            self._deliver(frame)

    def _usable(self, frame: Frame) -> bool:
        """Count the frame; False for broken ones and (live) repeats of the previous frame."""
        now = time.monotonic()
        frame.t_capture = now
        self.stats.frames_read += 1
        self._last_arrival = now
        problem = frame_problem(frame.image)
        if problem is not None:
            self.stats.corrupt += 1
            self._last_reject = "corrupt"
            log.debug("skipping frame %d of %s: %s", frame.index, self.name, problem)
            return False
        if self.live:
            h = frame_hash(frame.image)
            if h == self._last_hash:
                self.stats.frozen += 1
                self._last_reject = "freeze"
                return False
            self._last_hash = h
        return True

    def _read_loop(self, gen: int, source: FrameSource) -> None:
        """Read until the end, an error, stop, or until this generation is abandoned."""
        t0, n = time.monotonic(), 0
        try:
            while not self._stop.is_set() and gen == self._gen:
                if self._pace and source.fps:
                    n += 1
                    if self._stop.wait(max(0.0, t0 + n / source.fps - time.monotonic())):
                        return
                try:
                    frame = source.read()
                except Exception as e:  # noqa: BLE001 - any driver error means the source is gone
                    self._incidents.put((gen, "gone", e))
                    return
                if gen != self._gen:
                    return
                if frame is None:
                    self._incidents.put((gen, "end", None))
                    return
                self._accept(frame)
        finally:
            self._collect(source)
            try:
                source.close()
            except Exception:  # noqa: BLE001 - closing a broken device may fail; nothing left to do
                log.debug("closing %s failed", source.name, exc_info=True)

    def _replay(self, source: FrameSource) -> None:
        self._read_loop(self._gen, source)
        try:
            gen, kind, err = self._incidents.get_nowait()
            if kind == "gone":
                self._error = err
        except queue.Empty:
            pass
        self._finish()

    def _supervise(self, source: FrameSource | None) -> None:
        if source is None:  # not up at start
            source = self._reopen("start")
        while source is not None:
            reader = threading.Thread(
                target=self._read_loop, args=(self._gen, source), name=f"reader-{self.name}", daemon=True
            )
            self._threads = [t for t in self._threads if t.is_alive()] + [reader]
            reader.start()
            reason = self._watch()
            if reason in ("stop", "end"):
                break
            self._gen += 1  # abandon the current reader, even if it is blocked in read()
            source = self._reopen(reason)
        self._finish()

    def _watch(self) -> str:
        while True:
            try:
                gen, kind, err = self._incidents.get(timeout=self._check_every)
                if gen == self._gen:
                    if kind == "gone":
                        self.stats.disconnects += 1
                        log.warning("camera %s vanished: %s", self.name, err)
                    return kind
            except queue.Empty:
                pass
            if self._stop.is_set():
                return "stop"
            now = time.monotonic()
            limit = self.watchdog_s if self._since_open else self.startup_s
            if now - self._last_new > limit:
                if now - self._last_arrival > limit:
                    self.stats.stalls += 1
                    log.warning("camera %s stalled: no frame for %.1f s", self.name, now - self._last_arrival)
                    return "stall"
                self.stats.freezes += 1
                log.warning("camera %s delivers only %s frames for %.1f s", self.name, self._last_reject,
                            now - self._last_new)
                return "freeze"

    def _reopen(self, reason: str) -> FrameSource | None:
        while not self._stop.wait(self._delay):
            self._delay = min(self._delay * 2, self._backoff_max)
            try:
                source = self._factory()
                source.open()
            except Exception as e:  # noqa: BLE001 - keep trying: a camera may come back after a replug
                log.warning("reopening %s after %s failed (%s); next try in %.2f s", self.name, reason, e,
                            self._delay)
                continue
            self.stats.reopens += 1
            if self.fps is None:
                self.fps = source.fps
            self._since_open = 0
            self._last_new = self._last_arrival = time.monotonic()
            self._last_hash = None
            log.info("camera %s reopened after %s", self.name, reason)
            return source
        return None
