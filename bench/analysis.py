"""Samples into figures: per-job outcomes (lag, duplicates, losses), the schedule's own lag,
and the metrics and details each system reports.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

from bench.memory import per_job
from bench.producer import LABEL_PREFIX, Producers
from bench.sampling import MIB, MessageCounter, Peaks
from bench.scenarios import Scenario
from pollen.backoff import PollPolicy, next_delay

#: the LPUSH count of ``INFO commandstats`` (every database), kept as a cross-check
MESSAGE_COMMANDS = ("lpush",)
#: every Pub/Sub message: Celery's events and pollen's job events (``keys.events``)
EVENT_COMMANDS = ("publish",)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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


def analyse(
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


def _per_job(value: float, jobs: int) -> float | None:
    return round(value / jobs, 3) if jobs else None


def _per_inflight(peaks: Peaks, redis_before: int) -> int | None:
    """Redis used_memory growth per in-flight job, at the sample with the most in flight."""
    if not peaks.inflight:
        return None
    return round((peaks.redis_used_at_peak_inflight - redis_before) / peaks.inflight)


def _memory(peaks: Peaks) -> dict[str, Any] | None:
    """The memory breakdown with bytes per in-flight job by key type (None: none taken)."""
    if peaks.memory is None:
        return None
    taken = dict(peaks.memory)
    taken["kinds"] = per_job(taken["kinds"], taken["inflight"])
    taken["bytes_per_job"] = round(sum(k["bytes_per_job"] for k in taken["kinds"].values()))
    return taken


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def figures(
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
    memory = _memory(peaks)
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
        "celery_events_per_job": _per_job(messages.celery_events.total(), jobs),
        "publish_per_job": _per_job(sum(calls.get(c, 0) for c in EVENT_COMMANDS), jobs),
        "redis_commands_per_job": _per_job(commands, jobs),
        "worker_rss_peak_mib": round(peaks.rss / MIB, 1),
        "peak_inflight": inflight,
        "redis_bytes_per_inflight_job": _per_inflight(peaks, redis_before),
        "redis_key_bytes_per_inflight_job": memory and memory["bytes_per_job"],
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
        "celery_events_by_channel": dict(messages.celery_events.most_common()),
        "lpush_calls_all_dbs": sum(calls.get(c, 0) for c in MESSAGE_COMMANDS),
        "redis_commands_harness": calls["harness"],
        "redis_command_calls": {k: v for k, v in sorted(calls.items()) if v},
        "redis_used_memory_before": redis_before,
        "redis_used_memory_peak": peaks.redis_used,
        "redis_used_memory_at_peak_inflight": peaks.redis_used_at_peak_inflight,
        "redis_memory_by_key_type": memory,
        "timeline_columns": ["elapsed_s", "enqueued", "called_back", "rss_mib", "redis_used"],
        "timeline": peaks.timeline,
    }
    return {"metrics": metrics, "details": details}
