"""What the bench measures while a system runs: worker RSS and CPU, Redis memory and command
counters, Celery messages (keyspace notifications), callbacks so far; and, once it has run, the
workers' poll-lateness histogram.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import redis

from bench.memory import Breakdown
from bench.services import tree
from bench.systems import BROKER_DB, STORE_DB, System

MIB = 1024 * 1024
#: Celery messages are counted as list pushes *on the broker's database*, seen through Redis
#: keyspace notifications (kombu's Redis transport publishes every task message, countdown
#: retries included, with one LPUSH onto the queue's list; a restore after a visibility timeout
#: is an LPUSH/RPUSH too). The event names are those of Redis's ``notify-keyspace-events``.
MESSAGE_EVENTS = ("lpush", "rpush")
#: the Pub/Sub channels of Celery's events (task events and worker heartbeats): kombu's Redis
#: fanout publishes the ``celeryev`` exchange's messages on ``/<db>.celeryev/<routing key>``
CELERY_EVENTS = "*celeryev*"


def command_calls(client: redis.Redis) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls}, plus ``total``."""
    stats: dict[str, Any] = client.info("commandstats")
    calls = {}
    for name, value in stats.items():
        command = name.removeprefix("cmdstat_").lower()
        calls[command] = int(value["calls"]) if isinstance(value, dict) else 0
    calls["total"] = sum(calls.values())
    return calls


class MessageCounter(threading.Thread):
    """Counts list pushes on the broker's database (Celery task messages), per key.

    Turns on Redis keyspace notifications for list commands (``notify-keyspace-events El``) and
    subscribes to ``__keyevent@<db>__:lpush`` and ``:rpush``: each message names the list pushed
    to. Pushes from Lua scripts are notified too. Subscribing happens before the measured window,
    and notifications are not commands, so ``redis commands / job`` is not changed by it.

    It also listens to Celery's events (:data:`CELERY_EVENTS`) and counts them apart
    (``celery_events``): a ``PUBLISH`` may also be pollen's own job events, on other channels.
    """

    def __init__(self, client: redis.Redis, db: int = BROKER_DB) -> None:
        super().__init__(name="message-counter", daemon=True)
        client.config_set("notify-keyspace-events", "El")
        # typed from redis-py 8.2 on, untyped before: Any keeps mypy clean on both
        self.pubsub: Any = cast(Any, client).pubsub(ignore_subscribe_messages=True)
        channels = [f"__keyevent@{db}__:{event}" for event in MESSAGE_EVENTS]
        self.pubsub.subscribe(*channels)
        self.pubsub.psubscribe(CELERY_EVENTS)
        for _ in range(len(channels) + 1):  # wait for every subscription to be confirmed
            self.pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
        self.by_key: Counter[str] = Counter()
        self.by_event: Counter[str] = Counter()
        #: Celery event messages (task events, heartbeats) by channel
        self.celery_events: Counter[str] = Counter()
        self.counting = threading.Event()
        self.closing = threading.Event()

    def run(self) -> None:
        with suppress(redis.ConnectionError, ValueError):
            while not self.closing.is_set():
                message = self.pubsub.get_message(timeout=0.2)
                if message is None or not self.counting.is_set():
                    continue
                channel = message["channel"].decode()
                if message["type"] == "pmessage":
                    self.celery_events[channel] += 1
                    continue
                key = message["data"].decode(errors="replace")
                self.by_event[channel.rpartition(":")[2]] += 1
                self.by_key[key] += 1

    def drain(self) -> None:
        """Let notifications already sent arrive, then stop counting."""
        time.sleep(0.5)
        self.counting.clear()

    @property
    def total(self) -> int:
        return sum(self.by_event.values())

    def close(self) -> None:
        self.closing.set()
        self.join(2.0)
        self.pubsub.close()


@dataclass
class Peaks:
    """What the sampler keeps: peaks and a coarse timeline."""

    rss: int = 0
    redis_used: int = 0
    inflight: int = 0
    redis_used_at_peak_inflight: int = 0
    timeline: list[list[float]] = field(default_factory=list)
    #: Redis memory by key type (:mod:`bench.memory`), taken at a peak of jobs in flight:
    #: ``{"inflight", "elapsed_s", "took_s", "kinds"}``; None until one is taken
    memory: dict[str, Any] | None = None


#: a memory breakdown is taken at a new peak of jobs in flight this much above the last one's
#: (or at the first new peak once every job is enqueued) ...
BREAKDOWN_GROWTH = 1.1
#: ... and at most this share of the harness's time goes to them
BREAKDOWN_SHARE = 0.1


class Sampler:
    """Worker RSS (whole process trees), Redis memory, callbacks so far."""

    def __init__(
        self,
        system: System,
        client: redis.Redis,
        http: httpx.Client,
        recv: str,
        *,
        breakdowns: bool = True,
    ) -> None:
        self.system = system
        self.redis = client
        self.http = http
        self.recv = recv
        self.peaks = Peaks()
        #: Redis commands the sampler sent (one INFO a sample), taken off "redis commands / job"
        self.redis_commands = 0
        self.redis_before = self.used_memory()
        store = redis.Redis.from_url(system.redis_server.url(STORE_DB))
        store.ping()  # connected before the measured window: its set-up is not counted
        self.store = store
        self.breakdown = Breakdown({"broker": client, "store": store})
        #: when the next memory breakdown may be taken (never without ``breakdowns``)
        self.next_breakdown = 0.0 if breakdowns else float("inf")
        self.final_breakdown = False  #: one taken since every job was enqueued

    def used_memory(self) -> int:
        self.redis_commands += 1
        return int(self.redis.info("memory")["used_memory"])

    def worker_rss(self) -> int:
        total = 0
        for worker in self.system.workers:
            if worker.proc is None:
                continue
            for proc in tree(worker.proc.pid):
                with suppress(psutil.NoSuchProcess):
                    total += proc.memory_info().rss
        return total

    def callbacks(self) -> int:
        return int(self.http.get(f"{self.recv}/_recv/count").json()["jobs"])

    def sample(self, started: float, enqueued: int, all_enqueued: bool = False) -> int:
        """One sample; returns how many distinct jobs have called back."""
        rss, used, done = self.worker_rss(), self.used_memory(), self.callbacks()
        inflight = max(0, enqueued - done)
        peaks = self.peaks
        peaks.rss = max(peaks.rss, rss)
        peaks.redis_used = max(peaks.redis_used, used)
        elapsed = round(time.time() - started, 2)
        if inflight > peaks.inflight:
            peaks.inflight = inflight
            peaks.redis_used_at_peak_inflight = used
            self._breakdown(inflight, elapsed, all_enqueued)
        peaks.timeline.append([elapsed, enqueued, done, round(rss / MIB, 1), used])
        return done

    def _breakdown(self, inflight: int, elapsed: float, all_enqueued: bool) -> None:
        """Redis memory by key type at this new peak of jobs in flight, when it has grown
        enough since the last one (or every job is now enqueued) and the time budget allows."""
        last = self.peaks.memory["inflight"] if self.peaks.memory else 0
        grown = inflight >= last * BREAKDOWN_GROWTH
        final = all_enqueued and not self.final_breakdown
        if not (grown or final) or time.monotonic() < self.next_breakdown:
            return
        began = time.monotonic()
        kinds = self.breakdown.take()
        took = time.monotonic() - began
        self.next_breakdown = began + took / BREAKDOWN_SHARE
        self.final_breakdown = all_enqueued
        self.peaks.memory = {"inflight": inflight, "elapsed_s": elapsed,
                             "took_s": round(took, 3), "kinds": kinds}  # fmt: skip

    @property
    def harness_commands(self) -> int:
        """Every Redis command the sampler sent in the window (INFO, the memory passes)."""
        return self.redis_commands + self.breakdown.commands

    def close(self) -> None:
        self.store.close()


def cpu_seconds(pids: list[int], recursive: bool) -> float:
    """user+system CPU seconds used so far by ``pids`` (and, if ``recursive``, every descendant).

    With ``recursive`` each live process also counts the children it has already reaped
    (``children_user``/``children_system``): a pool child that exits during the window moves
    its whole time into its parent's counters, so end-minus-start stays exact when pool
    children come and go. Without it only the processes' own time counts (the harness reaps
    the producer processes, whose time is reported apart).
    """
    total = 0.0
    for pid in pids:
        try:
            procs = tree(pid) if recursive else [psutil.Process(pid)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
            if recursive:
                total += times.children_user + times.children_system
    return total


@dataclass
class Components:
    """The pids whose CPU use is reported, by component (only workers have children)."""

    pids: dict[str, list[int]]

    def snapshot(self) -> dict[str, float]:
        return {name: cpu_seconds(pids, name == "workers") for name, pids in self.pids.items()}


def poll_lateness(dirs: list[Path]) -> dict[str, float | None]:
    """pollen's ``pollen_poll_lateness_seconds`` histogram summed over every worker: how late
    the polls ran against their policy's due time. The percentiles are bucket upper bounds."""
    buckets: dict[float, float] = defaultdict(float)
    total = count = 0.0
    for sample in _histogram_samples(dirs, "pollen_poll_lateness_seconds"):
        if sample.name.endswith("_bucket"):
            buckets[float(sample.labels["le"])] += sample.value
        elif sample.name.endswith("_sum"):
            total += sample.value
        elif sample.name.endswith("_count"):
            count += sample.value
    out: dict[str, float | None] = {"polls": count, "mean": total / count if count else None}
    for q in (50, 99):  # the first bucket whose cumulative count reaches q %
        within = [le for le in sorted(buckets) if count and buckets[le] >= count * q / 100]
        out[f"p{q}"] = within[0] if within else None
    return out


def _histogram_samples(dirs: list[Path], name: str) -> list[Any]:
    """The samples of one Prometheus family in workers' multiprocess directories."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    samples: list[Any] = []
    for path in dirs:
        if path.is_dir():
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
            for family in registry.collect():
                if family.name == name:
                    samples.extend(family.samples)
    return samples
