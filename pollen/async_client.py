"""The asyncio producer client: :class:`AsyncPollen`, the same surface as :class:`pollen.Pollen`.

    from pollen import AsyncPollen

    async with AsyncPollen() as pollen:
        job_id = await pollen.submit("runware", {"taskType": "videoInference", ...})
        job = await pollen.wait(job_id, timeout=600)

Every operation is the one :class:`pollen.Pollen` runs (:mod:`pollen.producer`); this module
only performs their effects on ``redis.asyncio`` (one connection pool per client). Celery has
no asyncio API, so a message is published from a worker thread (one short LPUSH).
:meth:`AsyncPollen.wait` awaits the job's events on Pub/Sub: no polling, no thread; it honours
its timeout, and a caller's cancellation (``asyncio.timeout``, ``task.cancel()``) unsubscribes
and gives the connection back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from celery import Celery
from kombu.exceptions import OperationalError

from pollen import contract, producer, tracing
from pollen.errors import StoreUnavailable, WaitTimeout
from pollen.models import Job, JobStatus
from pollen.producer import Cancellation, Flow, Send, Session, Submitted, producer_settings
from pollen.settings import Settings, load
from pollen.store import effects
from pollen.store.aio import AsyncStore
from pollen.store.connection import master
from pollen.store.listing import JobPage
from pollen.store.rejections import Rejection

T = TypeVar("T")
#: longest single wait for an event, seconds (each read has its own timeout)
WAIT_SLICE = 5.0


class AsyncPollen:
    """Submit jobs to pollen's workers and follow them, from asyncio code."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_timeout: float | None = None,
        publish_timeout: float | None = None,
    ) -> None:
        """``redis_timeout``: :meth:`pollen.Pollen`'s. ``publish_timeout``: a publish that
        has not gone within that many seconds raises StoreUnavailable (the ingress and the
        dashboard set it); None: a broker that never answers holds a publish."""
        self.settings = producer_settings(settings or load(), redis_timeout)
        self._session = Session(self.settings, tracing=tracing.of(self.settings))
        self.store = AsyncStore(
            self.settings.redis_url, self.settings.producer.redis_timeout, master(self.settings)
        )
        self._session.tracing.instrument(redis=self.store.redis)
        self.publish_timeout = publish_timeout
        self._celery: Celery | None = None

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = contract.producer_app(self.settings, timeout=self.publish_timeout)
        return self._celery

    async def _run(self, flow: Flow[T]) -> T:
        with effects.guard():
            return await producer.adrive(flow, self.store.execute, self.publish)

    async def publish(self, message: Send) -> None:
        """Publish one of pollen's Celery messages (kombu has no asyncio API: from a worker
        thread, which the publish timeout also bounds: :func:`pollen.contract.producer_app`)."""
        headers = self._session.tracing.headers()
        sending = asyncio.to_thread(producer.publish, self.celery, message, headers)
        if self.publish_timeout is None:
            await sending
            return
        try:
            async with asyncio.timeout(self.publish_timeout):
                await sending
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"the broker did not take the message within {self.publish_timeout:g}s"
            ) from exc
        except OperationalError as exc:  # refused, or kombu's own socket timeout
            raise StoreUnavailable(f"the broker is unreachable: {exc}") from exc

    async def submit(
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
        """:meth:`pollen.Pollen.submit`."""
        payload = producer.payload_of(
            provider, request, job_id=job_id, callback_url=callback_url,
            callback_secret=callback_secret, events=events, python_callback=python_callback,
            poll=poll, deadline=deadline, metadata=metadata, tenant=tenant, priority=priority,
        )  # fmt: skip
        return await self.submit_payload(payload)

    async def submit_payload(self, payload: dict[str, Any]) -> str:
        """:meth:`pollen.Pollen.submit_payload`."""
        with producer.submit_span(self._session, payload) as span:
            job_id = await self._run(producer.submit(self._session, payload))
            span.set({tracing.JOB_ID: job_id})
        return job_id

    async def submit_many(self, payloads: Iterable[dict[str, Any]]) -> Submitted:
        """:meth:`pollen.Pollen.submit_many`."""
        items = list(payloads)
        with producer.submit_many_span(self._session, len(items)):
            return await self._run(producer.submit_many(self._session, items))

    async def cancel(
        self, job_id: str, *, reason: str = "cancelled by the producer"
    ) -> Cancellation:
        """:meth:`pollen.Pollen.cancel`."""
        return await self._run(producer.cancel(self._session, job_id, reason))

    async def jobs(
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
        """:meth:`pollen.Pollen.jobs`."""
        return await self._run(
            producer.jobs(
                status=status, provider=provider, metadata=metadata, tenant=tenant,
                since=since, until=until, limit=limit, cursor=cursor, oldest_first=oldest_first,
            )
        )  # fmt: skip

    async def get(self, job_id: str) -> Job:
        """:meth:`pollen.Pollen.get`."""
        return await self._run(producer.get(self._session, job_id))

    result = get

    async def status(self, job_id: str) -> JobStatus:
        """The job's current status."""
        return (await self.get(job_id)).status

    async def rejected(self, limit: int = 20) -> list[Rejection]:
        """The latest job payloads workers refused (sent by name, ``send_task``), newest
        first: each with its job id (where it named one), message id, reason and error."""
        return await self._run(producer.rejected(limit))

    async def store_status(self) -> dict[str, Any]:
        """:meth:`pollen.Pollen.store_status`."""
        return await self._run(producer.store_status())

    async def callbacks(self, job_id: str) -> list[dict[str, Any]]:
        """:meth:`pollen.Pollen.callbacks`."""
        return await self._run(producer.callbacks(job_id))

    async def replay_callbacks(
        self, job_id: str, *, delivery: str | None = None, everything: bool = False
    ) -> list[str]:
        """:meth:`pollen.Pollen.replay_callbacks`."""
        return await self._run(
            producer.replay_callbacks(self._session, job_id, delivery, everything)
        )

    async def task_details(self, job_id: str) -> dict[str, Any]:
        """:meth:`pollen.Pollen.task_details`."""
        return await self._run(producer.task_details(job_id))

    async def wait(
        self,
        job_id: str,
        timeout: float,
        *,
        on_change: Callable[[Job], Any] | None = None,
    ) -> Job:
        """Wait until the job ends (at most ``timeout`` seconds) by awaiting its events on
        Redis Pub/Sub, reading the job after each; raises :class:`WaitTimeout` at
        ``timeout``. ``on_change`` (a function or a coroutine function) gets the job each time
        it is read. Cancelling the awaiting task unsubscribes and frees the connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.store.listen(job_id) as next_event:
            while True:
                job = await self.get(job_id)
                if on_change is not None:
                    called = on_change(job)
                    if asyncio.iscoroutine(called):
                        await called
                if job.terminal:
                    return job
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"job {job_id} is still {job.status.value} after {timeout:g}s"
                    )
                await next_event(min(remaining, WAIT_SLICE))

    async def aclose(self) -> None:
        """Close the Redis connections (and the Celery producer, if one was made)."""
        await self.store.aclose()
        if self._celery is not None:
            await asyncio.to_thread(self._celery.close)

    async def __aenter__(self) -> AsyncPollen:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
