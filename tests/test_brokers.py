"""pollen's core path on each broker it supports: Redis (the store is the broker), RabbitMQ with
classic queues (nothing set but the broker URL) and RabbitMQ with quorum queues. Each runs one
worker of its own, on its own Redis database (and its own RabbitMQ virtual host): a submit from
``Pollen.submit`` and from a plain ``send_task``, a countdown poll chain, a completion callback,
a long wait parked in Redis; on quorum queues, countdowns sent as whole seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import pytest

from pollen import JobStatus, Pollen, contract
from pollen.local.servers import CallbackReceiver, RedisServer, Worker, free_port
from pollen.settings import Settings
from pollen.store import keys
from tests.conftest import eventually, settings_from
from tests.helpers import video_request

pytestmark = pytest.mark.integration

#: each broker: its store's Redis database (the Redis broker uses database 0)
BROKERS = {"redis": 1, "rabbitmq": 2, "rabbitmq-quorum": 3}
#: waits longer than this are parked in Redis; the session's fast polls (at most 1 s) are not
PARK_AFTER = "1.5"


@dataclass
class Deployment:
    broker: str
    env: dict[str, str]
    settings: Settings
    log: Path

    @property
    def quorum(self) -> bool:
        return self.settings.quorum_queues


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _broker_url(request: pytest.FixtureRequest, broker: str, redis_server: RedisServer) -> str:
    if broker == "redis":
        return redis_server.url(0)
    return str(request.getfixturevalue("rabbit").vhost(broker))


@pytest.fixture(scope="module", params=list(BROKERS))
def deployment(
    request: pytest.FixtureRequest,
    worker_env: dict[str, str],
    own_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    broker = str(request.param)
    url = _broker_url(request, broker, own_redis)
    tmp = tmp_path_factory.mktemp(broker)
    env = {
        **worker_env,
        "POLLEN_REDIS_URL": own_redis.url(BROKERS[broker]),
        "POLLEN_BROKER_URL": url,  # and no result backend: the default per broker
        "POLLEN_QUORUM_QUEUES": str(broker == "rabbitmq-quorum").lower(),
        "POLLEN_PARK_AFTER": PARK_AFTER,
        "POLLEN_TICK_INTERVAL": "0.2",
        "POLLEN_METRICS_PORT": str(free_port()),
        "POLLEN_HEARTBEAT_FILE": str(tmp / "heartbeat"),
    }
    log = tmp / "worker.log"
    with Worker(env, name=f"on-{broker}", concurrency=4, log_file=str(log)) as worker:
        try:
            worker.wait_ready(url, timeout=60)
        except RuntimeError:
            print(log.read_text())
            raise
        yield Deployment(broker, env, settings_from(env), log)


@pytest.fixture
def client(deployment: Deployment) -> Iterator[Pollen]:
    with Pollen(deployment.settings) as pollen:
        yield pollen


def _finished(client: Pollen, deployment: Deployment, job_id: str) -> Any:
    job = client.wait(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED, deployment.log.read_text()[-3000:]
    return job


def test_a_submit_polls_by_countdown_and_calls_back(
    deployment: Deployment, client: Pollen, receiver: CallbackReceiver
) -> None:
    job_id = client.submit(
        "runware", video_request([0.3, 1.6]), callback_url=f"{receiver.url}/{deployment.broker}"
    )
    job = _finished(client, deployment, job_id)
    assert len(job.results) == 2
    assert job.polls >= 2  # a chain of countdown polls, not one
    if deployment.quorum:  # the first poll's 0.2 s countdown went out as 1 s
        assert job.finished_at - job.submitted_at >= 1.0
    eventually(
        lambda: any(
            post["json"]["type"] == "job.completed" and post["json"]["data"]["job_id"] == job_id
            for post in receiver.received(f"/{deployment.broker}")
        ),
        what="the completion callback",
    )


def test_a_plain_send_task_runs_the_job(deployment: Deployment, client: Pollen) -> None:
    """A producer without pollen: the broker URL and the result backend (the store's Redis
    where RabbitMQ is the broker). On quorum queues it declares the queue as pollen does."""
    settings = deployment.settings
    producer = celery.Celery(broker=settings.broker, backend=settings.backend)
    if deployment.quorum:
        producer.conf.task_queues = contract.declared(settings.queues, quorum=True)
    payload = {"provider": "runware", "request": video_request([0.3]), "deadline": 60}
    job_id = f"plain-{deployment.broker}"
    try:
        answer = producer.send_task(
            contract.SUBMIT, kwargs={"job": payload | {"job_id": job_id}}, queue="pollen.submit"
        )
        assert answer.get(timeout=20) == {"job_id": job_id, "created": True}
    finally:
        producer.close()
    _finished(client, deployment, job_id)


def test_a_long_wait_is_parked_in_redis_and_the_job_completes(
    deployment: Deployment, client: Pollen
) -> None:
    job_id = client.submit(
        "runware",
        video_request([2.0]),
        poll={"initial_delay": 2.0, "interval": 1.0, "factor": 1.0, "max_delay": 1.0},
    )
    eventually(
        lambda: any(
            str(member).startswith(f"{job_id}|")
            for member in client.store.redis.zrange(keys.PARKED_POLLS, 0, -1)
        ),
        what="the first poll (2 s away, past park_after) to wait in Redis",
    )
    job = _finished(client, deployment, job_id)
    assert job.finished_at - job.submitted_at >= 2.0


def test_quorum_countdowns_are_whole_seconds_of_native_delayed_delivery(
    deployment: Deployment,
) -> None:
    """A 0.3 s countdown is published as 1 s: into Celery's one-second delay queue, with the
    delay's bits in its routing key; sent as 0.3 s, Celery would refuse it."""
    if not deployment.quorum:
        pytest.skip("quorum queues only")
    from kombu.connection import Connection

    app = contract.producer_app(deployment.settings)
    try:
        with app.connection_for_write() as publisher:  # publisher confirms are on
            publisher.connect()
            assert publisher.connection.confirm_publish is True
        sent = time.time()
        app.send_task(contract.POLL, kwargs={"items": []}, countdown=0.3, ignore_result=True)
    finally:
        app.close()
    with Connection(deployment.settings.broker) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        message = channel.basic_get("celery_delayed_0", no_ack=True)  # its level: 2**0 s
    assert message is not None, "the countdown did not go through native delayed delivery"
    assert message.delivery_info["routing_key"] == "0." * 27 + "1.pollen.poll"
    eta = message.headers["eta"]
    assert eta is not None
    from datetime import datetime

    assert 0.9 <= datetime.fromisoformat(eta).timestamp() - sent <= 1.5
