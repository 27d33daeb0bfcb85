"""Real parts for the test session: a Redis server, the provider simulator, a Celery worker.

The store uses Redis db 1 and the broker db 0; the store db is flushed before every test.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from pollen.local.servers import CallbackReceiver, RedisServer, Worker, free_port
from pollen.settings import Settings
from pollen.simulator import SimulatorConfig, SimulatorServer
from tests.flower import Flower

STORE_DB, BROKER_DB = 1, 0
#: databases of ``own_env``, which no other fixture uses: a broker nobody else consumes, and
#: its store
OWN_BROKER_DB, OWN_STORE_DB = 11, 12
#: the workers' signing secret in the test session (not a real one)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"pollen-test-secret-32-bytes-long").decode()
FAST_POLL = {
    "POLLEN_POLL__INITIAL_DELAY": "0.2",
    "POLLEN_POLL__INTERVAL": "0.2",
    "POLLEN_POLL__FACTOR": "1.5",
    "POLLEN_POLL__MAX_DELAY": "1.0",
    "POLLEN_POLL__MIN_DELAY": "0.05",
    "POLLEN_POLL__JITTER": "0.2",
}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A RabbitMQ node for the session (tests/rabbitmq.py); skips where it is not installed."""
    from tests import rabbitmq

    if (why := rabbitmq.missing()) is not None:
        pytest.skip(why)
    with rabbitmq.RabbitServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """A fleet's broker, as extra settings: the store's Redis (none: the default), or the
    session's RabbitMQ node (results still go to the store's Redis, the default there)."""
    if request.param == "redis":
        return {}
    return {"POLLEN_BROKER_URL": request.getfixturevalue("rabbit").url}


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(duration_min=0.2, duration_max=0.6, seed=7, timeout_seconds=5)
    with SimulatorServer(config) as sim:
        yield sim


@pytest.fixture(scope="session")
def worker_env(
    redis_server: RedisServer, simulator: SimulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    heartbeat = tmp_path_factory.mktemp("heartbeat") / "worker.heartbeat"
    return {
        "POLLEN_HEARTBEAT_FILE": str(heartbeat),
        "POLLEN_LOG_FORMAT": "json",
        "POLLEN_CALLBACKS__ALLOW_CIDRS": '["127.0.0.0/8"]',
        "POLLEN_CALLBACKS__SECRETS": json.dumps([WEBHOOK_SECRET]),
        "POLLEN_CALLBACKS__SCHEDULE": "[0, 0.3, 0.6, 1.0]",
        "POLLEN_CALLBACKS__PARK_AFTER": "0.5",
        "POLLEN_CALLBACKS__PROGRESS_INTERVAL": "0.2",
        "POLLEN_RECONCILE_INTERVAL": "0.5",
        "POLLEN_METRICS_PORT": str(free_port()),
        "POLLEN_RECONCILE_GRACE": "3",
        "POLLEN_SUBMIT_GRACE": "3",
        "POLLEN_REDIS_URL": redis_server.url(STORE_DB),
        "POLLEN_BROKER_URL": redis_server.url(BROKER_DB),
        "POLLEN_RUNWARE__BASE_URL": f"{simulator.url}/v1",
        "POLLEN_RUNWARE__API_KEY": simulator.config.api_key,
        "POLLEN_HTTP_TIMEOUT": "2",
        "POLLEN_USEAPI__BASE_URL": simulator.url,
        "POLLEN_USEAPI__API_KEY": simulator.config.api_key,
        "POLLEN_COMET__BASE_URL": simulator.url,
        "POLLEN_COMET__API_KEY": simulator.config.api_key,
        "POLLEN_COMET__NOT_EXIST_GRACE": "3",
        "POLLEN_CALLBACKS__TIMEOUT": "2",
        **FAST_POLL,
    }


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a process with ``env`` added to this one's environment reads."""
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def settings(worker_env: dict[str, str]) -> Settings:
    """The same settings the worker reads from its environment."""
    return settings_from(worker_env)


@pytest.fixture
def own_env(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The session's worker settings on two empty databases of the session's Redis, for a
    test's own worker."""
    env = {
        **worker_env,
        "POLLEN_BROKER_URL": redis_server.url(OWN_BROKER_DB),
        "POLLEN_REDIS_URL": redis_server.url(OWN_STORE_DB),
        "POLLEN_METRICS_PORT": str(free_port()),
        "POLLEN_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    dbs = [redis.Redis.from_url(redis_server.url(db)) for db in (OWN_BROKER_DB, OWN_STORE_DB)]
    for db in dbs:
        db.flushdb()
    yield env
    for db in dbs:
        db.flushdb()
        db.close()


@pytest.fixture(scope="session")
def worker(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    # prefork here (the CLI's default is threads): the session exercises both pools.
    proc = Worker(worker_env, name="test-worker", concurrency=4, pool="prefork", log_file=str(log))
    with proc:
        try:
            proc.wait_ready(redis_server.url(BROKER_DB))
        except RuntimeError:
            print(Path(log).read_text())
            raise
        yield proc
    if os.environ.get("POLLEN_TEST_SHOW_WORKER_LOG"):
        print(Path(log).read_text())


@pytest.fixture
def clean(redis_server: RedisServer, simulator: SimulatorServer) -> Iterator[None]:
    """An empty job store and a fresh simulator for each test that uses them."""
    import redis

    client = redis.Redis.from_url(redis_server.url(STORE_DB))
    epoch = client.get("pollen:store:epoch")  # keep it: a flush is otherwise a data loss
    client.flushdb()
    if epoch is not None:
        client.set("pollen:store:epoch", epoch)
    client.close()
    httpx.post(f"{simulator.url}/_sim/reset").raise_for_status()
    yield


@pytest.fixture
def client(settings: Settings, clean: None) -> Iterator[Any]:
    from pollen import Pollen

    with Pollen(settings) as pollen:
        yield pollen


@pytest.fixture
def deps(settings: Settings, clean: None) -> Iterator[Any]:
    """The steps' dependencies, as a worker process builds them, for calling steps directly."""
    from pollen.worker.runtime import build_deps

    built = build_deps(settings)
    yield built
    built.http.close()
    built.store.redis.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port where connections are accepted (by the kernel) and never answered."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as server:
        yield server


def eventually(
    check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Wait until ``check()`` returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


@pytest.fixture
def flower(worker: Worker, redis_server: RedisServer, tmp_path: Path) -> Iterator[Flower]:
    """Flower started before any job, so it sees every task event; ready once it lists the
    session's worker as alive (from its heartbeat events)."""
    server = Flower(redis_server.url(BROKER_DB), tmp_path / "flower.log")
    try:
        eventually(server.up, timeout=20, interval=0.2, what="Flower to answer")

        def worker_alive() -> bool:
            status = server.get("/api/workers?status=true").json()
            return any(name.startswith(f"{worker.name}@") and up for name, up in status.items())

        eventually(worker_alive, timeout=20, interval=0.3, what="Flower to see the worker")
        yield server
    finally:
        server.stop()
