"""A producer fails fast when Redis is away: ``Pollen`` and ``AsyncPollen`` raise
``StoreUnavailable`` within their Redis window (``POLLEN_PRODUCER__REDIS_TIMEOUT``), whether
nothing listens on the port or a server accepts and never answers; a Redis that comes back
within the window is ridden out. Nothing reaches the broker for a job that was not stored."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
import redis

from pollen import AsyncPollen, Pollen, StoreUnavailable
from pollen.local.servers import RedisServer, free_port
from pollen.settings import PRODUCER_REDIS_TIMEOUT, Settings
from pollen.store import keys
from tests.conftest import settings_from
from tests.helpers import video_request

pytestmark = pytest.mark.integration

#: the broker of these tests: a database of the session's Redis no worker reads
BROKER_DB = 7
#: how much later than its window a call may raise on a loaded machine, seconds
MARGIN = 1.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(BROKER_DB))
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def closing_port() -> Iterator[int]:
    """A port where each connection is accepted and closed at once (a proxy with no Redis
    behind it): every reconnect succeeds, every command fails."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def close_each() -> None:
        with contextlib.suppress(OSError):  # the listening socket was closed
            while True:
                server.accept()[0].close()

    threading.Thread(target=close_each, daemon=True).start()
    yield int(server.getsockname()[1])
    server.close()


@pytest.fixture(params=["refused", "silent", "closing"])
def dead_port(request: pytest.FixtureRequest) -> int:
    """A port where Redis is not: nothing listens, a server never answers, or it hangs up."""
    if request.param == "refused":
        return free_port()
    return int(request.getfixturevalue(f"{request.param}_port"))


def store_at(settings: Settings, port: int, redis_server: RedisServer) -> Settings:
    """``settings`` with the job store on ``port`` and the broker on :data:`BROKER_DB`."""
    update = {
        "redis_url": f"redis://127.0.0.1:{port}/1",
        "broker_url": redis_server.url(BROKER_DB),
    }
    return settings.model_copy(update=update)


def submit(settings: Settings, window: float | None) -> float:
    """Submit one job with a ``window`` Redis timeout; seconds until it raised."""
    started = time.monotonic()
    with (
        Pollen(settings, redis_timeout=window) as client,
        pytest.raises(StoreUnavailable, match="Redis is unreachable"),
    ):
        client.submit("runware", video_request([0.2]))
    return time.monotonic() - started


async def asubmit(settings: Settings, window: float) -> float:
    started = time.monotonic()
    async with AsyncPollen(settings, redis_timeout=window) as client:
        with pytest.raises(StoreUnavailable, match="Redis is unreachable"):
            await client.submit("runware", video_request([0.2]))
    return time.monotonic() - started


def test_the_window_is_a_setting_with_a_floor() -> None:
    assert Settings().producer.redis_timeout == PRODUCER_REDIS_TIMEOUT == 5.0
    assert settings_from({"POLLEN_PRODUCER__REDIS_TIMEOUT": "0.5"}).producer.redis_timeout == 0.5
    with pytest.raises(pydantic.ValidationError, match="greater than 0"):
        settings_from({"POLLEN_PRODUCER__REDIS_TIMEOUT": "0"})
    with pytest.raises(pydantic.ValidationError, match="greater than 0"):
        Pollen(Settings(), redis_timeout=0)


def test_submit_fails_within_a_short_window(
    dead_port: int, settings: Settings, redis_server: RedisServer, broker: redis.Redis
) -> None:
    elapsed = submit(store_at(settings, dead_port, redis_server), window=1.0)
    assert 0.9 < elapsed < 1.0 + MARGIN  # kept trying for its window, no longer
    assert broker.dbsize() == 0  # nothing enqueued


@pytest.mark.anyio
async def test_async_submit_fails_within_a_short_window(
    dead_port: int, settings: Settings, redis_server: RedisServer, broker: redis.Redis
) -> None:
    elapsed = await asubmit(store_at(settings, dead_port, redis_server), window=1.0)
    assert 0.9 < elapsed < 1.0 + MARGIN
    assert broker.dbsize() == 0


def test_submit_fails_within_the_default_window(
    settings: Settings, redis_server: RedisServer, broker: redis.Redis, silent_port: int
) -> None:
    elapsed = submit(store_at(settings, silent_port, redis_server), window=None)
    assert PRODUCER_REDIS_TIMEOUT - 0.1 < elapsed < PRODUCER_REDIS_TIMEOUT + MARGIN
    assert broker.dbsize() == 0


class LateRedis:
    """A real Redis that starts on ``port`` after ``delay`` seconds (in a thread)."""

    def __init__(self, port: int, delay: float) -> None:
        self.server = RedisServer(port)
        self.thread = threading.Timer(delay, self.server.start)

    def __enter__(self) -> LateRedis:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join()
        self.server.stop()


def one_stored_and_sent(port: int, job_id: str, broker: redis.Redis, queue: str) -> None:
    store = redis.Redis(port=port, db=1, decode_responses=True)
    try:
        assert store.hget(keys.job(job_id), "status") == "queued"
    finally:
        store.close()
    assert broker.llen(queue) == 1


def test_a_longer_window_rides_out_a_redis_that_comes_back(
    settings: Settings, redis_server: RedisServer, broker: redis.Redis
) -> None:
    port = free_port()
    ride = store_at(settings, port, redis_server)
    with LateRedis(port, delay=1.5), Pollen(ride, redis_timeout=8.0) as client:
        started = time.monotonic()
        job_id = client.submit("runware", video_request([0.2]))
        assert 1.0 < time.monotonic() - started < 8.0
        one_stored_and_sent(port, job_id, broker, ride.queues.submit)


@pytest.mark.anyio
async def test_async_a_longer_window_rides_out_a_redis_that_comes_back(
    settings: Settings, redis_server: RedisServer, broker: redis.Redis
) -> None:
    port = free_port()
    ride = store_at(settings, port, redis_server)
    with LateRedis(port, delay=1.5):
        async with AsyncPollen(ride, redis_timeout=8.0) as client:
            started = time.monotonic()
            job_id = await client.submit("runware", video_request([0.2]))
            assert 1.0 < time.monotonic() - started < 8.0
        one_stored_and_sent(port, job_id, broker, ride.queues.submit)


def test_workers_keep_their_longer_window(settings: Settings) -> None:
    from pollen.worker.runtime import build_deps

    deps: Any = build_deps(settings)
    try:
        kwargs = deps.store.redis.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 15  # the workers' options, not the producer's
    finally:
        deps.http.close()
        deps.store.redis.close()
