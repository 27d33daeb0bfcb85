"""The producer client: enqueue jobs and read their state from any Python app.

    from pollen import Pollen

    pollen = Pollen()                      # settings from POLLEN_* environment variables
    job_id = pollen.submit("runware", {"taskType": "videoInference", "model": "...", ...})
    job = pollen.wait(job_id, timeout=600)
    print(job.status, [r.url for r in job.results])

The client validates the job, stores it (queued) and sends ``pollen.submit`` with only the job
id. It never imports the worker (:mod:`pollen.contract` is what both sides agree on).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery import Celery

from pollen import contract
from pollen.errors import InvalidJob, JobLost, JobNotFound, StoreUnavailable, WaitTimeout
from pollen.models import Job, JobStatus
from pollen.payloads import accept, accept_many
from pollen.providers import REGISTRY
from pollen.settings import Settings, get_settings
from pollen.store import durability, listing
from pollen.store.connection import open_store
from pollen.store.listing import JobPage

#: longest blocking read of wait(), seconds; shorter than the Redis client's socket timeout
WAIT_SLICE = 5.0


@dataclass(frozen=True)
class Submitted:
    """What :meth:`Pollen.submit_many` did with each job, in the order given."""

    job_ids: list[str | None]  #: the job's id, or None where the job was refused
    errors: dict[int, InvalidJob] = field(default_factory=dict)  #: index -> why refused

    @property
    def accepted(self) -> list[str]:
        """The ids of the jobs that were enqueued (or already existed with that request)."""
        return [job_id for job_id in self.job_ids if job_id is not None]


@dataclass(frozen=True)
class Cancellation:
    """What :meth:`Pollen.cancel` did."""

    job: Job  #: the job after the call: ``cancelled``, or the status it had already ended in
    cancelled: bool  #: False when the job had already finished (nothing changed)

    @property
    def message(self) -> str:
        if self.cancelled:
            return f"job {self.job.id} cancelled"
        return f"job {self.job.id} had already finished ({self.job.status.value}): nothing to do"


def _choices(name: str, given: str | Iterable[str] | None, known: list[str]) -> list[str]:
    """The values of a listing filter (all of ``known`` when not given), each checked."""
    chosen = known if given is None else [given] if isinstance(given, str) else list(given)
    unknown = [str(value) for value in chosen if str(value) not in known]
    if unknown:
        raise InvalidJob(f"unknown {name} {', '.join(unknown)!s} (one of {', '.join(known)})")
    return [str(value) for value in chosen]


def _timestamp(value: float | datetime | None) -> float | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidJob("since/until: give an aware datetime (with a timezone)")
        return value.timestamp()
    return value


class Pollen:
    """Submit jobs to pollen's workers and follow them."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.store, self.outbox = open_store(self.settings)
        self._epoch: str | None = None  #: the store's epoch marker when this client submitted
        self._celery: Celery | None = None

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = contract.producer_app(self.settings)
        return self._celery

    def submit(
        self,
        provider: str,
        request: dict[str, Any],
        *,
        job_id: str | None = None,
        callback_url: str | None = None,
        callback_secret: str | None = None,
        events: list[str] | None = None,
        python_callback: dict[str, str] | None = None,
        poll: dict[str, float] | None = None,
        deadline: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Enqueue a job and return its id; the same ``job_id`` twice is one job.

        Raises :class:`pollen.errors.InvalidJob` (naming the bad field) before anything is
        stored or enqueued.
        """
        payload: dict[str, Any] = {"provider": provider, "request": request}
        optional = {
            "job_id": job_id,
            "callback_url": callback_url,
            "callback_secret": callback_secret,
            "events": events,
            "python_callback": python_callback,
            "poll": poll,
            "deadline": deadline,
            "metadata": metadata,
        }
        payload |= {k: v for k, v in optional.items() if v is not None}
        return self.submit_payload(payload)

    def submit_payload(self, payload: dict[str, Any]) -> str:
        """Enqueue a job given as a JSON-shaped dict (the published job-request schema)."""
        job_id, created = accept(self.settings, self.store, payload, now=time.time())
        if self._epoch is None:
            self._epoch = durability.ensure_epoch(self.store)
        if created:
            try:
                self.celery.send_task(
                    contract.SUBMIT,
                    kwargs={"job_id": job_id},
                    queue=self.settings.queues.submit,
                    kwargsrepr=contract.describe(job_id),
                    # No result to wait for: skips the result backend's per-message subscribe.
                    ignore_result=True,
                )
            except Exception as exc:
                self.store.rollback_create(job_id)
                raise StoreUnavailable(f"could not enqueue job {job_id}: {exc}") from exc
        return job_id

    def submit_many(self, payloads: Iterable[dict[str, Any]]) -> Submitted:
        """Enqueue many jobs (each a dict of the job-request schema, as for
        :meth:`submit_payload`) with one store round trip and one message per
        :data:`pollen.contract.SUBMIT_BATCH_JOBS` jobs (per ``POLLEN_BATCH_SIZE`` jobs for a
        provider without task arrays).

        Each job is validated on its own: a bad one is refused (its index and the reason in
        :attr:`Submitted.errors`) and the others go ahead. The workers submit the jobs of one
        message together (Runware: one request per ``POLLEN_BATCH_SIZE`` tasks), and their
        first polls travel as batches.
        """
        items = list(payloads)
        answers = accept_many(self.settings, self.store, items, now=time.time())
        if self._epoch is None:
            self._epoch = durability.ensure_epoch(self.store)
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
            for size in [self._message_size(provider)]
            for start in range(0, len(jobs), size)
        ]
        fresh = [job_id for chunk in chunks for job_id in chunk]
        start = 0  # jobs enqueued so far
        for chunk in chunks:
            try:
                self.celery.send_task(
                    contract.SUBMIT,
                    kwargs={"job_ids": chunk},
                    queue=self.settings.queues.submit,
                    kwargsrepr=contract.describe_batch([(i, 0) for i in chunk]),
                    ignore_result=True,
                )
            except Exception as exc:
                unsent = fresh[start:]
                self.store.rollback_many(unsent)
                raise StoreUnavailable(
                    f"could not enqueue {len(unsent)} of {len(items)} jobs (not stored; the "
                    f"first {start} were enqueued): {exc}"
                ) from exc
            start += len(chunk)
        return Submitted(job_ids, errors)

    def _message_size(self, provider: str) -> int:
        """Jobs per submit message: many for a provider that takes task arrays (one request per
        ``POLLEN_BATCH_SIZE``), one batch for the others, whose tasks are created one request
        each, so a message stays well inside the task time limit."""
        batches = REGISTRY[provider].supports_batching
        return contract.SUBMIT_BATCH_JOBS if batches else self.settings.batch_size

    def cancel(self, job_id: str, *, reason: str = "cancelled by the producer") -> Cancellation:
        """Cancel a job that has not finished yet.

        The job moves to ``cancelled`` at once (a terminal status, like the others: a job
        that finished first stays finished, and the answer says so); its polling stops at the
        next step and the results seen so far stay readable. A worker then asks the provider
        to cancel the task, where the provider documents a call for it (``Job.cancel_note``
        says what happened), and sends the ``completed`` callback once, with status
        ``cancelled``. Raises :class:`JobNotFound` for an unknown job.
        """
        cancelled, _ = self.store.cancel(job_id, reason, now=time.time())
        if cancelled:
            self._follow_up(job_id)
        return Cancellation(self.get(job_id), cancelled)

    def _follow_up(self, job_id: str) -> None:
        """Send the cancel's follow-up; if the broker is away, the reconciler sends it later
        (the job stays on the store's follow-up list until a worker has done it)."""
        with contextlib.suppress(Exception):
            self.celery.send_task(
                contract.CANCEL,
                kwargs={"job_id": job_id},
                queue=self.settings.queues.callbacks,
                kwargsrepr=contract.describe(job_id),
                ignore_result=True,
            )

    def jobs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        provider: str | Iterable[str] | None = None,
        metadata: dict[str, str] | None = None,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """List jobs, newest first: one page and the cursor of the next.

        Every filter given must match: ``status`` and ``provider`` (one or several),
        ``metadata`` (each key equal), ``since``/``until`` (creation time, unix seconds or an
        aware datetime). ``cursor`` is the ``next_cursor`` of the previous page; pages never
        repeat or skip a job while jobs change state. Jobs leave the listing when their
        records expire (``POLLEN_JOB_TTL`` after they finish).
        """
        return self.store.run(
            listing.query(
                statuses=_choices("status", status, [s.value for s in JobStatus]),
                providers=_choices("provider", provider, sorted(REGISTRY)),
                since=_timestamp(since),
                until=_timestamp(until),
                metadata=metadata,
                limit=limit,
                cursor=cursor,
            )
        )

    def status(self, job_id: str) -> JobStatus:
        """The job's current status."""
        return self.get(job_id).status

    def get(self, job_id: str) -> Job:
        """The whole job: status, results so far (partial results included), errors, timings.

        Raises :class:`JobNotFound`, or :class:`JobLost` when the store is known to have lost
        its data (Redis restarted without persistence): then the job may have been lost.
        """
        try:
            return self.store.get(job_id)
        except JobNotFound:
            if self._epoch is not None:  # the store this client submitted to may be gone
                self._epoch, _ = durability.check(self.store, self._epoch)
            loss = durability.status(self.store)["data_loss"]
            if loss:
                when = time.strftime(
                    "%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(loss["detected_at"]))
                )
                raise JobLost(
                    job_id, f"the job store lost its data (detected {when}); it may be lost"
                ) from None
            raise

    def store_status(self) -> dict[str, Any]:
        """The store's epoch marker and the last detected data loss (None if never)."""
        return durability.status(self.store)

    result = get

    def callbacks(self, job_id: str) -> list[dict[str, Any]]:
        """The job's callback deliveries, each with its state and every attempt made."""
        self.store.raw(job_id)  # JobNotFound for an unknown job
        attempts = self.outbox.attempts(job_id)
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
            for d in self.outbox.for_job(job_id)
        ]

    def replay_callbacks(
        self, job_id: str, *, delivery: str | None = None, everything: bool = False
    ) -> list[str]:
        """Send a job's dead or gone deliveries again (``everything``: also delivered ones).

        A replay keeps each delivery's ``webhook-id``, so receivers can tell it is the same
        event. Returns the replayed delivery ids.
        """
        self.store.raw(job_id)  # JobNotFound for an unknown job
        chosen = [
            d
            for d in self.outbox.for_job(job_id)
            if (delivery is None or d.id == delivery)
            and (everything or delivery is not None or d.state in ("dead", "gone"))
        ]
        now = time.time()
        for item in chosen:
            gone = item.target if item.state == "gone" else None
            self.outbox.replay(item.id, now=now, url=gone)
            self.celery.send_task(
                contract.DELIVER_CALLBACK,
                args=(item.id,),
                queue=self.settings.queues.callbacks,
                ignore_result=True,
            )
        return [item.id for item in chosen]

    def task_details(self, job_id: str) -> dict[str, Any]:
        """The request pollen sent and the provider's latest response envelope (audit)."""
        return self.store.task_details(job_id)

    def wait(
        self,
        job_id: str,
        timeout: float,
        *,
        on_change: Callable[[Job], None] | None = None,
    ) -> Job:
        """Block until the job ends (at most ``timeout`` seconds), without busy-polling.

        Listens to the job's events (Redis Pub/Sub) in slices of at most :data:`WAIT_SLICE`
        seconds (and a third of the Redis client's socket timeout, which a longer blocking
        read would run into), reading the job after each event and each slice. So it returns,
        or raises :class:`WaitTimeout`, within about ``timeout`` seconds whatever the timeout.
        ``on_change`` is called with the job each time it is read, for progress displays.
        """
        deadline = time.monotonic() + timeout
        socket_timeout = self.store.redis.connection_pool.connection_kwargs.get("socket_timeout")
        longest = min(WAIT_SLICE, float(socket_timeout) / 3) if socket_timeout else WAIT_SLICE
        with self.store.listen(job_id) as next_event:
            while True:
                job = self.store.get(job_id)
                if on_change is not None:
                    on_change(job)
                if job.terminal:
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"job {job_id} is still {job.status.value} after {timeout:g}s"
                    )
                next_event(min(remaining, longest))

    def close(self) -> None:
        self.store.close()
        if self._celery is not None:
            self._celery.close()

    def __enter__(self) -> Pollen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
