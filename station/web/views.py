"""Presentation helpers shared by the dashboard and the report: robot status, times, spans."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

# A robot whose last message is older than this is shown as stale, then as offline.
STALE_AFTER_S = 60.0
OFFLINE_AFTER_S = 600.0


@dataclass(frozen=True)
class RobotView:
    robot_id: str
    last_seen: float | None
    queue_depth: int | None
    status: str | None
    link: str
    health_class: str
    age_text: str


def robot_views(robots: list, now: float | None = None) -> list[RobotView]:
    """Status rows for ``station.db.RobotInfo`` items: age, queue depth and link health."""
    now = time.time() if now is None else now
    out = []
    for r in robots:
        age = None if r.last_seen is None else max(0.0, now - r.last_seen)
        if r.link_status == "offline" or age is None or age > OFFLINE_AFTER_S:
            health, word = "bad", "offline"
        elif age > STALE_AFTER_S:
            health, word = "warn", "stale"
        else:
            health, word = "ok", "online"
        link = f"{word} via {r.link}" if r.link else word
        out.append(RobotView(r.robot_id, r.last_seen, r.queue_depth, r.status, link, health, age_text(age)))
    return out


def age_text(age_s: float | None) -> str:
    if age_s is None:
        return "never"
    if age_s < 120:
        return f"{age_s:.0f} s"
    if age_s < 7200:
        return f"{age_s / 60:.0f} min"
    if age_s < 172800:
        return f"{age_s / 3600:.0f} h"
    return f"{age_s / 86400:.0f} days"


def utc_text(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def span_text(t_first: float | None, t_last: float | None) -> str:
    if t_first is None or t_last is None:
        return "no plants recorded yet"
    return f"{utc_text(t_first)} to {utc_text(t_last)} UTC"
