"""The kombu patch a worker installs so that it rides out a Redis restart (see
:mod:`pollen.worker.resilience`), on a real Redis the test stops and starts again."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import kombu.common
import pytest

from pollen.local.servers import RedisServer
from pollen.worker import resilience

# kombu's annotations are partial (untyped calls everywhere): the test uses it untyped.
K: Any = kombu
QUEUE = K.Queue("resilience", K.Exchange("resilience", type="direct"), routing_key="resilience")
OTHER = K.Queue("resilience.other", QUEUE.exchange, routing_key="other")


REDIS_CONF = Path(__file__).resolve().parents[1] / "config" / "redis.conf"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """A Redis of the test's own with AOF (the test restarts it); all stopped at the end."""
    servers = [RedisServer(config_file=str(REDIS_CONF), workdir=str(tmp_path))]
    servers[0].start()
    yield servers
    for server in servers:
        server.stop()


def drain(connection: Any, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        connection.drain_events(timeout=seconds)


def held_and_waiting(url: str, visibility_timeout: float) -> tuple[Any, list[Any]]:
    """A consumer that holds one unacknowledged message and has a BRPOP pending, as a worker
    that holds a countdown poll does while it waits for more; a second channel of the same
    connection waits too (a worker's control and event channels), and is closed first."""
    options = {"visibility_timeout": visibility_timeout}
    with K.Connection(url, transport_options=options) as producer:
        producer.Producer().publish({"n": 1}, exchange=QUEUE.exchange, routing_key="resilience",
                                    declare=[QUEUE])  # fmt: skip
    connection = K.Connection(url, transport_options=options)
    held: list[Any] = []
    consumer = connection.Consumer([QUEUE], callbacks=[lambda _body, msg: held.append(msg)])
    consumer.consume()
    connection.Consumer([OTHER], channel=connection.channel(), callbacks=[]).consume()
    deadline = time.monotonic() + 5
    while not held and time.monotonic() < deadline:
        drain(connection, 0.2)
    assert held, "the message was not delivered"
    # nothing more: a wait stays pending (kombu's BRPOP, or reliable fetch's idle BLMOVE when
    # the patch is installed in this process, which alternates with its take)
    deadline = time.monotonic() + 5
    drain(connection, 0.2)
    while not connection.default_channel._in_poll and time.monotonic() < deadline:
        drain(connection, 0.03)
    assert connection.default_channel._in_poll
    return connection, held


def lose_the_broker(connection: Any) -> None:
    """What Celery's consumer does when its broker connection drops (5.7:
    ``on_connection_error_after_connected``): collect the connection, then close it."""
    with contextlib.suppress(Exception):  # Celery ignores every error here too
        connection.collect(socket_timeout=5.0)
    K.common.ignore_errors(connection, connection.close)


def redelivered(url: str, visibility_timeout: float, wait: float) -> list[object]:
    bodies: list[object] = []
    options = {"visibility_timeout": visibility_timeout}
    with K.Connection(url, transport_options=options) as connection:

        def take(body: object, message: Any) -> None:
            bodies.append(body)
            message.ack()

        consumer = connection.Consumer([QUEUE], callbacks=[take])
        consumer.consume()
        deadline = time.monotonic() + wait
        while not bodies and time.monotonic() < deadline:
            drain(connection, 0.2)
    return bodies


@pytest.mark.parametrize("settle", ["none", "ack", "reject"])
def test_a_consumer_holding_a_message_survives_the_broker_restart_and_nothing_is_lost(
    own_redis: list[RedisServer], settle: str
) -> None:
    """The consumer's connection is collected and closed while Redis is down (kombu 5.7.0
    unpatched: AttributeError, the worker exits), with the held message left alone, or
    acknowledged or rejected on the detached channel as Celery does when a task finishes in
    that window. Redis was down, so nothing reached it: the message is still unacknowledged in
    Redis and comes back once its visibility timeout has passed (tasks are idempotent)."""
    assert resilience.install()
    url = own_redis[0].url(0)
    connection, held = held_and_waiting(url, visibility_timeout=1.0)
    port = own_redis[0].port
    own_redis[0].stop()
    lose_the_broker(connection)
    if settle == "ack":
        held[0].ack()
        assert held[0].acknowledged
    elif settle == "reject":
        held[0].reject(requeue=True)
    own_redis.append(RedisServer(port, config_file=str(REDIS_CONF), workdir=own_redis[0].workdir))
    own_redis[-1].start()
    assert redelivered(url, visibility_timeout=1.0, wait=8.0) == [{"n": 1}]


@pytest.mark.parametrize(
    ("kombu_version", "patched"),
    [("5.6.2", True), ("5.7.0rc1", True), ("5.7.0", True), ("5.7.1", False), ("5.8.0", False),
     ("6.0", False)],
)  # fmt: skip
def test_only_the_kombu_releases_checked_are_patched(kombu_version: str, patched: bool) -> None:
    assert resilience.CHECKED_UP_TO == (5, 7, 0)
    assert resilience.needs_patch(kombu_version) is patched


def test_install_is_idempotent() -> None:
    from kombu.transport.redis import Channel, QoS

    assert resilience.install()
    patched = (Channel.close, QoS.ack, QoS.reject)
    assert resilience.install()
    assert (Channel.close, QoS.ack, QoS.reject) == patched
