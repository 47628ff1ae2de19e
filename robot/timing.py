"""Per-stage timing of the robot loop: where each frame's milliseconds go.

``lap(stage)`` charges the time since the previous lap to ``stage``; anything not
charged to a named stage shows up as ``other`` (the glue, which should stay thin).
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

__all__ = ["STAGES", "StageTimer"]

log = logging.getLogger(__name__)

STAGES = ("capture", "localize", "classify", "track", "statistics")


class StageTimer:
    def __init__(self, stages: Sequence[str] = STAGES, *, log_every_s: float = 10.0) -> None:
        self.stages = tuple(stages)
        self.total = dict.fromkeys(self.stages, 0.0)
        self.frames = 0
        self.wall = 0.0
        self.log_every_s = log_every_s
        self._frame_start = self._last = time.perf_counter()
        self._next_log = time.monotonic() + log_every_s

    def start_frame(self) -> None:
        self._frame_start = self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.total[stage] += now - self._last
        self._last = now

    def end_frame(self) -> None:
        self.frames += 1
        self.wall += time.perf_counter() - self._frame_start
        if self.log_every_s and time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self.log_every_s
            log.info("per-frame ms over %d frames: %s", self.frames, self.format_line())

    def mean_ms(self) -> dict[str, float]:
        """Mean milliseconds per frame for each stage, plus ``other`` and ``total``."""
        n = max(self.frames, 1)
        out = {s: 1000.0 * self.total[s] / n for s in self.stages}
        out["other"] = max(0.0, 1000.0 * self.wall / n - sum(out.values()))
        out["total"] = 1000.0 * self.wall / n
        return {k: round(v, 4) for k, v in out.items()}

    def format_line(self) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in self.mean_ms().items())

    def format_table(self) -> str:
        ms = self.mean_ms()
        total = ms["total"] or 1.0
        lines = [f"{'stage':<11} {'ms/frame':>9} {'share':>7}"]
        for k, v in ms.items():
            lines.append(f"{k:<11} {v:9.3f} {100 * v / total:6.1f}%")
        fps = 1000.0 / total if self.frames else 0.0
        lines.append(f"{self.frames} frames, {fps:.1f} frames/s")
        return "\n".join(lines)
