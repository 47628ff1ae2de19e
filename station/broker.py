"""A real Mosquitto broker on a free loopback port, for the demo, tests and benchmarks.

Per-robot credentials (``mosquitto_passwd``) and an ACL: robot ``r1`` may write only
``leafscout/r1/#`` and read only ``leafscout/r1/ack``; the ``station`` user reads all
robot topics and writes the ack topics.  Persistence is on (autosave every second), as
it should be in the field.  ``tls=True`` adds a self-signed certificate (``openssl``).
``kill()`` is ``kill -9``; ``start()`` again brings it back on the same port.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

STATION_USER = "station"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (str(p) for p in (Path("/usr/sbin/mosquitto"), Path("/usr/bin/mosquitto")) if p.exists()), None)


class Broker:
    def __init__(self, workdir: str | Path, robots: list[str], binary: str | None = None, port: int | None = None,
                 tls: bool = False):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.port = port or free_port()
        self.passwords = {STATION_USER: "station-secret", **{r: f"{r}-secret" for r in robots}}
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self._write_config()

    def url(self, user: str, password: bool = True) -> str:
        """The broker URL for ``user``; ``password=False`` leaves the password out (use ``password_file``)."""
        cred = f"{user}:{self.passwords[user]}" if password else user
        if self.tls:
            return f"mqtts://{cred}@127.0.0.1:{self.port}?ca={self.dir / 'cert.pem'}"
        return f"mqtt://{cred}@127.0.0.1:{self.port}"

    def password_file(self, user: str) -> Path:
        """A file (mode 0600) holding ``user``'s password, for ``--password-file``."""
        path = self.dir / f"{user}.password"
        path.touch(mode=0o600)
        path.write_text(self.passwords[user] + "\n")
        return path

    def _make_certificate(self) -> str:
        """A self-signed certificate for 127.0.0.1 (its own CA): config lines for the listener."""
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True)
        return f"certfile {cert}\nkeyfile {key}\n"

    def _write_config(self) -> None:
        passwd = self.dir / "passwd"
        passwd.unlink(missing_ok=True)
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        for i, (user, pw) in enumerate(self.passwords.items()):
            flags = ["-b", "-c"] if i == 0 else ["-b"]
            subprocess.run([tool, *flags, str(passwd), user, pw], check=True, capture_output=True)
        (self.dir / "acl").write_text(
            f"user {STATION_USER}\ntopic read leafscout/#\ntopic write leafscout/+/ack\n"
            "topic write leafscout/+/offer\n\n"
            "pattern write leafscout/%u/plant\npattern write leafscout/%u/row\n"
            "pattern write leafscout/%u/heartbeat\npattern write leafscout/%u/status\n"
            "pattern read leafscout/%u/ack\npattern read leafscout/%u/offer\n"
        )
        extra = "user root\n" if os.geteuid() == 0 else ""
        if self.tls:
            extra += self._make_certificate()
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
            f"acl_file {self.dir / 'acl'}\npersistence true\npersistence_location {self.dir}/\n"
            "autosave_interval 1\nmax_queued_messages 200000\n"
            f"max_inflight_messages 1000\nlog_dest file {self.dir / 'mosquitto.log'}\n{extra}"
        )

    def start(self, timeout: float = 10.0) -> "Broker":
        self.proc = subprocess.Popen([self.binary, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)  # polling a port: there is no event to wait on
        raise TimeoutError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """``kill -9``: the broker loses whatever it held in memory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
