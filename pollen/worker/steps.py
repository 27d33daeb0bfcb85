"""The job's steps as plain functions: submit and poll (accepting a job is
:func:`pollen.payloads.accept`; callbacks are :mod:`pollen.callbacks.events`).

No Celery here: each step reads and writes the store, talks to a provider through the injected
HTTP client, and returns what should happen next (a :class:`Next`). The Celery tasks in
:mod:`pollen.worker.tasks` turn that into countdown retries. Every step is safe to run twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from pollen.backoff import next_delay
from pollen.callbacks import events
from pollen.errors import (
    ProviderNotConfigured,
    ProviderUnavailable,
    RateLimited,
    RetryableProviderError,
    TerminalProviderError,
)
from pollen.models import Job, JobStatus
from pollen.providers import Snapshot
from pollen.providers.base import TERMINAL_STATES
from pollen.providers.http import send
from pollen.worker import logs, metrics
from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Next:
    """What the caller should do after a step."""

    poll_in: float | None = None  #: schedule poll number ``attempt`` after this many seconds
    attempt: int = 0
    submit_in: float | None = None  #: run the submit step again after this many seconds
    finished: bool = False  #: this step ended the job
    provider: str = ""  #: for the task's log and Flower repr
    deliveries: tuple[str, ...] = ()  #: callback deliveries to send now


def _finish(deps: Deps, job: Job, status: JobStatus, code: str = "", message: str = "") -> Next:
    fields: dict[str, Any] = {"error_code": code, "error_message": message} if code else {}
    moved = deps.store.transition(job.id, status, now=deps.clock(), **fields)
    if not moved:
        return Next(provider=job.provider)
    metrics.JOBS_FINISHED.labels(job.provider, status.value).inc()
    level = logging.INFO if status is JobStatus.SUCCEEDED else logging.WARNING
    log.log(level, "job %s%s", status.value, f" ({code}: {message})" if code else "")
    if not events.wants(job, "completed"):
        return Next(finished=True, provider=job.provider)
    final = deps.store.get(job.id)
    sends = events.emit(deps, final, "completed", events.completion_payload(final))
    return Next(finished=True, provider=job.provider, deliveries=tuple(sends))


def _timed_out(deps: Deps, job: Job, detail: str = "") -> Next:
    message = f"no result within the {job.policy.deadline:g}s deadline"
    return _finish(deps, job, JobStatus.TIMED_OUT, "deadline", message + detail)


def _failed(deps: Deps, job: Job, exc: TerminalProviderError) -> Next:
    return _finish(deps, job, JobStatus.FAILED, exc.code or "providerError", exc.message)


def _retry_after(exc: RetryableProviderError) -> float | None:
    return exc.retry_after if isinstance(exc, RateLimited) else None


def submit(deps: Deps, job_id: str) -> Next:
    """Create the provider task once; a redelivered submit only re-arms the poll chain."""
    store, now = deps.store, deps.clock()
    job = store.get(job_id)
    logs.bind(job_id=job_id, provider=job.provider, provider_task_id=job.provider_task_id)
    if job.terminal:
        return Next()
    if job.status is not JobStatus.QUEUED:
        # Already submitted by an earlier copy of this message: make sure polling goes on.
        # A duplicate poll message is harmless: the poll step is fenced by poll_seq.
        wait = max(0.0, (job.next_poll_at or now) - now)
        return Next(poll_in=wait, attempt=max(job.poll_seq, 1), provider=job.provider)
    if job.deadline_at is not None and now >= job.deadline_at:
        return _timed_out(deps, job, " (never accepted by the provider)")
    provider = deps.providers[job.provider]
    missing = provider.missing_credentials()
    if missing:  # this worker can never submit it: fail now, not after an hour of retries
        metrics.SUBMITS.labels(job.provider, "misconfigured").inc()
        return _failed(deps, job, ProviderNotConfigured.missing(missing))
    request = provider.submit_request(job, job.task_uuid)
    attempts = store.begin_submit(job_id, json.loads(request.content))
    if attempts == 1:
        metrics.JOBS_STARTED.labels(job.provider).inc()
    try:
        deps.limiter.acquire(job.provider)
        answer = send(deps.http, request, provider=job.provider, kind="submit")
        submission = provider.parse_submit(job, job.task_uuid, answer)
    except RetryableProviderError as exc:
        metrics.SUBMITS.labels(job.provider, "retry").inc()
        delay = next_delay(
            job.policy,
            attempts,
            elapsed=now - job.created_at,
            retry_after=_retry_after(exc),
            rng=deps.rng,
        )
        store.update(job_id, last_error=f"{exc.code}: {exc.message}")
        if delay is None:
            return _timed_out(deps, job, f"; last provider error: {exc.message}")
        store.watch(job_id, now + delay)
        log.warning("submit attempt %d failed, retrying in %.1fs: %s", attempts, delay, exc)
        return Next(submit_in=delay, provider=job.provider)
    except TerminalProviderError as exc:
        metrics.SUBMITS.labels(job.provider, "rejected").inc()
        return _failed(deps, job, exc)
    result = "already_submitted" if submission.already_submitted else "accepted"
    metrics.SUBMITS.labels(job.provider, result).inc()
    logs.bind(provider_task_id=submission.provider_task_id)
    log.info("submitted (%s) on attempt %d", result.replace("_", " "), attempts)
    first = next_delay(job.policy, 0, elapsed=now - job.created_at, rng=deps.rng) or 0.0
    moved = store.transition(
        job_id,
        JobStatus.SUBMITTED,
        now=now,
        expect_by=now + first,
        provider_task_id=submission.provider_task_id,
        submitted_at=repr(now),
        submit_response=submission.envelope,
        poll_seq="1",
        next_poll_at=repr(now + first),
    )
    sends: list[str] = []
    if moved and events.wants(job, "started"):
        started = store.get(job_id)
        sends = events.emit(deps, started, "started", events.started_payload(started))
    return Next(poll_in=first, attempt=1, provider=job.provider, deliveries=tuple(sends))


def poll(deps: Deps, job_id: str, attempt: int) -> Next:
    """Ask the provider once, record what is new, and say when to ask again.

    Fenced: only the copy of poll message ``attempt`` that takes the lease acts; duplicates
    (redeliveries, retry-then-crash copies) return ``Next()`` and change nothing.
    """
    store, now = deps.store, deps.clock()
    claim = store.claim_poll(job_id, attempt, now=now, lease=deps.settings.task_time_limit)
    if claim.verdict == "busy":
        return Next(poll_in=claim.wait + 1.0, attempt=attempt)
    if claim.verdict != "ok":
        return Next()
    job = store.get(job_id)
    logs.bind(provider=job.provider, provider_task_id=job.provider_task_id)
    if claim.worker_losses >= deps.settings.max_worker_losses:
        message = (
            f"a worker died {claim.worker_losses} times while polling this job; giving up "
            "so it cannot take more workers down"
        )
        return _finish(deps, job, JobStatus.FAILED, "workerLost", message)
    if job.deadline_at is not None and now >= job.deadline_at:
        return _timed_out(deps, job, f" ({job.polls} polls)")
    with metrics.POLL_SECONDS.labels(job.provider).time():
        try:
            snapshot = deps.fetcher.fetch(job, now)
        except TerminalProviderError as exc:
            metrics.POLLS.labels(job.provider, "rejected").inc()
            return _failed(deps, job, exc)
        except RetryableProviderError as exc:
            result = "rate_limited" if isinstance(exc, RateLimited) else "retry"
            metrics.POLLS.labels(job.provider, result).inc()
            return _poll_failed(deps, job, attempt, exc, now)
        except Exception as exc:  # e.g. Celery's soft time limit: a slow poll, not a dead worker
            log.exception("poll interrupted; it is retried like a provider failure")
            metrics.POLLS.labels(job.provider, "interrupted").inc()
            interrupted = ProviderUnavailable(f"poll interrupted: {exc!r}", code="interrupted")
            return _poll_failed(deps, job, attempt, interrupted, now)
        metrics.POLLS.labels(job.provider, snapshot.state).inc()
        return _poll_answered(deps, job, attempt, snapshot, now)


def _poll_failed(
    deps: Deps, job: Job, attempt: int, exc: RetryableProviderError, now: float
) -> Next:
    """A retryable failure: keep the record of it and hand over to the next poll."""
    delay = next_delay(
        job.policy,
        attempt,
        elapsed=now - job.created_at,
        retry_after=_retry_after(exc),
        rng=deps.rng,
    )
    applied = deps.store.apply_poll(
        job.id,
        attempt,
        now=now,
        envelope={"error": {"code": exc.code, "status": exc.status, "message": exc.message}},
        results=[],
        errors=job.errors,
        progress=None,
        cost=None,
        next_poll_at=now + (delay or 0.0),
    )
    if applied is None:
        return Next()
    if delay is None:
        return _timed_out(deps, job, f"; last provider error: {exc.message}")
    log.warning("poll failed, next in %.1fs: %s", delay, exc)
    return Next(poll_in=delay, attempt=attempt + 1, provider=job.provider)


def _poll_answered(deps: Deps, job: Job, attempt: int, snapshot: Snapshot, now: float) -> Next:
    """Store new generations and end the job if the provider says it is over."""
    done = snapshot.state in TERMINAL_STATES
    delay = None
    if not done:
        delay = next_delay(
            job.policy,
            attempt,
            elapsed=now - job.created_at,
            hint=snapshot.hint_delay,
            rng=deps.rng,
        )
    applied = deps.store.apply_poll(
        job.id,
        attempt,
        now=now,
        envelope=snapshot.envelope,
        results=snapshot.results,
        errors=snapshot.errors,
        progress=snapshot.progress,
        cost=snapshot.cost,
        next_poll_at=now + (delay or 0.0),
    )
    if applied is None:
        return Next()
    sends = _partial_events(deps, job, applied, snapshot) + _progress_event(deps, job, snapshot)
    if snapshot.state == "succeeded":
        outcome = _finish(deps, job, JobStatus.SUCCEEDED)
    elif snapshot.state in ("failed", "cancelled"):
        first = snapshot.errors[0] if snapshot.errors else None
        code = first.code if first else f"provider_{snapshot.state}"
        message = first.message if first else f"the provider reported the task {snapshot.state}"
        status = JobStatus.FAILED if snapshot.state == "failed" else JobStatus.CANCELLED
        outcome = _finish(deps, job, status, code, message)
    elif delay is None:
        outcome = _timed_out(deps, job, f" ({job.polls + 1} polls)")
    else:
        outcome = Next(poll_in=delay, attempt=attempt + 1, provider=job.provider)
    return replace(outcome, deliveries=(*sends, *outcome.deliveries))


def _partial_events(deps: Deps, job: Job, new: list[str], snapshot: Snapshot) -> list[str]:
    """One ``partial`` event per generation seen finished for the first time."""
    if not new:
        return []
    log.info("%d new result(s): %s", len(new), ", ".join(new))
    by_id = {result.id: result for result in snapshot.results}
    sends: list[str] = []
    for offset, ident in enumerate(new, start=1):
        data = events.partial_payload(job, by_id[ident], len(job.results) + offset)
        sends += events.emit(deps, job, "partial", data, suffix=ident)
    return sends


def _progress_event(deps: Deps, job: Job, snapshot: Snapshot) -> list[str]:
    """A ``progress`` event when progress moved, at most one per progress_interval."""
    progress = snapshot.progress
    if "progress" not in job.events or progress is None or progress == job.progress:
        return []
    if not 0 < progress < 1:  # nothing to report yet, or the completed event says it all
        return []
    now = deps.clock()
    last = deps.store.field(job.id, "progress_event_at")
    if last and now - float(last) < deps.settings.callbacks.progress_interval:
        return []
    deps.store.update(job.id, progress_event_at=repr(now))
    data = events.progress_payload(job, progress)
    return events.emit(deps, job, "progress", data, suffix=str(round(progress * 1000)))
