"""Count each plant once: associate leaf detections across frames as the robot drives.

Plants slide across the picture together (the robot moves, they do not), so the
tracker estimates one shared image motion per frame (the median shift of matched
plants) and matches each track's predicted centroid to the nearest detection
within a gate proportional to the leaf's size. A track ends when it leaves the
picture or stays unseen for ``max_missed`` frames; tracks seen in fewer than
``min_frames`` frames are noise. Each track collects classification votes (at
most ``votes``, ``vote_every`` frames apart, only while fully in view) and keeps
the position where it was closest to the picture's centre.

Frames are counted by their index, not by calls: a live loop that drops frames (or skips
a frozen camera's repeats) passes the gap, so the predicted shift and the frames a track
went unseen are the real ones, and a turn at the headland still ends the row's tracks.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from leafscout.vision.localize import Detection

__all__ = ["TrackerConfig", "Track", "PlantTracker"]


@dataclass(frozen=True)
class TrackerConfig:
    gate: float = 0.6  # max match distance, as a fraction of the leaf's larger box side
    max_missed: int = 4  # camera frames a track may go unseen (occlusion, merged with a neighbour)
    min_frames: int = 8  # shorter tracks are not plants (a plant crossing the view at 20 px/frame is seen ~35 times)
    votes: int = 3  # classifications per plant, at most (each costs a model call: the main per-frame cost)
    vote_every: int = 8  # frames between two classifications: views from right, centre and left of the picture
    new_overlap: float = 0.3  # a detection overlapping a matched track this much is a fragment, not a plant

    def __post_init__(self) -> None:
        if self.gate <= 0 or self.max_missed < 0 or self.min_frames < 1 or self.votes < 1 or self.vote_every < 1:
            raise ValueError(f"invalid tracker settings: {self}")


@dataclass
class Track:
    """One plant being followed."""

    id: int
    box: tuple[int, int, int, int]
    centroid: tuple[float, float]
    first_frame: int
    last_frame: int
    frames: int = 1
    missed: int = 0
    full_view: bool = False  # box not touching the picture's edge this frame
    votes: list[np.ndarray] = field(default_factory=list)
    last_vote: int = -(10**9)
    best_crop: np.ndarray | None = None  # the most confident (or, before any vote, the largest) view
    best_view: np.ndarray | None = None  # the same moment as the camera saw it (the thumbnail people look at)
    best_score: float = -1.0
    best_area: float = 0.0
    area: float = 0.0
    detection: Detection | None = None  # this frame's detection (box, mask) when seen
    where: Any = None  # the caller's position when the plant was nearest the picture's centre
    _centre_dist: float = float("inf")

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class PlantTracker:
    """``update(detections, frame_index)`` returns the tracks that just ended (plants to count)."""

    def __init__(self, frame_size: tuple[int, int], config: TrackerConfig | None = None) -> None:
        self.width, self.height = frame_size
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self.motion = np.zeros(2)  # image shift per camera frame, shared by all plants
        self._last_index: int | None = None
        self._ids = itertools.count()
        self.noise_tracks = 0

    def _match(self, detections: Sequence[Detection], shift: np.ndarray) -> list[tuple[int, int]]:
        if not self.tracks or not detections:
            return []
        pred = np.array([t.centroid for t in self.tracks]) + shift
        cent = np.array([d.centroid for d in detections])
        dist = np.linalg.norm(pred[:, None, :] - cent[None, :, :], axis=2)
        gate = np.array([self.config.gate * max(t.size, 8.0) for t in self.tracks])[:, None]
        pairs = []
        used_t, used_d = set(), set()
        for ti, di in zip(*np.unravel_index(np.argsort(dist, axis=None), dist.shape)):
            if dist[ti, di] > gate[ti, 0] or ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            pairs.append((int(ti), int(di)))
        return pairs

    def update(self, detections: Sequence[Detection], frame_index: int, where: Any = None) -> list[Track]:
        """Associate this frame's detections; ``where`` (e.g. a position) is kept per plant."""
        gap = 1 if self._last_index is None else max(1, frame_index - self._last_index)  # frames since the last call
        self._last_index = frame_index
        # unseen longer than max_missed over frames never processed: gone, whatever is there now
        stale = [t for t in self.tracks if frame_index - t.last_frame - 1 > self.config.max_missed]
        self.tracks = [t for t in self.tracks if frame_index - t.last_frame - 1 <= self.config.max_missed]
        pairs = self._match(detections, self.motion * gap)
        if pairs:
            shifts = np.array([np.subtract(detections[d].centroid, self.tracks[t].centroid) for t, d in pairs])
            self.motion = 0.5 * self.motion + 0.5 * np.median(shifts, axis=0) / gap
        shift = self.motion * gap
        matched_t = {t for t, _ in pairs}
        matched_d = {d for _, d in pairs}
        for ti, di in pairs:
            self._observe(self.tracks[ti], detections[di], frame_index, where)
        ended = []
        for ti, track in enumerate(self.tracks):
            if ti in matched_t:
                continue
            track.missed += gap
            track.full_view = False
            cx, cy = np.add(track.centroid, shift)
            track.centroid = (float(cx), float(cy))
            half = track.size / 2
            gone = cx + half < 0 or cx - half > self.width or cy + half < 0 or cy - half > self.height
            if gone or track.missed > self.config.max_missed:
                ended.append(track)
        matched_boxes = [self.tracks[t].box for t in matched_t]
        for di, det in enumerate(detections):
            if di in matched_d or any(_iou(det.box, b) > self.config.new_overlap for b in matched_boxes):
                continue
            track = Track(next(self._ids), det.box, det.centroid, frame_index, frame_index)
            self._observe(track, det, frame_index, where, first=True)
            self.tracks.append(track)
        return self._end(stale + ended)

    def _observe(self, track: Track, det: Detection, frame_index: int, where: Any, first: bool = False) -> None:
        track.box, track.centroid, track.area, track.detection = det.box, det.centroid, det.area, det
        if not first:
            track.frames += 1
        track.missed = 0
        track.last_frame = frame_index
        track.full_view = not det.touches_border
        d = abs(det.centroid[0] - self.width / 2)
        if d < track._centre_dist:
            track._centre_dist, track.where = d, where

    def due(self, frame_index: int) -> list[Track]:
        """Tracks to classify in this frame: fully in view, still short of votes, not voted lately."""
        c = self.config
        return [
            t for t in self.tracks
            if t.last_frame == frame_index and t.full_view and len(t.votes) < c.votes
            and frame_index - t.last_vote >= c.vote_every
        ]

    def needs_fallback_view(self, frame_index: int) -> list[Track]:
        """Unvoted tracks seen larger than ever: keep this view in case they never come fully into view."""
        return [t for t in self.tracks if t.last_frame == frame_index and not t.votes and t.area > t.best_area]

    def keep_fallback_view(self, track: Track, crop: np.ndarray, view: np.ndarray | None = None) -> None:
        track.best_crop, track.best_area = crop.copy(), track.area
        track.best_view = None if view is None else view.copy()

    def add_vote(self, track: Track, probs: np.ndarray, frame_index: int, crop: np.ndarray | None = None) -> bool:
        """Add a vote; True when ``crop`` became the track's best view (the caller may keep its camera view too)."""
        track.votes.append(np.asarray(probs, np.float32))
        track.last_vote = frame_index
        score = float(np.max(probs))
        if crop is not None and score > track.best_score:
            track.best_score, track.best_crop = score, crop.copy()
            return True
        return False

    def flush(self) -> list[Track]:
        """End every track (end of stream)."""
        return self._end(list(self.tracks))

    def _end(self, ended: list[Track]) -> list[Track]:
        if not ended:
            return []
        ids = {t.id for t in ended}
        self.tracks = [t for t in self.tracks if t.id not in ids]
        plants = [t for t in ended if t.frames >= self.config.min_frames]
        self.noise_tracks += len(ended) - len(plants)
        return plants
