"""The poll step for a batch of jobs: claim all, ask each provider once, record all.

One poll message carries many (job id, attempt) pairs. :func:`poll_batch` takes every job's
lease in one Redis call (each job fenced by its own attempt number), asks each provider once
for all its jobs (:meth:`~pollen.providers.calls.ProviderCalls.status_many`), records every
answer in one Redis call, and says when each job still running is due again. Every job keeps
its own backoff: the caller plans the next polls by due time (:mod:`pollen.worker.planner`).

No Celery here. A job's failure is its own: a provider error, a stale copy or a missing job
never changes what happens to the other jobs of the batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from pollen import tracing
from pollen.backoff import next_delay
from pollen.callbacks import events
from pollen.errors import (
    ProviderUnavailable,
    RateLimited,
    RetryableProviderError,
    TerminalProviderError,
)
from pollen.models import Job, JobStatus
from pollen.providers import Snapshot
from pollen.providers.base import TERMINAL_STATES
from pollen.store.polls import Claim, PollRecord, Recorded
from pollen.worker import logs, metrics, traces
from pollen.worker.deliveries import emit
from pollen.worker.grouping import Due, Item, due
from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)

#: how long after a busy lease ends its poll is tried again, seconds
BUSY_MARGIN = 1.0


@dataclass
class BatchNext:
    """What the caller should do after a batch: send these polls and deliveries."""

    polls: list[Due] = field(default_factory=list)  #: the next poll of each job still running
    deliveries: list[str] = field(default_factory=list)  #: callback deliveries to send now
    completions: list[str] = field(default_factory=list)  #: the ``completed`` ones among them
    finished: list[str] = field(default_factory=list)  #: jobs this batch ended
    #: (job id, generation id) of the new results to copy to storage now (re-hosting)
    copies: list[tuple[str, str]] = field(default_factory=list)
    providers: set[str] = field(default_factory=set)  #: for the task's Flower repr


@dataclass
class _Plan:
    """One claimed job on its way through the batch."""

    job: Job
    attempt: int
    fields: dict[str, str]  #: the job's stored record (internal fields the Job view omits)
    record: PollRecord | None = None
    snapshot: Snapshot | None = None
    delay: float | None = None


def poll_batch(deps: Deps, items: Sequence[Item]) -> BatchNext:
    """Poll every (job id, attempt) of ``items`` once; see the module docstring. Traced as
    one span (a batch serves many jobs) linked to the trace of each job it polls."""
    with deps.tracing.span("pollen.poll", attributes={tracing.JOBS: len(items)}) as span:
        return _poll_batch(deps, items, span)


def _poll_batch(deps: Deps, items: Sequence[Item], span: tracing.Span) -> BatchNext:
    now = deps.clock()
    out = BatchNext()
    claims = deps.store.polls.claim(items, now=now, lease=deps.settings.poll_lease)
    plans: list[_Plan] = []
    for (job_id, attempt), claim in zip(items, claims, strict=True):
        plan = _claimed(deps, out, job_id, attempt, claim, now)
        if plan is not None:
            plans.append(plan)
            attributes = traces.job_attributes(job_id, plan.job.provider, plan.job.tenant)
            span.link(plan.fields.get(tracing.FIELD), attributes)
    span.set({tracing.PROVIDER: ",".join(sorted(out.providers))})
    held = [(p.job.id, p.attempt) for p in plans]
    try:
        with deps.leases.held(held):
            _ask(deps, [p for p in plans if p.record is None], now)
            records = [p.record for p in plans if p.record is not None]
            # Stamped when the answers are in (finished_at is when pollen learnt it ended).
            recorded = deps.store.polls.record(records, now=deps.clock())
    except BaseException:
        # Nothing was recorded (a soft time limit, Redis away): give the leases back, so the
        # next copy of these polls acts at once and no worker death is counted.
        with contextlib.suppress(Exception):
            deps.store.polls.renew(held, until=0.0)
        raise
    for plan, done in zip(plans, recorded, strict=True):
        try:
            _follow(deps, out, plan, done, now)
        except Exception:  # one job's events must not cost its batch-mates theirs
            log.exception("after recording the poll of job %s", plan.job.id)
    return out


def _context(job: Job, attempt: int | None = None) -> AbstractContextManager[None]:
    """Log lines about one job of the batch carry its fields."""
    return logs.bound(
        job_id=job.id, provider=job.provider, provider_task_id=job.provider_task_id,
        attempt=attempt,
    )  # fmt: skip


def _claimed(
    deps: Deps, out: BatchNext, job_id: str, attempt: int, claim: Claim, now: float
) -> _Plan | None:
    """The plan for one claimed job, or None when this copy must not act."""
    if claim.verdict == "busy":  # another copy holds the lease: look again after it
        at = now + claim.wait + BUSY_MARGIN
        out.polls.append(Due(job_id, attempt, at, at))
        return None
    if claim.verdict == "alone":  # its last poll's worker died: poll it on its own, now
        out.polls.append(Due(job_id, attempt, now, now, alone=True))
        return None
    if claim.verdict != "ok":
        return None  # stale, finished or gone: another copy or an earlier step has it
    job = claim.job()
    out.providers.add(job.provider)
    if job.next_poll_at:
        metrics.POLL_LATENESS.labels(job.provider).observe(max(0.0, now - job.next_poll_at))
    plan = _Plan(job, attempt, claim.fields)
    if claim.worker_losses >= deps.settings.max_worker_losses:
        message = (
            f"a worker died {claim.worker_losses} times while polling this job; giving up "
            "so it cannot take more workers down"
        )
        plan.record = _ending(plan, JobStatus.FAILED, "workerLost", message)
    elif job.deadline_at is not None and now >= job.deadline_at:
        plan.record = _timeout(plan, f" ({job.polls} polls)")
    return plan


def _ending(
    plan: _Plan,
    status: JobStatus,
    code: str = "",
    message: str = "",
    poll: dict[str, Any] | None = None,
    fields: dict[str, str] | None = None,
) -> PollRecord:
    """A record that ends the job in ``status``; with ``poll``, after recording that answer."""
    error = {"error_code": code, "error_message": message} if code else {}
    return PollRecord(
        plan.job.id,
        plan.attempt,
        apply=poll is not None,
        finish=status,
        fields={**(fields or {}), **error},
        final=events.wants(plan.job, "completed"),
        **(poll or {}),
    )


def _timeout(
    plan: _Plan,
    detail: str,
    poll: dict[str, Any] | None = None,
    fields: dict[str, str] | None = None,
) -> PollRecord:
    message = f"no result within the {plan.job.policy.deadline:g}s deadline{detail}"
    return _ending(plan, JobStatus.TIMED_OUT, "deadline", message, poll, fields)


def _ask(deps: Deps, plans: list[_Plan], now: float) -> None:
    """Ask each provider once about all its jobs and turn every answer into a record."""
    by_provider: dict[str, list[_Plan]] = {}
    for plan in plans:
        by_provider.setdefault(plan.job.provider, []).append(plan)
    for provider, mine in by_provider.items():
        with metrics.POLL_SECONDS.labels(provider).time():
            answers = deps.calls.status_many(provider, [p.job for p in mine], now)
        for plan, answer in zip(mine, answers, strict=True):
            plan.record = _answered(deps, plan, answer, now)


def _answered(deps: Deps, plan: _Plan, answer: Snapshot | Exception, now: float) -> PollRecord:
    job = plan.job
    if isinstance(answer, TerminalProviderError):
        metrics.POLLS.labels(job.provider, "rejected").inc()
        return _ending(plan, JobStatus.FAILED, answer.code or "providerError", answer.message)
    if isinstance(answer, Exception):
        return _failed(deps, plan, _retryable(job, answer), now)
    metrics.POLLS.labels(job.provider, answer.state).inc()
    return _snapshot(deps, plan, answer, now)


def _retryable(job: Job, exc: Exception) -> RetryableProviderError:
    if isinstance(exc, RetryableProviderError):
        result = "rate_limited" if isinstance(exc, RateLimited) else "retry"
        metrics.POLLS.labels(job.provider, result).inc()
        return exc
    # e.g. Celery's soft time limit, a bug in a parser: a slow poll, not a dead worker
    with _context(job):
        log.error("poll interrupted; it is retried like a provider failure: %r", exc)
    metrics.POLLS.labels(job.provider, "interrupted").inc()
    return ProviderUnavailable(f"poll interrupted: {exc!r}", code="interrupted")


def _failed(deps: Deps, plan: _Plan, exc: RetryableProviderError, now: float) -> PollRecord:
    """A retryable failure: keep the record of it and hand over to the next poll."""
    job = plan.job
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
    plan.delay = next_delay(
        job.policy, plan.attempt, elapsed=now - job.created_at, retry_after=retry_after,
        rng=deps.rng,
    )  # fmt: skip
    poll: dict[str, Any] = {
        "envelope": {"error": {"code": exc.code, "status": exc.status, "message": exc.message}},
        "keep": True,
        "errors": job.errors,
        "next_poll_at": now + (plan.delay or 0.0),
    }
    fields = {"last_error": f"{exc.code}: {exc.message}"}
    if plan.delay is None:
        return _timeout(plan, f"; last provider error: {exc.message}", poll, fields)
    with _context(job, plan.attempt):
        log.warning("poll failed, next in %.1fs: %s", plan.delay, exc)
    return PollRecord(job.id, plan.attempt, fields=fields, **poll)


def _snapshot(deps: Deps, plan: _Plan, snapshot: Snapshot, now: float) -> PollRecord:
    """Store new generations and end the job if the provider says it is over."""
    job = plan.job
    plan.snapshot = snapshot
    done = snapshot.state in TERMINAL_STATES
    if not done:
        plan.delay = next_delay(
            job.policy, plan.attempt, elapsed=now - job.created_at, hint=snapshot.hint_delay,
            rng=deps.rng,
        )  # fmt: skip
    fields = {"provider_status": snapshot.provider_status or snapshot.state}
    if _progress_event_due(deps, plan, snapshot, now):
        fields["progress_event_at"] = repr(now)
    poll: dict[str, Any] = {
        "envelope": snapshot.envelope,
        "keep": done or fields["provider_status"] != plan.fields.get("provider_status"),
        "results": snapshot.results,
        "errors": snapshot.errors,
        "progress": snapshot.progress,
        "cost": finite(snapshot.cost),
        "next_poll_at": now + (plan.delay or 0.0),
    }
    if snapshot.state == "succeeded":
        return _ending(plan, JobStatus.SUCCEEDED, poll=poll, fields=fields)
    if snapshot.state in ("failed", "cancelled"):
        first = snapshot.errors[0] if snapshot.errors else None
        code = first.code if first else f"provider_{snapshot.state}"
        message = first.message if first else f"the provider reported the task {snapshot.state}"
        status = JobStatus.FAILED if snapshot.state == "failed" else JobStatus.CANCELLED
        return _ending(plan, status, code, message, poll, fields)
    if plan.delay is None:
        return _timeout(plan, f" ({job.polls + 1} polls)", poll, fields)
    return PollRecord(job.id, plan.attempt, fields=fields, **poll)


def finite(value: float | None) -> float | None:
    """A provider's number as pollen keeps it: None for NaN or infinity (valid JSON for a
    provider, ``1e999``; not a cost or progress anyone can add up)."""
    return value if value is not None and math.isfinite(value) else None


def _progress_event_due(deps: Deps, plan: _Plan, snapshot: Snapshot, now: float) -> bool:
    """Whether this answer sends a ``progress`` event (progress moved, at most one per
    ``progress_interval``, and someone listens)."""
    job, progress = plan.job, snapshot.progress
    if "progress" not in job.events or not job.callback_url:
        return False
    if progress is None or progress == job.progress or not 0 < progress < 1:
        return False
    last = plan.fields.get("progress_event_at")
    return not last or now - float(last) >= deps.settings.callbacks.progress_interval


def _follow(deps: Deps, out: BatchNext, plan: _Plan, done: Recorded, now: float) -> None:
    """Events, metrics and the next poll of one recorded job."""
    job, record = plan.job, plan.record
    if done.verdict != "ok" or record is None:
        return  # a stale copy: the copy that recorded this attempt does what follows
    if deps.storage is not None:  # their copies were marked pending with the results
        out.copies += [(job.id, generation) for generation in done.added]
    snapshot = plan.snapshot
    if snapshot is not None:
        out.deliveries += _partial_events(deps, job, done.added, done.result_count, snapshot)
        if "progress_event_at" in record.fields and snapshot.progress is not None:
            data = events.progress_payload(job, snapshot.progress)
            suffix = str(round(snapshot.progress * 1000))
            out.deliveries += emit(deps, job, "progress", data, suffix=suffix)
    if record.finish is not None:
        if done.finished:
            _finished(deps, out, job, record, done)
        return
    if plan.delay is not None:
        out.polls.append(
            due(
                job.id,
                plan.attempt + 1,
                now=now,
                delay=plan.delay,
                fraction=deps.settings.batch_window,
                cap=deps.settings.batch_window_max,
                deadline_at=job.deadline_at,
            )
        )


def _finished(deps: Deps, out: BatchNext, job: Job, record: PollRecord, done: Recorded) -> None:
    status = record.finish
    assert status is not None
    out.finished.append(job.id)
    final = done.job.cost if done.job is not None else None
    cost = next((c for c in (final, record.cost) if c is not None), job.cost)
    metrics.job_finished(deps.tenant_labels, job.provider, status.value, job.tenant, cost)
    code = record.fields.get("error_code", "")
    level = logging.INFO if status is JobStatus.SUCCEEDED else logging.WARNING
    detail = f" ({code}: {record.fields.get('error_message', '')})" if code else ""
    with _context(job):
        log.log(level, "job %s%s", status.value, detail)
    if done.job is not None:
        sends = emit(deps, done.job, "completed", events.completion_payload(done.job))
        out.deliveries += sends
        out.completions += sends


def _partial_events(
    deps: Deps, job: Job, new: list[str], done_count: int, snapshot: Snapshot
) -> list[str]:
    """One ``partial`` event per generation seen finished for the first time."""
    if not new:
        return []
    with _context(job):
        log.info("%d new result(s): %s", len(new), ", ".join(new))
    if not events.wants(job, "partial"):
        return []
    by_id = {result.id: result for result in snapshot.results}
    known = done_count - len(new)
    sends: list[str] = []
    for offset, ident in enumerate(new, start=1):
        data = events.partial_payload(job, by_id[ident], known + offset)
        sends += emit(deps, job, "partial", data, suffix=ident)
    return sends
