"""The systems under test, behind one small interface: start workers, say how to enqueue, stop.

* ``pollen``: ``pollen worker`` processes (:class:`pollen.local.servers.Worker`), configured only
  through ``POLLEN_*`` variables; jobs are enqueued with :meth:`pollen.Pollen.submit` by the
  producer processes of :mod:`bench.producer`.
* ``pollen-send-task``: the same workers; jobs sent by a bare Celery app with
  ``send_task("pollen.submit")`` (:class:`bench.producer.SendTaskClient`).
* ``baseline`` / ``baseline-pooled``: :mod:`bench.baseline` under ``celery worker -E``.
* ``pollen-quiet`` / ``baseline-pooled-quiet``: ``pollen`` and ``baseline-pooled`` with task
  events off.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import httpx
import redis

from bench import baseline
from bench.producer import BASELINES, SEND_TASK, ProducerSpec
from bench.scenarios import NONBINDING_CAP, Scenario
from bench.services import CeleryWorker, ProfiledPollenWorker, Service, child_env, stop_workers
from pollen.callbacks.webhooks import new_secret
from pollen.local.servers import RedisServer, Worker
from pollen.payloads import message_job_id
from pollen.settings import QueueSettings
from pollen.store import keys
from pollen.worker.metrics import MULTIPROC_ENV

BROKER_DB, STORE_DB = 0, 1
API_KEY = "sim-key"
#: callbacks go to the receiver on 127.0.0.1, which pollen refuses unless allowed explicitly
LOOPBACK = ["127.0.0.0/8"]


#: what `pollen worker` runs with when not told otherwise
POLLEN_DEFAULT_POOL = "threads"
POLLEN_DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True)
class Options:
    """How to run the workers (command line options)."""

    workers: int = 2
    concurrency: int = 4  #: the baselines' prefork pool size
    pollen_pool: str | None = None  #: None: pollen's default (threads); baselines run prefork
    pollen_concurrency: int | None = None  #: None: pollen's default (32 threads)
    loglevel: str = "WARNING"
    profile_dir: Path | None = None
    producers: int | None = None  #: producer processes per system; None: the scenario's


class System:
    """One system under test, bound to one Redis server and the run's simulator."""

    name = ""

    def __init__(
        self, redis_server: RedisServer, sim_url: str, scenario: Scenario, options: Options
    ) -> None:
        self.redis_server = redis_server
        self.sim_url = sim_url
        self.scenario = scenario
        self.options = options
        self.workers: list[Worker] = []
        #: where each worker's Prometheus samples go (pollen only; read after the run)
        self.metrics_dirs: list[Path] = []

    @property
    def broker_url(self) -> str:
        return self.redis_server.url(BROKER_DB)

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def make_worker(self, index: int, log_dir: Path) -> Worker:
        raise NotImplementedError

    def prepare(self, log_dir: Path) -> None:
        """Start what the producers need besides the workers (before :meth:`producer_spec`)."""

    def start(self, log_dir: Path, timeout: float = 60.0) -> None:
        """Start every worker process and wait until each answers a Celery ping."""
        self.workers = [self.make_worker(i + 1, log_dir) for i in range(self.options.workers)]
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            try:
                worker.wait_ready(self.broker_url, timeout=timeout)
            except RuntimeError as exc:
                tail = Path(worker.log_file or "/dev/null").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{worker.name} did not start: {exc}\n{tail}") from exc

    def producer_spec(self) -> ProducerSpec:
        """What a producer process needs to enqueue this system's jobs (:mod:`bench.producer`)."""
        return ProducerSpec(
            system=self.name,
            broker_url=self.broker_url,
            store_url=self.redis_server.url(STORE_DB),
            provider_url=f"{self.sim_url}/v1",
            policy=dict(self.scenario.policy),
            allow_cidrs=tuple(LOOPBACK),
        )

    def stop(self) -> None:
        stop_workers(self.workers)

    def sim_config(self) -> dict[str, float]:
        """The simulator's settings while this system runs (pushes off unless asked for)."""
        return {"push_loss": 0.0, "push_duplicate": 0.0, "push_reorder": 0.0}

    def extra_pids(self) -> list[int]:
        """Processes of the system besides its workers (their CPU counts as the workers')."""
        return []

    def check(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        """After the run, before Redis stops: what the system checks of its own bookkeeping
        (details of the result)."""
        return {}


class PollenSystem(System):
    name = "pollen"

    def env(self) -> dict[str, str]:
        policy = {f"POLLEN_POLL__{k.upper()}": repr(v) for k, v in self.scenario.policy.items()}
        return child_env(
            {
                "POLLEN_REDIS_URL": self.redis_server.url(STORE_DB),
                "POLLEN_BROKER_URL": self.broker_url,
                "POLLEN_RUNWARE__BASE_URL": f"{self.sim_url}/v1",
                "POLLEN_RUNWARE__API_KEY": API_KEY,
                "POLLEN_HTTP_TIMEOUT": repr(self.scenario.http_timeout),
                "POLLEN_CALLBACKS__TIMEOUT": repr(self.scenario.http_timeout),
                "POLLEN_CALLBACKS__ALLOW_CIDRS": json.dumps(LOOPBACK),
                "POLLEN_CALLBACKS__SECRETS": json.dumps([new_secret()]),  # signed, as deployed
                "POLLEN_LOG_LEVEL": self.options.loglevel,
                **policy,
            }
        )

    def make_worker(self, index: int, log_dir: Path) -> Worker:
        metrics_dir = log_dir / f"{self.name}-{index}-metrics"
        self.metrics_dirs.append(metrics_dir)
        env = {**self.env(), MULTIPROC_ENV: str(metrics_dir)}
        common: dict[str, Any] = {
            "name": f"pollen-{index}",
            "concurrency": self.options.pollen_concurrency or POLLEN_DEFAULT_CONCURRENCY,
            "pool": self.options.pollen_pool or POLLEN_DEFAULT_POOL,
            "log_file": str(log_dir / f"pollen-{index}.log"),
            "extra_args": ["--loglevel", self.options.loglevel],
        }
        if self.options.profile_dir is not None:
            return ProfiledPollenWorker(env, profile_dir=self.options.profile_dir, **common)
        return Worker(env, **common)


class BaselineSystem(System):
    def __init__(
        self,
        redis_server: RedisServer,
        sim_url: str,
        scenario: Scenario,
        options: Options,
        *,
        pooled: bool,
        events: bool = True,
    ) -> None:
        super().__init__(redis_server, sim_url, scenario, options)
        self.pooled = pooled
        self.events = events
        self.name = ("baseline-pooled" if pooled else "baseline") + ("" if events else "-quiet")

    def env(self) -> dict[str, str]:
        return child_env(
            {
                "BENCH_BASELINE_BROKER": self.broker_url,
                "BENCH_BASELINE_STORE": self.redis_server.url(STORE_DB),
                "BENCH_BASELINE_PROVIDER_URL": f"{self.sim_url}/v1",
                "BENCH_BASELINE_API_KEY": API_KEY,
                "BENCH_BASELINE_POLICY": json.dumps(self.scenario.policy),
                "BENCH_BASELINE_POOLED": "1" if self.pooled else "0",
                "BENCH_BASELINE_HTTP_TIMEOUT": repr(self.scenario.http_timeout),
            }
        )

    def make_worker(self, index: int, log_dir: Path) -> Worker:
        name = f"{self.name}-{index}"
        return CeleryWorker(
            self.env(),
            app="bench.baseline",
            queues=baseline.QUEUE,
            name=name,
            concurrency=self.options.concurrency,
            pool="prefork",
            log_file=str(log_dir / f"{name}.log"),
            # -E: task events on, as a Flower-monitored fleet runs
            extra_args=["--loglevel", self.options.loglevel, *(["-E"] if self.events else [])],
        )


class PollenPushSystem(PollenSystem):
    """pollen's workers with pushes on: ``pollen ingress`` (uvicorn, its own process) takes the
    simulator's pushes; the workers ask for them (``POLLEN_INGRESS__PUBLIC_URL``). The ingress
    process counts as a worker: its CPU is in "worker CPU / job"."""

    name = "pollen-push"
    #: the simulator's push faults while this system runs
    push_faults: ClassVar[dict[str, float]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ingress: Service | None = None

    def sim_config(self) -> dict[str, float]:
        return {**super().sim_config(), **self.push_faults}

    def env(self) -> dict[str, str]:
        assert self.ingress is not None, "the ingress starts before the workers"
        return {**super().env(), "POLLEN_INGRESS__PUBLIC_URL": self.ingress.url}

    def start(self, log_dir: Path, timeout: float = 60.0) -> None:
        ingress = Service(
            f"{self.name}-ingress",
            "uvicorn",
            ["--factory", "pollen.ingress.app:build_app", "--host", "127.0.0.1",
             "--log-level", "warning", "--no-access-log"],
            log_dir,
        )  # fmt: skip
        self.ingress = ingress
        ingress.env = super().env()  # the ingress reads the same store and broker
        ingress.start()
        super().start(log_dir, timeout)

    def extra_pids(self) -> list[int]:
        return [self.ingress.pid] if self.ingress is not None else []

    def stop(self) -> None:
        super().stop()
        if self.ingress is not None:
            self.ingress.stop()


class PollenPushLossySystem(PollenPushSystem):
    """As ``pollen-push``, with 20 % of the simulator's pushes lost, 10 % sent twice and up to
    0.5 s of random delay (so they arrive out of order)."""

    name = "pollen-push-lossy"
    push_faults: ClassVar[dict[str, float]] = {
        "push_loss": 0.2,
        "push_duplicate": 0.1,
        "push_reorder": 0.5,
    }


class PollenCappedSystem(PollenSystem):
    """pollen's workers told the simulator key's cap (``POLLEN_RUNWARE__MAX_IN_FLIGHT``): its
    jobs take a slot before their create and wait in pollen while every slot is held. In a
    scenario whose simulator caps nothing, the cap is one that never binds, so the run shows
    what admission itself costs against ``pollen``."""

    name = "pollen-capped"

    @property
    def cap(self) -> int:
        return self.scenario.cap or NONBINDING_CAP

    def env(self) -> dict[str, str]:
        return {**super().env(), "POLLEN_RUNWARE__MAX_IN_FLIGHT": str(self.cap)}


class PollenCappedPushSystem(PollenPushSystem, PollenCappedSystem):
    """``pollen-capped`` with pushes on, as ``pollen-push``: a slot frees as soon as the
    provider says its task ended, not at the next poll."""

    name = "pollen-capped-push"


class PollenManySystem(PollenSystem):
    """pollen's workers, unchanged; its producers enqueue with ``Pollen.submit_many``."""

    name = "pollen-many"


class PollenTracedSystem(PollenSystem):
    """pollen's workers and producers with OpenTelemetry traces on (``POLLEN_TRACING=true``),
    exported over OTLP/HTTP (the default exporter, batched) to a sink of its own: a second
    :mod:`bench.receiver`, which counts the exports and drops them. Against ``pollen``, what
    tracing costs."""

    name = "pollen-traced"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink: Service | None = None

    def env(self) -> dict[str, str]:
        assert self.sink is not None, "the sink starts first (prepare)"
        return {
            **super().env(),
            "POLLEN_TRACING": "true",
            "OTEL_SERVICE_NAME": "pollen-worker",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.sink.url,
        }

    def prepare(self, log_dir: Path) -> None:
        self.sink = Service(f"{self.name}-sink", "bench.receiver", [], log_dir)
        self.sink.start()

    def producer_spec(self) -> ProducerSpec:
        assert self.sink is not None, "the sink starts first (prepare)"
        return replace(super().producer_spec(), trace_endpoint=self.sink.url)

    def stop(self) -> None:
        super().stop()  # the workers flush their last spans as they stop
        if self.sink is not None:
            took = httpx.get(f"{self.sink.url}/_recv/count", trust_env=False, timeout=5).json()
            print(f"[{self.name}] the trace sink took {took['trace_exports']} exports, "
                  f"{took['trace_bytes']:,} bytes", file=sys.stderr)  # fmt: skip
            self.sink.stop()


class PollenSendTaskSystem(PollenSystem):
    """pollen's workers, unchanged; its producers are a bare Celery app sending
    ``pollen.submit`` with no job id (the worker derives it from the task id)."""

    name = SEND_TASK

    def producer_spec(self) -> ProducerSpec:
        return replace(super().producer_spec(), submit_queue=QueueSettings().submit)

    def check(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        """How many messages sent became a job stored under the id derived from their task
        id (every one, when pollen's worker and this bookkeeping agree)."""
        job_ids = [message_job_id(t) for r in reports for t in r.pop("task_ids", [])]
        store = redis.Redis.from_url(self.redis_server.url(STORE_DB))
        try:
            found = 0
            for start in range(0, len(job_ids), 1000):
                with store.pipeline(transaction=False) as pipe:
                    for job_id in job_ids[start : start + 1000]:
                        pipe.exists(keys.job(job_id))
                    found += sum(pipe.execute())
        finally:
            store.close()
        return {"send_task_messages": len(job_ids), "send_task_jobs_stored": found}


class PollenQuietSystem(PollenSystem):
    """``pollen`` with task events off (``POLLEN_TASK_EVENTS=false``)."""

    name = "pollen-quiet"

    def env(self) -> dict[str, str]:
        return {**super().env(), "POLLEN_TASK_EVENTS": "false"}


#: the pollen systems by name (the baselines are one class with two switches)
POLLEN_SYSTEMS: dict[str, type[PollenSystem]] = {
    cls.name: cls
    for cls in (
        PollenSystem,
        PollenCappedSystem,
        PollenCappedPushSystem,
        PollenManySystem,
        PollenTracedSystem,
        PollenPushSystem,
        PollenPushLossySystem,
        PollenSendTaskSystem,
        PollenQuietSystem,
    )
}


def make_system(
    name: str, redis_server: RedisServer, sim_url: str, scenario: Scenario, options: Options
) -> System:
    if name in POLLEN_SYSTEMS:
        return POLLEN_SYSTEMS[name](redis_server, sim_url, scenario, options)
    if name in BASELINES:
        pooled, events = "pooled" in name, not name.endswith("-quiet")
        return BaselineSystem(
            redis_server, sim_url, scenario, options, pooled=pooled, events=events
        )
    raise ValueError(f"unknown system {name!r}")
