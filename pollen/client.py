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

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from celery import Celery

from pollen import contract, producer, tracing
from pollen.errors import WaitTimeout
from pollen.models import Job, JobStatus
from pollen.producer import Cancellation, Flow, Send, Session, Submitted, producer_settings
from pollen.settings import Settings, load
from pollen.store import effects
from pollen.store.connection import master, open_store, producer_client
from pollen.store.listing import JobPage
from pollen.store.rejections import Rejection

__all__ = ["Cancellation", "Pollen", "Submitted"]

T = TypeVar("T")
#: longest blocking read of wait(), seconds
WAIT_SLICE = 5.0


class Pollen:
    """Submit jobs to pollen's workers and follow them (:class:`pollen.AsyncPollen` is the
    same client for asyncio; both run the operations of :mod:`pollen.producer`)."""

    def __init__(
        self, settings: Settings | None = None, *, redis_timeout: float | None = None
    ) -> None:
        """``redis_timeout`` (default ``settings.producer.redis_timeout``, 5 s): seconds a
        call keeps trying an unreachable Redis before it raises :class:`StoreUnavailable`."""
        self.settings = producer_settings(settings or load(), redis_timeout)
        self._session = Session(self.settings, tracing=tracing.of(self.settings))
        window = self.settings.producer.redis_timeout
        client = producer_client(self.settings.redis_url, window, master(self.settings))
        self._session.tracing.instrument(redis=client)  # the store's round trips, in a submit
        self.store, self.outbox = open_store(self.settings, client)
        self._session.replicas = self.store.replicas  # one count of replicas, one policy
        self._scripts = {**self.store.scripts, **self.outbox.scripts}
        self._celery: Celery | None = None

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = contract.producer_app(self.settings)
        return self._celery

    def _run(self, flow: Flow[T]) -> T:
        """Perform an operation's effects: Redis pipelines on this client's connection pool,
        Celery messages through its producer app."""
        with effects.guard():
            return producer.drive(flow, self._execute, self._send)

    def _execute(self, batch: effects.Batch) -> list[Any]:
        return effects.execute(self.store.redis, self._scripts, batch)

    def _send(self, message: Send) -> None:
        producer.publish(self.celery, message, self._session.tracing.headers())

    def submit(
        self,
        provider: str,
        request: Any,
        *,
        job_id: str | None = None,
        callback_url: str | None = None,
        callback_secret: str | None = None,
        events: list[str] | None = None,
        python_callback: dict[str, str] | None = None,
        poll: dict[str, float] | None = None,
        deadline: float | None = None,
        metadata: dict[str, str] | None = None,
        tenant: str | None = None,
        priority: int | None = None,
    ) -> str:
        """Enqueue a job and return its id; the same ``job_id`` twice is one job.

        ``request`` is the provider's request: a dict, or one of the typed models of
        :mod:`pollen.requests`. Raises :class:`pollen.errors.InvalidJob` (naming the bad
        field) before anything is stored or enqueued.
        """
        payload = producer.payload_of(
            provider, request, job_id=job_id, callback_url=callback_url,
            callback_secret=callback_secret, events=events, python_callback=python_callback,
            poll=poll, deadline=deadline, metadata=metadata, tenant=tenant, priority=priority,
        )  # fmt: skip
        return self.submit_payload(payload)

    def submit_payload(self, payload: dict[str, Any]) -> str:
        """Enqueue a job given as a JSON-shaped dict (the published job-request schema)."""
        with producer.submit_span(self._session, payload) as span:
            job_id = self._run(producer.submit(self._session, payload))
            span.set({tracing.JOB_ID: job_id})
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
        with producer.submit_many_span(self._session, len(items)):
            return self._run(producer.submit_many(self._session, items))

    def cancel(self, job_id: str, *, reason: str = "cancelled by the producer") -> Cancellation:
        """Cancel a job that has not finished yet.

        The job moves to ``cancelled`` at once (a terminal status, like the others: a job
        that finished first stays finished, and the answer says so); its polling stops at the
        next step and the results seen so far stay readable. A worker then asks the provider
        to cancel the task, where the provider documents a call for it (``Job.cancel_note``
        says what happened), and sends the ``completed`` callback once, with status
        ``cancelled``. Raises :class:`JobNotFound` for an unknown job.
        """
        return self._run(producer.cancel(self._session, job_id, reason))

    def jobs(
        self,
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
    ) -> JobPage:
        """List jobs, newest first (``oldest_first=True``: oldest first): one page and the
        cursor of the next.

        Every filter given must match: ``status`` and ``provider`` (one or several),
        ``metadata`` (each key equal), ``tenant`` (the job's tenant; ``"default"`` for jobs
        that named none), ``since``/``until`` (creation time, unix seconds or an
        aware datetime). ``cursor`` is the ``next_cursor`` of the previous page; pages never
        repeat or skip a job while jobs change state. Jobs leave the listing when their
        records expire (``POLLEN_JOB_TTL`` after they finish).
        """
        return self._run(
            producer.jobs(
                status=status, provider=provider, metadata=metadata, tenant=tenant,
                since=since, until=until, limit=limit, cursor=cursor, oldest_first=oldest_first,
            )
        )  # fmt: skip

    def status(self, job_id: str) -> JobStatus:
        """The job's current status."""
        return self.get(job_id).status

    def get(self, job_id: str) -> Job:
        """The whole job: status, results so far (partial results included), errors, timings.

        Raises :class:`JobNotFound`, or :class:`JobLost` when the store is known to have lost
        its data (Redis restarted without persistence): then the job may have been lost.
        """
        return self._run(producer.get(self._session, job_id))

    result = get

    def rejected(self, limit: int = 20) -> list[Rejection]:
        """The latest job payloads workers refused (sent by name, ``send_task``), newest
        first: each with its job id (where it named one), message id, reason and error."""
        return self._run(producer.rejected(limit))

    def store_status(self) -> dict[str, Any]:
        """The store's epoch marker and the last detected data loss (None if never)."""
        return self._run(producer.store_status())

    def callbacks(self, job_id: str) -> list[dict[str, Any]]:
        """The job's callback deliveries, each with its state and every attempt made."""
        return self._run(producer.callbacks(job_id))

    def replay_callbacks(
        self, job_id: str, *, delivery: str | None = None, everything: bool = False
    ) -> list[str]:
        """Send a job's dead or gone deliveries again (``everything``: also delivered ones).

        A replay keeps each delivery's ``webhook-id``, so receivers can tell it is the same
        event. Returns the replayed delivery ids.
        """
        return self._run(producer.replay_callbacks(self._session, job_id, delivery, everything))

    def task_details(self, job_id: str) -> dict[str, Any]:
        """The request pollen sent and the provider's latest response envelope (audit)."""
        return self._run(producer.task_details(job_id))

    def wait(
        self,
        job_id: str,
        timeout: float,
        *,
        on_change: Callable[[Job], None] | None = None,
    ) -> Job:
        """Block until the job ends (at most ``timeout`` seconds), without busy-polling.

        Listens to the job's events (Redis Pub/Sub) in slices of at most :data:`WAIT_SLICE`
        seconds (each read waits with its own timeout, not the client's socket timeout),
        reading the job after each event and each slice. So it returns, or raises
        :class:`WaitTimeout`, within about ``timeout`` seconds whatever the timeout.
        ``on_change`` is called with the job each time it is read, for progress displays.
        """
        deadline = time.monotonic() + timeout
        with self.store.listen(job_id) as next_event:
            while True:
                job = self.get(job_id)
                if on_change is not None:
                    on_change(job)
                if job.terminal:
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"job {job_id} is still {job.status.value} after {timeout:g}s"
                    )
                next_event(min(remaining, WAIT_SLICE))

    def close(self) -> None:
        self.store.close()
        if self._celery is not None:
            self._celery.close()

    def __enter__(self) -> Pollen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
