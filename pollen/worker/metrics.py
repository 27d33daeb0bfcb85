"""pollen's Prometheus series, safe under Celery's prefork pool (multiprocess mode).

``pollen worker`` points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before anything
imports prometheus_client, so every pool process writes its samples there and the exporter
in the worker's main process (``POLLEN_METRICS_PORT``) serves their sum, plus gauges read from
Redis at scrape time (queue depths, in-flight jobs, jobs by state, dead letters).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pollen.store import stats

if TYPE_CHECKING:
    from pollen.store.sync import Store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600)

JOBS_STARTED = Counter("pollen_jobs_started_total", "Jobs a worker began to submit", ["provider"])
JOBS_FINISHED = Counter(
    "pollen_jobs_finished_total", "Jobs that reached a terminal state", ["provider", "status"]
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


RECONCILER = Counter("pollen_reconciler_actions_total", "Reconciler actions", ["action"])
STORE_DATA_LOSS = Counter(
    "pollen_store_data_loss_total", "Times a worker found the job store emptied under it"
)


class RedisGauges(Collector):
    """Gauges read from Redis on each scrape (cheap: one pipeline)."""

    def __init__(
        self, store: Store, queue_depths: Callable[[], list[int]], queues: list[str]
    ) -> None:
        self.store = store
        self.queue_depths = queue_depths
        self.queues = queues

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


def serve(
    port: int, *, store: Store, queue_depths: Callable[[], list[int]], queues: list[str]
) -> None:
    """Expose the summed per-process samples plus the Redis gauges on ``port``."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(RedisGauges(store, queue_depths, queues))
    start_http_server(port, addr="0.0.0.0", registry=registry)
