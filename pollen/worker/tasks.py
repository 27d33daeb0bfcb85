"""pollen's Celery tasks: thin wrappers that call one step and turn its answer into messages.

``pollen.submit``  validate + store the job (if it came as a payload), create the provider task
``pollen.poll``    poll a batch of jobs once; the jobs still running go on in batches grouped by
                  due time, one of them by ``self.retry(countdown=...)``
``pollen.deliver_callback``  POST the completion body to the job's callback URL
``pollen.cancel``  the follow-up of a cancel: the provider's cancel call, the callbacks
``pollen.copy_result``  copy one result's file to pollen's storage (re-hosting)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from celery import Task, current_app, shared_task
from celery.signals import (
    heartbeat_sent,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from pollen import contract, payloads, tracing
from pollen.errors import CallbackNotDelivered, InvalidJob, InvalidSettings
from pollen.providers import build_providers
from pollen.settings import get_settings
from pollen.worker import (
    admission,
    batch,
    cancels,
    claims,
    grouping,
    health,
    logs,
    periodic,
    planner,
    rehost,
    rejections,
    runtime,
    submits,
    traces,
)
from pollen.worker.deliveries import deliver

log = logging.getLogger(__name__)


@worker_init.connect
def _start_tracing(**_: Any) -> None:
    """Tracing on: OpenTelemetry's set-up, before the pool starts; a mistake in its variables
    stops the worker with one line naming the variable."""
    try:
        tracing.start_worker(get_settings())
    except InvalidSettings as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


@worker_process_init.connect
def _open_resources(**_: Any) -> None:
    runtime.deps()


@worker_ready.connect
def _warn_missing_credentials(**_: Any) -> None:
    """One warning per provider account this worker cannot call, at start: with other
    accounts that have a key it takes no job, else the provider's jobs fail at once."""
    for provider in build_providers(get_settings()).values():
        outcome = "that account takes no job" if provider.usable_accounts() else (
            "its jobs will fail")  # fmt: skip
        for variable in provider.missing_credentials():
            log.warning("%s: %s is not set; %s", provider.name, variable, outcome)


@setup_logging.connect
def _logging(**_: Any) -> None:
    """pollen's format (text or JSON) for every logger in the worker, Celery's included."""
    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)


@task_prerun.connect
def _bind_job(kwargs: dict[str, Any] | None = None, args: Any = (), **_: Any) -> None:
    kwargs = kwargs or {}
    logs.clear()
    items = kwargs.get("items")
    if isinstance(items, list) and len(items) == 1 and isinstance(items[0], list | tuple):
        kwargs = dict(zip(("job_id", "attempt"), items[0], strict=False))  # a batch of one
    elif isinstance(items, list):
        logs.bind(batch=len(items))
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


def _carry_out(deps: runtime.Deps, plan: planner.Plan, *, now: float) -> None:
    """Send the plan's poll messages and park its long waits in Redis (not its retry)."""
    for message in plan.send:
        periodic.send_batch(current_app, message.items, countdown=message.countdown(now))
    deps.store.schedule.park(plan.park)


def _send_deliveries(deliveries: Iterable[str]) -> None:
    for delivery in deliveries:
        deliver_callback.apply_async((delivery,))


def _deliver(deps: runtime.Deps, plan: planner.Plan) -> dict[str, int]:
    """Send the plan's queued callbacks, then deliver its inline ones from here, in order;
    what fails or waits goes on through the callbacks queue (same delivery id, same schedule).

    Bounded: once the attempts made here took longer than the plan's budget, the rest are
    sent to the callbacks queue, so a dead receiver cannot hold up the poll chain. Returns
    how many were delivered here and how many went on to the queue (the task's result).
    """
    _send_deliveries(plan.queue)
    counts = {"callbacks_delivered": 0, "callbacks_queued": len(plan.queue)}
    budget = time.monotonic() + plan.budget
    for index, ident in enumerate(plan.inline):
        outcome = None
        if time.monotonic() <= budget:
            try:
                outcome = deliver(deps, ident, _send_task, timeout=plan.inline_timeout)
            except Exception:  # Redis away, say: this one and the rest go through the queue
                log.exception("could not deliver callback %s here; it goes to the queue", ident)
        if outcome is None:
            _send_deliveries(plan.inline[index:])
            counts["callbacks_queued"] += len(plan.inline) - index
            break
        if outcome.state == "delivered":
            counts["callbacks_delivered"] += 1
        elif outcome.state == "pending" or outcome.retry_in is not None:
            counts["callbacks_queued"] += 1
        if outcome.retry_in is not None:
            deliver_callback.apply_async((ident,), countdown=outcome.retry_in)
    return {name: count for name, count in counts.items() if count}


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
    self: Task,
    job: dict[str, Any] | None = None,
    job_id: str | None = None,
    *,
    job_ids: list[str] | None = None,
    created: bool | None = None,
    wake: bool = False,
) -> dict[str, Any]:
    """Accept a job payload (``job=``; the new job joins the ready set, :func:`_made_ready`)
    or submit already stored jobs (``job_id=``, or many as ``job_ids=[...]`` from
    :meth:`pollen.Pollen.submit_many`); ``wake=True`` (from :meth:`pollen.Pollen.submit`, or a
    ``job=`` message) submits the jobs waiting in the ready set (:func:`_wake`).

    Answers ``{"job_id": ..., "created": ...}`` for one job (Flower shows it as the result):
    ``created`` is True when this message brought in a new job (it stored the payload, or its
    producer stored the job and this is the job's first submit), False for a duplicate (the
    id existed, or the job was already submitted). ``created`` itself is only passed by this
    task's own retries, which carry the first run's answer. A ``job_id`` with no job (never
    stored, or expired) is one WARNING line and ``{"job_id": ..., "missing": True}``. For
    ``job_ids``: ``{"jobs": n, "created": k}``; for ``wake``: ``{"ready": n}`` with the jobs
    it took, and ``jobs``/``created`` where it submitted them itself.
    """
    deps = runtime.deps()
    if wake:
        return _wake(self, deps)
    try:
        if job_ids is not None:
            return _submit_many(self, deps, _job_ids(job_ids))
        if job is not None:
            job_id, created, woken = payloads.accept_ready(
                deps.settings, deps.store, job, now=deps.clock(),
                default_id=payloads.message_job_id(str(self.request.id)),
                traceparent=deps.tracing.traceparent(),  # the sender's trace, if it sent one
                ready=not deps.capacity.capped(_provider_of(job)),
            )  # fmt: skip
            if woken is not None:  # ready: a wake submits it with the others of a burst
                return _made_ready(job_id, woken)
        job_id = _one_job_id(job_id)
    except InvalidJob as exc:  # never silent: logged, counted, kept, announced
        _send_deliveries(rejections.reject(deps, job, exc, str(self.request.id)))
        raise
    return _submit_one(self, deps, job_id, created)


def _submit_one(
    self: Task, deps: runtime.Deps, job_id: str, created: bool | None
) -> dict[str, Any]:
    """Submit one stored job now (a ``job_id=`` message, or a payload whose job existed)."""
    with traces.job_span(deps, "pollen.submit", [job_id]):
        outcome = submits.submit_batch(deps, [job_id])
    if outcome.missing:  # an expected outcome (its producer rolled it back, or it expired)
        log.warning("pollen.submit: job %s not found; its message is dropped", job_id)
        return {"job_id": job_id, "missing": True}
    if created is None:
        created = job_id in outcome.fresh
    if _parked(deps, outcome):
        return {"job_id": job_id, "created": created, "parked": outcome.retries[0][1]}
    if outcome.retries:
        raise self.retry(
            countdown=outcome.retries[0][1],
            kwargs={"job_id": job_id, "created": created},
            kwargsrepr=contract.describe(job_id, next(iter(outcome.providers), "")),
        )
    with deps.tracing.detached():
        _submitted(deps, outcome)
    if outcome.waiting:
        return {"job_id": job_id, "created": created, "waiting": outcome.waiting}
    return {"job_id": job_id, "created": created}


def _provider_of(payload: Any) -> str:
    """The provider a payload names, as far as it can be read before validation."""
    return str(payload.get("provider")) if isinstance(payload, dict) else ""


def _made_ready(job_id: str, wake: bool) -> dict[str, Any]:
    """A plain ``send_task`` job this message stored waits in the ready set like a
    ``Pollen.submit`` job (group commit): a burst of payloads costs one create request and one
    first-poll batch per ``POLLEN_BATCH_SIZE`` jobs, not one of each per job. The wake goes
    when none is on its way; a job whose wake is lost is sent by the periodic round. (A job of
    a capped provider is submitted by its own message, whose answer says ``waiting`` when
    every slot is held; a duplicate is submitted by its message too, if still queued.)"""
    if wake:
        try:
            submit.apply_async(
                kwargs={"wake": True}, kwargsrepr=f"{{wake, sent by job_id={job_id!r}}}",
                ignore_result=True,
            )  # fmt: skip
        except Exception:  # stored and ready: the periodic round sends it
            log.warning("could not send the wake for job %s; the periodic round sends it",
                        job_id, exc_info=True)  # fmt: skip
    return {"job_id": job_id, "created": True}


def _wake(self: Task, deps: runtime.Deps) -> dict[str, Any]:
    """Submit the ready jobs (group commit: ``Pollen.submit``'s and the plain ``send_task``
    payloads a worker stored): up to ``POLLEN_BATCH_SIZE`` of them, oldest first; when more
    are left another wake goes at once, and a job stored after the take that empties the set
    finds no wake mark and sends a new wake.

    On a Redis broker the take rewrites this message's claim to name the jobs taken, in the
    same step, so a worker that dies while submitting them leaves them to the reconciler like
    any held submit message. Elsewhere (RabbitMQ keeps no claims) the jobs go on as a batch
    message of their own."""
    now = deps.clock()
    claim = claims.current(self.request, now)
    # in this worker's hands until their submit could have run (as a held message's jobs)
    expect_by = now + deps.settings.task_time_limit + deps.settings.submit_grace
    # one provider request's worth (POLLEN_BATCH_SIZE): the next wake, sent at once when more
    # are left, takes the next ones on another thread, so a burst's creates go in parallel
    # and its first polls do not all land on one task's schedule
    limit = deps.settings.batch_size
    queue = deps.settings.queues.submit
    job_ids, left = deps.store.schedule.take_ready(queue, limit, expect_by, claim)
    if left:
        submit.apply_async(kwargs={"wake": True}, kwargsrepr="{wake, more}", ignore_result=True)
    if not job_ids:
        return {"ready": 0}
    if claim is None:
        periodic.send_submits(current_app, job_ids)
        return {"ready": len(job_ids)}
    return {"ready": len(job_ids), **_submit_many(self, deps, job_ids)}


def _one_job_id(job_id: Any) -> str:
    if job_id is None:
        raise InvalidJob("pollen.submit needs job= (a job payload), job_id= or job_ids=")
    if not isinstance(job_id, str):
        raise InvalidJob(f"pollen.submit: job_id must be a job id string, got {job_id!r}")
    return job_id


def _parked(deps: runtime.Deps, outcome: submits.SubmitNext) -> bool:
    """A single job's submit retry due past ``park_after`` waits in Redis (the periodic round
    sends it), not as a countdown held here; True when it was parked."""
    if not outcome.retries or outcome.retries[0][1] <= deps.settings.park_after:
        return False
    job_id, delay = outcome.retries[0]
    _submitted(deps, outcome)
    deps.store.schedule.park_submits([(job_id, deps.clock() + delay)])
    return True


def _submit_many(self: Task, deps: runtime.Deps, job_ids: list[str]) -> dict[str, Any]:
    with traces.job_span(deps, "pollen.submit", job_ids):
        outcome = submits.submit_batch(deps, job_ids)
    if outcome.missing:
        log.warning("pollen.submit: %d job(s) not found: %s", len(outcome.missing),
                    outcome.missing[:10])  # fmt: skip
    with deps.tracing.detached():
        _submitted(deps, outcome)
    answer = {"jobs": len(job_ids), "created": len(outcome.fresh)}
    if outcome.waiting:
        answer["waiting"] = outcome.waiting
    now = deps.clock()
    plan = planner.submit_retries(
        outcome.retries, now=now, max_size=contract.SUBMIT_BATCH_JOBS,
        park_after=deps.settings.park_after,
    )  # fmt: skip
    deps.store.schedule.park_submits([(job_id, due) for job_id, _, due in plan.park])
    if plan.retry is None:
        return answer
    for later in plan.send:
        submit.apply_async(
            kwargs={"job_ids": [j for j, _ in later.items]},
            countdown=later.countdown(now),
            kwargsrepr=contract.describe_batch(later.items),
        )
    raise self.retry(
        args=(),
        kwargs={"job_ids": [j for j, _ in plan.retry.items]},
        countdown=plan.retry.countdown(now),
        kwargsrepr=contract.describe_batch(plan.retry.items),
    )


def _submitted(deps: runtime.Deps, outcome: submits.SubmitNext) -> None:
    """Send the started events and the first polls of submitted jobs. A first poll due after
    the next periodic round waits in Redis: the round sends the first polls of every job
    submitted about then together, as batches (whichever message submitted them)."""
    now = deps.clock()
    limits = planner.Limits.of(deps.settings)
    plan = planner.plan(outcome.polls, outcome.deliveries, now=now, limits=limits, first=True)
    _deliver(deps, plan)  # all queued: a submit does not wait for receivers
    _carry_out(deps, plan, now=now)


def _job_ids(job_ids: Any) -> list[str]:
    if not isinstance(job_ids, list) or not all(isinstance(i, str) for i in job_ids):
        raise InvalidJob("pollen.submit: job_ids must be a list of job id strings")
    return job_ids


@shared_task(bind=True, name=contract.POLL, max_retries=None, throws=(InvalidJob,))
def poll(
    self: Task,
    job_id: str | None = None,
    attempt: int | None = None,
    *,
    items: list[list[Any]] | None = None,
) -> dict[str, int]:
    """Poll a batch of jobs once: ``items=[[job_id, attempt], ...]`` (or one job as
    ``job_id=, attempt=``). The jobs still running go on in batches grouped by their due
    times; one of those batches is this message's own countdown retry."""
    batch_items = _batch_items(job_id, attempt, items)
    deps = runtime.deps()
    outcome = batch.poll_batch(deps, batch_items)
    now = deps.clock()
    limits = planner.Limits.of(deps.settings)
    plan = planner.plan(outcome.polls, outcome.deliveries, now=now, limits=limits)
    # The next polls first: a slow receiver must not make the jobs still running late. Each
    # poll batch is a trace of its own (linked to its jobs'), not the next link of a chain.
    with deps.tracing.detached():
        _carry_out(deps, plan, now=now)
    for job_id_, generation in outcome.copies:
        copy_result.apply_async((job_id_, generation))
    if outcome.finished:  # their slots are free: admit the next jobs
        admission.pump(
            deps, outcome.providers, partial(periodic.send_submits, current_app), now=now
        )
    callbacks = _deliver(deps, plan)
    answer = {"jobs": len(batch_items), "finished": len(outcome.finished), **callbacks}
    if plan.retry is None:
        return answer
    with deps.tracing.detached():
        raise self.retry(
            args=(),
            kwargs={"items": [list(item) for item in plan.retry.items]},
            countdown=plan.retry.countdown(deps.clock()),  # after the inline deliveries
            kwargsrepr=contract.describe_batch(
                plan.retry.items, ",".join(sorted(outcome.providers))
            ),
        )


def _batch_items(
    job_id: str | None, attempt: int | None, items: list[list[Any]] | None
) -> list[grouping.Item]:
    """The (job id, attempt) pairs of a poll message, checked."""
    if items is None:
        if job_id is None or attempt is None:
            raise InvalidJob(
                "pollen.poll needs items=[[job_id, attempt], ...] or job_id=, attempt="
            )
        items = [[job_id, attempt]]
    pairs: list[grouping.Item] = []
    for item in items:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
        ):
            raise InvalidJob(f"pollen.poll: an item must be [job_id, attempt], got {item!r}")
        pairs.append((item[0], item[1]))
    return pairs


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
    outcome = deliver(runtime.deps(), delivery, _send_task)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    if outcome.state in ("pending", "dead", "gone"):
        raise CallbackNotDelivered(outcome.detail)
    return outcome.detail


@shared_task(name=contract.CANCEL)
def cancel(job_id: str) -> dict[str, Any]:
    """Follow up a cancel (:func:`pollen.worker.cancels.follow_up`): the job is already
    ``cancelled``; ask the provider to cancel its task and send the ``completed`` callback."""
    if not isinstance(job_id, str):
        raise InvalidJob(f"pollen.cancel: job_id must be a string, got {job_id!r}")
    deliveries = cancels.follow_up(runtime.deps(), job_id)
    _send_deliveries(deliveries)
    return {"job_id": job_id, "callbacks": len(deliveries)}


@shared_task(name=contract.COPY_RESULT, throws=(InvalidJob,))
def copy_result(job_id: str, generation: str) -> str:
    """One attempt at copying one result's file to storage (:func:`rehost.copy_result`).

    Its retries are not this message's: a failed attempt is due again in Redis and the
    periodic round sends a new message when it is due, so no wait is held in a worker.
    """
    if not isinstance(job_id, str) or not isinstance(generation, str):
        raise InvalidJob(
            f"pollen.copy_result: needs two id strings, got {job_id!r}, {generation!r}"
        )
    outcome = rehost.copy_result(runtime.deps(), job_id, generation)
    _send_deliveries(outcome.deliveries)
    return outcome.detail
