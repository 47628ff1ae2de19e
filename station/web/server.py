"""Running the dashboard: in a background thread beside the receivers, or in the foreground.

``WebServer`` binds its socket before starting, so port 0 works (tests) and a taken
port fails at once with a clear error instead of inside the server thread. The
listening socket has ``TCP_NODELAY`` (accepted connections inherit it): without it a
small response on a kept-alive connection waits ~40 ms for the client's delayed ACK
(Nagle). With ``tls_cert``/``tls_key`` it serves HTTPS.
"""
from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import uvicorn

log = logging.getLogger(__name__)


class WebServerError(RuntimeError):
    """The dashboard could not start (port taken, bad address, startup failure)."""


class _Server(uvicorn.Server):
    """uvicorn's server, telling an event when it is ready (no polling)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    def install_signal_handlers(self) -> None:  # the owning process handles signals
        pass


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' (or ':PORT' for all interfaces) from a command line option."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise WebServerError(f"bad HTTP address {text!r}; expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


class WebServer:
    """The dashboard app served by uvicorn in a daemon thread: ``with WebServer(app, host, port) as web``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8080, *, startup_timeout_s: float = 20.0,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None):
        if (tls_cert is None) != (tls_key is None):
            raise WebServerError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")
        for path in (tls_cert, tls_key):
            if path is not None and not Path(path).is_file():
                raise WebServerError(f"no such TLS file: {str(path)!r}")
        self.app, self.startup_timeout_s = app, startup_timeout_s
        self.tls = tls_cert is not None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise WebServerError(f"cannot listen on {host}:{port}: {e}") from e
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                ssl_certfile=str(tls_cert) if tls_cert else None,
                                ssl_keyfile=str(tls_key) if tls_key else None)
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._run, name=f"web:{self.port}", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as e:  # reported by start(); the thread must not die silently
            self._error = e
            log.exception("dashboard server stopped with an error")
        finally:
            self._server.ready.set()

    def start(self) -> "WebServer":
        self._thread.start()
        if not self._server.ready.wait(self.startup_timeout_s) or self._error or not self._server.started:
            self.stop()
            raise WebServerError(f"dashboard did not start on {self.url}: {self._error or 'timeout'}")
        log.info("dashboard at %s", self.url)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._sock.close()

    close = stop  # the station closes its services

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(app, host: str = "127.0.0.1", port: int = 8080, **tls) -> None:
    """Serve in the foreground until interrupted (Ctrl-C); ``tls_cert``/``tls_key`` for HTTPS."""
    with WebServer(app, host, port, **tls) as web:
        print(f"dashboard at {web.url}", flush=True)
        try:
            web._thread.join()
        except KeyboardInterrupt:
            pass
