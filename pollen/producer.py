"""What a producer client does, written once for :class:`pollen.Pollen` and
:class:`pollen.AsyncPollen`.

Each operation here is a generator with no I/O. It yields *effects* and receives their
outcomes: a :data:`~pollen.store.effects.Batch` of Redis commands (one pipeline round trip; the
replies come back) or a :class:`Send` (one Celery message; None comes back, or the publish
error is thrown in). The two clients are thin faces that perform the effects, one with
``redis.Redis`` and Celery, the other with ``redis.asyncio`` (and Celery's publish in a
worker thread, as kombu has no asyncio API). Validation, idempotency, rollback of jobs whose
message could not be sent, data-loss detection, cancel and listing are therefore the same
code on both sides.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pollen import contract, tracing
from pollen.errors import InvalidJob, JobLost, JobNotFound, JobRejected, StoreUnavailable
from pollen.models import DEFAULT_TENANT, Job, JobStatus
from pollen.payloads import accept_many_op, accept_ready_op
from pollen.providers import REGISTRY
from pollen.settings import ProducerSettings, Settings
from pollen.store import durability, keys, lifecycle, listing, outbox, rejections, replication
from pollen.store.effects import Batch, cmd
from pollen.store.listing import JobPage
from pollen.tracing import OFF, Tracing

if TYPE_CHECKING:
    from celery import Celery

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Send:
    """Publish one Celery message of pollen's (by name: producers never import the worker)."""

    name: str
    queue: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: tuple[Any, ...] = ()
    kwargsrepr: str | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``Celery.send_task``."""
        return {
            "args": self.args,
            "kwargs": self.kwargs,
            "queue": self.queue,
            "kwargsrepr": self.kwargsrepr,
            # No result to wait for: skips the result backend's per-message subscribe.
            "ignore_result": True,
        }


class _Receipt:
    """What ``send_task`` hands back to :func:`publish`: the message's id. Celery builds it
    right after the publish, so having one means the message was sent. (Celery's own
    ``AsyncResult`` would load the result backend, which a producer never reads: a
    misconfigured one failed every submit *after* its message had gone out.)"""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


def publish(app: Celery, message: Send, headers: dict[str, str] | None = None) -> None:
    """Send one message (``headers``: the trace context, tracing on); raises only when it
    was not sent.

    An error that comes once the message is out (the broker has it, a worker will run it) is
    logged at WARNING and swallowed: the caller's job exists and will run, so rolling it back
    or reporting "could not enqueue" would be false.
    """
    receipts: list[_Receipt] = []

    def receipt(task_id: str) -> _Receipt:
        receipts.append(_Receipt(task_id))
        return receipts[-1]

    try:
        app.send_task(message.name, result_cls=receipt, headers=headers, **message.options())
    except Exception as exc:
        if not receipts:
            raise
        log.warning(
            "%s %s was sent (message %s); an error came after the publish: %s: %s",
            message.name, message.kwargsrepr or "", receipts[0].id, type(exc).__name__, exc,
        )  # fmt: skip


Effect = Batch | Send
#: a producer operation: yields effects, receives their outcomes, returns its answer
Flow = Generator[Effect, Any, T]


def drive(flow: Flow[T], execute: Callable[[Batch], list[Any]], send: Callable[[Send], None]) -> T:
    """Run ``flow``, performing its effects with ``execute`` (a batch of Redis commands) and
    ``send`` (a Celery message: :func:`publish`, which raises only when the message was not
    sent); an effect's error is thrown into the flow."""
    outcome: Any = None
    error: BaseException | None = None
    try:
        while True:
            effect = flow.throw(error) if error is not None else flow.send(outcome)
            error = None
            try:
                if isinstance(effect, Send):
                    send(effect)
                    outcome = None
                else:
                    outcome = execute(effect)
            except Exception as exc:
                error = exc
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adrive(
    flow: Flow[T],
    execute: Callable[[Batch], Awaitable[list[Any]]],
    send: Callable[[Send], Awaitable[None]],
) -> T:
    """:func:`drive` with awaitable effects (the asyncio client)."""
    outcome: Any = None
    error: BaseException | None = None
    try:
        while True:
            effect = flow.throw(error) if error is not None else flow.send(outcome)
            error = None
            try:
                if isinstance(effect, Send):
                    await send(effect)
                    outcome = None
                else:
                    outcome = await execute(effect)
            except Exception as exc:
                error = exc
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


@dataclass
class Session:
    """What a client remembers between calls."""

    settings: Settings
    epoch: str | None = None  #: the store's epoch marker when this client first submitted
    tracing: Tracing = OFF  #: the client's spans (``POLLEN_TRACING``)
    #: the replicas a create waits for (``POLLEN_REPLICA_ACKS``), with the count ``auto`` read
    replicas: replication.Replicas = field(init=False)

    def __post_init__(self) -> None:
        self.replicas = replication.of(self.settings)


@dataclass(frozen=True)
class Submitted:
    """What ``submit_many`` did with each job, in the order given."""

    job_ids: list[str | None]  #: the job's id, or None where the job was refused
    errors: dict[int, InvalidJob] = field(default_factory=dict)  #: index -> why refused

    @property
    def accepted(self) -> list[str]:
        """The ids of the jobs that were enqueued (or already existed with that request)."""
        return [job_id for job_id in self.job_ids if job_id is not None]


@dataclass(frozen=True)
class Cancellation:
    """What ``cancel`` did."""

    job: Job  #: the job after the call: ``cancelled``, or the status it had already ended in
    cancelled: bool  #: False when the job had already finished (nothing changed)

    @property
    def message(self) -> str:
        if self.cancelled:
            return f"job {self.job.id} cancelled"
        return f"job {self.job.id} had already finished ({self.job.status.value}): nothing to do"


def producer_settings(settings: Settings, redis_timeout: float | None) -> Settings:
    """``settings`` with the client's ``redis_timeout`` argument, if given (checked as the
    ``POLLEN_PRODUCER__REDIS_TIMEOUT`` setting is)."""
    if redis_timeout is None:
        return settings
    producer = ProducerSettings(redis_timeout=redis_timeout)
    return settings.model_copy(update={"producer": producer})


def payload_of(provider: str, request: Any, **optional: Any) -> dict[str, Any]:
    """The job payload of ``submit(provider, request, ...)``: the options given, no Nones.
    ``request`` may be a dict or a typed request model (``pollen.requests``)."""
    body = (
        request.model_dump(mode="json", exclude_none=True)
        if hasattr(request, "model_dump")
        else request
    )
    payload: dict[str, Any] = {"provider": provider, "request": body}
    return payload | {k: v for k, v in optional.items() if v is not None}


def _remember_epoch(session: Session) -> Flow[None]:
    if session.epoch is None:
        session.epoch = yield from durability.epoch(durability.marker())


def submit(session: Session, payload: dict[str, Any]) -> Flow[str]:
    """Store one job, ready for its submit (group commit): the job joins the ready set, and
    when no wake message is on its way this call sends one (``pollen.submit(wake=True)``); the
    worker that takes it submits up to ``POLLEN_BATCH_SIZE`` ready jobs and sends the next
    wake if more are left. Under a burst, one message serves up to that many jobs; alone, a
    job costs one message as before.

    The job is removed again if its wake message was not sent (a Send raises only then, see
    :func:`publish`). A job that rode on a wake that failed is sent by the workers' periodic
    round."""
    settings = session.settings
    traceparent = session.tracing.traceparent()
    job_id, _, wake = yield from accept_ready_op(
        settings, payload, session.replicas, now=time.time(), traceparent=traceparent
    )
    yield from _remember_epoch(session)
    if wake:
        try:
            yield Send(
                contract.SUBMIT,
                settings.queues.submit,
                kwargs={"wake": True},
                kwargsrepr=f"{{wake, sent by job_id={job_id!r}}}",  # the first of its jobs
            )
        except Exception as exc:
            yield from lifecycle.rollback_many([job_id], unwake=settings.queues.submit)
            raise StoreUnavailable(f"could not enqueue job {job_id}: {exc}") from exc
    return job_id


def submit_many(session: Session, payloads: Iterable[dict[str, Any]]) -> Flow[Submitted]:
    """Store many jobs in one round trip and send one message per chunk of jobs."""
    settings = session.settings
    items = list(payloads)
    traceparent = session.tracing.traceparent()
    answers = yield from accept_many_op(
        settings, items, session.replicas, now=time.time(), traceparent=traceparent
    )
    yield from _remember_epoch(session)
    job_ids: list[str | None] = []
    errors: dict[int, InvalidJob] = {}
    by_provider: dict[str, list[str]] = {}
    for index, answer in enumerate(answers):
        if isinstance(answer, InvalidJob):
            errors[index] = answer
            job_ids.append(None)
            continue
        job_ids.append(answer[0])
        if answer[1]:
            by_provider.setdefault(str(items[index]["provider"]), []).append(answer[0])
    chunks = [
        jobs[start : start + size]
        for provider, jobs in by_provider.items()
        for size in [message_size(settings, provider)]
        for start in range(0, len(jobs), size)
    ]
    fresh = [job_id for chunk in chunks for job_id in chunk]
    sent = 0  # jobs enqueued so far
    for chunk in chunks:
        try:
            yield Send(
                contract.SUBMIT,
                settings.queues.submit,
                kwargs={"job_ids": chunk},
                kwargsrepr=contract.describe_batch([(i, 0) for i in chunk]),
            )
        except Exception as exc:
            unsent = fresh[sent:]
            yield from lifecycle.rollback_many(unsent)
            raise StoreUnavailable(
                f"could not enqueue {len(unsent)} of {len(items)} jobs (not stored; the "
                f"first {sent} were enqueued): {exc}"
            ) from exc
        sent += len(chunk)
    return Submitted(job_ids, errors)


def submit_span(session: Session, payload: Any) -> AbstractContextManager[tracing.Span]:
    """The producer's span of one submit (tracing on): the job's trace starts here, under
    the caller's current span if there is one. The worker's steps continue it."""
    given = payload if isinstance(payload, dict) else {}
    attributes = {
        tracing.PROVIDER: str(given.get("provider", "")),
        tracing.TENANT: str(given.get("tenant") or DEFAULT_TENANT),
    }
    if given.get("job_id"):
        attributes[tracing.JOB_ID] = str(given["job_id"])
    return session.tracing.span("pollen.submit", attributes=attributes, producer=True)


def submit_many_span(session: Session, jobs: int) -> AbstractContextManager[tracing.Span]:
    """The producer's span of one ``submit_many``: every job of the call is in its trace."""
    return session.tracing.span("pollen.submit_many", attributes={tracing.JOBS: jobs},
                                producer=True)  # fmt: skip


def message_size(settings: Settings, provider: str) -> int:
    """Jobs per submit message: many for a provider that takes task arrays (one request per
    ``POLLEN_BATCH_SIZE``), one batch for the others, whose tasks are created one request
    each, so a message stays well inside the task time limit."""
    batches = REGISTRY[provider].supports_batching
    return contract.SUBMIT_BATCH_JOBS if batches else settings.batch_size


def get(session: Session, job_id: str) -> Flow[Job]:
    """The whole job; :class:`JobNotFound`, :class:`JobRejected` when a worker refused the
    payload that named it, or :class:`JobLost` when the store is known to have lost its data
    (then the job may have been lost)."""
    [job] = yield from lifecycle.jobs_with_results([job_id])
    if job is not None:
        return job
    refused = yield from rejections.find(job_id)
    if refused is not None:
        raise JobRejected(job_id, refused.reason, refused.error)
    if session.epoch is not None:  # the store this client submitted to may be gone
        now = time.time()
        current, lost = yield from durability.check_epoch(
            session.epoch, durability.marker(now), now
        )
        if lost:
            durability.log_loss(session.epoch, current)
        session.epoch = current
    status = yield from durability.store_status()
    loss = status["data_loss"]
    if loss:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(loss["detected_at"])))
        raise JobLost(job_id, f"the job store lost its data (detected {when}); it may be lost")
    raise JobNotFound(job_id)


def cancel(session: Session, job_id: str, reason: str) -> Flow[Cancellation]:
    """Cancel a job that has not finished (see ``Pollen.cancel``)."""
    settings = session.settings
    moved, _ = yield from lifecycle.cancel(
        job_id,
        reason,
        now=time.time(),
        finished_ttl=settings.job_ttl,
        grace=settings.reconcile_grace,
    )
    if moved == -1:
        raise JobNotFound(job_id)
    if moved == 1:
        # the follow-up (the provider's cancel call, the callback) is a worker's; if the
        # broker is away, the reconciler sends it later
        with contextlib.suppress(Exception):
            yield Send(
                contract.CANCEL,
                settings.queues.callbacks,
                kwargs={"job_id": job_id},
                kwargsrepr=contract.describe(job_id),
            )
    job = yield from get(session, job_id)
    return Cancellation(job, moved == 1)


def jobs(
    *,
    status: str | Iterable[str] | None = None,
    provider: str | Iterable[str] | None = None,
    metadata: dict[str, str] | None = None,
    tenant: str | None = None,
    since: float | datetime | None = None,
    until: float | datetime | None = None,
    limit: int = 20,
    cursor: str | None = None,
    oldest_first: bool = False,
) -> Flow[JobPage]:
    """One page of jobs, newest (or oldest) first (see ``Pollen.jobs``)."""
    page = yield from listing.query(
        statuses=_choices("status", status, [s.value for s in JobStatus]),
        providers=_choices("provider", provider, sorted(REGISTRY)),
        since=_timestamp(since),
        until=_timestamp(until),
        metadata=metadata,
        tenant=tenant,
        limit=limit,
        cursor=cursor,
        oldest_first=oldest_first,
    )
    return page


def _choices(name: str, given: str | Iterable[str] | None, known: Sequence[str]) -> list[str]:
    """The values of a listing filter (all of ``known`` when not given), each checked."""
    chosen = list(known) if given is None else [given] if isinstance(given, str) else list(given)
    unknown = [str(value) for value in chosen if str(value) not in known]
    if unknown:
        raise InvalidJob(f"unknown {name} {', '.join(unknown)} (one of {', '.join(known)})")
    return [str(value) for value in chosen]


def _timestamp(value: float | datetime | None) -> float | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidJob("since/until: give an aware datetime (with a timezone)")
        return value.timestamp()
    return value


def _known(job_id: str) -> Flow[None]:
    """JobNotFound unless the job exists (or a refusal of a payload with its id is kept: its
    ``job.rejected`` callback is the job's delivery)."""
    [exists] = yield [cmd("exists", keys.job(job_id), keys.rejected(job_id))]
    if not exists:
        raise JobNotFound(job_id)


def rejected(limit: int) -> Flow[list[rejections.Rejection]]:
    """The latest ``pollen.submit`` payloads workers refused, newest first."""
    if not 1 <= limit <= keys.REJECTED_KEEP:
        raise InvalidJob(f"limit: give 1 to {keys.REJECTED_KEEP}, got {limit}")
    latest = yield from rejections.latest(limit)
    return latest


def callbacks(job_id: str) -> Flow[list[dict[str, Any]]]:
    """The job's callback deliveries, each with its state and every attempt made."""
    yield from _known(job_id)
    records, attempts = yield from outbox.for_job(job_id)
    return [
        {
            "webhook_id": d.id,
            "event": d.event,
            "kind": d.kind,
            "target": d.target,
            "state": d.state,
            "attempts": [a for a in attempts if a.get("delivery") == d.id],
            "next_at": d.next_at,
            "replays": d.replays,
        }
        for d in map(outbox.Delivery.from_fields, records)
    ]


def replay_callbacks(
    session: Session, job_id: str, delivery: str | None, everything: bool
) -> Flow[list[str]]:
    """Send a job's dead or gone deliveries again (see ``Pollen.replay_callbacks``)."""
    yield from _known(job_id)
    records, _ = yield from outbox.for_job(job_id, attempts=False)
    chosen = [
        d
        for d in map(outbox.Delivery.from_fields, records)
        if (delivery is None or d.id == delivery)
        and (everything or delivery is not None or d.state in ("dead", "gone"))
    ]
    now = time.time()
    for item in chosen:
        gone = item.target if item.state == "gone" else None
        yield from outbox.replay(item.id, gone, now=now)
        yield Send(contract.DELIVER_CALLBACK, session.settings.queues.callbacks, args=(item.id,))
    return [item.id for item in chosen]


def task_details(job_id: str) -> Flow[dict[str, Any]]:
    """The request pollen sent and the provider's latest response envelope (audit)."""
    details = yield from lifecycle.task_details(job_id)
    if details is None:
        raise JobNotFound(job_id)
    return details


def store_status() -> Flow[dict[str, Any]]:
    """The store's epoch marker and the last detected data loss (None if never)."""
    status = yield from durability.store_status()
    return status
