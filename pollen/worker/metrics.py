"""pollen's Prometheus series, safe under Celery's prefork pool (multiprocess mode).

``pollen worker`` points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before anything
imports prometheus_client, so every pool process writes its samples there and the exporter
in the worker's main process (``POLLEN_METRICS_PORT``) serves their sum, plus gauges read from
Redis at scrape time (queue depths, in-flight jobs, jobs by state, dead letters, the slots of
capped provider accounts and the jobs waiting for them).

Series by tenant keep a bounded number of labels (:class:`TenantLabels`): the tenants the
settings name, the default tenant, and the first ``POLLEN_METRICS_MAX_TENANTS`` others a
process sees; later ones share :data:`OVERFLOW_TENANT`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pollen.models import DEFAULT_TENANT
from pollen.store import stats

if TYPE_CHECKING:
    from pollen.capacity import Capacity
    from pollen.store.sync import Store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600)

JOBS_STARTED = Counter("pollen_jobs_started_total", "Jobs a worker began to submit", ["provider"])
JOBS_FINISHED = Counter(
    "pollen_jobs_finished_total",
    "Jobs that reached a terminal state",
    ["provider", "status", "tenant"],
)
COST = Counter(
    "pollen_cost_total", "Provider cost of the jobs that finished", ["provider", "tenant"]
)
ADMITTED = Counter(
    "pollen_admitted_total", "Jobs admitted into a capped provider account's slot", ["provider"]
)
CAPACITY_REFUSALS = Counter(
    "pollen_capacity_refusals_total",
    "Creates a capped provider refused for capacity (the job went back to the queue)",
    ["provider"],
)
JOBS_REJECTED = Counter(
    "pollen_jobs_rejected_total",
    "pollen.submit payloads a worker refused (invalid), by reason",
    ["reason"],
)
SUBMITS = Counter("pollen_submits_total", "Submit attempts by outcome", ["provider", "result"])
SUBMIT_AMBIGUOUS = Counter(
    "pollen_submit_ambiguous_total",
    "Creates sent again after an earlier create of the job was never answered (the provider "
    "may hold two tasks for the job)",
    ["provider"],
)
POLLS = Counter("pollen_polls_total", "Poll steps by outcome", ["provider", "result"])
CALLBACKS = Counter("pollen_callbacks_total", "Callback delivery attempts by outcome", ["result"])
PROVIDER_SECONDS = Histogram(
    "pollen_provider_request_seconds",
    "Provider HTTP response time",
    ["provider", "kind"],
    buckets=LATENCY_BUCKETS,
)
POLL_SECONDS = Histogram(
    "pollen_poll_seconds", "Duration of one poll step", ["provider"], buckets=LATENCY_BUCKETS
)
COMPLETION_TO_CALLBACK = Histogram(
    "pollen_completion_to_callback_seconds",
    "From the job ending to its completion callback being delivered",
    buckets=LAG_BUCKETS,
)
#: how late a poll runs against the due time its backoff policy gave it (the batch window, a
#: busy worker, a backlog): the measure of "polls on schedule"
POLL_LATENESS = Histogram(
    "pollen_poll_lateness_seconds",
    "How long after its policy's due time each poll ran",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300),
)
BATCH_SIZE = Histogram(
    "pollen_provider_batch_size",
    "Polls carried by one provider status request",
    ["provider"],
    buckets=(1, 2, 5, 10, 20, 50, 100),
)


def observe_provider_request(provider: str, kind: str, seconds: float) -> None:
    """:func:`pollen.providers.http.observe_requests` hook: the response-time histogram."""
    PROVIDER_SECONDS.labels(provider, kind).observe(seconds)


def observe_batch_size(provider: str, jobs: int) -> None:
    """:class:`pollen.providers.calls.ProviderCalls` hook: the batch-size histogram."""
    BATCH_SIZE.labels(provider).observe(jobs)


#: the tenant label of the tenants past a process's bound (no tenant's name starts with "_")
OVERFLOW_TENANT = "_other"


class TenantLabels:
    """A tenant's metric label, with a bounded number of values per process: the ``named``
    tenants (and the default tenant) always have their own; the first ``limit`` others seen
    get their own too, and every later one shares :data:`OVERFLOW_TENANT`."""

    def __init__(self, named: Iterable[str], limit: int) -> None:
        self.named = frozenset(named) | {DEFAULT_TENANT}
        self.limit = limit
        self.seen: set[str] = set()
        self.lock = threading.Lock()  # the threads pool labels from several threads

    def __call__(self, tenant: str) -> str:
        if tenant in self.named or tenant in self.seen:
            return tenant
        with self.lock:
            if len(self.seen) < self.limit:
                self.seen.add(tenant)
                return tenant
        return OVERFLOW_TENANT


def job_finished(
    labels: TenantLabels, provider: str, status: str, tenant: str, cost: float | None
) -> None:
    """Count a job that reached ``status``, and its provider cost (a counter only goes up: a
    negative cost, a refund, is left out)."""
    label = labels(tenant)
    JOBS_FINISHED.labels(provider, status, label).inc()
    if cost is not None and 0 < cost < math.inf:  # a counter takes no NaN or infinity
        COST.labels(provider, label).inc(cost)


RECONCILER = Counter("pollen_reconciler_actions_total", "Reconciler actions", ["action"])
STORE_DATA_LOSS = Counter(
    "pollen_store_data_loss_total", "Times a worker found the job store emptied under it"
)
REPLICA_ACK_TIMEOUTS = Counter(
    "pollen_replica_ack_timeouts_total",
    "Job creates whose WAIT for replicas timed out (stored on the primary only)",
)


class RedisGauges(Collector):
    """Gauges read from Redis on each scrape (cheap: one pipeline, plus one per capped
    provider)."""

    def __init__(
        self,
        store: Store,
        queue_depths: Callable[[], list[int]],
        queues: list[str],
        capacity: Capacity | None = None,
    ) -> None:
        self.store = store
        self.queue_depths = queue_depths
        self.queues = queues
        self.capacity = capacity

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("pollen_queue_depth", "Messages waiting", labels=["queue"])
        for queue, length in zip(self.queues, self.queue_depths(), strict=True):
            depth.add_metric([queue], float(length))
        gauges = self.store.run(stats.gauges())
        inflight, by_state = gauges["inflight"], gauges["by_status"]
        dead, loss = gauges["dead"], gauges["data_loss"]
        yield GaugeMetricFamily(
            "pollen_store_data_loss_detected_timestamp_seconds",
            "When workers last found the job store emptied (0: never)",
            value=float(loss.get("detected_at", 0)) if loss else 0.0,
        )
        yield depth
        yield GaugeMetricFamily("pollen_inflight_jobs", "Jobs not yet terminal", value=inflight)
        states = GaugeMetricFamily(
            "pollen_jobs",
            "Jobs by state (terminal states: since the counter began)",
            labels=["status"],
        )
        for status, count in sorted(by_state.items()):
            states.add_metric([status], float(count))
        yield states
        yield GaugeMetricFamily(
            "pollen_callbacks_dead_letter", "Callback deliveries that exhausted the schedule",
            value=dead,
        )  # fmt: skip
        if self.capacity is not None and self.capacity.capped_providers:
            yield from self.slots(self.capacity)

    def slots(self, capacity: Capacity) -> Iterator[GaugeMetricFamily]:
        """Each capped provider account's slots in use and cap (lowered while a capacity
        refusal's cooldown lasts), and the jobs waiting for them per provider."""
        now = time.time()
        queues = self.store.run(stats.accounts(capacity.capped_caps(), now))
        labels = ["provider", "account"]
        in_use = GaugeMetricFamily(
            "pollen_account_slots_in_use", "Slots of a capped provider account held by jobs",
            labels=labels,
        )  # fmt: skip
        cap = GaugeMetricFamily(
            "pollen_account_slots_cap",
            "Slots of a capped provider account (lower while a capacity refusal's cooldown lasts)",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "pollen_admission_waiting_jobs", "Jobs waiting in pollen for a capped provider's slot",
            labels=["provider"],
        )  # fmt: skip
        for queue in queues:
            for account in queue.accounts:
                in_use.add_metric([queue.provider, account.account], float(account.in_use))
                cap.add_metric([queue.provider, account.account], float(account.effective_cap))
            waiting.add_metric([queue.provider], float(queue.total_waiting))
        yield from (in_use, cap, waiting)


def serve(
    port: int,
    *,
    store: Store,
    queue_depths: Callable[[], list[int]],
    queues: list[str],
    capacity: Capacity | None = None,
) -> None:
    """Expose the summed per-process samples plus the Redis gauges on ``port``."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(RedisGauges(store, queue_depths, queues, capacity))
    start_http_server(port, addr="0.0.0.0", registry=registry)
