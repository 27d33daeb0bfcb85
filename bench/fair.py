"""The ``fair`` scenario: one tenant's burst on a capped provider key, another tenant behind it.

The simulator's key runs at most ``cap`` tasks at once and refuses creates past it (429).
Tenant ``big`` enqueues ``jobs`` jobs at once; tenant ``small`` enqueues ``small_jobs`` jobs
``small_delay`` seconds later. ``pollen-capped`` is told the cap and names the tenants; ``pollen``
knows neither (its creates past the cap are refused and retried with backoff).

A run of one system stops measuring when every job has called back or at the scenario's time
bound, whichever comes first; then every job still open is cancelled, and the run waits for the
slots to empty before it reads them. What is printed is :data:`ROWS`.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bench.analysis import percentile, schedule_lags
from bench.producer import LABEL_PREFIX, Producers
from bench.report import Format, integer, num
from bench.runner import components_of, log, open_system
from bench.sampling import Sampler
from bench.scenarios import CAPPED, CAPPED_PUSH, Scenario
from bench.services import Service
from bench.systems import API_KEY, STORE_DB, Options, System
from pollen import JobNotFound, Pollen
from pollen.settings import DEFAULT_ACCOUNT, RunwareSettings, Settings

FAIR = "fair"  #: the scenario's name
BIG, SMALL = "big", "small"
#: after the cancels, how long the run waits for the slots and the provider's tasks to end
DRAIN_TIMEOUT = 30.0
#: how a run cut off by the time bound says so
NOT_DONE = "not done within"


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _seconds(value: Any) -> str:
    return value if isinstance(value, str) else num(1)(value)


#: (metric key, row label, formatter), in table order
ROWS: list[tuple[str, str, Format]] = [
    ("completed", "jobs called back (all tenants)", integer),
    ("small_completed", "  of them tenant small", integer),
    ("small_p50_s", "small: completion time p50 (s)", _seconds),
    ("small_p95_s", "small: completion time p95 (s)", _seconds),
    ("fair_target_s", "  target: fair half of the cap + 2 poll intervals (s)", num(1)),
    ("refused_for_capacity", "creates refused for capacity (simulator)", integer),
    ("peak_running", "peak tasks running at the provider (cap)", _text),
    ("backlog_jobs_per_s", "jobs/s while the backlog lasts", num(2)),
    ("utilisation_target_jobs_per_s", "  target: 0.95 x C / (duration + poll lag p50)", num(2)),
    ("utilisation_vs_lagged", "  jobs/s / (C / (duration + poll lag p50))", num(3)),
    ("utilisation_raw", "  jobs/s / (C / duration): raw", num(3)),
    ("schedule_lag_p50_s", "  poll schedule alone: lag p50 (s)", num(2)),
    ("backlog_s", "  backlog measured over (s)", num(1)),
    ("worker_cpu_ms_per_job", "worker CPU ms / job (all processes)", num(1)),
    ("cancelled_at_end", "jobs cancelled at the end (unfinished)", integer),
    ("slots_in_use_at_end", "pollen slots in use at the end", _text),
    ("running_at_end", "tasks running at the provider at the end", integer),
    ("duplicate_provider_tasks", "DUPLICATES: jobs with >1 provider task", integer),
    ("failed", "jobs called back not succeeded", integer),
    ("wall_s", "measured for (s)", num(1)),
]


def clean(result: dict[str, Any]) -> bool:
    """A run that ended (in time or at the time bound) with nothing doubled, nothing failed
    and nothing left holding a slot or running at the provider."""
    metrics, error = result["metrics"], result["details"].get("error")
    if not metrics or (error and not error.startswith(NOT_DONE)):
        return False
    return bool(
        metrics["duplicate_provider_tasks"] == 0
        and metrics["failed"] == 0
        and not metrics["slots_in_use_at_end"]
        and metrics["running_at_end"] == 0
    )


@dataclass
class Tenants:
    """One system's two producer groups."""

    big: Producers
    small: Producers
    small_sent: bool = False

    @property
    def count(self) -> int:
        return self.big.count + self.small.count

    def error(self) -> str | None:
        errors = [p.error for p in (self.big, self.small) if p.done and p.error]
        return "; ".join(e for e in errors if e) or None


def run_fair_system(
    name: str,
    scenario: Scenario,
    options: Options,
    sim: Service,
    recv: Service,
    log_dir: Path,
) -> dict[str, Any]:
    """Run one system through the ``fair`` scenario; its metrics and details."""
    big_ids = [f"{name}-{BIG}-{i:06d}" for i in range(scenario.jobs)]
    small_ids = [f"{name}-{SMALL}-{i:06d}" for i in range(scenario.small_jobs)]
    with ExitStack() as stack:
        http, redis_server, client, system = open_system(stack, name, scenario, options, sim, recv)
        tenants = _producers(system, big_ids, small_ids, f"{recv.url}/cb", options, scenario)
        for group in (tenants.big, tenants.small):
            stack.callback(group.close)
            group.start()
        log(f"[{name}] starting {options.workers} worker(s)")
        system.start(log_dir)
        tenants.big.wait_ready()
        tenants.small.wait_ready()
        components = components_of(system, redis_server, sim, recv)
        sampler = Sampler(system, client, http, recv.url, breakdowns=False)
        stack.callback(sampler.close)
        cpu_before = components.snapshot()
        started = time.time()
        tenants.big.go()
        outcome = _wait(name, scenario, system, sampler, tenants, started)
        ended = time.time()
        cpu_after = components.snapshot()
        tasks = http.get(f"{sim.url}/_sim/finished", params={"dialect": "runware"}).json()
        stats = http.get(f"{sim.url}/_sim/stats").json()
        receipts = http.get(f"{recv.url}/_recv/dump").json()["completed"]
        pollen = stack.enter_context(_client(system))
        end = _clean_up(name, pollen, [*big_ids, *small_ids], receipts, system, http, sim)
    log(f"[{name}] stopped")
    small_at = tenants.small.first_at or started + scenario.small_delay
    return _figures(
        scenario=scenario,
        ids=(big_ids, small_ids),
        receipts=receipts,
        tasks=tasks["tasks"],
        key=stats.get("keys", {}).get(API_KEY, {}),
        small_at=small_at,
        started=started,
        ended=ended,
        error=outcome,
        worker_cpu=cpu_after["workers"] - cpu_before["workers"],
        end=end,
    )


def _producers(
    system: System,
    big_ids: list[str],
    small_ids: list[str],
    callback_base: str,
    options: Options,
    scenario: Scenario,
) -> Tenants:
    """pollen-capped names each job's tenant; pollen names none (today's behaviour)."""
    spec = system.producer_spec()
    named = system.name in (CAPPED, CAPPED_PUSH)
    return Tenants(
        big=Producers(
            replace(spec, tenant=BIG if named else None),
            big_ids,
            callback_base,
            options.producers or scenario.producers,
        ),
        small=Producers(
            replace(spec, tenant=SMALL if named else None), small_ids, callback_base, 1
        ),
    )


def _wait(
    name: str,
    scenario: Scenario,
    system: System,
    sampler: Sampler,
    tenants: Tenants,
    started: float,
) -> str | None:
    """Sample until every job has called back, or the time bound; why it stopped early."""
    jobs = scenario.jobs + scenario.small_jobs
    deadline = started + scenario.timeout
    next_report = started + 10.0
    while True:
        now = time.time()
        if not tenants.small_sent and now >= started + scenario.small_delay:
            tenants.small.go()
            tenants.small_sent = True
        done = sampler.sample(started, tenants.count)
        error = tenants.error()
        if error:
            return error
        if tenants.small_sent and tenants.big.finished and tenants.small.finished and done >= jobs:
            return None
        if now > deadline:
            return f"{NOT_DONE} {scenario.timeout:g} s ({jobs - done} jobs unfinished)"
        dead = [w.name for w in system.workers if w.proc is not None and w.proc.poll() is not None]
        if dead:
            return f"worker(s) exited during the run: {', '.join(dead)}"
        if now >= next_report:
            next_report = now + 10.0
            log(f"[{name}] {now - started:6.1f} s  enqueued {tenants.count}/{jobs}  done {done}")
        time.sleep(scenario.sample_interval)


def _client(system: System) -> Pollen:
    """A producer's client on the system's store, to cancel what is left and read the slots."""
    settings = Settings(
        redis_url=system.redis_server.url(STORE_DB),
        broker_url=system.broker_url,
        runware=RunwareSettings(base_url=f"{system.sim_url}/v1"),
    )
    return Pollen(settings)


@dataclass
class End:
    """What was left once measuring stopped, and what the clean-up found."""

    cancelled: int
    slots_in_use: int | None  #: slots held + jobs waiting; None: no slots (not told the cap)
    running: int  #: tasks still running at the provider


def _clean_up(
    name: str,
    pollen: Pollen,
    job_ids: list[str],
    receipts: dict[str, Any],
    system: System,
    http: httpx.Client,
    sim: Service,
) -> End:
    """Cancel every job without a completion callback, then wait (at most
    :data:`DRAIN_TIMEOUT`) until no slot is held and no task runs at the provider."""
    cancelled = 0
    for job_id in job_ids:
        if receipts.get(job_id):
            continue
        with suppress(JobNotFound):
            cancelled += pollen.cancel(job_id, reason="benchmark over").cancelled
    if cancelled:
        log(f"[{name}] cancelled {cancelled} unfinished job(s)")
    cap = getattr(system, "cap", None)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        slots = None
        if cap is not None:
            caps = [(DEFAULT_ACCOUNT, cap)]
            state = pollen.store.admission.queue_state("runware", caps, now=time.time())
            slots = state.in_use + state.total_waiting
        key = http.get(f"{sim.url}/_sim/stats").json().get("keys", {}).get(API_KEY, {})
        running = int(key.get("running", 0)) + int(key.get("waiting", 0))
        if (not slots and not running) or time.monotonic() > deadline:
            return End(cancelled, slots, running)
        time.sleep(0.5)


def _figures(
    *,
    scenario: Scenario,
    ids: tuple[list[str], list[str]],
    receipts: dict[str, list[list[Any]]],
    tasks: dict[str, dict[str, Any]],
    key: dict[str, Any],
    small_at: float,
    started: float,
    ended: float,
    error: str | None,
    worker_cpu: float,
    end: End,
) -> dict[str, Any]:
    big_ids, small_ids = ids
    cap = scenario.cap or 0
    done = {j: hits[0] for j in [*big_ids, *small_ids] if (hits := receipts.get(j))}
    small_times = [done[j][0] - small_at for j in small_ids if j in done]
    mine = _tasks_by_job(tasks, {*big_ids, *small_ids})
    durations = [t["finished_at"] - t["created_at"] for t in mine.values()]
    duration = sum(durations) / len(durations) if durations else scenario.duration_max
    lag = percentile(schedule_lags(scenario.policy, durations), 50) or 0.0
    span, rate = _backlog_rate(mine, cap)
    lagged = cap / (duration + lag) if cap else None
    small_all = len(small_times) == len(small_ids)
    metrics: dict[str, Any] = {
        "jobs": len(big_ids) + len(small_ids),
        "completed": len(done),
        "small_completed": len(small_times),
        "small_p50_s": _small(small_times, 50, small_all, ended - small_at),
        "small_p95_s": _small(small_times, 95, small_all, ended - small_at),
        "fair_target_s": _fair_target(scenario, duration),
        "refused_for_capacity": key.get("refused_for_capacity"),
        "peak_running": f"{key.get('peak_running', '?')} ({cap})",
        "backlog_jobs_per_s": rate,
        "utilisation_target_jobs_per_s": round(0.95 * lagged, 2) if lagged else None,
        "utilisation_vs_lagged": round(rate / lagged, 3) if rate and lagged else None,
        "utilisation_raw": round(rate * duration / cap, 3) if rate and cap else None,
        "schedule_lag_p50_s": round(lag, 3),
        "backlog_s": span,
        "worker_cpu_ms_per_job": round(worker_cpu * 1000 / len(done), 2) if done else None,
        "cancelled_at_end": end.cancelled,
        "slots_in_use_at_end": end.slots_in_use,
        "running_at_end": end.running,
        "duplicate_provider_tasks": sum(1 for n in _task_counts(tasks).values() if n > 1),
        "failed": sum(1 for _, status in done.values() if status != "succeeded"),
        "wall_s": round(ended - started, 2),
        "cpu_workers_s": round(worker_cpu, 2),
    }
    details = {
        "error": error,
        "small_completion_times_s": sorted(round(t, 3) for t in small_times),
        "mean_duration_s": round(duration, 3),
        "simulator_key": key,
    }
    return {"metrics": metrics, "details": details}


def _small(times: list[float], q: float, complete: bool, waited: float) -> float | str | None:
    """The small tenant's percentile, or what the time bound left of it."""
    if complete:
        value = percentile(times, q)
        return None if value is None else round(value, 2)
    return f"{NOT_DONE} {waited:.0f} s ({len(times)} done)"


def _fair_target(scenario: Scenario, duration: float) -> float | None:
    """``small_jobs`` on half of the cap's slots, plus two poll intervals."""
    if not scenario.cap or not scenario.small_jobs:
        return None
    return round(
        scenario.small_jobs / (scenario.cap / 2) * duration + 2 * scenario.policy["interval"], 1
    )


def _tasks_by_job(tasks: dict[str, dict[str, Any]], job_ids: set[str]) -> dict[str, dict[str, Any]]:
    """Each job's first provider task: created_at and finished_at (its last generation)."""
    out: dict[str, dict[str, Any]] = {}
    for task in sorted(tasks.values(), key=lambda t: t["created_at"]):
        job_id = (task.get("label") or "").removeprefix(LABEL_PREFIX)
        if job_id in job_ids and job_id not in out and task["finished_at"]:
            out[job_id] = {
                "created_at": task["created_at"],
                "finished_at": max(task["finished_at"]),
            }
    return out


def _task_counts(tasks: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in tasks.values():
        label = task.get("label") or ""
        if label.startswith(LABEL_PREFIX):
            job_id = label.removeprefix(LABEL_PREFIX)
            counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def _backlog_rate(tasks: dict[str, dict[str, Any]], cap: int) -> tuple[float | None, float | None]:
    """Provider tasks created per second from the first create to the last one: the span
    while jobs waited for a slot. The first ``cap`` tasks start at once, so they are left out
    of the count (what is left is one create per slot freed)."""
    created = sorted(t["created_at"] for t in tasks.values())
    if len(created) <= cap + 1:
        return None, None
    span = created[-1] - created[0]
    return round(span, 1), round((len(created) - cap) / span, 2)
