"""Running the dashboard: :func:`serve` in the foreground (``pollen dashboard``), or
:class:`DashboardServer` on a thread of the calling process (the demo, the tests)."""

from __future__ import annotations

import threading
import time
from typing import Self

import uvicorn

from pollen.dashboard.app import build_app
from pollen.dashboard.security import Credentials
from pollen.settings import Settings


def _config(
    settings: Settings, credentials: Credentials | None, host: str, port: int
) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(settings, credentials), host=host, port=port, log_level="warning",
        access_log=False, server_header=False, lifespan="on",
    )  # fmt: skip


def serve(settings: Settings, credentials: Credentials | None, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl+C, SIGTERM)."""
    uvicorn.Server(_config(settings, credentials, host, port)).run()


class DashboardServer:
    """The dashboard on a background thread while the block runs; ``url`` is where it is."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials | None,
        port: int,
        host: str = "127.0.0.1",
    ) -> None:
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(_config(settings, credentials, host, port))
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
