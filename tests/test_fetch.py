"""Reliable fetch (:mod:`pollen.store.fetch`): a message a consumer takes from a
Redis broker is in kombu's unacked hash before the consumer has it, on a real Redis."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis

from pollen.local.servers import RedisServer
from pollen.store import fetch as reliable_fetch

K: Any = kombu  # kombu's annotations are partial: the test uses it untyped
DB = 14  # a database no worker of the session consumes or restores
EXCHANGE = K.Exchange("fetch", type="direct")
FIRST = K.Queue("fetch.first", EXCHANGE, routing_key="first")
SECOND = K.Queue("fetch.second", EXCHANGE, routing_key="second")


class Died(Exception):
    """The consumer 'dies' the moment a message reaches it (before kombu's QoS sees it)."""


@pytest.fixture
def url(redis_server: RedisServer) -> Iterator[str]:
    reliable_fetch.install()
    reliable_fetch.wake_on(FIRST.name)
    broker = redis.Redis.from_url(redis_server.url(DB))
    broker.flushdb()
    yield redis_server.url(DB)
    broker.flushdb()
    broker.close()


@pytest.fixture
def broker(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url, decode_responses=True)
    yield client
    client.close()


def publish(url: str, queue: Any, *bodies: object) -> None:
    with K.Connection(url) as connection:
        producer = connection.Producer()
        for body in bodies:
            producer.publish(body, exchange=EXCHANGE, routing_key=queue.routing_key,
                             declare=[queue])  # fmt: skip


def consume(url: str, queues: list[Any], count: int, seconds: float = 10.0) -> list[object]:
    """Bodies in the order they arrive (each acknowledged), until ``count`` or ``seconds``."""
    bodies: list[object] = []
    with K.Connection(url) as connection:

        def take(body: object, message: Any) -> None:
            bodies.append(body)
            message.ack()

        with connection.Consumer(queues, callbacks=[take]):
            deadline = time.monotonic() + seconds
            while len(bodies) < count and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.3)
    return bodies


@contextlib.contextmanager
def kombu_as_shipped() -> Iterator[None]:
    """kombu's own BRPOP take (the patch's wrapped originals), for the control case."""
    from kombu.transport import redis as kombu_redis

    channel: Any = kombu_redis.Channel
    patched = channel._brpop_start, channel._brpop_read
    channel._brpop_start, channel._brpop_read = (p.__wrapped__ for p in patched)
    try:
        yield
    finally:
        channel._brpop_start, channel._brpop_read = patched


def die_on_delivery(url: str, queue: Any) -> None:
    """A consumer whose process ends between taking a message and handing it on."""
    with K.Connection(url) as connection:
        transport = connection.transport  # connect
        connection.default_channel  # noqa: B018

        def deliver(_message: object, _queue: str) -> None:
            raise Died

        with connection.Consumer([queue], callbacks=[]):
            connection.default_channel.connection._deliver = deliver
            with pytest.raises(Died):
                for _ in range(20):
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.3)
        assert transport is not None


@pytest.mark.integration
@pytest.mark.parametrize("patched", [True, False], ids=["reliable-fetch", "kombu-brpop"])
def test_a_consumer_dying_as_it_takes_a_message_leaves_it_in_the_unacked_hash(
    url: str, broker: redis.Redis, patched: bool
) -> None:
    publish(url, FIRST, {"n": 1})
    with contextlib.nullcontext() if patched else kombu_as_shipped():
        die_on_delivery(url, FIRST)
    assert broker.llen(FIRST.name) == 0  # taken either way
    entries = broker.hgetall("unacked")
    if not patched:  # kombu's BRPOP: the message is nowhere (what the patch closes)
        assert entries == {}
        return
    [(tag, raw)] = entries.items()
    message, exchange, routing_key = json.loads(raw)
    assert message["properties"]["delivery_tag"] == tag
    assert (exchange, routing_key) == ("fetch", "first")
    assert broker.zscore("unacked_index", tag) is not None
    # kombu reads the record as its own: its restore puts the message back, and it is consumed
    with K.Connection(url) as connection:
        connection.default_channel.qos.restore_by_tag(tag)
    assert consume(url, [FIRST], 1) == [{"n": 1}]
    assert broker.hlen("unacked") == 0 and broker.zcard("unacked_index") == 0


@pytest.mark.integration
def test_messages_arrive_once_and_in_order_on_every_queue_after_idle_waits(
    url: str, broker: redis.Redis
) -> None:
    publish(url, FIRST, *({"first": i} for i in range(20)))
    publish(url, SECOND, *({"second": i} for i in range(5)))
    got = consume(url, [FIRST, SECOND], 25)
    assert [b for b in got if "first" in b] == [{"first": i} for i in range(20)]  # type: ignore[operator]
    assert [b for b in got if "second" in b] == [{"second": i} for i in range(5)]  # type: ignore[operator]
    assert broker.hlen("unacked") == 0  # each record written once, removed by its ack


@pytest.mark.integration
def test_an_idle_consumer_takes_messages_on_the_wake_queue_and_the_others(
    url: str, broker: redis.Redis
) -> None:
    bodies: list[object] = []
    with K.Connection(url) as connection:

        def take(body: object, message: Any) -> None:
            bodies.append(body)
            message.ack()

        with connection.Consumer([FIRST, SECOND], callbacks=[take]):
            for _ in range(3):  # idle: several take / wait rounds with nothing there
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.3)
            publish(url, SECOND, {"second": 1})
            publish(url, FIRST, {"first": 1}, {"first": 2})
            broker.script_flush()  # a restarted server forgot the script: taken all the same
            publish(url, FIRST, {"first": 3})
            deadline = time.monotonic() + 10
            while len(bodies) < 4 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.3)
    assert sorted(map(json.dumps, bodies)) == sorted(
        map(json.dumps, [{"second": 1}, {"first": 1}, {"first": 2}, {"first": 3}])
    )
    assert broker.llen(FIRST.name) == 0 and broker.llen(SECOND.name) == 0
    assert broker.hlen("unacked") == 0


@pytest.mark.integration
def test_a_broker_without_blmove_still_delivers_every_message(
    url: str, broker: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """As on Redis < 6.2 (an ACL refuses the command here): idle channels pause instead."""
    user = "fetch-no-blmove"
    admin: Any = broker  # redis-py's execute_command is untyped
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", ">pw", "~*", "&*", "+@all",
                           "-blmove")  # fmt: skip
    try:
        limited = url.replace("redis://", f"redis://{user}:pw@", 1)
        publish(url, FIRST, {"first": 1})
        assert consume(limited, [FIRST, SECOND], 1) == [{"first": 1}]
        for _ in range(2):  # idle rounds (waits), then more messages
            consume(limited, [FIRST, SECOND], 1, seconds=0.5)
        publish(url, SECOND, {"second": 1})
        assert consume(limited, [FIRST, SECOND], 1) == [{"second": 1}]
    finally:
        admin.execute_command("ACL", "DELUSER", user)
    assert "refused BLMOVE" in caplog.text
    assert broker.hlen("unacked") == 0


@pytest.mark.integration
def test_a_consumer_without_acks_leaves_no_record_behind(url: str, broker: redis.Redis) -> None:
    """As kombu's reply consumers take (a worker's mingle, a control call in a worker):
    ``no_ack``, so kombu's QoS never records the message and nothing acknowledges it; a record
    the script wrote would be restored (delivered again) after the visibility timeout."""
    publish(url, FIRST, {"reply": 1})
    bodies: list[object] = []
    with K.Connection(url) as connection:
        with connection.Consumer([FIRST], callbacks=[lambda body, _m: bodies.append(body)],
                                 no_ack=True):  # fmt: skip
            deadline = time.monotonic() + 10
            while not bodies and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.3)
        recorded = connection.default_channel.qos._pollen_recorded
    assert bodies == [{"reply": 1}]
    assert broker.hlen("unacked") == 0 and broker.zcard("unacked_index") == 0
    assert not recorded


@pytest.mark.integration
def test_a_broker_refusing_every_wait_still_delivers_every_message(
    url: str, broker: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """As on Redis < 6.0 (no fractional BLPOP timeout; an ACL refuses both here): the channel
    takes with kombu's BRPOP instead of stalling on refused waits."""
    user = "fetch-no-waits"
    admin: Any = broker  # redis-py's execute_command is untyped
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", ">pw", "~*", "&*", "+@all",
                           "-blmove", "-blpop")  # fmt: skip
    later = threading.Timer(1.0, publish, (url, SECOND, {"second": 1}))  # after idle rounds
    try:
        later.start()
        bodies = consume(url.replace("redis://", f"redis://{user}:pw@", 1), [FIRST, SECOND], 1)
    finally:
        later.join()
        admin.execute_command("ACL", "DELUSER", user)
    assert bodies == [{"second": 1}]
    assert caplog.text.count("refused") == 2  # once per command, not once per round


@pytest.mark.integration
def test_a_channel_made_before_install_reads_what_the_patch_sends(
    url: str, broker: redis.Redis
) -> None:
    """kombu keeps each channel's reader in its handlers when the channel is made: one made
    before the patch (a test process, a producer's control channel) would read the script's
    reply as a BRPOP's and fail on its three parts."""
    bodies: list[object] = []
    publish(url, FIRST, {"first": 1})
    with K.Connection(url) as connection:
        with kombu_as_shipped():
            connection.default_channel  # noqa: B018  (its handlers name kombu's reader)

        def take(body: object, message: Any) -> None:
            bodies.append(body)
            message.ack()

        with connection.Consumer([FIRST], callbacks=[take]):
            deadline = time.monotonic() + 10
            while not bodies and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.3)
    assert bodies == [{"first": 1}]
    assert broker.hlen("unacked") == 0
