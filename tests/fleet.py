"""A small fleet of real worker processes with queues and a job store of their own.

The session's shared worker never sees a fleet's jobs (other queue names, another Redis db),
so tests can stop, kill and restart a fleet's workers and know exactly who ran what.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import redis

from pollen import Pollen
from pollen.embedded import Worker
from pollen.settings import Settings

FLEET_DB = 2


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
        flush = redis.Redis.from_url(self.store_url)
        flush.flushdb()
        flush.close()

    def start(
        self, name: str, *, concurrency: int = 2, pool: str = "prefork", **env: str
    ) -> Worker:
        worker = Worker(
            {**self.env, **env, "POLLEN_HEARTBEAT_FILE": str(self.logdir / f"{name}.heartbeat")},
            name=f"{name}-{self.suffix}",
            concurrency=concurrency,
            pool=pool,
            log_file=str(self.logdir / f"{name}.log"),
        )
        worker.start()
        worker.wait_ready(self.env["POLLEN_BROKER_URL"])
        self.workers[name] = worker
        return worker

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
