"""The job's submit step as a plain function (accepting a job is :func:`pollen.payloads.accept`,
polling is :mod:`pollen.worker.batch`, callbacks are :mod:`pollen.callbacks.events`).

No Celery here: each step reads and writes the store, talks to a provider through the injected
HTTP client, and returns what should happen next (a :class:`Next`). The Celery tasks in
:mod:`pollen.worker.tasks` turn that into countdown retries. Every step is safe to run twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pollen.backoff import next_delay
from pollen.callbacks import events
from pollen.errors import (
    ProviderNotConfigured,
    RateLimited,
    RetryableProviderError,
    TerminalProviderError,
)
from pollen.models import Job, JobStatus
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
