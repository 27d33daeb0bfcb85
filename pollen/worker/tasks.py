"""pollen's Celery tasks: thin wrappers that call one step and turn its answer into messages.

``pollen.submit``  validate + store the job (if it came as a payload), create the provider task
``pollen.poll``    ask the provider once; re-schedule itself with ``self.retry(countdown=...)``
``pollen.deliver_callback``  POST the completion body to the job's callback URL
"""

from __future__ import annotations

from typing import Any

from celery import Task, current_app, shared_task
from celery.signals import (
    heartbeat_sent,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
)

from pollen import contract, payloads
from pollen.callbacks import events
from pollen.errors import InvalidJob
from pollen.settings import get_settings
from pollen.worker import health, logs, runtime, steps


@worker_process_init.connect
def _open_resources(**_: Any) -> None:
    runtime.deps()


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


@shared_task(
    bind=True,
    name=contract.SUBMIT,
    ignore_result=False,
    throws=(InvalidJob,),
    max_retries=None,  # bounded by the job's deadline, not by a count
)
def submit(
    self: Task, job: dict[str, Any] | None = None, job_id: str | None = None
) -> dict[str, Any]:
    """Accept a job payload (``job=``) or an already stored job (``job_id=``) and submit it."""
    deps = runtime.deps()
    created = False
    if job is not None:
        job_id, created = payloads.accept(deps.settings, deps.store, job, now=deps.clock())
    if job_id is None:
        raise InvalidJob("pollen.submit needs job= (a job payload) or job_id=")
    outcome = steps.submit(deps, job_id)
    if outcome.submit_in is not None:
        raise self.retry(
            countdown=outcome.submit_in,
            kwargs={"job_id": job_id},
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


@shared_task(bind=True, name=contract.DELIVER_CALLBACK, max_retries=None)
def deliver_callback(self: Task, delivery: str) -> None:
    """One attempt at one callback delivery; short waits retry by countdown, long ones wait in
    Redis for the periodic round. Never changes the job."""
    outcome = events.deliver(runtime.deps(), delivery, _send_task)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
