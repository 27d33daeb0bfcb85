"""Running the simulator: in a background thread (tests, demo) or in the foreground (CLI)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Generator
from types import FrameType, TracebackType
from typing import Self

import httpx
import uvicorn

from pollen.simulator.app import build_app
from pollen.simulator.config import SimulatorConfig
from pollen.simulator.core import Simulator

STARTUP_TIMEOUT = 10.0


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that never touches signal handlers (it runs off the main thread)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _uvicorn_config(sim: Simulator, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(sim),
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "info",
        lifespan="off",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=1,
    )


class SimulatorServer:
    """The simulator served by uvicorn in a daemon thread, on a free port when ``port`` is 0.

    >>> with SimulatorServer(SimulatorConfig(duration_min=0.1, duration_max=0.2)) as sim:
    ...     httpx.get(f"{sim.url}/healthz").json()
    """

    def __init__(
        self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = Simulator(config or SimulatorConfig())
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> SimulatorConfig:
        """The live config (``PATCH /_sim/config`` replaces it)."""
        return self.simulator.config

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator server is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("simulator server already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto is TCP;
        # without it every keep-alive answer waits ~40 ms (Nagle + delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = sock.getsockname()[1]
        self.simulator.own_media_url = f"{self.url}/media"
        self._server = _ThreadServer(
            _uvicorn_config(self.simulator, self.host, self._port, "warning")
        )
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.run(sockets=[sock]), name="pollen-simulator", daemon=True
        )
        self._thread.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            sock.close()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("simulator server thread exited during startup")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        raise RuntimeError(f"simulator server did not answer /healthz within {STARTUP_TIMEOUT}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and join its thread (forcing exit if it lingers)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.simulator.stopping.set()
        self.simulator.pusher.close()
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _ForegroundServer(uvicorn.Server):
    """A uvicorn server that also releases stalled (timeout-fault) requests on Ctrl+C/SIGTERM."""

    def __init__(self, sim: Simulator, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.simulator = sim

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.simulator.stopping.set()
        super().handle_exit(sig, frame)


def run(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve the simulator in the foreground until interrupted (``pollen simulator``)."""
    sim = Simulator(config)
    shown = f"[{host}]" if ":" in host else host
    sim.own_media_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else shown}:{port}/media"
    _ForegroundServer(sim, _uvicorn_config(sim, host, port, "info")).run()
