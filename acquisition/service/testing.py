"""Running a real station process for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

USER, PASSWORD = "tech", "tech-password-1"
PHYSICIST, PHYSICIST_PASSWORD = "phys", "phys-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StationProcess:
    """``rsa-station serve --simulate`` in a child process on a free loopback port."""

    def __init__(self, data: Path, *, binned: bool = True, extra: list[str] | None = None):
        self.data = Path(data)
        self.binned = binned
        self.extra = extra or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> StationProcess:
        cmd = [
            sys.executable,
            "-m",
            "acquisition.cli",
            "serve",
            "--simulate",
            "--port",
            str(self.port),
            "--data",
            str(self.data),
            "--user",
            f"{USER}:technician:{PASSWORD}",
            "--user",
            f"{PHYSICIST}:physicist:{PHYSICIST_PASSWORD}",
            *self.extra,
        ]
        if self.binned:
            cmd.append("--sim-binned")
        self.log = open(self.data.parent / f"station-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "RSA_DEBUG": "1"}
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"station exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("station did not answer /api/health")

    def client(self, user: str = USER, password: str = PASSWORD) -> httpx.Client:
        c = httpx.Client(base_url=self.url, timeout=30)
        r = c.post("/api/login", json={"username": user, "password": password})
        r.raise_for_status()
        return c

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a power cut of the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()
