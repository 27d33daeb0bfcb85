"""Callbacks on real parts: signed deliveries, retries, dead letters, replay, ordering, Python
callbacks and the SSRF guard, with a real local receiver and the session's Celery worker.

The worker's schedule in the test session is compressed: [0, 0.3, 0.6, 1.0] seconds, waits
over 0.5 s are parked in Redis, the request timeout is 2 s (see conftest).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from standardwebhooks import Webhook

from pollen import InvalidJob, Job, JobStatus, Pollen, payloads
from pollen.local.servers import CallbackReceiver, RedisServer, Worker
from pollen.settings import Settings
from pollen.store import keys
from pollen.store.outbox import delivery_id
from pollen.worker.deliveries import deliver
from pollen.worker.runtime import build_deps
from tests.conftest import BROKER_DB, STORE_DB, WEBHOOK_SECRET, eventually
from tests.helpers import video_request

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def wait_for(receiver: CallbackReceiver, path: str, count: int, timeout: float = 20) -> list:  # type: ignore[type-arg]
    return eventually(  # type: ignore[no-any-return]
        lambda: len(receiver.received(path)) >= count and receiver.received(path),
        timeout=timeout,
        what=f"{count} POSTs to {path}",
    )


def state(client: Pollen, job_id: str) -> str | None:
    """The state of the job's first callback delivery, None before there is one."""
    deliveries = client.callbacks(job_id)
    return str(deliveries[0]["state"]) if deliveries else None


def test_deliveries_are_signed_and_retried_with_the_same_id(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    receiver.script("/flaky", (500, {}, 0.0), (500, {}, 0.0))
    job_id = client.submit("runware", video_request([0.2]), callback_url=f"{receiver.url}/flaky")
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.SUCCEEDED
    posts = wait_for(receiver, "/flaky", 3)
    time.sleep(1.0)
    posts = receiver.received("/flaky")
    assert len(posts) == 3  # 500, 500, 200: exactly three attempts
    ids = {p["headers"]["webhook-id"] for p in posts}
    assert ids == {delivery_id(job_id, "completed")}
    # Each attempt is signed at its own time: the timestamp is fresh (whole seconds, per the
    # spec) and the signature changes whenever the timestamp does.
    for post in posts:
        assert abs(int(post["headers"]["webhook-timestamp"]) - post["received_at"]) < 2
    stamps = {p["headers"]["webhook-timestamp"] for p in posts}
    pairs = {(p["headers"]["webhook-timestamp"], p["headers"]["webhook-signature"]) for p in posts}
    assert len(pairs) == len(stamps)
    for post in posts:
        Webhook(WEBHOOK_SECRET).verify(post["body"], post["headers"])  # the spec authors' lib
    assert client.get(job_id).status is JobStatus.SUCCEEDED  # unchanged by the failures
    [delivery] = client.callbacks(job_id)
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 200]
    assert all(a["latency_ms"] >= 0 and a["at"] > 0 for a in delivery["attempts"])


def test_retry_after_is_honoured(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    receiver.script("/busy", (429, {"Retry-After": "2"}, 0.0))
    job_id = client.submit("runware", video_request([0.1]), callback_url=f"{receiver.url}/busy")
    first, second = wait_for(receiver, "/busy", 2)
    assert second["received_at"] - first["received_at"] >= 1.9  # not the 0.3 s of the schedule
    assert client.callbacks(job_id)[0]["attempts"][0]["retry_after"] == 2


def test_redirects_are_not_followed(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    target = f"{receiver.url}/elsewhere"
    receiver.script("/moved", (301, {"Location": target}, 0.0), (302, {"Location": target}, 0.0))
    job_id = client.submit("runware", video_request([0.1]), callback_url=f"{receiver.url}/moved")
    wait_for(receiver, "/moved", 3)
    # the third answer reached the worker; its record follows the response
    eventually(lambda: state(client, job_id) == "delivered", what="delivered")
    assert receiver.received("/elsewhere") == []
    attempts = client.callbacks(job_id)[0]["attempts"]
    assert [a["status_code"] for a in attempts] == [301, 302, 200]
    assert "redirect not followed" in attempts[0]["error"]


def test_410_gone_stops_deliveries_to_that_url(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    receiver.script("/gone", (410, {}, 0.0))
    first = client.submit("runware", video_request([0.1]), callback_url=f"{receiver.url}/gone")
    eventually(lambda: state(client, first) == "gone", what="gone")
    second = client.submit("runware", video_request([0.1]), callback_url=f"{receiver.url}/gone")
    eventually(lambda: state(client, second) == "gone", what="second gone")
    assert len(receiver.received("/gone")) == 1  # the second job's event was never sent


def test_a_receiver_slower_than_the_timeout_is_a_failure(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    receiver.script("/slow", (200, {}, 3.0))  # the worker gives up after 2 s
    job_id = client.submit("runware", video_request([0.1]), callback_url=f"{receiver.url}/slow")
    wait_for(receiver, "/slow", 2)
    eventually(lambda: state(client, job_id) == "delivered", what="delivered")
    attempts = client.callbacks(job_id)[0]["attempts"]
    assert attempts[0]["outcome"] == "retry" and "timed out" in attempts[0]["error"]
    assert attempts[0]["latency_ms"] >= 1900
    assert attempts[1]["status_code"] == 200


def test_exhausted_schedule_goes_to_dead_letter_and_replay_keeps_the_id(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    receiver.script("/down", *[(503, {}, 0.0)] * 4)
    job_id = client.submit("runware", video_request([0.1]), callback_url=f"{receiver.url}/down")
    eventually(lambda: state(client, job_id) == "dead", timeout=30, what="dead")
    ident = delivery_id(job_id, "completed")
    assert client.store.redis.zscore(keys.DEAD, ident) is not None
    assert len(receiver.received("/down")) == 4  # the whole schedule, nothing more
    assert client.get(job_id).status is JobStatus.SUCCEEDED
    assert client.replay_callbacks(job_id) == [ident]  # the receiver is back (answers 200)
    posts = wait_for(receiver, "/down", 5)
    assert posts[-1]["headers"]["webhook-id"] == ident
    eventually(lambda: state(client, job_id) == "delivered", what="replayed")
    assert client.store.redis.zscore(keys.DEAD, ident) is None


def test_partial_and_completed_events_arrive_in_order(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    job_id = client.submit(
        "runware",
        video_request([0.3, 0.9, 1.5]),
        callback_url=f"{receiver.url}/events",
        events=["partial", "completed"],
    )
    posts = wait_for(receiver, "/events", 4)
    time.sleep(0.5)
    posts = receiver.received("/events")
    types = [p["json"]["type"] for p in posts]
    assert types == ["job.partial", "job.partial", "job.partial", "job.completed"]
    assert [p["json"]["data"]["index"] for p in posts[:3]] == [1, 2, 3]
    job = client.get(job_id)
    assert [p["json"]["data"]["result"]["id"] for p in posts[:3]] == [r.id for r in job.results]
    assert len({p["headers"]["webhook-id"] for p in posts}) == 4
    # Partial results are sent as they arrive, not when the job ends.
    assert job.finished_at is not None
    assert posts[0]["received_at"] < job.finished_at - 0.3


def test_started_and_progress_events(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    client.submit(
        "runware",
        video_request([0.3, 0.9, 1.5]),
        callback_url=f"{receiver.url}/all",
        events=["started", "progress", "completed"],
    )
    eventually(
        lambda: any(p["json"]["type"] == "job.completed" for p in receiver.received("/all")),
        what="the completed event",
    )
    types = [p["json"]["type"] for p in receiver.received("/all")]
    assert types[0] == "job.started" and types[-1] == "job.completed"
    progress = [p["json"]["data"]["progress"] for p in receiver.received("/all")[1:-1]]
    assert progress and progress == sorted(progress) and all(0 < p < 1 for p in progress)


def test_long_waits_are_parked_in_redis_not_sent_as_countdowns(
    settings: Settings, clean: None, receiver: CallbackReceiver
) -> None:
    hours = settings.model_copy(
        update={"callbacks": settings.callbacks.model_copy(update={"schedule": [0, 7200]})}
    )
    deps = build_deps(hours)
    try:
        payload = {
            "provider": "runware",
            "request": video_request([0.1]),
            "callback_url": f"{receiver.url}/later",
        }
        from tests import steps

        job_id, _ = payloads.accept(hours, deps.store, payload, now=time.time())
        steps.finish(
            deps, deps.store.lifecycle.get(job_id), JobStatus.FAILED, "test", "ended by test"
        )
        receiver.script("/later", (500, {}, 0.0))
        sent: list[str] = []
        outcome = deliver(deps, delivery_id(job_id, "completed"), lambda *a: sent.append(a[0]))
        assert outcome.state == "pending"
        assert outcome.retry_in is None  # no countdown message: the two hours wait in Redis
        due = deps.store.redis.zscore(keys.DUE, delivery_id(job_id, "completed"))
        assert due is not None and 7200 * 0.85 < due - time.time() < 7200 * 1.15
    finally:
        deps.http.close()


class _Fixed(random.Random):
    """A random source that always draws ``value`` (both ends of the jitter range)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 5.0), (0.5, 10.0), (1.0, 15.0)])
def test_callback_retry_jitter_draws_from_the_injected_rng(
    settings: Settings, clean: None, receiver: CallbackReceiver, draw: float, expected: float
) -> None:
    """The same random source as the poll jitter (``deps.rng``): seeded tests are repeatable.
    Schedule 10 s with jitter 0.5 spans 5..15 s; parking is off, so the wait is a countdown."""
    callbacks = {"schedule": [0, 10], "jitter": 0.5, "park_after": 60}
    tuned = settings.model_copy(
        update={"callbacks": settings.callbacks.model_copy(update=callbacks)}
    )
    deps = build_deps(tuned)
    deps.rng = _Fixed(draw)
    try:
        payload = {
            "provider": "runware",
            "request": video_request([0.1]),
            "callback_url": f"{receiver.url}/jitter",
        }
        from tests import steps

        job_id, _ = payloads.accept(tuned, deps.store, payload, now=time.time())
        steps.finish(
            deps, deps.store.lifecycle.get(job_id), JobStatus.FAILED, "test", "ended by test"
        )
        receiver.script("/jitter", (500, {}, 0.0))
        outcome = deliver(deps, delivery_id(job_id, "completed"), lambda *a: None)
        assert outcome.state == "pending"
        assert outcome.retry_in == pytest.approx(expected)
    finally:
        deps.http.close()


def test_wait_blocks_on_the_job_events_without_busy_polling(
    worker: Worker, client: Pollen, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = client.submit("runware", video_request([2.0]))
    reads: list[float] = []
    get = client.get

    def counted(ident: str) -> Job:
        reads.append(time.monotonic())
        return get(ident)

    monkeypatch.setattr(client, "get", counted)
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.SUCCEEDED
    # About 2 s of waiting: the job is read once per event it announces, not in a loop.
    assert 2 <= len(reads) <= 12, reads


def test_hostile_callback_urls_are_refused_at_submission(client: Pollen) -> None:
    hostile = [
        "http://169.254.169.254/latest",
        "http://10.0.0.1/x",
        "http://[::1]:80/x",
        "http://0xa9fea9fe/",
        "http://[::ffff:10.0.0.1]/",
        "ftp://example.com/x",
    ]
    for url in hostile:
        with pytest.raises(InvalidJob, match=r"^callback_url: "):
            client.submit("runware", video_request([0.1]), callback_url=url)
    assert client.store.redis.keys("pollen:job:*") == []


def test_a_listener_on_a_loopback_address_not_allowlisted_receives_nothing(
    worker: Worker, client: Pollen, redis_server: RedisServer
) -> None:
    # The workers allow 127.0.0.0/8 only; ::1 is loopback too but not allowlisted. A delivery
    # record that points there (as if it had slipped past submission) must never connect.
    import socket
    import threading

    listener = socket.socket(socket.AF_INET6)
    listener.bind(("::1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept_loop() -> None:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                accepted.append(listener.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    job_id = client.submit("runware", video_request([0.1]))
    client.wait(job_id, timeout=20)
    ident = delivery_id(job_id, "completed")
    client.outbox.create(
        ident, job_id=job_id, event="completed", kind="http", target=f"http://[::1]:{port}/x",
        body="{}", now=time.time(), watch=60, ttl=600,
    )  # fmt: skip
    client.celery.send_task("pollen.deliver_callback", args=(ident,), queue="pollen.callbacks")
    eventually(lambda: state(client, job_id) == "dead", what="refused delivery")
    attempt = client.callbacks(job_id)[0]["attempts"][0]
    assert attempt["outcome"] == "failed" and "::1" in attempt["error"]
    thread.join()
    listener.close()
    assert accepted == []


@pytest.fixture
def producer_worker(redis_server: RedisServer, tmp_path: Path) -> Iterator[str]:
    """The producer's own worker, consuming its 'myapp' queue (a separate app and process)."""
    results = redis_server.url(STORE_DB)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PRODUCER_BROKER": redis_server.url(BROKER_DB),
        "PRODUCER_RESULTS": results,
    }
    log = (tmp_path / "producer.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.producer_app", "worker", "-Q", "myapp",
         "-P", "solo", "-n", "producer@%h", "--without-mingle", "--without-gossip"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield results
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_python_callback_reaches_the_producers_own_task(
    worker: Worker, client: Pollen, producer_worker: str
) -> None:
    job_id = client.submit(
        "runware",
        video_request([0.2, 0.4]),
        python_callback={"task": "myapp.video_done", "queue": "myapp"},
        metadata={"order": "7"},
    )
    store = redis.Redis.from_url(producer_worker)
    got = eventually(lambda: store.lrange("producer:results", 0, -1), timeout=30, what="task")
    [result] = [json.loads(r) for r in got]
    assert result["job_id"] == job_id and result["status"] == "succeeded"
    assert len(result["results"]) == 2 and result["metadata"] == {"order": "7"}
    store.close()
