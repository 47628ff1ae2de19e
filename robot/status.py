"""What the robot is doing right now, in a JSON file `leafscout status` reads.

The runtime calls a ``StatusFile`` monitor at start, at every heartbeat and at the end;
it writes ``status.json`` (in the robot's state directory unless ``--status-file`` says
otherwise) atomically: a temporary file, fsync, ``os.replace``, so a reader never sees
half a file. Keys: ``robot_id``, ``survey_id``, ``state`` (running | stopped), ``status``
(the heartbeat's: ok | degraded | no-camera), ``updated`` (unix time), ``pid``,
``camera`` {``source``, ``fps``, ``frames``, counters}, ``gps`` {``fix``, ``quality``,
``age_s``} (null without a GPS), ``links`` {name: up | down}, ``queue_depth``,
``dropped``, ``last_record`` {``plant_id``, ``t``, ``label``, ``row``, ``fix``},
``bundle`` (version).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from leafscout.link.files import write_atomic

__all__ = ["STATUS_NAME", "StatusFile", "link_states", "read_status", "format_status", "default_status_path"]

STATUS_NAME = "status.json"


def default_status_path(robot_id: str, state_dir: str | os.PathLike | None = None) -> Path:
    from .outbox import default_state_dir

    return (Path(state_dir) if state_dir is not None else default_state_dir(robot_id)) / STATUS_NAME


def link_states(sinks: Sequence[Any]) -> dict[str, str]:
    """``{"mqtt": "up", "serial": "down"}`` for the telemetry links behind ``sinks``."""
    out: dict[str, str] = {}
    for sink in sinks:
        for link in getattr(sink, "links", ()):
            name = type(link).__name__.lower().removesuffix("link") or "link"
            if hasattr(link, "healthy"):
                up = link.healthy()
            else:
                event = getattr(link, "connected", None) or getattr(getattr(link, "reader", None), "connected", None)
                up = bool(event is not None and event.is_set())
            out[name] = "up" if up else "down"
    return out


class StatusFile:
    """A runtime monitor that keeps ``path`` current (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.writes = 0

    def snapshot(self, runtime: Any, *, state: str, status: str) -> dict[str, Any]:
        gps = getattr(runtime.positions, "last", None)
        last = runtime.last_record
        cam = runtime.capture
        depth = sum(int(getattr(s, "queue_depth", 0) or 0) for s in runtime.sinks)
        dropped = sum(int(getattr(s, "dropped", 0) or 0) for s in runtime.sinks)
        fps = 1000.0 / runtime.timer.mean_ms()["total"] if runtime.timer.frames else 0.0
        return {
            "robot_id": runtime.config.robot_id,
            "survey_id": runtime.config.survey_id,
            "state": state,
            "status": status,
            "updated": round(time.time(), 3),
            "pid": os.getpid(),
            "camera": {"source": cam.name, "fps": round(fps, 2), "frames": runtime.frames, **cam.stats.as_dict()},
            "gps": None if gps is None else {"fix": gps.fix, "quality": gps.quality, "age_s": gps.age_s},
            "links": link_states(runtime.sinks),
            "queue_depth": depth,
            "dropped": dropped,
            "last_record": None if last is None else {
                "plant_id": last.plant_id, "t": last.t, "label": last.label, "row": last.row, "fix": last.fix},
            "bundle": runtime.bundle_version,
        }

    def write(self, snapshot: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(snapshot, indent=1) + "\n")
        self.writes += 1

    # -- the runtime's monitor interface ---------------------------------------------
    def started(self, runtime: Any) -> None:
        self.write(self.snapshot(runtime, state="running", status="starting"))

    def heartbeat(self, runtime: Any, hb: Any) -> None:
        self.write(self.snapshot(runtime, state="running", status=hb.status))

    def stopped(self, runtime: Any) -> None:
        self.write(self.snapshot(runtime, state="stopped", status="stopped"))


def read_status(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def format_status(s: dict[str, Any], now: float | None = None) -> str:
    """The status file as `leafscout status` prints it."""
    now = time.time() if now is None else now
    cam, gps, last = s.get("camera") or {}, s.get("gps"), s.get("last_record")
    lines = [
        f"robot {s.get('robot_id')}  survey {s.get('survey_id')}  {s.get('state')} ({s.get('status')}), "
        f"updated {max(0.0, now - float(s.get('updated', now))):.1f} s ago, pid {s.get('pid')}",
        f"camera  {cam.get('source')}: {cam.get('fps', 0):.1f} fps, {cam.get('frames', 0)} frames, "
        f"{cam.get('reopens', 0)} reopens, {cam.get('dropped', 0)} dropped",
        "gps     none configured" if gps is None else
        f"gps     fix {gps.get('fix')}, quality {gps.get('quality')}, age {gps.get('age_s')} s",
        "links   " + (" ".join(f"{k}={v}" for k, v in (s.get("links") or {}).items()) or "none"),
        f"queue   {s.get('queue_depth', 0)} records waiting, {s.get('dropped', 0)} dropped",
        "last    none" if last is None else
        f"last    plant {last.get('plant_id')} ({last.get('label')}) row {last.get('row')}, fix {last.get('fix')}",
        f"bundle  {s.get('bundle') or 'unknown'}",
    ]
    offer, update = s.get("bundle_offer"), s.get("bundle_update")
    if offer:
        lines.append(f"offer   {offer.get('version')} (manifest {str(offer.get('manifest_sha256'))[:12]}): "
                     "installed by the next `leafscout bundle fetch`, between surveys")
    if update:
        lines.append(f"update  last fetch {update.get('updated_utc')}: {update.get('state')} ({update.get('detail')})")
    return "\n".join(lines)
