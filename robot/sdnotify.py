"""systemd's sd_notify protocol, in the few lines it takes: datagrams to ``$NOTIFY_SOCKET``.

A service of ``Type=notify`` tells systemd ``READY=1`` once it works, ``WATCHDOG=1`` at
least every ``WatchdogSec`` (else systemd kills and restarts it), ``STATUS=...`` for
``systemctl status`` and ``STOPPING=1`` on the way out. Without ``$NOTIFY_SOCKET`` (not
started by systemd) every call does nothing. An address starting with ``@`` is in the
abstract namespace.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any

__all__ = ["notify", "SdNotifier"]

log = logging.getLogger(__name__)


def notify(*lines: str, socket_path: str | None = None) -> bool:
    """Send ``lines`` (e.g. "READY=1") as one datagram; False when there is no socket to send to."""
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as e:  # systemd gone or the socket unwritable: the survey goes on
        log.warning("sd_notify to %s failed: %s", path, e)
        return False
    return True


class SdNotifier:
    """A runtime monitor: READY=1 when the loop starts, WATCHDOG=1 and STATUS at each heartbeat."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")

    def _send(self, *lines: str) -> None:
        if self.socket_path:
            notify(*lines, socket_path=self.socket_path)

    def started(self, runtime: Any) -> None:
        self._send("READY=1", f"STATUS=surveying {runtime.config.survey_id} from {runtime.capture.name}")

    def heartbeat(self, runtime: Any, hb: Any) -> None:
        gps = f", gps {hb.gps}" if hb.gps else ""
        links = f", {hb.links}" if hb.links else ""
        self._send("WATCHDOG=1", f"STATUS={hb.status}: {hb.frames} frames, {hb.fps:.1f} fps{gps}{links}, "
                                 f"{hb.queue_depth} queued")

    def stopped(self, runtime: Any) -> None:
        self._send("STOPPING=1", f"STATUS=stopped after {runtime.frames} frames")
