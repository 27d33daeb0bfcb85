"""pollen's Celery tasks: thin wrappers that call one step and turn its answer into messages.

``pollen.submit``  validate + store the job (if it came as a payload), create the provider task
``pollen.poll``    ask the provider once; re-schedule itself with ``self.retry(countdown=...)``
``pollen.deliver_callback``  POST the completion body to the job's callback URL
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, current_app, shared_task
from celery.signals import (
    heartbeat_sent,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from pollen import contract, payloads
from pollen.callbacks import events
from pollen.errors import CallbackNotDelivered, InvalidJob
from pollen.models import JobStatus
from pollen.providers import build_providers
from pollen.settings import get_settings
from pollen.worker import health, logs, runtime, steps

log = logging.getLogger(__name__)


@worker_process_init.connect
def _open_resources(**_: Any) -> None:
    runtime.deps()


@worker_ready.connect
def _warn_missing_credentials(**_: Any) -> None:
    """One warning per provider this worker cannot call, at start (its jobs fail at once)."""
    for provider in build_providers(get_settings()).values():
        for variable in provider.missing_credentials():
            log.warning("%s: %s is not set; its jobs will fail", provider.name, variable)


@setup_logging.connect
def _logging(**_: Any) -> None:
    """pollen's format (text or JSON) for every logger in the worker, Celery's included."""
    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)


@task_prerun.connect
def _bind_job(kwargs: dict[str, Any] | None = None, args: Any = (), **_: Any) -> None:
    kwargs = kwargs or {}
    logs.clear()
    logs.bind(job_id=kwargs.get("job_id"), attempt=kwargs.get("attempt"))


@task_postrun.connect
def _unbind_job(**_: Any) -> None:
    logs.clear()


@heartbeat_sent.connect
def _heartbeat(**_: Any) -> None:
    health.touch_heartbeat(get_settings().heartbeat_file)


@worker_process_shutdown.connect
def _close_resources(**_: Any) -> None:
    runtime.close()


def _follow_up(job_id: str, outcome: steps.Next) -> None:
    """Send the messages a step asked for (the poll chain and callback deliveries)."""
    _send_deliveries(outcome)
    if _parked(job_id, outcome):
        return
    if outcome.poll_in is not None:
        poll.apply_async(
            kwargs={"job_id": job_id, "attempt": outcome.attempt},
            countdown=outcome.poll_in,
            kwargsrepr=contract.describe(job_id, outcome.provider, outcome.attempt),
        )


def _parked(job_id: str, outcome: steps.Next) -> bool:
    """Keep a long wait in Redis (the periodic round sends the poll when it is due) instead of
    a countdown message held in this worker's memory."""
    deps = runtime.deps()
    if outcome.poll_in is None or outcome.poll_in <= deps.settings.park_after:
        return False
    deps.store.park_poll(job_id, outcome.attempt, deps.clock() + outcome.poll_in)
    return True


def _send_deliveries(outcome: steps.Next) -> None:
    for delivery in outcome.deliveries:
        deliver_callback.apply_async((delivery,))


def _send_task(name: str, kwargs: dict[str, Any], queue: str | None) -> None:
    """Send a Celery task of the producer's app by name (Python callbacks)."""
    current_app.send_task(
        name, kwargs=kwargs, queue=queue, kwargsrepr="{result=...}", ignore_result=True
    )


def _first_submit(deps: runtime.Deps, job_id: str) -> bool:
    """Whether no submit of this stored job has run yet: this message brings it in."""
    job = deps.store.get(job_id)
    return job.status is JobStatus.QUEUED and job.submit_attempts == 0


@shared_task(
    bind=True,
    name=contract.SUBMIT,
    ignore_result=False,
    throws=(InvalidJob,),
    max_retries=None,  # bounded by the job's deadline, not by a count
)
def submit(
    self: Task,
    job: dict[str, Any] | None = None,
    job_id: str | None = None,
    *,
    created: bool | None = None,
) -> dict[str, Any]:
    """Accept a job payload (``job=``) or an already stored job (``job_id=``) and submit it.

    Answers ``{"job_id": ..., "created": ...}`` in both forms (Flower shows it as the result):
    ``created`` is True when this message brought in a new job (it stored the payload, or its
    producer stored the job and this is the job's first submit), False for a duplicate (the
    id existed, or the job was already submitted). ``created`` itself is only passed by this
    task's own retries, which carry the first run's answer.
    """
    deps = runtime.deps()
    if job is not None:
        job_id, created = payloads.accept(deps.settings, deps.store, job, now=deps.clock())
    if job_id is None:
        raise InvalidJob("pollen.submit needs job= (a job payload) or job_id=")
    if created is None:
        created = _first_submit(deps, job_id)
    outcome = steps.submit(deps, job_id)
    if outcome.submit_in is not None:
        raise self.retry(
            countdown=outcome.submit_in,
            kwargs={"job_id": job_id, "created": created},
            kwargsrepr=contract.describe(job_id, outcome.provider),
        )
    _follow_up(job_id, outcome)
    return {"job_id": job_id, "created": created}


@shared_task(bind=True, name=contract.POLL, max_retries=None)
def poll(self: Task, job_id: str, attempt: int) -> None:
    """Poll number ``attempt`` of one job; the chain continues through countdown retries."""
    outcome = steps.poll(runtime.deps(), job_id, attempt)
    _send_deliveries(outcome)  # events this poll noticed (partial results, progress, completed)
    if outcome.poll_in is None or _parked(job_id, outcome):
        return
    raise self.retry(
        countdown=outcome.poll_in,
        kwargs={"job_id": job_id, "attempt": outcome.attempt},
        kwargsrepr=contract.describe(job_id, outcome.provider, outcome.attempt),
    )


@shared_task(
    bind=True,
    name=contract.DELIVER_CALLBACK,
    max_retries=None,
    throws=(CallbackNotDelivered,),  # an expected outcome: logged at INFO, no traceback
)
def deliver_callback(self: Task, delivery: str) -> str:
    """One attempt at one callback delivery; short waits retry by countdown, long ones wait in
    Redis for the periodic round. Never changes the job.

    What Flower shows is what happened: SUCCESS only when the receiver took it; RETRY when
    this message runs again after a countdown; FAILURE (``CallbackNotDelivered``) when the
    attempt failed and the next one waits in Redis, or the delivery is dead or gone. A parked
    wait is not a retry of this message (the periodic round sends a new one when it is due),
    and a SUCCESS would hide the failed attempt, so the task fails with the reason.
    """
    outcome = events.deliver(runtime.deps(), delivery, _send_task)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    if outcome.state in ("pending", "dead", "gone"):
        raise CallbackNotDelivered(outcome.detail)
    return outcome.detail
