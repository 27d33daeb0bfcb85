"""The producers: each system's enqueue loop in processes of its own (``--producers N``).

Every producer process builds its system's client (pollen's :class:`pollen.Pollen`, or the
baseline's Celery app and Redis hash store), says it is ready, waits for the common start signal
and enqueues its share of the jobs (job ``i`` goes to producer ``i % N``). It measures its own CPU
time (``time.process_time()``, every thread of the process) from just before its first enqueue to
just after its last, so the figure is the enqueue loop and nothing else (not the imports, not the
client's construction).

Processes are started with the ``spawn`` method: the harness has threads and open sockets that a
forked child must not inherit.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import queue
import sys
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any, Protocol

import redis
from celery import Celery

LABEL_PREFIX = "bench "
#: how long a producer may take to import and build its client before the run gives up
READY_TIMEOUT = 120.0


def job_request(job_id: str) -> dict[str, Any]:
    """The provider request of every benchmark job; the prompt ties the task to the job."""
    return {
        "taskType": "videoInference",
        "model": "klingai:5@3",
        "positivePrompt": f"{LABEL_PREFIX}{job_id}",
        "numberResults": 1,
    }


@dataclass(frozen=True)
class ProducerSpec:
    """Everything a producer process needs to build its system's client (picklable)."""

    system: str
    broker_url: str
    store_url: str
    provider_url: str
    policy: dict[str, float]
    allow_cidrs: tuple[str, ...]
    tenant: str | None = None  #: every job's tenant (None: the shared default tenant)
    #: OTLP/HTTP endpoint of the producer's traces (pollen-traced); None: tracing off
    trace_endpoint: str | None = None
    #: the queue pollen's workers take submits from (pollen-send-task sends there)
    submit_queue: str = ""


class Client(Protocol):
    def warm(self) -> None: ...

    def enqueue(self, job_id: str, request: dict[str, Any], callback_url: str) -> int:
        """Enqueue one job (or buffer it); how many jobs this call sent."""
        ...

    def flush(self) -> int:
        """Send what is buffered; how many jobs it sent."""
        ...

    def close(self) -> None: ...


class PollenClient:
    """``pollen.Pollen.submit``: what an application using pollen does per job."""

    def __init__(self, spec: ProducerSpec) -> None:
        from pollen import Pollen
        from pollen.backoff import PollPolicy
        from pollen.settings import CallbackSettings, RunwareSettings, Settings

        if spec.trace_endpoint is not None:
            _trace_to(spec.trace_endpoint)
        # The producer decides a job's poll policy at accept time: same numbers as the workers.
        settings = Settings(
            tracing=spec.trace_endpoint is not None,
            redis_url=spec.store_url,
            broker_url=spec.broker_url,
            runware=RunwareSettings(base_url=spec.provider_url),
            poll=PollPolicy.model_validate(spec.policy),
            callbacks=CallbackSettings.model_validate({"allow_cidrs": list(spec.allow_cidrs)}),
        )
        self.client = Pollen(settings)
        self.tenant = spec.tenant

    def warm(self) -> None:
        self.client.store.redis.ping()
        _connect(self.client.celery)

    def enqueue(self, job_id: str, request: dict[str, Any], callback_url: str) -> int:
        self.client.submit(
            "runware", request, job_id=job_id, callback_url=callback_url, tenant=self.tenant
        )
        return 1

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        self.client.close()


def _trace_to(endpoint: str) -> None:
    """What an application that traces does: an SDK TracerProvider exporting over OTLP/HTTP
    (here pollen's own worker set-up, pointed at ``endpoint``)."""
    import os

    from opentelemetry import trace

    from pollen.tracing.otel import worker_provider

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    os.environ.setdefault("OTEL_SERVICE_NAME", "bench-producer")
    trace.set_tracer_provider(worker_provider(os.environ))


#: jobs per Pollen.submit_many call of the pollen-many producer
MANY_CHUNK = 500


class PollenManyClient(PollenClient):
    """``pollen.Pollen.submit_many``: an application that enqueues jobs in bulk."""

    def __init__(self, spec: ProducerSpec) -> None:
        super().__init__(spec)
        self.pending: list[dict[str, Any]] = []

    def enqueue(self, job_id: str, request: dict[str, Any], callback_url: str) -> int:
        payload = {"provider": "runware", "request": request, "job_id": job_id,
                   "callback_url": callback_url}  # fmt: skip
        self.pending.append(payload if self.tenant is None else {**payload, "tenant": self.tenant})
        return self.flush() if len(self.pending) >= MANY_CHUNK else 0

    def flush(self) -> int:
        if not self.pending:
            return 0
        answer = self.client.submit_many(self.pending)
        if answer.errors:
            raise RuntimeError(f"submit_many refused jobs: {list(answer.errors.values())[:3]}")
        sent, self.pending = len(self.pending), []
        return sent


class BaselineClient:
    """The baseline's producer: write the job hash, ``send_task('baseline.submit')``."""

    def __init__(self, spec: ProducerSpec) -> None:
        from bench import baseline  # the worker's module (its own Celery app, unused here)

        self.enqueue_job = baseline.enqueue
        self.store = redis.Redis.from_url(spec.store_url)
        self.producer = Celery("baseline-producer", broker=spec.broker_url)
        self.producer.conf.update(task_serializer="json", accept_content=["json"])

    def warm(self) -> None:
        self.store.ping()
        _connect(self.producer)

    def enqueue(self, job_id: str, request: dict[str, Any], callback_url: str) -> int:
        self.enqueue_job(self.store, self.producer, job_id, request, callback_url)
        return 1

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        self.store.close()
        self.producer.close()


class SendTaskClient:
    """A bare Celery app's ``send_task("pollen.submit", kwargs={"job": payload})``: the plain
    contract of an application that does not import pollen. The payload is the job
    ``Pollen.submit`` makes (provider, request, callback URL, the poll policy and deadline);
    it carries no job id, so the worker derives one from the message's task id. The ids sent
    go back to the harness in the producer's report (``task_ids``)."""

    def __init__(self, spec: ProducerSpec) -> None:
        self.app = Celery("send-task-producer", broker=spec.broker_url)
        self.app.conf.update(task_serializer="json", accept_content=["json"])
        self.queue = spec.submit_queue
        poll = dict(spec.policy)
        self.common = {"provider": "runware", "deadline": poll.pop("deadline"), "poll": poll}
        self.task_ids: list[str] = []

    def warm(self) -> None:
        _connect(self.app)

    def enqueue(self, job_id: str, request: dict[str, Any], callback_url: str) -> int:
        job = {**self.common, "request": request, "callback_url": callback_url}
        sent = self.app.send_task("pollen.submit", kwargs={"job": job}, queue=self.queue)
        self.task_ids.append(str(sent.id))
        return 1

    def flush(self) -> int:
        if "pollen" in sys.modules:  # the contract is measured without pollen's client
            raise RuntimeError("the pollen-send-task producer imported pollen")
        return 0

    def close(self) -> None:
        self.app.close()


def _connect(app: Celery) -> None:
    """Open the broker connection ``send_task`` will use (it stays in the producer pool)."""
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection()


#: the systems whose producers call Pollen.submit once per job
PRODUCED_BY_SUBMIT = (
    "pollen",
    "pollen-push",
    "pollen-push-lossy",
    "pollen-capped",
    "pollen-capped-push",
    "pollen-traced",
    "pollen-quiet",
)


#: the system whose producers are a bare Celery app sending pollen.submit
SEND_TASK = "pollen-send-task"
#: the systems whose producers use the baseline's enqueue (hash, then send_task)
BASELINES = ("baseline", "baseline-pooled", "baseline-pooled-quiet")


def make_client(spec: ProducerSpec) -> Client:
    if spec.system in PRODUCED_BY_SUBMIT:
        return PollenClient(spec)
    if spec.system == "pollen-many":
        return PollenManyClient(spec)
    if spec.system == SEND_TASK:
        return SendTaskClient(spec)
    if spec.system in BASELINES:
        return BaselineClient(spec)
    raise ValueError(f"unknown system {spec.system!r}")


def produce(
    index: int,
    spec: ProducerSpec,
    job_ids: list[str],
    callback_base: str,
    ready: multiprocessing.synchronize.Event,
    go: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    count: Synchronized[int],
    results: multiprocessing.Queue[dict[str, Any]],
    pace: float | None = None,
) -> None:
    """One producer process: build the client, wait for ``go``, enqueue (``pace`` jobs a
    second at the most, evenly spaced; None: as fast as it can), report."""
    report: dict[str, Any] = {
        "index": index,
        "count": 0,
        "first_at": None,
        "last_at": None,
        "error": None,
    }
    try:
        client = make_client(spec)
        # connections are opened before the start signal: the loop measures enqueueing only
        client.warm()
    except Exception as exc:
        report["error"] = f"producer did not start: {exc!r}"
        ready.set()
        results.put(report)
        return
    ready.set()
    go.wait()
    cpu_start = time.process_time()
    report["first_at"] = time.time()
    start = time.monotonic()
    try:
        for n, job_id in enumerate(job_ids):
            if stop.is_set():
                break
            if pace:  # job n leaves at start + n / pace, not before
                ahead = start + n / pace - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            report["count"] += client.enqueue(
                job_id, job_request(job_id), f"{callback_base}/{job_id}"
            )
            count.value = report["count"]
        report["count"] += client.flush()
        count.value = report["count"]
        report["last_at"] = time.time()
    except Exception as exc:  # reported, not raised: the run still cleans up and reports
        report["error"] = f"enqueue failed after {report['count']} jobs: {exc!r}"
    report["cpu_s"] = time.process_time() - cpu_start
    if isinstance(client, SendTaskClient):
        report["task_ids"] = client.task_ids
    try:
        client.close()
    finally:
        results.put(report)


class Producers:
    """``n`` producer processes for one system, started together on :meth:`go`; with
    ``rate``, together they enqueue that many jobs a second (each ``rate / n``)."""

    def __init__(
        self,
        spec: ProducerSpec,
        job_ids: list[str],
        callback_base: str,
        n: int,
        rate: float | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.n = max(1, min(n, len(job_ids)))
        pace = rate / self.n if rate else None
        self.go_event = ctx.Event()
        self.stop_event = ctx.Event()
        self.results: multiprocessing.Queue[dict[str, Any]] = ctx.Queue()
        self.counts: list[Synchronized[int]] = []
        self.ready: list[multiprocessing.synchronize.Event] = []
        self.procs: list[SpawnProcess] = []
        for k in range(self.n):
            count: Synchronized[int] = ctx.Value("q", 0)
            ready = ctx.Event()
            proc = ctx.Process(
                target=produce,
                name=f"producer-{spec.system}-{k + 1}",
                args=(
                    k,
                    spec,
                    job_ids[k :: self.n],
                    callback_base,
                    ready,
                    self.go_event,
                    self.stop_event,
                    count,
                    self.results,
                    pace,
                ),
                daemon=True,
            )
            self.counts.append(count)
            self.ready.append(ready)
            self.procs.append(proc)
        self.reports: list[dict[str, Any]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def start(self) -> None:
        """Start every process (they import and connect while the workers start)."""
        for proc in self.procs:
            proc.start()

    def wait_ready(self) -> None:
        """Wait until every process has built its client and connected."""
        deadline = time.monotonic() + READY_TIMEOUT
        for ready, proc in zip(self.ready, self.procs, strict=True):
            while not ready.wait(0.2):
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} did not get ready (exit {proc.exitcode})")

    def go(self) -> None:
        self.go_event.set()

    @property
    def count(self) -> int:
        return sum(c.value for c in self.counts)

    def _collect(self) -> None:
        while len(self.reports) < self.n:
            try:
                self.reports.append(self.results.get_nowait())
            except queue.Empty:
                return

    @property
    def done(self) -> bool:
        """Every producer has reported (finished, stopped or failed)."""
        self._collect()
        if len(self.reports) < self.n and self._silent_dead():
            time.sleep(0.5)  # a report put just before exiting may still be in the pipe
            self._collect()
            for k in self._silent_dead():
                proc = self.procs[k]
                self.reports.append(
                    {"index": k, "count": 0, "error": f"{proc.name} died (exit {proc.exitcode})"}
                )
        return len(self.reports) >= self.n

    def _silent_dead(self) -> list[int]:
        """Producers that exited without reporting."""
        reported = {r["index"] for r in self.reports}
        return [
            k
            for k, proc in enumerate(self.procs)
            if k not in reported and proc.pid is not None and not proc.is_alive()
        ]

    @property
    def finished(self) -> bool:
        """Every job was enqueued."""
        return self.done and all(r.get("last_at") is not None for r in self.reports)

    @property
    def error(self) -> str | None:
        self._collect()
        errors = [r["error"] for r in self.reports if r.get("error")]
        return "; ".join(errors) if errors else None

    @property
    def first_at(self) -> float | None:
        return min((float(r["first_at"]) for r in self.reports if r.get("first_at")), default=None)

    @property
    def last_at(self) -> float | None:
        if not self.finished:
            return None
        return max(float(r["last_at"]) for r in self.reports)

    @property
    def cpu_s(self) -> float:
        return sum(float(r.get("cpu_s", 0.0)) for r in self.reports)

    def close(self) -> None:
        """Stop whatever still runs (Ctrl+C, failure) and reap every process."""
        self.stop_event.set()
        self.go_event.set()
        for proc in self.procs:
            if proc.pid is None:
                continue
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.results.close()
        self.results.cancel_join_thread()
