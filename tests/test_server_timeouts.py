"""The ingress and the dashboard wait for an unreachable Redis or broker only their own
``redis_timeout`` (``POLLEN_INGRESS__REDIS_TIMEOUT``, ``POLLEN_DASHBOARD__REDIS_TIMEOUT``),
then answer 503; the workers and the producer clients keep theirs. The fault suite runs both
as real processes (``tests/faults/test_servers.py``)."""

from __future__ import annotations

import time

import httpx
import pydantic
import pytest
import redis

from pollen import AsyncPollen, StoreUnavailable
from pollen.contract import producer_app
from pollen.local.servers import DashboardServer, RedisServer, free_port
from pollen.producer import Send
from pollen.providers import push as tokens
from pollen.settings import PRODUCER_REDIS_TIMEOUT, SERVER_REDIS_TIMEOUT, Settings, shutdown_grace
from tests.conftest import settings_from
from tests.test_push import IngressServer

pytestmark = pytest.mark.integration

#: how much later than its timeout an answer may come on a loaded machine, seconds
MARGIN = 0.8
#: a database of the session's Redis no worker reads
BROKER_DB = 7


def silent_redis(settings: Settings, port: int, **groups: dict[str, float]) -> Settings:
    """``settings`` with Redis and the broker on ``port``, and the ``groups`` given."""
    url = f"redis://127.0.0.1:{port}/1"
    update: dict[str, object] = {"redis_url": url, "broker_url": url}
    for name, values in groups.items():
        update[name] = getattr(settings, name).model_copy(update=values)
    return settings.model_copy(update=update)


def timed_status(url: str, method: str, path: str) -> tuple[int, float]:
    started = time.monotonic()
    status = httpx.request(method, url + path, content=b"{}", timeout=30).status_code
    return status, time.monotonic() - started


def test_the_timeouts_are_settings_with_a_floor() -> None:
    defaults = Settings()
    assert defaults.ingress.redis_timeout == defaults.dashboard.redis_timeout == 1.0
    assert SERVER_REDIS_TIMEOUT < PRODUCER_REDIS_TIMEOUT
    for group in ("INGRESS", "DASHBOARD"):
        env = {f"POLLEN_{group}__REDIS_TIMEOUT": "0.25"}
        assert getattr(settings_from(env), group.lower()).redis_timeout == 0.25
        with pytest.raises(pydantic.ValidationError, match="greater than 0"):
            settings_from({f"POLLEN_{group}__REDIS_TIMEOUT": "0"})
    assert shutdown_grace(1.0) == 3 and shutdown_grace(0.2) == 2 and shutdown_grace(5) == 11


@pytest.mark.parametrize("timeout", [0.4, 1.5])
def test_the_ingress_answers_503_after_its_own_timeout(
    settings: Settings, silent_port: int, timeout: float
) -> None:
    served = silent_redis(settings, silent_port, ingress={"redis_timeout": timeout})
    push = f"/push/runware/{tokens.new_token('job-1')}"
    with IngressServer(served, free_port()) as ingress:
        for method, path in [("POST", push), ("GET", "/readyz")]:
            status, elapsed = timed_status(ingress.url, method, path)
            assert status == 503
            assert timeout <= elapsed < timeout + MARGIN, (path, elapsed)


@pytest.mark.parametrize("timeout", [0.4, 1.5])
def test_the_dashboard_answers_503_after_its_own_timeout(
    settings: Settings, silent_port: int, timeout: float
) -> None:
    served = silent_redis(settings, silent_port, dashboard={"redis_timeout": timeout})
    with DashboardServer(served, None, free_port()) as dashboard:
        for path in ["/", "/api/counts", "/overview"]:
            status, elapsed = timed_status(dashboard.url, "GET", path)
            assert status == 503
            assert timeout <= elapsed < timeout + MARGIN, (path, elapsed)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_bounded_publish_gives_up_on_a_silent_broker_and_sends_to_a_live_one(
    settings: Settings, silent_port: int, redis_server: RedisServer, anyio_backend: str
) -> None:
    message = Send("pollen.poll", "pollen.test.bounded", kwargs={"items": []})
    silent = silent_redis(settings, silent_port)
    async with AsyncPollen(silent, publish_timeout=0.5) as client:
        started = time.monotonic()
        # the first of the asyncio bound and kombu's own socket timeout, both 0.5 s, says it
        with pytest.raises(
            StoreUnavailable, match=r"did not take the message within 0\.5s|Timeout"
        ):
            await client.publish(message)
        assert 0.5 <= time.monotonic() - started < 0.5 + MARGIN
    live = settings.model_copy(update={"broker_url": redis_server.url(BROKER_DB)})
    broker = redis.Redis.from_url(redis_server.url(BROKER_DB))
    try:
        broker.delete(message.queue)
        async with AsyncPollen(live, publish_timeout=0.5) as client:
            await client.publish(message)
        assert broker.llen(message.queue) == 1
    finally:
        broker.delete(message.queue)
        broker.close()


def test_only_a_bounded_producer_app_has_broker_timeouts(settings: Settings) -> None:
    bounded = producer_app(settings, timeout=0.7).conf
    transport = bounded.broker_transport_options
    assert transport["socket_timeout"] == transport["socket_connect_timeout"] == 0.7
    assert transport["visibility_timeout"] == settings.visibility_timeout  # kept
    assert bounded.task_publish_retry_policy["max_retries"] == 1
    plain = producer_app(settings).conf
    assert "socket_timeout" not in plain.broker_transport_options
    amqp = settings.model_copy(update={"broker_url": "amqp://guest@127.0.0.1//"})
    assert "socket_timeout" not in producer_app(amqp, timeout=0.7).conf.broker_transport_options
