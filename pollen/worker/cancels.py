"""The follow-up of a cancel: the provider's cancel call, then the ``completed`` callback.

A producer's :meth:`pollen.Pollen.cancel` moves the job to ``cancelled`` in Redis at once (the
poll chain stops at its next step: a poll finds the job finished and does nothing) and sends
``pollen.cancel``, which runs :func:`follow_up` here: the worker holds the provider keys, so
it is the one that asks the provider to cancel, where the provider documents a call for it,
and sends the callbacks. Idempotent: a second run finds the follow-up done, and the callback
deliveries have stable ids (two copies running at once, a late message and the reconciler's
resend, may both call the provider; the callback still goes once). A lost message is sent
again by the reconciler.

No Celery here.
"""

from __future__ import annotations

import logging

from pollen.callbacks import events
from pollen.errors import JobNotFound, PollenError, RetryableProviderError
from pollen.models import Job, JobStatus
from pollen.worker import logs, metrics
from pollen.worker.deliveries import emit
from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)


#: attempts at the provider's cancel call when it fails in a way worth retrying (5xx, 429,
#: timeouts): the reconciler re-sends the follow-up one grace period after each
CANCEL_ATTEMPTS = 5


def follow_up(deps: Deps, job_id: str) -> list[str]:
    """Cancel the job's provider task and record the ``completed`` event; the callback
    deliveries to send now (none when the follow-up was already done).

    The callback goes once, with what the first attempt did at the provider. A provider
    call that failed in a retryable way leaves the follow-up pending: the reconciler sends it
    again (up to :data:`CANCEL_ATTEMPTS` calls), and ``Job.cancel_note`` shows the latest.
    """
    try:
        job = deps.store.lifecycle.get(job_id)
    except JobNotFound:
        deps.store.lifecycle.cancel_followed(job_id, "")  # expired meanwhile: stop watching it
        return []
    state, attempts = deps.store.lifecycle.fields(job_id, "cancel_state", "cancel_attempts")
    if job.status is not JobStatus.CANCELLED or state != "pending":
        return []  # done by an earlier copy (which stopped watching it)
    made = int(attempts or 0) + 1
    with logs.bound(job_id=job.id, provider=job.provider, provider_task_id=job.provider_task_id):
        note, retry = cancel_at_provider(deps, job)
        log.info("job cancelled (provider call %d): %s", made, note)
    deliveries: list[str] = []
    if events.wants(job, "completed"):  # idempotent: a later attempt creates nothing new
        final = job.model_copy(update={"cancel_note": note})
        deliveries = emit(deps, final, "completed", events.completion_payload(final))
    if retry and made < CANCEL_ATTEMPTS:
        deps.store.lifecycle.cancel_retry_later(job_id, note, made)
        return deliveries
    if retry:
        note = note.replace("pollen tries again", f"pollen gave up after {made} calls")
    deps.store.lifecycle.cancel_followed(job_id, note)
    metrics.job_finished(
        deps.tenant_labels, job.provider, JobStatus.CANCELLED.value, job.tenant, job.cost
    )
    return deliveries


def cancel_at_provider(deps: Deps, job: Job) -> tuple[str, bool]:
    """(what happened at the provider, in a few words; whether the call is worth another
    try). Never raises for a provider error: the job stays cancelled either way."""
    if not job.provider_task_id:
        if job.submit_attempts:
            return (
                "cancelled while a submit may have been in flight: if the provider took the "
                "task, pollen cancels it (where the provider can) when the answer arrives",
                False,
            )
        return "cancelled before it was submitted: nothing to cancel at the provider", False
    try:
        return deps.calls.cancel(job), False
    except RetryableProviderError as exc:
        return f"the provider's cancel call failed ({exc}); pollen tries again", True
    except PollenError as exc:
        return f"the provider's cancel call failed ({exc}); pollen stopped polling", False
