"""One benchmark run: shared simulator and receiver, then each system in turn on a fresh Redis.

For each system: start its workers, enqueue every job at once (from a harness thread), sample
worker memory, Redis memory and progress until every job has called back (or the scenario's
timeout), keep listening ``grace`` seconds for duplicate callbacks, then read the simulator's
stats and finish times, the receiver's receipts and Redis's command counters, and stop it all.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import redis

from bench.producer import LABEL_PREFIX, Producers
from bench.scenarios import Scenario
from bench.services import Service, tree
from bench.systems import BROKER_DB, Options, System, make_system
from pollen.backoff import PollPolicy, next_delay
from pollen.local.servers import RedisServer

MIB = 1024 * 1024
#: Celery messages are counted as list pushes *on the broker's database*, seen through Redis
#: keyspace notifications (kombu's Redis transport publishes every task message, countdown
#: retries included, with one LPUSH onto the queue's list; a restore after a visibility timeout
#: is an LPUSH/RPUSH too). The event names are those of Redis's ``notify-keyspace-events``.
MESSAGE_EVENTS = ("lpush", "rpush")
#: the LPUSH count of ``INFO commandstats`` (every database), kept as a cross-check
MESSAGE_COMMANDS = ("lpush",)
#: Celery task events (task-sent/received/started/...) and heartbeats: PUBLISH on the fanout
EVENT_COMMANDS = ("publish",)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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
    """

    def __init__(self, client: redis.Redis, db: int = BROKER_DB) -> None:
        super().__init__(name="message-counter", daemon=True)
        client.config_set("notify-keyspace-events", "El")
        # typed from redis-py 8.2 on, untyped before: Any keeps mypy clean on both
        self.pubsub: Any = cast(Any, client).pubsub(ignore_subscribe_messages=True)
        channels = [f"__keyevent@{db}__:{event}" for event in MESSAGE_EVENTS]
        self.pubsub.subscribe(*channels)
        for _ in channels:  # wait for every subscription to be confirmed
            self.pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
        self.by_key: Counter[str] = Counter()
        self.by_event: Counter[str] = Counter()
        self.counting = threading.Event()
        self.closing = threading.Event()

    def run(self) -> None:
        with suppress(redis.ConnectionError, ValueError):
            while not self.closing.is_set():
                message = self.pubsub.get_message(timeout=0.2)
                if message is None or not self.counting.is_set():
                    continue
                channel = message["channel"].decode()
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


class Sampler:
    """Worker RSS (whole process trees), Redis memory, callbacks so far."""

    def __init__(self, system: System, client: redis.Redis, http: httpx.Client, recv: str) -> None:
        self.system = system
        self.redis = client
        self.http = http
        self.recv = recv
        self.peaks = Peaks()
        #: Redis commands the sampler sent (one INFO a sample), taken off "redis commands / job"
        self.redis_commands = 0
        self.redis_before = self.used_memory()

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

    def sample(self, started: float, enqueued: int) -> int:
        """One sample; returns how many distinct jobs have called back."""
        rss, used, done = self.worker_rss(), self.used_memory(), self.callbacks()
        inflight = max(0, enqueued - done)
        peaks = self.peaks
        peaks.rss = max(peaks.rss, rss)
        peaks.redis_used = max(peaks.redis_used, used)
        if inflight > peaks.inflight:
            peaks.inflight = inflight
            peaks.redis_used_at_peak_inflight = used
        elapsed = round(time.time() - started, 2)
        peaks.timeline.append([elapsed, enqueued, done, round(rss / MIB, 1), used])
        return done


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


def schedule_lags(policy: dict[str, float], durations: list[float], seed: int = 1) -> list[float]:
    """Per job: how long after the provider finished the poll schedule alone would next poll.

    Polls at ``initial_delay`` after the submit, then after each delay of
    :func:`pollen.backoff.next_delay` (jitter from a seeded generator): the lag of a job of
    duration ``d`` is the first poll time at or after ``d``, minus ``d``. No queueing, no CPU,
    no HTTP time: the floor that any system following this schedule shares. Jobs the deadline
    cuts off are left out.
    """
    parsed = PollPolicy.model_validate(policy)
    rng = random.Random(seed)
    lags: list[float] = []
    for duration in durations:
        elapsed, attempt = 0.0, 0
        while (delay := next_delay(parsed, attempt, elapsed=elapsed, rng=rng)) is not None:
            elapsed += delay
            attempt += 1
            if elapsed >= duration:
                lags.append(elapsed - duration)
                break
    return lags


def _analyse(
    job_ids: list[str],
    receipts: dict[str, list[list[Any]]],
    tasks: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Per-job outcome: lag, duplicates, losses."""
    tasks_by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in tasks.values():
        label = task.get("label") or ""
        if label.startswith(LABEL_PREFIX):
            tasks_by_job[label.removeprefix(LABEL_PREFIX)].append(task)
    lags: list[float] = []
    durations = [
        max(found[0]["finished_at"]) - found[0]["created_at"]
        for job_id in job_ids
        if (found := tasks_by_job.get(job_id)) and found[0]["finished_at"]
    ]
    statuses: Counter[str] = Counter()
    for job_id in job_ids:
        hits = receipts.get(job_id)
        if not hits:
            continue
        statuses[str(hits[0][1])] += 1
        found = tasks_by_job.get(job_id)
        if found:
            lags.append(hits[0][0] - max(found[0]["finished_at"]))
    expected = set(job_ids)
    return {
        "lags": lags,
        "durations": durations,
        "statuses": dict(statuses),
        "completed": sum(1 for j in job_ids if receipts.get(j)),
        "duplicate_callbacks": sum(1 for j in job_ids if len(receipts.get(j, [])) > 1),
        "unexpected_callbacks": sum(1 for j in receipts if j not in expected),
        "duplicate_provider_tasks": sum(1 for j in job_ids if len(tasks_by_job.get(j, [])) > 1),
        "jobs_without_provider_task": sum(1 for j in job_ids if j not in tasks_by_job),
        "last_callback_at": max((receipts[j][0][0] for j in job_ids if receipts.get(j)), default=0),
    }


def run_system(
    name: str,
    scenario: Scenario,
    options: Options,
    sim: Service,
    recv: Service,
    log_dir: Path,
) -> dict[str, Any]:
    """Run one system through the scenario and return its metrics (never raises for a failed
    system: the error is reported in the result)."""
    jobs = scenario.jobs_for(name)
    job_ids = [f"{name}-{i:06d}" for i in range(jobs)]
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(trust_env=False, timeout=60.0))
        redis_server = stack.enter_context(RedisServer())
        client = redis.Redis(port=redis_server.port)
        stack.callback(client.close)
        system = make_system(name, redis_server, sim.url, scenario, options)
        _reset(http, sim, recv, system)
        stack.callback(system.stop)
        log(f"[{name}] starting {options.workers} worker(s), {_pool(name, options)}")
        t_start = time.monotonic()
        n_producers = options.producers or scenario.producers
        producers = Producers(system.producer_spec(), job_ids, f"{recv.url}/cb", n_producers)
        stack.callback(producers.close)
        producers.start()
        system.start(log_dir)
        producers.wait_ready()
        log(
            f"[{name}] workers and {producers.n} producer(s) ready in "
            f"{time.monotonic() - t_start:.1f} s; enqueueing {jobs} jobs"
        )
        components = _components(system, redis_server, sim, recv)
        messages = MessageCounter(client)
        stack.callback(messages.close)
        messages.start()
        sampler = Sampler(system, client, http, recv.url)
        calls_before = command_calls(client)
        cpu_before = components.snapshot()
        messages.counting.set()
        started = time.time()
        producers.go()
        outcome = _wait(name, scenario, system, sampler, producers, started, jobs)
        ended = time.time()
        if outcome is None:
            time.sleep(scenario.grace)
        cpu_after = components.snapshot()
        calls_after = command_calls(client)
        messages.drain()
        stats, rate, tasks, dump = _read_outcome(http, sim, recv)
        log(f"[{name}] {time.time() - started:.1f} s after the first enqueue; stopping workers")
        t_stop = time.monotonic()
    log(f"[{name}] stopped in {time.monotonic() - t_stop:.1f} s")
    lateness = poll_lateness(system.metrics_dirs)
    analysis = _analyse(job_ids, dump["completed"], tasks["tasks"])
    analysis["other_callbacks"] = dump["other"]
    first = producers.first_at or started
    cpu = {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_before}
    cpu["producers"] = round(producers.cpu_s, 2)  # their enqueue loops, measured by each
    calls = {k: calls_after.get(k, 0) - calls_before.get(k, 0) for k in calls_after}
    # in the window: the sampler's INFO calls but its first (before the window), plus the
    # INFO commandstats of the first reading
    calls["harness"] = sampler.redis_commands
    return _metrics(
        scenario=scenario,
        jobs=jobs,
        analysis=analysis,
        stats=stats,
        rate=rate,
        calls=calls,
        messages=messages,
        peaks=sampler.peaks,
        redis_before=sampler.redis_before,
        producers=producers,
        first=first,
        ended=ended,
        error=outcome,
        cpu=cpu,
        lateness=lateness,
    )


def _reset(http: httpx.Client, sim: Service, recv: Service, system: System) -> None:
    """A fresh simulator (with this system's settings) and receiver."""
    http.post(f"{sim.url}/_sim/reset").raise_for_status()
    http.patch(f"{sim.url}/_sim/config", json=system.sim_config()).raise_for_status()
    http.post(f"{recv.url}/_recv/reset").raise_for_status()


def _pool(name: str, options: Options) -> str:
    if name.startswith("pollen"):
        return f"{options.pollen_pool or 'threads'} x {options.pollen_concurrency or 32}"
    return f"prefork x {options.concurrency}"


def _components(
    system: System, redis_server: RedisServer, sim: Service, recv: Service
) -> Components:
    worker_pids = [w.proc.pid for w in system.workers if w.proc is not None]
    worker_pids += system.extra_pids()
    assert redis_server.proc is not None and sim.proc is not None and recv.proc is not None
    return Components(
        {
            "workers": worker_pids,
            "simulator": [sim.pid],
            "redis": [redis_server.proc.pid],
            "receiver": [recv.pid],
            "harness": [os.getpid()],
        }
    )


def _read_outcome(http: httpx.Client, sim: Service, recv: Service) -> list[Any]:
    """The simulator's stats, rate windows and finish times; the receiver's receipts."""
    return [
        http.get(f"{sim.url}/_sim/stats").json(),
        http.get(f"{sim.url}/_sim/rate").json(),
        http.get(f"{sim.url}/_sim/finished", params={"dialect": "runware"}).json(),
        http.get(f"{recv.url}/_recv/dump").json(),
    ]


def _wait(
    name: str,
    scenario: Scenario,
    system: System,
    sampler: Sampler,
    producers: Producers,
    started: float,
    jobs: int,
) -> str | None:
    """Sample until every job has called back; the reason it stopped early, else None."""
    deadline = started + scenario.timeout
    next_report = started + 5.0
    while True:
        done = sampler.sample(started, producers.count)
        if producers.done and producers.error:
            return producers.error
        if producers.finished and done >= jobs:
            return None
        now = time.time()
        if now > deadline:
            return f"timed out after {scenario.timeout:g} s with {jobs - done} jobs unfinished"
        dead = [w.name for w in system.workers if w.proc is not None and w.proc.poll() is not None]
        if dead:
            return f"worker(s) exited during the run: {', '.join(dead)}"
        if now >= next_report:
            next_report = now + 5.0
            log(
                f"[{name}] {now - started:6.1f} s  enqueued {producers.count}/{jobs}  "
                f"called back {done}  worker RSS {sampler.peaks.timeline[-1][3]:.0f} MiB"
            )
        time.sleep(scenario.sample_interval)


def _per_job(value: float, jobs: int) -> float | None:
    return round(value / jobs, 3) if jobs else None


def _per_inflight(peaks: Peaks, redis_before: int) -> int | None:
    """Redis used_memory growth per in-flight job, at the sample with the most in flight."""
    if not peaks.inflight:
        return None
    return round((peaks.redis_used_at_peak_inflight - redis_before) / peaks.inflight)


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _metrics(
    *,
    scenario: Scenario,
    jobs: int,
    analysis: dict[str, Any],
    stats: dict[str, Any],
    rate: dict[str, Any],
    calls: dict[str, int],
    messages: MessageCounter,
    peaks: Peaks,
    redis_before: int,
    producers: Producers,
    first: float,
    ended: float,
    error: str | None,
    cpu: dict[str, float],
    lateness: dict[str, float | None],
) -> dict[str, Any]:
    completed = analysis["completed"]
    last = analysis["last_callback_at"] if error is None else ended
    span = max(last - first, 1e-9)
    lags = analysis["lags"]
    planned = schedule_lags(scenario.policy, analysis["durations"])
    kinds = stats.get("requests_by_kind", {})
    limited = stats.get("rate_limited_by_kind", {})
    # task objects the simulator answered, by taskType: a batched getResponse request of n
    # tasks counts n status items (429'd requests are never parsed, so count none)
    items = stats.get("tasks", {})
    status_items = items.get("getResponse", 0)
    accepted_status = kinds.get("status", 0) - limited.get("status", 0)
    inflight = peaks.inflight
    statuses = analysis["statuses"]
    enqueued = producers.count
    commands = calls.get("total", 0) - calls["harness"]
    metrics: dict[str, Any] = {
        "jobs": jobs,
        "completed": completed,
        "jobs_per_s": round(completed / span, 2) if completed else 0.0,
        "callback_lag_p50_s": _rounded(percentile(lags, 50)),
        "callback_lag_p95_s": _rounded(percentile(lags, 95)),
        "callback_lag_p99_s": _rounded(percentile(lags, 99)),
        "schedule_lag_p50_s": _rounded(percentile(planned, 50)),
        "schedule_lag_p99_s": _rounded(percentile(planned, 99)),
        "poll_lateness_p50_s": lateness["p50"],
        "poll_lateness_p99_s": lateness["p99"],
        "worker_cpu_ms_per_job": _per_job(cpu["workers"] * 1000, completed),
        "producer_cpu_ms_per_job": _per_job(cpu["producers"] * 1000, enqueued),
        "producers": producers.n,
        "submit_requests_per_job": _per_job(kinds.get("submit", 0), jobs),
        "status_requests_per_job": _per_job(kinds.get("status", 0), jobs),
        "provider_requests_per_job": _per_job(stats.get("requests", 0), jobs),
        "pushes_sent": stats.get("pushes", {}).get("sent"),
        "pushes_lost": stats.get("pushes", {}).get("lost"),
        "pushes_duplicated": stats.get("pushes", {}).get("duplicated"),
        "status_items_per_job": _per_job(status_items, jobs),
        "status_items_per_request": _per_job(status_items, accepted_status),
        "celery_messages_per_job": _per_job(messages.total, jobs),
        "celery_events_per_job": _per_job(sum(calls.get(c, 0) for c in EVENT_COMMANDS), jobs),
        "redis_commands_per_job": _per_job(commands, jobs),
        "worker_rss_peak_mib": round(peaks.rss / MIB, 1),
        "peak_inflight": inflight,
        "redis_bytes_per_inflight_job": _per_inflight(peaks, redis_before),
        "duplicate_callbacks": analysis["duplicate_callbacks"],
        "duplicate_provider_tasks": analysis["duplicate_provider_tasks"],
        "lost": jobs - completed,
        "failed": completed - statuses.get("succeeded", 0),
        "rate_limited_429": rate["rate_limited"],
        "max_requests_1s": rate["max_requests_in_window"],
        "max_accepted_1s": rate["max_accepted_in_window"],
        "enqueue_s": _rounded((producers.last_at or ended) - first, 2),
        "wall_s": round(ended - first, 2),
        **{f"cpu_{k}_s": v for k, v in cpu.items()},
    }
    details = {
        "error": error,
        "rate_limit": scenario.rate_limit,
        "callback_statuses": statuses,
        "callback_lag_max_s": _rounded(max(lags) if lags else None),
        "callback_lag_mean_s": _rounded(sum(lags) / len(lags) if lags else None),
        "jobs_without_provider_task": analysis["jobs_without_provider_task"],
        "unexpected_callbacks": analysis["unexpected_callbacks"],
        "other_callbacks": analysis["other_callbacks"],
        "resubmitted_tasks": sum(1 for n in stats.get("submits_by_task", {}).values() if n > 1),
        "provider_requests": stats.get("requests"),
        "provider_requests_by_kind": kinds,
        "provider_by_status": stats.get("by_status"),
        "provider_rate_limited_by_kind": limited,
        "provider_items_by_task_type": items,
        "schedule_lag_p95_s": _rounded(percentile(planned, 95)),
        "poll_lateness_mean_s": _rounded(lateness["mean"]),
        "polls_measured_for_lateness": lateness["polls"],
        "schedule_lag_max_s": _rounded(max(planned) if planned else None),
        "enqueued": enqueued,
        "producer_reports": producers.reports,
        "celery_messages_by_queue": dict(messages.by_key.most_common()),
        "celery_messages_by_event": dict(messages.by_event),
        "lpush_calls_all_dbs": sum(calls.get(c, 0) for c in MESSAGE_COMMANDS),
        "redis_commands_harness": calls["harness"],
        "redis_command_calls": {k: v for k, v in sorted(calls.items()) if v},
        "redis_used_memory_before": redis_before,
        "redis_used_memory_peak": peaks.redis_used,
        "redis_used_memory_at_peak_inflight": peaks.redis_used_at_peak_inflight,
        "timeline_columns": ["elapsed_s", "enqueued", "called_back", "rss_mib", "redis_used"],
        "timeline": peaks.timeline,
    }
    return {"metrics": metrics, "details": details}


def run(
    scenario: Scenario,
    systems: list[str],
    options: Options,
    log_dir: Path,
) -> dict[str, Any]:
    """Start the simulator and the receiver, then run each system in turn."""
    sim_config = {
        "duration_min": scenario.duration_min,
        "duration_max": scenario.duration_max,
        "rate_limit": scenario.rate_limit,
        "seed": 1,
    }
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        sim = stack.enter_context(
            Service("simulator", "bench.simproc", ["--config", json.dumps(sim_config)], log_dir)
        )
        recv = stack.enter_context(Service("receiver", "bench.receiver", [], log_dir))
        for name in systems:
            try:
                results[name] = run_system(name, scenario, options, sim, recv, log_dir)
            except Exception as exc:
                log(f"[{name}] failed: {exc!r}")
                traceback.print_exc()
                results[name] = {"metrics": {}, "details": {"error": f"{exc!r}"}}
            error = results[name]["details"].get("error")
            log(f"[{name}] done" + (f" -- {error}" if error else ""))
    return results
