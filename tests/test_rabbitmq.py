"""pollen on a RabbitMQ broker, where bindings are real: each queue is bound to its own
exchange with its own key (an earlier pollen's bindings removed), a submit reaches the submit
queue and the worker runs the job, and each task lands in its own queue only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pollen import JobStatus, Pollen, contract
from pollen.local.servers import RedisServer, Worker, free_port
from pollen.worker import health
from tests import rabbitmq
from tests.conftest import OWN_BROKER_DB, eventually, settings_from
from tests.helpers import video_request
from tests.rabbitmq import RabbitServer
from tests.test_metrics import scrape

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(rabbitmq.missing() is not None, reason=str(rabbitmq.missing())),
]

QUEUES = ("pollen.submit", "pollen.poll", "pollen.callbacks")


@pytest.fixture
def rabbit_env(
    own_env: dict[str, str], rabbit: RabbitServer, redis_server: RedisServer
) -> dict[str, str]:
    """A worker's own settings with RabbitMQ as the broker; Celery has no AMQP result backend,
    so results go to Redis (here the database own_env would use as the broker; unset, the
    store's)."""
    backend = redis_server.url(OWN_BROKER_DB)
    return {**own_env, "POLLEN_BROKER_URL": rabbit.url, "POLLEN_RESULT_BACKEND": backend}


def _declare_like_an_earlier_pollen(url: str) -> None:
    """Every queue on the pollen.submit exchange with the key pollen.submit."""
    from kombu.connection import Connection
    from kombu.entity import Exchange, Queue

    old = Exchange("pollen.submit")  # type: ignore[no-untyped-call]
    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        for name in QUEUES:
            Queue(name, old, routing_key="pollen.submit").bind(channel).declare()  # type: ignore[no-untyped-call]


def _depths(url: str) -> dict[str, int]:
    from kombu.connection import Connection

    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        return {name: channel.queue_declare(name, passive=True).message_count for name in QUEUES}


def test_each_queue_has_its_own_exchange_on_rabbitmq_and_a_submit_runs(
    rabbit: RabbitServer, rabbit_env: dict[str, str], tmp_path: Path
) -> None:
    _declare_like_an_earlier_pollen(rabbit.url)
    stale = {("pollen.submit", name, "pollen.submit") for name in QUEUES}
    assert stale <= rabbit.bindings()

    log = tmp_path / "worker.log"
    with Worker(rabbit_env, name="rabbit", concurrency=4, log_file=str(log)) as worker:
        try:
            worker.wait_ready(rabbit.url, timeout=60)
        except RuntimeError:
            print(log.read_text())
            raise
        ours = {b for b in rabbit.bindings() if b[1] in QUEUES}
        assert ours == {(name, name, name) for name in QUEUES}
        depths = scrape(rabbit_env["POLLEN_METRICS_PORT"])  # read from RabbitMQ
        for name in QUEUES:
            assert ("pollen_queue_depth", (("queue", name),)) in depths
        with Pollen(settings_from(rabbit_env)) as producer:
            job_id = producer.submit("runware", video_request([0.2, 0.4]))
            job = producer.wait(job_id, timeout=30)
        assert job.status is JobStatus.SUCCEEDED, log.read_text()[-3000:]
        assert len(job.results) == 2

    # The worker is gone: what is sent stays in the queues, to be counted.
    app = contract.producer_app(settings_from(rabbit_env))
    sends: list[tuple[str, dict[str, Any], str]] = [
        (contract.SUBMIT, {"job_ids": []}, "pollen.submit"),
        (contract.POLL, {"items": []}, "pollen.poll"),
        (contract.DELIVER_CALLBACK, {"delivery": "x"}, "pollen.callbacks"),
    ]
    try:
        for task, kwargs, lands_in in sends:
            before = _depths(rabbit.url)
            app.send_task(task, kwargs=kwargs, ignore_result=True)
            grown = {name: int(name == lands_in) for name in QUEUES}

            def landed(before: dict[str, int] = before, grown: dict[str, int] = grown) -> bool:
                after = _depths(rabbit.url)
                return {name: after[name] - before[name] for name in QUEUES} == grown

            eventually(landed, timeout=10, what=f"{task} to land in {lands_in} only")
    finally:
        app.close()


def test_health_checks_a_rabbitmq_broker(rabbit: RabbitServer) -> None:
    assert health.check_broker(rabbit.url) == health.Check("broker", True, "accepts a connection")
    away = health.check_broker(f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    assert not away.ok and away.detail.startswith("unreachable: ")


def test_the_dashboard_reads_queue_depths_from_rabbitmq_or_says_unknown(
    rabbit: RabbitServer,
) -> None:
    from pollen.dashboard.app import _depth_reader

    url = rabbit.vhost("dashboard")
    _declare_like_an_earlier_pollen(url)
    from kombu.connection import Connection

    with Connection(url) as connection:  # type: ignore[no-untyped-call]
        connection.Producer().publish({}, exchange="", routing_key="pollen.poll")
    expected = {"pollen.submit": 0, "pollen.poll": 1, "pollen.callbacks": 0}
    read = _depth_reader(url, [*QUEUES, "never.declared"], timeout=2)
    eventually(lambda: read() == [*expected.values(), 0], timeout=10, what="the depths")
    away = _depth_reader(f"amqp://guest:guest@127.0.0.1:{free_port()}//", list(QUEUES), 1)
    assert away() == [None, None, None]
