"""Every step is safe to run twice: redelivered submits, duplicated polls, concurrent claims."""

from __future__ import annotations

import time
from typing import Any

import celery
import pytest
import redis

from pollen import IdempotencyConflict, InvalidJob, JobStatus, Pollen
from pollen.local.servers import CallbackReceiver, RedisServer, Worker
from pollen.simulator import SimulatorServer
from pollen.store import keys
from pollen.worker import batch
from pollen.worker.runtime import Deps
from tests import steps
from tests.conftest import BROKER_DB, eventually
from tests.helpers import accept_job, sim_stats, video_request

pytestmark = pytest.mark.integration


def test_redelivered_submit_after_the_provider_accepted_creates_no_second_task(
    deps: Deps, simulator: SimulatorServer
) -> None:
    job_id = accept_job(deps, [5.0])
    first = steps.submit(deps, job_id)
    assert first.poll_in is not None and first.attempt == 1
    job = deps.store.lifecycle.get(job_id)
    assert job.status is JobStatus.SUBMITTED
    # The worker crashed after the provider accepted but before the status was persisted:
    # the redelivered message finds the job queued and submits the same taskUUID again.
    deps.store.redis.hset(keys.job(job_id), "status", "queued")
    again = steps.submit(deps, job_id)
    assert again.poll_in is not None and again.attempt == 1
    stats = sim_stats(simulator.url)
    assert stats["submits_by_task"][job.task_uuid] == 2  # the provider saw both...
    assert stats["created"] == 1  # ...and refused the second as conflictTaskUUID
    job = deps.store.lifecycle.get(job_id)
    assert job.status is JobStatus.SUBMITTED
    assert job.provider_task_id == job.task_uuid
    assert job.submit_attempts == 2


def test_redelivered_submit_after_persisting_does_not_call_the_provider(
    deps: Deps, simulator: SimulatorServer
) -> None:
    job_id = accept_job(deps, [5.0])
    steps.submit(deps, job_id)
    outcome = steps.submit(deps, job_id)
    assert outcome.attempt == 1 and outcome.poll_in is not None
    assert sim_stats(simulator.url)["tasks"].get("videoInference") == 1


def test_a_poll_attempt_acts_once(deps: Deps) -> None:
    job_id = accept_job(deps, [0.1, 0.1])
    steps.submit(deps, job_id)
    now = time.time()
    assert deps.store.polls.claim([(job_id, 1)], now=now, lease=60)[0].verdict == "ok"
    busy = deps.store.polls.claim([(job_id, 1)], now=now, lease=60)[0]
    assert busy.verdict == "busy" and 59.99 < busy.wait < 60.01
    assert deps.store.polls.claim([(job_id, 2)], now=now, lease=60)[0].verdict == "stale"
    # A lease that expired (its holder died) can be taken over, and the death is counted.
    taken = deps.store.polls.claim([(job_id, 1)], now=now + 61, lease=60)[0]
    assert taken.verdict == "ok" and taken.worker_losses == 1


def test_the_same_poll_applied_twice_records_each_generation_once(deps: Deps) -> None:
    job_id = accept_job(deps, [0.05, 0.05])
    steps.submit(deps, job_id)
    time.sleep(0.3)
    # Two copies of poll message 1 race: the lease lets one through; the other is stale.
    first = batch.poll_batch(deps, [(job_id, 1)])
    second = batch.poll_batch(deps, [(job_id, 1)])
    assert first.finished == [job_id]
    assert second.finished == [] and second.polls == [] and second.deliveries == []
    job = deps.store.lifecycle.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert len(job.results) == 2
    assert deps.store.redis.llen(keys.result_order(job_id)) == 2
    assert job.polls == 1


def test_duplicated_messages_through_the_worker_yield_one_job_outcome(
    worker: Worker,
    client: Pollen,
    simulator: SimulatorServer,
    receiver: CallbackReceiver,
    redis_server: object,
) -> None:
    job_id = client.submit("runware", video_request([0.8, 1.6]), callback_url=f"{receiver.url}/dup")
    # Redeliveries: the submit message twice more, and stray copies of early poll messages.
    for _ in range(2):
        client.celery.send_task("pollen.submit", kwargs={"job_id": job_id}, queue="pollen.submit")
    for attempt in (1, 1, 2, 3):
        client.celery.send_task(
            "pollen.poll", kwargs={"job_id": job_id, "attempt": attempt}, queue="pollen.poll"
        )
    job = client.wait(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED
    assert len(job.results) == 2
    assert len({r.id for r in job.results}) == 2
    assert client.store.redis.llen(keys.result_order(job_id)) == 2
    eventually(lambda: receiver.received("/dup"), what="callback")
    time.sleep(1.0)
    assert len(receiver.received("/dup")) == 1
    assert sim_stats(simulator.url)["created"] == 1


def test_same_job_id_twice_is_one_job(
    worker: Worker, client: Pollen, simulator: SimulatorServer
) -> None:
    first = client.submit("runware", video_request([0.3]), job_id="order-1234")
    second = client.submit("runware", video_request([0.3]), job_id="order-1234")
    assert first == second == "order-1234"
    assert client.wait(first, timeout=20).status is JobStatus.SUCCEEDED
    assert sim_stats(simulator.url)["created"] == 1
    store = redis.Redis.from_url(client.settings.redis_url)
    assert store.exists(keys.job("order-1234")) == 1
    store.close()


def test_same_job_id_with_a_different_request_is_refused(
    worker: Worker, client: Pollen, simulator: SimulatorServer
) -> None:
    first = client.submit("runware", video_request([0.3]), job_id="order-77")
    changed = video_request([0.3])
    changed["positivePrompt"] = "a different prompt"
    for request, extra in ((changed, {}), (video_request([0.3]), {"metadata": {"k": "v"}})):
        with pytest.raises(IdempotencyConflict, match="already used with a different request"):
            client.submit("runware", request, job_id="order-77", **extra)  # type: ignore[arg-type]
    assert issubclass(IdempotencyConflict, InvalidJob)
    # The first request is the job, and still the same one when sent again.
    assert client.submit("runware", video_request([0.3]), job_id="order-77") == first
    job = client.wait(first, timeout=20)
    assert job.status is JobStatus.SUCCEEDED
    assert job.request["positivePrompt"] == video_request([0.3])["positivePrompt"]
    assert job.metadata == {}
    assert sim_stats(simulator.url)["created"] == 1


def test_send_task_follows_the_same_idempotency_rule(
    worker: Worker, client: Pollen, redis_server: RedisServer, simulator: SimulatorServer
) -> None:
    producer = celery.Celery(
        broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB)
    )
    payload: dict[str, Any] = {
        "provider": "runware",
        "job_id": "sent-twice",
        "request": video_request([0.3]),
    }

    def send(job: dict[str, Any]) -> Any:
        answer = producer.send_task("pollen.submit", kwargs={"job": job}, queue="pollen.submit")
        return answer.get(timeout=20)

    assert send(payload) == {"job_id": "sent-twice", "created": True}
    # A redelivered (or re-sent) message with the same payload is the same job.
    assert send(payload) == {"job_id": "sent-twice", "created": False}
    different = {**payload, "request": video_request([0.3, 0.3])}
    with pytest.raises(Exception, match="already used with a different request") as caught:
        send(different)
    assert type(caught.value).__name__ == "IdempotencyConflict"
    job = client.wait("sent-twice", timeout=20)
    assert job.status is JobStatus.SUCCEEDED and len(job.results) == 1
    assert sim_stats(simulator.url)["created"] == 1
    producer.close()
