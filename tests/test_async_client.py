"""AsyncPollen on the real parts: an asyncio producer (one event loop, many jobs at once)
against the session's Redis, worker and simulator; waits that honour their timeouts and leave
no connection behind when the caller cancels them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from pollen import AsyncPollen, InvalidJob, JobNotFound, JobRejected, JobStatus, WaitTimeout
from pollen.async_client import WAIT_SLICE
from pollen.local.servers import CallbackReceiver, RedisServer, Worker
from pollen.settings import Settings
from tests.conftest import STORE_DB
from tests.helpers import sim_stats, video_request
from tests.test_wait import unsent_job

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def apollen(settings: Settings, clean: None) -> AsyncIterator[AsyncPollen]:
    async with AsyncPollen(settings) as client:
        yield client


def _pubsub_clients(redis_server: RedisServer) -> int:
    """Connections subscribed to something, as Redis itself counts them."""
    client = redis.Redis.from_url(redis_server.url(STORE_DB))
    try:
        return len(client.client_list(_type="pubsub"))
    finally:
        client.close()


async def test_many_jobs_from_one_event_loop(
    worker: Worker, apollen: AsyncPollen, simulator: Any
) -> None:
    async def one(index: int) -> JobStatus:
        job_id = await apollen.submit(
            "runware", video_request([0.2 + 0.05 * (index % 5)]), metadata={"n": str(index)}
        )
        job = await apollen.wait(job_id, timeout=30)
        assert job.results and (await apollen.status(job_id)) is JobStatus.SUCCEEDED
        return job.status

    statuses = await asyncio.gather(*(one(i) for i in range(30)))
    assert statuses == [JobStatus.SUCCEEDED] * 30
    page = await apollen.jobs(status="succeeded", metadata={"n": "7"})
    assert [job.metadata["n"] for job in page.jobs] == ["7"]
    everything = await apollen.jobs(limit=1000)
    assert len(everything.jobs) == 30 and everything.next_cursor is None
    assert sim_stats(simulator.url)["created"] == 30


async def test_submit_many_cancel_and_callbacks(
    worker: Worker, apollen: AsyncPollen, receiver: CallbackReceiver
) -> None:
    hook = f"{receiver.url}/async"
    payloads = [
        {"provider": "runware", "request": video_request([0.2]), "callback_url": hook},
        {"provider": "runware", "request": video_request([30.0]), "callback_url": hook},
        {"provider": "runware", "request": {"taskType": "videoInference"}},  # no model
    ]
    batch = await apollen.submit_many(payloads)
    assert list(batch.errors) == [2] and len(batch.accepted) == 2
    quick, slow = batch.accepted
    assert (await apollen.wait(quick, timeout=30)).status is JobStatus.SUCCEEDED
    cancelled = await apollen.cancel(slow, reason="async test")
    assert cancelled.cancelled and cancelled.job.status is JobStatus.CANCELLED
    again = await apollen.cancel(quick)
    assert not again.cancelled and again.job.status is JobStatus.SUCCEEDED
    with pytest.raises(JobNotFound):
        await apollen.cancel("no-such-job")
    for _ in range(200):  # the cancel's callback comes from the worker
        deliveries = await apollen.callbacks(slow)
        if deliveries and deliveries[0]["state"] == "delivered":
            break
        await asyncio.sleep(0.05)
    assert [d["event"] for d in deliveries] == ["completed"]
    assert deliveries[0]["state"] == "delivered" and deliveries[0]["attempts"]
    assert await apollen.replay_callbacks(slow, everything=True) == [deliveries[0]["webhook_id"]]
    details = await apollen.task_details(quick)
    assert details["taskType"] == "getTaskDetails" and details["request"]


@pytest.mark.parametrize("timeout", [0.5, WAIT_SLICE + 1.5])  # within one slice, and past it
async def test_wait_raises_wait_timeout_in_time(
    apollen: AsyncPollen, deps: Any, timeout: float
) -> None:
    job_id = unsent_job(deps)  # no worker moves it
    reads: list[float] = []
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=f"still queued after {timeout:g}s"):
        await apollen.wait(job_id, timeout, on_change=lambda job: reads.append(time.monotonic()))
    assert timeout <= time.monotonic() - started < timeout + 0.5
    assert len(reads) <= 4  # a read at the start and per slice: blocking, not polling


async def test_a_cancelled_wait_leaves_no_connection_behind(
    apollen: AsyncPollen, deps: Any, redis_server: RedisServer
) -> None:
    job_id = unsent_job(deps)
    before = _pubsub_clients(redis_server)
    waiting = asyncio.create_task(apollen.wait(job_id, timeout=60))
    for _ in range(100):
        if _pubsub_clients(redis_server) > before:
            break
        await asyncio.sleep(0.02)
    assert _pubsub_clients(redis_server) == before + 1  # subscribed while it waits
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # the caller's own deadline cancels it the same way
            await apollen.wait(job_id, timeout=60)
    await asyncio.sleep(0.1)
    assert _pubsub_clients(redis_server) == before
    pool = apollen.store.redis.connection_pool
    assert not pool._in_use_connections  # every connection is back in the pool


async def test_get_of_an_unknown_job_is_job_not_found(apollen: AsyncPollen) -> None:
    with pytest.raises(JobNotFound):
        await apollen.get("no-such-job")


async def test_a_refused_job_and_the_latest_refusals_read_as_from_the_sync_client(
    apollen: AsyncPollen, deps: Any
) -> None:
    from pollen.worker import rejections

    refused = InvalidJob("tenent: unknown field", [{"type": "unknown_field", "loc": ("tenent",)}])
    rejections.reject(deps, {"job_id": "async-refused", "tenent": "x"}, refused, "message-1")
    with pytest.raises(JobRejected, match="job async-refused was rejected by a worker"):
        await apollen.get("async-refused")
    [latest] = await apollen.rejected(5)
    assert (latest.job_id, latest.message_id, latest.reason) == (
        "async-refused",
        "message-1",
        "unknown_field",
    )
