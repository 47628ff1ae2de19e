"""Serial ports both ends use: pyserial URLs plus ``pty://``, and the thread that owns a port.

Ports are pyserial URLs (``/dev/ttyUSB0``, ``socket://host:port``, ``loop://``) plus
``pty://[PATH]``, which creates a pseudo-terminal pair, keeps the master and exposes the
other end at ``PATH`` (a symlink) for the peer.  ``PortReader`` is the thread that owns a
port: it opens it, reads, survives errors (reconnect with exponential backoff) and
offers ``write`` with a timeout. The robot's sender is ``leafscout.robot.serial_link``; the
station's reader is ``leafscout.station.receiver``; frames are ``leafscout.link.protocol``.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import pty
import select
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Callable
from typing import Protocol as TypingProtocol

import serial

from .ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
_limited = RateLimitedLog(log)


class Port(TypingProtocol):
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def close(self) -> None: ...
    @property
    def in_waiting(self) -> int: ...


class PtyPort:
    """The master side of a pseudo-terminal pair, with pyserial's read/write/timeout behaviour."""

    def __init__(self, link_path: str | None = None, timeout: float = 0.05, write_timeout: float = 0.5):
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: binary-safe before the peer opens it
        os.set_blocking(self.master, False)
        self.peer = os.ttyname(self._slave)
        self.link_path = link_path
        if link_path:
            Path(link_path).unlink(missing_ok=True)
            os.symlink(self.peer, link_path)
        self.timeout, self.write_timeout = timeout, write_timeout

    @property
    def in_waiting(self) -> int:
        buf = fcntl.ioctl(self.master, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, "little")

    def read(self, size: int = 1) -> bytes:
        ready, _, _ = select.select([self.master], [], [], self.timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, max(size, 1))
        except BlockingIOError:
            return b""
        except OSError as e:
            if e.errno == errno.EIO:  # peer hung up; our own slave fd keeps the pair alive
                return b""
            raise serial.SerialException(f"pty read failed: {e}") from e

    def write(self, data: bytes) -> int:
        deadline = time.monotonic() + self.write_timeout
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            _, ready, _ = select.select([], [self.master], [], max(left, 0))
            if not ready:
                raise serial.SerialTimeoutException(f"write timeout after {self.write_timeout} s")
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                continue
            view = view[n:]
        return len(data)

    def close(self) -> None:
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.link_path:
            Path(self.link_path).unlink(missing_ok=True)


def open_port(url: str, baudrate: int = 115200, timeout: float = 0.05, write_timeout: float = 0.5) -> Port:
    """Open a pyserial URL or ``pty://[PATH]``; raises ``serial.SerialException``."""
    if url.startswith("pty://"):
        return PtyPort(url[len("pty://"):] or None, timeout, write_timeout)
    return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=write_timeout)


class PortReader(threading.Thread):
    """Owns one port: opens it, reads into ``on_data``, reconnects with backoff on errors.

    Errors raised by ``on_data`` are logged and counted, never taken for port errors.
    """

    def __init__(self, url: str, on_data: Callable[[bytes], None], baudrate: int = 115200,
                 on_state: Callable[[bool], None] | None = None, write_timeout: float = 0.5,
                 backoff: tuple[float, float] = (0.05, 2.0), name: str = "serial-reader"):
        super().__init__(name=name, daemon=True)
        self.url, self.baudrate, self.write_timeout = url, baudrate, write_timeout
        self.on_data, self.on_state = on_data, on_state or (lambda up: None)
        self.backoff = backoff
        self.connected = threading.Event()
        self.reconnects = 0
        self.write_timeouts = 0
        self.handler_errors = 0
        self.port: Port | None = None
        self._halt = threading.Event()
        self._port_lock = threading.Lock()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)
        self._close()

    def _close(self) -> None:
        with self._port_lock:
            port, self.port = self.port, None
        if port is not None:
            self.connected.clear()
            try:
                port.close()
            except Exception:  # noqa: BLE001 - closing a broken port may fail any way it likes
                pass
            self.on_state(False)

    def drop(self) -> None:
        """Close the port from any thread (e.g. after a write error); the reader reopens it."""
        self._close()

    def write(self, data: bytes) -> bool:
        """Write with the port's timeout; False when not connected or the peer stopped reading."""
        port = self.port
        if port is None:
            return False
        try:
            port.write(data)
            return True
        except serial.SerialTimeoutException:
            self.write_timeouts += 1
            _limited.warning(f"timeout {self.url}", "serial write timed out on %s (peer not reading?)", self.url)
            return False
        except (serial.SerialException, OSError, TypeError, AttributeError) as e:
            # TypeError/AttributeError: pyserial's socket:// when the reader thread closed
            # the socket between our check and the write (a cut cable mid-frame).
            if self.port is port:
                log.warning("serial write failed on %s: %s; reconnecting", self.url, e)
                self.drop()
            return False

    def run(self) -> None:
        delay = self.backoff[0]
        while not self._halt.is_set():
            try:
                port = open_port(self.url, self.baudrate, write_timeout=self.write_timeout)
            except (serial.SerialException, OSError, ValueError) as e:
                log.info("cannot open %s (%s); retrying in %.2f s", self.url, e, delay)
                self._halt.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            with self._port_lock:
                self.port = port
            self.connected.set()
            self.on_state(True)
            self._read_until_error(port)
            if not self._halt.is_set():
                self.reconnects += 1
                self._halt.wait(delay)

    def _read_until_error(self, port: Port) -> None:
        while not self._halt.is_set() and self.port is port:
            try:
                data = port.read(1)
                if data:
                    data += port.read(port.in_waiting)
                elif isinstance(port, serial.Serial) and not port.is_open:
                    raise serial.SerialException("port closed")
            except (serial.SerialException, OSError, TypeError, AttributeError) as e:
                # TypeError/AttributeError: pyserial's socket:// after the socket was closed
                if self.port is port:
                    log.warning("serial read failed on %s: %s; reconnecting", self.url, e)
                    self._close()
                return
            if data:
                try:
                    self.on_data(data)
                except Exception:  # noqa: BLE001 - a handler bug must not kill the port thread
                    self.handler_errors += 1
                    log.exception("serial data handler failed")
