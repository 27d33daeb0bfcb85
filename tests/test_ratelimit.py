"""The shared provider rate limit, on the real Redis: no one-second window over the limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr

from pollen.errors import RateLimited
from pollen.local.servers import RedisServer
from pollen.providers.ratelimit import MAX_SLEEP, RateLimiter
from pollen.settings import AccountSettings
from pollen.store.connection import redis_client
from pollen.store.sync import Store
from tests.conftest import STORE_DB


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url(STORE_DB))
    connection.delete("pollen:rate:runware", "pollen:rate:slow")
    yield connection
    connection.close()


@pytest.fixture
def store(redis_server: RedisServer, client: redis.Redis) -> Iterator[Store]:
    built = Store(redis_client(redis_server.url(STORE_DB)), finished_ttl=60)
    yield built
    built.close()


def test_no_one_second_window_exceeds_the_limit(store: Store) -> None:
    stamps: list[float] = []
    lock = threading.Lock()
    errors: list[Exception] = []

    def worker() -> None:
        limiter = RateLimiter(store, {"runware": 20})  # one per "process", one shared budget
        for _ in range(10):
            while True:
                try:
                    granted = limiter.acquire("runware")  # when Redis granted the slot
                    break
                except RateLimited as exc:  # a long wait: what the task would retry later
                    assert exc.retry_after is not None and exc.retry_after > MAX_SLEEP
                    time.sleep(exc.retry_after)
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return
            assert granted is not None
            with lock:
                stamps.append(granted)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(stamps) == 60
    stamps.sort()
    busiest = max(sum(1 for s in stamps if t <= s < t + 1.0) for t in stamps)
    assert busiest <= 20 * 1.05  # the target: never more than 5 % over in any second
    assert busiest >= 15  # and the budget is actually used
    assert time.monotonic() - started >= 2.0  # 60 requests at 20/s need about 3 s


def test_unlimited_providers_pass_straight_through(store: Store, client: redis.Redis) -> None:
    limiter = RateLimiter(store, {"runware": 0})
    started = time.monotonic()
    for _ in range(200):
        limiter.acquire("runware")
        limiter.acquire("useapi_runway")
    assert time.monotonic() - started < 2.0
    assert client.exists("pollen:rate:runware") == 0


def test_a_far_off_slot_is_a_rate_limited_error(store: Store) -> None:
    limiter = RateLimiter(store, {"slow": 0.5})  # one request per two seconds
    limiter.acquire("slow")
    with pytest.raises(RateLimited) as caught:
        limiter.acquire("slow")
    assert caught.value.retry_after is not None and 1.5 < caught.value.retry_after <= 2.01


def test_an_account_with_a_rate_has_a_window_of_its_own(store: Store, client: redis.Redis) -> None:
    client.delete("pollen:rate:runware@slow", "pollen:rate:runware@fast")
    slow = AccountSettings(name="slow", api_key=SecretStr("k"), rate=0.5)
    free = AccountSettings(name="fast", api_key=SecretStr("k"))
    limiter = RateLimiter(store, {})
    limiter.acquire("runware", slow)
    with pytest.raises(RateLimited, match="runware account slow") as caught:
        limiter.acquire("runware", slow)  # one per two seconds
    assert caught.value.retry_after is not None and caught.value.retry_after > 1.5
    for _ in range(20):  # the other account, and the provider, have no limit
        assert limiter.acquire("runware", free) is None
        assert limiter.acquire("runware") is None
    assert client.exists("pollen:rate:runware@fast", "pollen:rate:runware") == 0
    shared = RateLimiter(store, {"runware": 0.5})  # the provider's own limit still holds
    shared.acquire("runware", free)
    with pytest.raises(RateLimited, match="to runware is used up"):
        shared.acquire("runware", free)
