"""A callback delivery attempt costs at most two Redis round trips: one script claims the
delivery and reads what the attempt needs (the delivery, the job's secret, the ordering wait,
when the job finished), one records the outcome. Counted on the wire: every command or
pipeline the worker's Redis client sends is one round trip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from pollen import JobStatus, payloads
from pollen.local.servers import CallbackReceiver
from pollen.settings import Settings
from pollen.store import connection, keys
from pollen.store.outbox import delivery_id
from pollen.worker.deliveries import deliver
from pollen.worker.runtime import Deps, build_deps
from tests import steps
from tests.helpers import video_request

pytestmark = pytest.mark.integration
MOST = 2


class Wire:
    """The round trips a Redis client made since the last :meth:`take`."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def connection_class(self) -> type[redis.Connection]:
        sent = self.sent

        class Counted(redis.Connection):
            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                first = command if isinstance(command, (bytes, str)) else command[0]
                sent.append(first[:40] if isinstance(first, bytes) else str(first).encode())
                super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

        return Counted

    def take(self) -> list[bytes]:
        made, self.sent[:] = list(self.sent), []
        return made


@pytest.fixture
def wire(
    settings: Settings, clean: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Deps, Wire]]:
    counted = Wire()

    def client(url: str, master: object = None) -> redis.Redis:
        options = connection.client_options()
        return redis.Redis.from_url(url, connection_class=counted.connection_class(), **options)

    monkeypatch.setattr(connection, "redis_client", client)
    deps = build_deps(settings)
    for script in deps.outbox.scripts.values():  # loaded once per Redis, not per attempt
        deps.store.redis.script_load(script.script)
    counted.take()
    yield deps, counted
    deps.http.close()
    deps.store.redis.close()


def _finished(deps: Deps, **payload: Any) -> str:
    """A finished job with a completion callback; the delivery's id."""
    body = {"provider": "runware", "request": video_request([0.1]), **payload}
    job_id, _ = payloads.accept(deps.settings, deps.store, body, now=time.time())
    steps.finish(deps, deps.store.lifecycle.get(job_id), JobStatus.FAILED, "test", "ended by test")
    return delivery_id(job_id, "completed")


def _attempt(deps: Deps, wire: Wire, ident: str, **options: Any) -> tuple[Any, list[bytes]]:
    wire.take()
    outcome = deliver(deps, ident, lambda *sent: None, **options)
    return outcome, wire.take()


@pytest.mark.parametrize("timeout", [1.0, None], ids=["inline", "queued"])
def test_a_delivered_attempt(
    wire: tuple[Deps, Wire], receiver: CallbackReceiver, timeout: float | None
) -> None:
    deps, counted = wire
    ident = _finished(deps, callback_url=f"{receiver.url}/ok")
    outcome, trips = _attempt(deps, counted, ident, timeout=timeout)
    assert outcome.state == "delivered"
    assert len(receiver.received("/ok")) == 1
    assert len(trips) <= MOST, trips


def test_a_celery_callback(wire: tuple[Deps, Wire]) -> None:
    deps, counted = wire
    ident = _finished(deps, python_callback={"task": "myapp.done"})
    ident = ident + "_celery"
    sent: list[str] = []
    counted.take()
    outcome = deliver(deps, ident, lambda name, kwargs, queue: sent.append(name))
    trips = counted.take()
    assert (outcome.state, sent) == ("delivered", ["myapp.done"])
    assert len(trips) <= MOST, trips


def _after_an_earlier_event(deps: Deps, url: str, *, delivered: bool) -> str:
    """A finished job whose completion follows a progress event to the same receiver."""
    body = {"provider": "runware", "request": video_request([0.1]), "callback_url": url,
            "events": ["progress", "completed"]}  # fmt: skip
    job_id, _ = payloads.accept(deps.settings, deps.store, body, now=time.time())
    earlier = delivery_id(job_id, "progress", "1")
    deps.outbox.create(earlier, job_id=job_id, event="progress", kind="http", target=url,
                       body="{}", now=time.time(), watch=60, ttl=600)  # fmt: skip
    if delivered:
        sent = deliver(deps, earlier, lambda *sent: None)
        assert sent.state == "delivered"
    steps.finish(deps, deps.store.lifecycle.get(job_id), JobStatus.FAILED, "test", "ended by test")
    return delivery_id(job_id, "completed")


def test_an_attempt_waiting_for_an_earlier_event(
    wire: tuple[Deps, Wire], receiver: CallbackReceiver
) -> None:
    deps, counted = wire
    ident = _after_an_earlier_event(deps, f"{receiver.url}/order", delivered=False)
    before = time.time()
    outcome, trips = _attempt(deps, counted, ident)
    assert outcome.state is None and outcome.retry_in is not None
    assert receiver.received("/order") == []
    assert len(trips) <= MOST, trips
    waiting = deps.store.redis.hget(keys.delivery(ident), "state")
    assert waiting == "pending"  # not left claimed
    due = deps.store.redis.zscore(keys.DUE, ident)
    assert due is not None and due - before == pytest.approx(outcome.retry_in, abs=0.5)


def test_an_attempt_after_an_earlier_event(
    wire: tuple[Deps, Wire], receiver: CallbackReceiver
) -> None:
    deps, counted = wire
    ident = _after_an_earlier_event(deps, f"{receiver.url}/after", delivered=True)
    outcome, trips = _attempt(deps, counted, ident)
    assert outcome.state == "delivered"
    assert len(receiver.received("/after")) == 2
    assert len(trips) <= MOST, trips


def test_failed_attempts_until_dead(wire: tuple[Deps, Wire], receiver: CallbackReceiver) -> None:
    deps, counted = wire
    ident = _finished(deps, callback_url=f"{receiver.url}/down")
    schedule = deps.settings.callbacks.schedule
    receiver.script("/down", *[(500, {}, 0.0)] * len(schedule))
    states = []
    for _ in schedule:
        outcome, trips = _attempt(deps, counted, ident)
        states.append(outcome.state)
        assert len(trips) <= MOST, trips
    assert states == ["pending"] * (len(schedule) - 1) + ["dead"]
    outcome, trips = _attempt(deps, counted, ident)  # a dead delivery is left alone
    assert outcome.state is None and len(trips) <= 1, trips


def test_a_gone_receiver(wire: tuple[Deps, Wire], receiver: CallbackReceiver) -> None:
    deps, counted = wire
    url = f"{receiver.url}/gone"
    receiver.script("/gone", (410, {}, 0.0))
    first = _finished(deps, callback_url=url)
    outcome, trips = _attempt(deps, counted, first)
    assert outcome.state == "gone" and len(trips) <= MOST, trips
    second = _finished(deps, callback_url=url)
    outcome, trips = _attempt(deps, counted, second)  # not called again
    assert outcome.state == "gone" and len(trips) <= MOST, trips
    assert len(receiver.received("/gone")) == 1
