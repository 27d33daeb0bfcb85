"""A small fleet of real worker processes with queues and a job store of their own.

The session's shared worker never sees a fleet's jobs (other queue names, another Redis db),
so tests can stop, kill and restart a fleet's workers and know exactly who ran what.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import redis

from pollen import Pollen
from pollen.local.servers import Worker
from pollen.settings import Settings

FLEET_DB = 2


def _running(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class Fleet:
    def __init__(self, base_env: dict[str, str], redis_url: str, logdir: Path, **env: str) -> None:
        self.suffix = uuid.uuid4().hex[:8]
        self.logdir = logdir
        self.store_url = redis_url.rsplit("/", 1)[0] + f"/{FLEET_DB}"
        self.env = {
            **base_env,
            "POLLEN_REDIS_URL": self.store_url,
            "POLLEN_QUEUES__SUBMIT": f"pollen.submit.{self.suffix}",
            "POLLEN_QUEUES__POLL": f"pollen.poll.{self.suffix}",
            "POLLEN_QUEUES__CALLBACKS": f"pollen.callbacks.{self.suffix}",
            "POLLEN_METRICS_PORT": "",
            **env,
        }
        self.env = {k: v for k, v in self.env.items() if v != ""}
        self.workers: dict[str, Worker] = {}
        self._log_starts: dict[str, int] = {}
        flush = redis.Redis.from_url(self.store_url)
        flush.flushdb()
        flush.close()

    def start(
        self,
        name: str,
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        wait: bool = True,
        queues: list[str] | None = None,
        **env: str,
    ) -> Worker:
        """Start a worker; with ``wait=False`` return at once (start several, then
        :meth:`wait_ready` each: their start-ups overlap). ``queues``: consume only these."""
        log = self.logdir / f"{name}.log"
        self._log_starts[name] = log.stat().st_size if log.exists() else 0
        worker = Worker(
            {**self.env, **env, "POLLEN_HEARTBEAT_FILE": str(self.logdir / f"{name}.heartbeat")},
            name=f"{name}-{self.suffix}",
            concurrency=concurrency,
            pool=pool,
            log_file=str(log),
            extra_args=["--queues", ",".join(queues)] if queues else (),
        )
        worker.start()
        self.workers[name] = worker
        if wait:
            worker.wait_ready(self.env["POLLEN_BROKER_URL"])
        return worker

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        """Block until the worker logs that it is ready (consuming), since its last start."""
        worker = self.workers[name]
        log = self.logdir / f"{name}.log"
        needle = f"{worker.name}@"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {worker.proc.returncode}")
            with log.open("rb") as handle:
                handle.seek(self._log_starts.get(name, 0))
                text = handle.read().decode(errors="replace")
            if any(needle in line and " ready." in line for line in text.splitlines()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker {name} did not log 'ready.' within {timeout}s")

    def pod(self, name: str) -> list[psutil.Process]:
        """The worker's main process and its pool processes: what a pod kill takes down."""
        proc = self.workers[name].proc
        assert proc is not None
        main = psutil.Process(proc.pid)
        return [main, *main.children(recursive=True)]

    def pool_processes(self, name: str) -> list[psutil.Process]:
        return self.pod(name)[1:]

    def kill_pod(self, name: str) -> None:
        """SIGKILL the main process and every pool process at once (a node losing the pod)."""
        processes = self.pod(name)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        worker = self.workers[name]
        if worker.proc is not None:
            worker.proc.wait(10)
        deadline = time.monotonic() + 10
        for process in processes[1:]:  # not our children: gone once they are zombies
            while time.monotonic() < deadline and _running(process):
                time.sleep(0.01)

    def alive(self, name: str) -> bool:
        proc = self.workers[name].proc
        return proc is not None and proc.poll() is None

    def process_with_port(self, local_port: int, remote_port: int) -> psutil.Process | None:
        """The pool process (of any running pod) with a TCP connection from ``local_port`` to
        ``remote_port``: who sent the request a local proxy sees coming from that port."""
        for name in self.workers:
            if not self.alive(name):
                continue
            for process in self.pool_processes(name):
                try:
                    connections = process.net_connections(kind="tcp")
                except psutil.NoSuchProcess:
                    continue
                for conn in connections:
                    if (
                        conn.laddr
                        and conn.raddr
                        and conn.laddr.port == local_port
                        and conn.raddr.port == remote_port
                    ):
                        return process
        return None

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text()

    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.update(self.env)
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def client(self) -> Pollen:
        return Pollen(self.settings())

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.kill()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
