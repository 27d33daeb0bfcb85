"""What Flower (and the result backend) say about pollen's tasks is what happened.

``pollen.submit`` answers ``created: True`` for a new job in both its forms (``job=`` and
``job_id=``) and ``False`` for a duplicate; the client's jobs show as the wake that submitted
them (``created`` counted); a callback attempt the receiver answered
500 is never a SUCCESS of a delivery message: the finishing poll's own attempt shows in its
result as queued, a delivery message whose attempt failed is a RETRY when it runs again after
a countdown and a FAILURE with the reason when the next attempt waits in Redis (the session's
worker parks waits over 0.5 s: its schedule is 0, 0.3, 0.6, 1.0 s, so attempt 2 follows by
countdown, 3 and 4 parked).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import celery
import pytest

from pollen import JobStatus, Pollen, payloads
from pollen.local.servers import CallbackReceiver, RedisServer, Worker
from pollen.simulator import SimulatorServer
from tests.conftest import BROKER_DB, eventually
from tests.flower import Flower
from tests.helpers import sim_faults, video_request

pytestmark = pytest.mark.integration


@pytest.fixture
def producer(redis_server: RedisServer) -> Iterator[celery.Celery]:
    app = celery.Celery(broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB))
    yield app
    app.close()


def test_submit_by_job_id_answers_created_for_a_new_job_and_not_for_a_duplicate(
    worker: Worker, client: Pollen, producer: celery.Celery
) -> None:
    """The client's form: the producer stores the job, the message carries only its id."""
    payload = {"provider": "runware", "request": video_request([0.2])}
    job_id, stored = payloads.accept(client.settings, client.store, payload, now=time.time())
    assert stored
    first = producer.send_task("pollen.submit", kwargs={"job_id": job_id}, queue="pollen.submit")
    assert first.get(timeout=20) == {"job_id": job_id, "created": True}
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED
    again = producer.send_task("pollen.submit", kwargs={"job_id": job_id}, queue="pollen.submit")
    assert again.get(timeout=20) == {"job_id": job_id, "created": False}


def test_submit_by_payload_stays_created_across_its_own_retries(
    worker: Worker, client: Pollen, producer: celery.Celery, simulator: SimulatorServer
) -> None:
    sim_faults(simulator.url, ["503"], retry_after=0)  # the first submit attempt fails
    payload = {"provider": "runware", "job_id": "flower-retried-1", "request": video_request([0.2])}
    answer = producer.send_task("pollen.submit", kwargs={"job": payload}, queue="pollen.submit")
    assert answer.get(timeout=20) == {"job_id": "flower-retried-1", "created": True}
    job = client.wait("flower-retried-1", timeout=20)
    assert (job.status, job.submit_attempts) == (JobStatus.SUCCEEDED, 2)
    duplicate = producer.send_task("pollen.submit", kwargs={"job": payload}, queue="pollen.submit")
    assert duplicate.get(timeout=20) == {"job_id": "flower-retried-1", "created": False}


def _tasks(flower: Flower, name: str, job_id: str) -> list[dict[str, Any]]:
    tasks = flower.get("/api/tasks").json().values()
    return [t for t in tasks if t["name"] == name and job_id in f"{t['args']} {t['kwargs']}"]


def test_flower_shows_a_new_jobs_submit_as_created(flower: Flower, client: Pollen) -> None:
    job_id = client.submit("runware", video_request([0.2]))
    assert client.wait(job_id, 20).status is JobStatus.SUCCEEDED

    def shown() -> list[dict[str, Any]]:
        return [t for t in _tasks(flower, "pollen.submit", job_id) if t["state"] == "SUCCESS"]

    # the wake the client sent: it took the ready jobs (this one alone) and submitted them
    (task,) = eventually(shown, timeout=20, interval=0.3, what="the submit in Flower")
    assert "wake" in str(task["kwargs"])
    assert task["result"] == repr({"ready": 1, "jobs": 1, "created": 1})


def test_flower_never_shows_a_500_answered_callback_attempt_as_success(
    flower: Flower, client: Pollen, receiver: CallbackReceiver
) -> None:
    receiver.script("/retried", (500, {}, 0.0))  # attempt 1 fails, attempt 2 is taken
    retried = client.submit("runware", video_request([0.2]), callback_url=f"{receiver.url}/retried")
    receiver.script("/failing", *[(500, {}, 0.0)] * 4)  # every attempt fails: dead after 4
    failing = client.submit("runware", video_request([0.2]), callback_url=f"{receiver.url}/failing")
    for job_id in (retried, failing):
        assert client.wait(job_id, 20).status is JobStatus.SUCCEEDED
    eventually(lambda: len(receiver.received("/failing")) == 4, timeout=20, what="4 attempts")
    eventually(lambda: client.callbacks(failing)[0]["state"] == "dead", timeout=10)

    # Attempt 1 is the finishing poll's own; 2 follows by countdown message, 3 and 4 wait
    # in Redis: three delivery messages, none a SUCCESS.
    def settled() -> list[dict[str, Any]]:
        tasks = _tasks(flower, "pollen.deliver_callback", failing)
        done = len(tasks) == 3 and all(t["state"] in ("SUCCESS", "FAILURE") for t in tasks)
        return tasks if done else []

    tasks = eventually(settled, timeout=20, interval=0.3, what="three delivery messages")
    assert [t["state"] for t in tasks] == ["FAILURE"] * 3
    shown = sorted(str(t["exception"]) for t in tasks)
    assert "attempt 2 failed: HTTP 500; next in" in shown[0], shown
    assert "attempt 3 failed: HTTP 500; next in" in shown[1], shown
    assert "dead after 4 attempt(s): HTTP 500" in shown[2], shown
    assert all("CallbackNotDelivered" in s and receiver.url not in s for s in shown)

    # The poll that finished the job made attempt 1 (answered 500): its result says the
    # callback went on to the queue, where one message delivered it.
    def delivered() -> list[dict[str, Any]]:
        tasks = _tasks(flower, "pollen.deliver_callback", retried)
        return tasks if tasks and all(t["state"] == "SUCCESS" for t in tasks) else []

    (task,) = eventually(delivered, timeout=20, interval=0.3, what="the retried delivery")
    assert task["result"] == repr("delivered (HTTP 200)")
    assert len(receiver.received("/retried")) == 2
    polls = [t for t in _tasks(flower, "pollen.poll", retried) if t["state"] == "SUCCESS"]
    # (both jobs may end in one poll batch: it then queued both callbacks)
    assert any(re.search(r"'callbacks_queued': [12]\b", str(t["result"])) for t in polls), polls
