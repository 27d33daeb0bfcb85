"""Child processes of a benchmark run: simulator, callback receiver, workers; process trees.

Everything here is stopped by its owner (``ExitStack`` in :mod:`bench.runner`), also on Ctrl+C
or failure; :func:`kill_tree` finishes off any worker child that outlived its parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]

from pollen.local.servers import ManagedProcess, Worker, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The harness's environment, with the repository on PYTHONPATH (for ``bench.*``)."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


class Service(ManagedProcess):
    """``python -m MODULE --port P ARGS`` on a free loopback port, ready once /healthz answers."""

    stop_timeout = 10.0

    def __init__(
        self,
        name: str,
        module: str,
        args: Iterable[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.args = list(args)
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> Self:
        argv = [sys.executable, "-m", self.module, "--port", str(self.port), *self.args]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=self.env or child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        tail = self.log_file.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{tail}")


class CeleryWorker(Worker):
    """``python -m celery -A APP worker`` (the baseline), with pollen's Worker life cycle."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        app: str,
        queues: str,
        name: str,
        concurrency: int,
        pool: str = "prefork",
        log_file: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            env,
            name=name,
            concurrency=concurrency,
            pool=pool,
            log_file=log_file,
            extra_args=extra_args,
        )
        self.app = app
        self.queues = queues
        self.cwd = REPO_ROOT

    def start(self) -> None:
        args = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "--concurrency", str(self.concurrency), "--pool", self.pool, "-Q", self.queues,
            "--hostname", f"{self.name}@%h", "--without-mingle", "--without-gossip",
            *self.extra_args,
        ]  # fmt: skip
        self._spawn(args)


class ProfiledPollenWorker(CeleryWorker):
    """``pollen worker`` through :mod:`bench.profile_worker` (pyinstrument in every child)."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        profile_dir: Path,
        name: str,
        concurrency: int,
        pool: str = "prefork",
        log_file: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            env,
            app="",
            queues="",
            name=name,
            concurrency=concurrency,
            pool=pool,
            log_file=log_file,
            extra_args=extra_args,
        )
        self.profile_dir = profile_dir

    def start(self) -> None:
        args = [
            sys.executable, "-m", "bench.profile_worker", str(self.profile_dir), "worker",
            "--concurrency", str(self.concurrency), "--pool", self.pool,
            "--hostname", f"{self.name}@%h", *self.extra_args,
        ]  # fmt: skip
        self._spawn(args)


def tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL whatever of ``procs`` is still running (orphaned pool children)."""
    alive = []
    for proc in procs:
        try:
            proc.kill()
            alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def stop_workers(workers: list[Worker], timeout: float = 20.0) -> None:
    """SIGTERM every worker at once, wait, then kill stragglers and their children."""
    families = [tree(w.proc.pid) for w in workers if w.proc is not None]
    for worker in workers:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for worker in workers:
        if worker.proc is None:
            continue
        try:
            worker.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(5)
    for family in families:
        kill_tree(family)
