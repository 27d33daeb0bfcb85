"""One benchmark run: shared simulator and receiver, then each system in turn on a fresh Redis.

For each system: start its workers, enqueue every job at once (from a harness thread), sample
worker memory, Redis memory and progress until every job has called back (or the scenario's
timeout), keep listening ``grace`` seconds for duplicate callbacks, then read the simulator's
stats and finish times, the receiver's receipts and Redis's command counters, and stop it all.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import redis

from bench.scenarios import Scenario
from bench.services import Service, tree
from bench.systems import Options, System, make_system
from pollen.local.servers import RedisServer

MIB = 1024 * 1024
LABEL_PREFIX = "bench "
#: kombu's Redis transport publishes every task message with one LPUSH (pollen's Lua scripts
#: only RPUSH, the baseline writes hashes): LPUSH calls = task messages (submit, poll, retry,
#: callback). Celery events (task-sent/received/started/...) are PUBLISHes on the fanout.
MESSAGE_COMMANDS = ("lpush",)
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


def job_request(job_id: str) -> dict[str, Any]:
    """The provider request of every benchmark job; the prompt ties the task to the job."""
    return {
        "taskType": "videoInference",
        "model": "klingai:5@3",
        "positivePrompt": f"{LABEL_PREFIX}{job_id}",
        "numberResults": 1,
    }


def command_calls(client: redis.Redis) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls}, plus ``total``."""
    stats: dict[str, Any] = client.info("commandstats")
    calls = {}
    for name, value in stats.items():
        command = name.removeprefix("cmdstat_").lower()
        calls[command] = int(value["calls"]) if isinstance(value, dict) else 0
    calls["total"] = sum(calls.values())
    return calls


class Enqueuer(threading.Thread):
    """Enqueues every job as fast as the system's producer allows, in order."""

    def __init__(self, system: System, job_ids: list[str], callback_base: str) -> None:
        super().__init__(name=f"enqueue-{system.name}", daemon=True)
        self.system = system
        self.job_ids = job_ids
        self.callback_base = callback_base
        self.count = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for job_id in self.job_ids:
                if self.stop.is_set():
                    return
                if self.first_at is None:
                    self.first_at = time.time()
                self.system.enqueue(job_id, job_request(job_id), f"{self.callback_base}/{job_id}")
                self.count += 1
            self.last_at = time.time()
        except Exception as exc:  # reported, not raised: the run still cleans up and reports
            self.error = f"enqueue failed after {self.count} jobs: {exc!r}"

    @property
    def done(self) -> bool:
        return self.last_at is not None


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
        self.redis_before = self.used_memory()

    def used_memory(self) -> int:
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


def cpu_times(pids: list[int], recursive: bool) -> dict[int, float]:
    """user+system CPU seconds of each live process of ``pids`` (and descendants)."""
    seconds: dict[int, float] = {}
    for pid in pids:
        for proc in tree(pid) if recursive else [psutil.Process(pid)]:
            try:
                times = proc.cpu_times()
                seconds[proc.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
    return seconds


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return round(sum(v - before.get(pid, 0.0) for pid, v in after.items()), 2)


@dataclass
class Components:
    """The pids whose CPU use is reported, by component (only workers have children)."""

    pids: dict[str, list[int]]

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {name: cpu_times(pids, name == "workers") for name, pids in self.pids.items()}


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
        http.post(f"{sim.url}/_sim/reset").raise_for_status()
        http.post(f"{recv.url}/_recv/reset").raise_for_status()
        system = make_system(name, redis_server, sim.url, scenario, options)
        stack.callback(system.close)
        stack.callback(system.stop)
        if name == "pollen":
            pool = f"{options.pollen_pool or 'threads'} x {options.pollen_concurrency or 32}"
        else:
            pool = f"prefork x {options.concurrency}"
        log(f"[{name}] starting {options.workers} worker(s), {pool}")
        t_start = time.monotonic()
        system.start(log_dir)
        log(f"[{name}] workers ready in {time.monotonic() - t_start:.1f} s; enqueueing {jobs} jobs")
        worker_pids = [w.proc.pid for w in system.workers if w.proc is not None]
        assert redis_server.proc is not None and sim.proc is not None and recv.proc is not None
        components = Components(
            {
                "workers": worker_pids,
                "simulator": [sim.pid],
                "redis": [redis_server.proc.pid],
                "receiver": [recv.pid],
                "harness": [os.getpid()],
            }
        )
        sampler = Sampler(system, client, http, recv.url)
        calls_before = command_calls(client)
        cpu_before = components.snapshot()
        enqueuer = Enqueuer(system, job_ids, f"{recv.url}/cb")
        started = time.time()
        enqueuer.start()
        stack.callback(enqueuer.stop.set)
        outcome = _wait(name, scenario, system, sampler, enqueuer, started, jobs)
        ended = time.time()
        if outcome is None:
            time.sleep(scenario.grace)
        cpu_after = components.snapshot()
        calls_after = command_calls(client)
        stats = http.get(f"{sim.url}/_sim/stats").json()
        rate = http.get(f"{sim.url}/_sim/rate").json()
        tasks = http.get(f"{sim.url}/_sim/finished", params={"dialect": "runware"}).json()
        dump = http.get(f"{recv.url}/_recv/dump").json()
        log(f"[{name}] {time.time() - started:.1f} s after the first enqueue; stopping workers")
        t_stop = time.monotonic()
    log(f"[{name}] stopped in {time.monotonic() - t_stop:.1f} s")
    analysis = _analyse(job_ids, dump["completed"], tasks["tasks"])
    analysis["other_callbacks"] = dump["other"]
    first = enqueuer.first_at or started
    cpu = {k: cpu_delta(cpu_before[k], cpu_after[k]) for k in cpu_before}
    return _metrics(
        scenario=scenario,
        jobs=jobs,
        analysis=analysis,
        stats=stats,
        rate=rate,
        calls={k: calls_after.get(k, 0) - calls_before.get(k, 0) for k in calls_after},
        peaks=sampler.peaks,
        redis_before=sampler.redis_before,
        enqueuer=enqueuer,
        first=first,
        ended=ended,
        error=outcome,
        cpu=cpu,
    )


def _wait(
    name: str,
    scenario: Scenario,
    system: System,
    sampler: Sampler,
    enqueuer: Enqueuer,
    started: float,
    jobs: int,
) -> str | None:
    """Sample until every job has called back; the reason it stopped early, else None."""
    deadline = started + scenario.timeout
    next_report = started + 5.0
    while True:
        done = sampler.sample(started, enqueuer.count)
        if enqueuer.error:
            return enqueuer.error
        if enqueuer.done and done >= jobs:
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
                f"[{name}] {now - started:6.1f} s  enqueued {enqueuer.count}/{jobs}  "
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
    peaks: Peaks,
    redis_before: int,
    enqueuer: Enqueuer,
    first: float,
    ended: float,
    error: str | None,
    cpu: dict[str, float],
) -> dict[str, Any]:
    completed = analysis["completed"]
    last = analysis["last_callback_at"] if error is None else ended
    span = max(last - first, 1e-9)
    lags = analysis["lags"]
    kinds = stats.get("requests_by_kind", {})
    inflight = peaks.inflight
    statuses = analysis["statuses"]
    metrics: dict[str, Any] = {
        "jobs": jobs,
        "completed": completed,
        "jobs_per_s": round(completed / span, 2) if completed else 0.0,
        "callback_lag_p50_s": _rounded(percentile(lags, 50)),
        "callback_lag_p95_s": _rounded(percentile(lags, 95)),
        "callback_lag_p99_s": _rounded(percentile(lags, 99)),
        "submit_requests_per_job": _per_job(kinds.get("submit", 0), jobs),
        "status_requests_per_job": _per_job(kinds.get("status", 0), jobs),
        "celery_messages_per_job": _per_job(sum(calls.get(c, 0) for c in MESSAGE_COMMANDS), jobs),
        "celery_events_per_job": _per_job(sum(calls.get(c, 0) for c in EVENT_COMMANDS), jobs),
        "redis_commands_per_job": _per_job(calls.get("total", 0), jobs),
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
        "enqueue_s": _rounded((enqueuer.last_at or ended) - first, 2),
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
