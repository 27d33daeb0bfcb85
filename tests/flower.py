"""Flower as a child process on the session's broker, for the tests that read what it shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from pollen.local.servers import free_port

AUTH = ("ops", "correct-horse-battery")


class Flower:
    def __init__(self, broker_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}",
            "POLLEN_BROKER_URL": broker_url,
        }
        env.pop("FLOWER_UNAUTHENTICATED_API", None)
        args = [  # the documented command: the app finds the broker from pollen's settings
            sys.executable, "-m", "celery", "-A", "pollen.worker", "flower",
            f"--port={self.port}", "--address=127.0.0.1",
        ]  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)

    def get(self, path: str, *, auth: bool = True) -> httpx.Response:
        return httpx.get(self.url + path, auth=AUTH if auth else None, timeout=5)

    def up(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return self.get("/healthcheck", auth=False).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
