"""Running the dashboard: :func:`serve` in the foreground (``pollen dashboard``); on a thread
of the calling process (the demo, the tests) it is :class:`pollen.local.servers.DashboardServer`."""

from __future__ import annotations

import uvicorn

from pollen.dashboard.app import build_app
from pollen.dashboard.security import Credentials
from pollen.settings import Settings, shutdown_grace


def config(
    settings: Settings, credentials: Credentials | None, host: str, port: int
) -> uvicorn.Config:
    """How uvicorn serves the dashboard (here, and on a thread: :class:`pollen.local.servers.
    DashboardServer`)."""
    return uvicorn.Config(
        build_app(settings, credentials), host=host, port=port, log_level="warning",
        access_log=False, server_header=False, lifespan="on",
        timeout_graceful_shutdown=shutdown_grace(settings.dashboard.redis_timeout),
    )  # fmt: skip


def serve(settings: Settings, credentials: Credentials | None, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl+C, SIGTERM)."""
    uvicorn.Server(config(settings, credentials, host, port)).run()
