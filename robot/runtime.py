"""The robot loop: capture -> localize -> track -> classify -> count -> statistics -> telemetry.

One frame at a time, short enough to read at a glance (``Runtime._step``). Plants
are classified a few times while fully in view (not on every frame: that keeps a
whole frame within a few milliseconds on one core), counted once when their track
ends, stored in the survey database, and handed to the telemetry sinks, which only
enqueue. The report of a recording is reproducible: every key except ``timing_ms``
(wall-clock measurements) is identical, byte for byte, on every run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import cv2
import numpy as np

from leafscout.link.records import UNCERTAIN, Heartbeat, PlantRecord, RowSummary
from leafscout.link.stats import wilson_interval
from leafscout.vision.classifier import LeafClassifier
from leafscout.vision.detect import leaf_crop
from leafscout.vision.localize import LeafLocalizer, LocalizeConfig, square_crop
from leafscout.vision.taxonomy import BACKGROUND
from leafscout.vision.white_balance import SOIL_BGR, WhiteBalance, balance_gains

from .camera import Capture, Frame
from .field_stats import FieldStats
from .gps import FIX, INTERPOLATED, NO_FIX, STALE, GpsReader, NmeaLog, Position, PositionSource
from .survey_store import SurveyStore
from .timing import StageTimer
from .tracker import PlantTracker, Track, TrackerConfig

__all__ = ["Sink", "RuntimeConfig", "Runtime", "write_report", "report_bytes", "REPORT_FORMAT"]

log = logging.getLogger(__name__)

REPORT_FORMAT = "leafscout-run-report/1"


class Sink(Protocol):
    """A telemetry link: ``submit`` must only enqueue, never block the loop."""

    def submit(self, record: PlantRecord | RowSummary | Heartbeat, thumbnail: bytes | None = None) -> None: ...


@dataclass(frozen=True)
class RuntimeConfig:
    robot_id: str = "robot-1"
    survey_id: str = "survey-1"
    heartbeat_every_s: float = 5.0  # of stream time
    summary_every_s: float = 2.0  # changed rows are summarised at most this often (stream time)
    thumbnail_px: int = 96
    crop_margin: float = 0.08
    crop_fill: int | None = None  # paint the soil around a leaf this grey before classifying (None: as
    # white_balance.paint_soil says: the reference soil colour, or the frame as it is)
    frame_timeout_s: float = 5.0  # live: heartbeat "no-camera" after this long without a frame
    hold_unpositioned_s: float = 30.0  # live: plants counted in a GPS dropout wait this long for the fixes around it
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    localize: LocalizeConfig = field(default_factory=LocalizeConfig)
    # colour correction of crops before classifying: the frame's soil is mapped onto the soil the model knows
    white_balance: WhiteBalance = field(default_factory=lambda: WhiteBalance("gray-world", reference=SOIL_BGR))


def _jpeg(crop: np.ndarray, px: int) -> bytes:
    scale = px / max(crop.shape[:2])
    small = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else b""


class Runtime:
    """Runs one session of a survey over a capture; ``run()`` returns the report dict."""

    def __init__(
        self,
        capture: Capture,
        classifier: LeafClassifier,
        store: SurveyStore,
        *,
        positions: PositionSource | None = None,
        sinks: Sequence[Sink] = (),
        config: RuntimeConfig | None = None,
    ) -> None:
        self.capture = capture
        self.classifier = classifier
        self.store = store
        self.positions = positions
        self.sinks = list(sinks)
        self.config = config or RuntimeConfig()
        self.localizer = LeafLocalizer(self.config.localize)
        self.timer = StageTimer()
        self.tracker: PlantTracker | None = None
        self.frames = 0
        self.detections = 0
        self.views = 0
        self.uncertain_views = 0
        self.background_tracks = 0  # tracks the classifier called background: not counted as plants
        self.sink_errors = 0
        self.lags: list[float] = []
        self._dirty_rows: set = set()
        self._next_summary = self._next_heartbeat = None
        self._last_where = Position()
        self._state = None
        self._gains = np.ones(3, np.float32)  # this frame's white balance
        self.annotator: Any = None  # optional: ``frame(image, detections, tracks, segmentation)`` after tracking
        # optional: ``started(runtime)``, ``heartbeat(runtime, hb)``, ``stopped(runtime)`` (status file, sd_notify)
        self.monitors: list[Any] = []
        self.bundle_version: str | None = None  # shown in heartbeats and the status file
        self.last_record: PlantRecord | None = None
        self.fix_counts: dict[str, int] = {}  # counted plants by how their position was known
        self._held: list[tuple[PlantRecord, bytes | None]] = []  # counted in a live GPS dropout
        self._camera_incidents = 0

    # -- the loop --------------------------------------------------------------------
    def run(self, *, stop: threading.Event | None = None, max_frames: int | None = None) -> dict[str, Any]:
        stop = stop or threading.Event()
        self._state = self.store.open_survey(self.config.survey_id, self.config.robot_id)
        self._recover_counted()
        for m in self.monitors:
            m.started(self)
        self.timer.start_frame()
        while not stop.is_set() and (max_frames is None or self.frames < max_frames):
            try:
                frame = self._next_frame(stop)
            except TimeoutError:
                self._heartbeat(time.time(), status="no-camera")
                self.timer.start_frame()
                continue
            if frame is None:
                break
            self._step(frame)
        if self.tracker is not None:  # end of stream: every plant still in view is counted now
            ended = self.tracker.flush()
            self._classify(None, -1, [], [t for t in ended if not t.votes and t.best_crop is not None])
            self._count(ended, self._last_where)
        if self._held:  # the GPS never came back: stored with the position unknown, flagged
            self._queue_counted(self._positioned([], final=True))
        self._summaries(force=True)
        for m in self.monitors:
            m.stopped(self)
        return self.report()

    def _next_frame(self, stop: threading.Event) -> Frame | None:
        """The next frame, waited for in 0.1 s slices so a stop (Ctrl-C) ends the run at once;
        None at the end of the stream or on stop, ``TimeoutError`` after ``frame_timeout_s``."""
        deadline = time.monotonic() + self.config.frame_timeout_s
        while not stop.is_set():
            try:
                return self.capture.read(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
        return None

    def _step(self, frame: Frame) -> None:
        image = frame.image
        if self.capture.live:
            self.lags.append(time.monotonic() - frame.t_capture)
        self.timer.lap("capture")
        detections = self.localizer(image)
        self.detections += len(detections)
        self.timer.lap("localize")
        if self.tracker is None:
            self.tracker = PlantTracker((image.shape[1], image.shape[0]), self.config.tracker)
        where = self.positions.locate(frame) if self.positions else Position(t=frame.t)
        if where.t is None:
            where = dataclasses.replace(where, t=frame.t)
        self._last_where = where
        ended = self.tracker.update(detections, frame.index, where)
        if self.config.white_balance.enabled:
            self._gains = balance_gains(image, self.config.white_balance, self.localizer.last.background_bgr)
        for t in self.tracker.needs_fallback_view(frame.index):
            self.tracker.keep_fallback_view(t, self._crop(image, t), self._view(image, t))
        due = self.tracker.due(frame.index)
        self.timer.lap("track")
        if self.annotator is not None:
            self.annotator.frame(image, detections, self.tracker.tracks, self.localizer.last)
        self._classify(image, frame.index, due, [t for t in ended if not t.votes and t.best_crop is not None])
        self.timer.lap("classify")
        self._count(ended, where)
        self.timer.lap("statistics")
        self.frames += 1
        self.timer.end_frame()
        self.timer.start_frame()

    def _classify(self, image: np.ndarray | None, index: int, due: list[Track], fallback: list[Track]) -> None:
        """All crops of the frame in one batch: plants due a vote, and ended plants never fully seen."""
        crops = [self._crop(image, t) for t in due]
        crops += [t.best_crop for t in fallback]
        if not crops:
            return
        probs = self.classifier.probs(crops)
        threshold = self.classifier.abstain_below
        for k, (track, p, crop) in enumerate(zip([*due, *fallback], probs, crops)):
            if self.tracker.add_vote(track, p, index, crop) and k < len(due):  # a new best view, seen this frame
                track.best_view = self._view(image, track).copy()
            self.views += 1
            self.uncertain_views += int(p.max() < threshold)

    def _crop(self, image: np.ndarray, track: Track) -> np.ndarray:
        cfg = self.config
        fill = cfg.crop_fill if cfg.crop_fill is not None else cfg.white_balance.soil_fill
        return leaf_crop(image, track.box, track.detection, margin=cfg.crop_margin,
                         gains=self._gains if cfg.white_balance.enabled else None, fill=fill)

    def _view(self, image: np.ndarray, track: Track) -> np.ndarray:
        """The plant as the camera saw it (no soil painting, no white balance): for thumbnails. A view."""
        return square_crop(image, track.box, self.config.crop_margin)

    # -- counting and telemetry -------------------------------------------------------
    def _count(self, tracks: list[Track], now: Position) -> None:
        cfg, state = self.config, self._state
        counted: list[tuple[PlantRecord, bytes | None]] = []
        for track in sorted(tracks, key=lambda t: t.id):
            if not track.votes:  # seen, but never a usable view (e.g. only a sliver at the edge)
                continue
            decision = self.classifier.vote(np.stack(track.votes))
            if decision.health == BACKGROUND:  # the classifier says: not a plant (soil, straw, a weed)
                self.background_tracks += 1
                continue
            label = UNCERTAIN if decision.uncertain else self.classifier.classes[decision.index]
            where: Position = track.where or now
            record = PlantRecord(
                cfg.robot_id, cfg.survey_id, state.next_plant_id, round(float(where.t), 3), label, decision.index,
                round(decision.confidence, 6), track.frames, where.row,
                None if where.metre is None else round(where.metre, 3), where.lat, where.lon,
                health=decision.health,  # from the bundle's taxonomy, never from the class name
                fix=where.fix, fix_quality=where.quality,
            )
            state.next_plant_id += 1
            thumb = None
            view = track.best_view if track.best_view is not None else track.best_crop
            if (record.diseased or record.uncertain) and view is not None:
                thumb = _jpeg(view, cfg.thumbnail_px)
            counted.append((record, thumb))
        if counted or self._held:
            counted = self._positioned(counted)
        if counted:
            self._queue_counted(counted)
        t = now.t if now.t is not None else 0.0
        if self._next_summary is None or t >= self._next_summary:
            self._summaries()
            self._next_summary = t + cfg.summary_every_s
        if self._next_heartbeat is None or t >= self._next_heartbeat:
            self._heartbeat(t)
            self._next_heartbeat = t + cfg.heartbeat_every_s

    def _positioned(self, counted: list[tuple[PlantRecord, bytes | None]], *,
                    final: bool = False) -> list[tuple[PlantRecord, bytes | None]]:
        """Plants whose live GPS position was stale or absent wait (in order, at most
        ``hold_unpositioned_s``) until fixes on both sides of their time arrive, and get the
        interpolated position; after that, or at the end of the run, they go as they are (flagged)."""
        fill = getattr(self.positions, "fill", None)
        self._held.extend(counted)
        out = []
        while self._held:
            record, thumb = self._held[0]
            if fill is not None and record.fix in (STALE, NO_FIX):
                where = fill(Position(t=record.t, fix=record.fix))
                if where is None and not final and time.time() - record.t < self.config.hold_unpositioned_s:
                    break  # the dropout goes on: later plants wait behind this one (ids stay in order)
                if where is not None and where.fix == INTERPOLATED:
                    record = dataclasses.replace(
                        record, row=where.row, metre=None if where.metre is None else round(where.metre, 3),
                        lat=where.lat, lon=where.lon, fix=INTERPOLATED, fix_quality=where.quality)
            self._held.pop(0)
            out.append((record, thumb))
        for record, _ in out:
            key = record.fix or "none"
            self.fix_counts[key] = self.fix_counts.get(key, 0) + 1
        return out

    def _summaries(self, force: bool = False) -> None:
        stats: FieldStats = self._state.stats
        t = self._last_where.t or 0.0
        rows = stats.rows if force else self._dirty_rows
        for row in sorted(rows, key=lambda r: (r is None, r or 0)):
            if row in stats.rows:
                self._submit(stats.rows[row].summary(self.config.robot_id, self.config.survey_id, float(t)))
        self._dirty_rows.clear()

    def _heartbeat(self, t: float, status: str = "ok") -> None:
        w = self._last_where
        depth = sum(int(getattr(s, "queue_depth", 0) or 0) for s in self.sinks)
        dropped = sum(int(getattr(s, "dropped", 0) or 0) for s in self.sinks)
        fps = 1000.0 / self.timer.mean_ms()["total"] if self.timer.frames else 0.0
        from .status import link_states

        links = link_states(self.sinks)
        gps = getattr(self.positions, "last", None)  # a GPS (not the simulator's positions)
        cam = self.capture.stats
        incidents = cam.stalls + cam.freezes + cam.disconnects  # the camera failed since the last heartbeat
        camera_bad, self._camera_incidents = incidents > self._camera_incidents, incidents
        if status == "ok" and (camera_bad or any(v != "up" for v in links.values())
                               or (gps is not None and gps.fix in (STALE, NO_FIX))):
            status = "degraded"
        hb = Heartbeat(self.config.robot_id, float(t), depth, self.frames, round(fps, 2), status,
                       self.config.survey_id, w.lat, w.lon, w.row, w.metre, dropped,
                       gps=gps.fix if gps is not None else None, fix_quality=gps.quality if gps is not None else None,
                       fix_age_s=gps.age_s if gps is not None else None,
                       links=" ".join(f"{k}={v}" for k, v in links.items()) or None, bundle=self.bundle_version)
        self._submit(hb)
        for m in self.monitors:
            m.heartbeat(self, hb)

    def _recover_counted(self) -> None:
        """Plants a killed run queued but never wrote to the survey database (the outbox is the truth)."""
        if not self._state.resumed:
            return
        for sink in self.sinks:
            for record in getattr(sink, "counted_since", lambda *_: [])(self._state.survey_id,
                                                                         self._state.next_plant_id):
                self.store.add_plant(record)
                self._state.stats.add(record)
                self._state.next_plant_id = record.plant_id + 1
                log.warning("recovered plant %d of survey %s from the outbox", record.plant_id, record.survey_id)

    def _queue_counted(self, counted: list[tuple[PlantRecord, bytes | None]]) -> None:
        """The plants a frame ended: in the outbox (one transaction) before the survey database, so a
        kill in between is repaired on restart (``_recover_counted``) and no counted plant is lost."""
        for sink in self.sinks:
            if hasattr(sink, "commit"):
                try:
                    sink.commit(counted)
                except Exception:  # noqa: BLE001 - a broken link must not stop the survey
                    self.sink_errors += 1
                    log.exception("telemetry sink %r failed; the survey goes on", sink)
            else:
                for record, thumb in counted:
                    self._submit_to(sink, record, thumb)
        for record, _ in counted:
            self.last_record = record
            self.store.add_plant(record)
            self._state.stats.add(record)
            self._dirty_rows.add(record.row)

    def _submit(self, record: PlantRecord | RowSummary | Heartbeat, thumbnail: bytes | None = None) -> None:
        for sink in self.sinks:
            self._submit_to(sink, record, thumbnail)

    def _submit_to(self, sink: Sink, record: PlantRecord | RowSummary | Heartbeat,
                   thumbnail: bytes | None = None) -> None:
        try:
            if thumbnail is None:
                sink.submit(record)
            else:
                sink.submit(record, thumbnail=thumbnail)
        except Exception:  # noqa: BLE001 - a broken link must not stop the survey
            self.sink_errors += 1
            log.exception("telemetry sink %r failed; the survey goes on", sink)

    # -- the report ------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        stats: FieldStats = self._state.stats
        total = stats.total()
        lo, hi = wilson_interval(total.diseased, total.decided)
        rep: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "survey": self.config.survey_id,
            "robot_id": self.config.robot_id,
            "session": self._state.sessions,
            "source": self.capture.name,
            "mode": "live" if self.capture.live else "replay",
            "frames": self.frames,
            "plants": total.plants,
            "diseased": total.diseased,
            "uncertain": total.uncertain,
            "incidence": round(total.incidence, 6),
            "ci95": [round(lo, 6), round(hi, 6)],
            "by_class": {k: v for k, v in sorted(total.by_class.items()) if k != UNCERTAIN},
            "rows": [r.to_json() for r in stats.sorted_rows()],
            "classifier": {
                "classes": len(self.classifier.classes), "abstain_below": self.classifier.abstain_below,
                "views": self.views, "uncertain_views": self.uncertain_views, "batches": self.classifier.calls,
                "background_tracks": self.background_tracks,
            },
            "tracker": {
                "noise_tracks": self.tracker.noise_tracks if self.tracker else 0,
                "leaves_per_frame": round(self.detections / max(self.frames, 1), 3),
            },
            "camera": self.capture.stats.as_dict(),
        }
        if self.positions is not None and isinstance(getattr(self.positions, "gps", None), (GpsReader, NmeaLog)):
            rep["gps"] = vars(self.positions.gps.counters).copy()
            rep["gps"]["plants_by_fix"] = {k: self.fix_counts.get(k, 0) for k in (FIX, INTERPOLATED, STALE, NO_FIX)}
        if self.capture.live:
            lags = np.array(self.lags or [0.0]) * 1000
            rep["live"] = {"max_lag_ms": round(float(lags.max()), 2), "mean_lag_ms": round(float(lags.mean()), 2),
                           "frame_period_ms": round(1000.0 / (self.capture.fps or 30.0), 2),
                           "dropped": self.capture.stats.dropped}
        if self.sink_errors:
            rep["sink_errors"] = self.sink_errors
        rep["timing_ms"] = self.timer.mean_ms()  # last: the only wall-clock part of the report
        return rep


def report_bytes(report: dict[str, Any]) -> bytes:
    return (json.dumps(report, indent=1, ensure_ascii=False) + "\n").encode()


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(report_bytes(report))
    os.replace(tmp, path)
    return path
