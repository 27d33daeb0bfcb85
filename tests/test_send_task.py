"""Producers that do not install pollen: plain ``celery.Celery().send_task("pollen.submit")``."""

from __future__ import annotations

import json
from pathlib import Path

import celery
import pytest
import redis

from pollen import JobStatus, Pollen
from pollen.local.servers import RedisServer, Worker
from pollen.simulator import SimulatorServer
from tests.conftest import BROKER_DB, STORE_DB
from tests.helpers import sim_stats, video_request

pytestmark = pytest.mark.integration


def test_send_task_with_a_json_payload_runs_the_job(
    worker: Worker, client: Pollen, redis_server: RedisServer
) -> None:
    producer = celery.Celery(
        broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB)
    )
    payload = {
        "provider": "runware",
        "job_id": "from-another-app-1",
        "request": video_request([0.3, 0.6]),
        "deadline": 60,
    }
    answer = producer.send_task("pollen.submit", kwargs={"job": payload}, queue="pollen.submit")
    assert answer.get(timeout=20) == {"job_id": "from-another-app-1", "created": True}
    job = client.wait("from-another-app-1", timeout=20)
    assert job.status is JobStatus.SUCCEEDED
    assert len(job.results) == 2
    producer.close()


def test_a_burst_of_send_task_payloads_shares_its_creates(
    worker: Worker, client: Pollen, redis_server: RedisServer, simulator: SimulatorServer
) -> None:
    """A stored payload joins the ready set, and a wake submits the jobs stored about then
    together (group commit): 30 payloads sent at once cost a few Runware task arrays, not 30
    creates, and each message still answers its own job as created."""
    producer = celery.Celery(
        broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB)
    )
    before = sim_stats(simulator.url)["requests_by_kind"].get("submit", 0)
    ids = [f"burst-send-{i}" for i in range(30)]
    payloads = [{"provider": "runware", "job_id": i, "request": video_request([0.2])} for i in ids]
    answers = [
        producer.send_task("pollen.submit", kwargs={"job": p}, queue="pollen.submit")
        for p in payloads
    ]
    assert [a.get(timeout=20) for a in answers] == [
        {"job_id": job_id, "created": True} for job_id in ids
    ]
    for job_id in ids:
        assert client.wait(job_id, timeout=30).status is JobStatus.SUCCEEDED
    requests = sim_stats(simulator.url)["requests_by_kind"]["submit"] - before
    assert 1 <= requests <= 10, f"{requests} create requests for 30 jobs"
    producer.close()


def test_send_task_with_a_bad_payload_is_refused_and_stores_nothing(
    worker: Worker, client: Pollen, redis_server: RedisServer
) -> None:
    producer = celery.Celery(
        broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB)
    )
    bad = {"provider": "runware", "request": {"model": "x"}, "job_id": "bad-1"}
    answer = producer.send_task("pollen.submit", kwargs={"job": bad}, queue="pollen.submit")
    with pytest.raises(Exception, match=r"request\.taskType") as caught:
        answer.get(timeout=20)
    assert type(caught.value).__name__ == "InvalidJob"
    store = redis.Redis.from_url(redis_server.url(STORE_DB))
    assert store.keys("pollen:job:*") == []
    assert store.zcard("pollen:inflight") == 0
    store.close()
    # The worker keeps serving.
    ok = producer.send_task(
        "pollen.submit",
        kwargs={"job": {"provider": "runware", "request": video_request([0.2])}},
        queue="pollen.submit",
    )
    job_id = ok.get(timeout=20)["job_id"]
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED
    producer.close()


def test_send_task_with_a_misspelt_field_is_refused_with_a_suggestion(
    worker: Worker, client: Pollen, redis_server: RedisServer
) -> None:
    producer = celery.Celery(
        broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB)
    )
    request = video_request([0.2])
    request["positivPrompt"] = request.pop("positivePrompt")
    typo = {"provider": "runware", "request": request, "job_id": "typo-1"}
    answer = producer.send_task("pollen.submit", kwargs={"job": typo}, queue="pollen.submit")
    with pytest.raises(Exception) as caught:
        answer.get(timeout=20)
    assert type(caught.value).__name__ == "InvalidJob"
    assert str(caught.value) == (
        "request.positivPrompt: unknown field; did you mean 'positivePrompt'?"
    )
    assert client.store.redis.keys("pollen:job:*") == []
    producer.close()


def test_send_task_without_a_queue_is_moved_to_the_submit_queue_and_named_in_the_log(
    worker: Worker, client: Pollen, redis_server: RedisServer
) -> None:
    """A plain producer that leaves out ``queue=`` puts its message in Celery's default queue,
    which pollen workers do not read: the reconciler moves it to the submit queue (the job
    runs) and says so with a WARNING naming the fix. The application's own messages in that
    queue stay where they are."""
    producer = celery.Celery(
        broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB)
    )
    broker = redis.Redis.from_url(redis_server.url(BROKER_DB))
    try:
        producer.send_task("myapp.resize", kwargs={"image": 7})  # another app's task
        payload = {"provider": "runware", "job_id": "no-queue-1", "request": video_request([0.2])}
        answer = producer.send_task("pollen.submit", kwargs={"job": payload})
        assert answer.get(timeout=30) == {"job_id": "no-queue-1", "created": True}
        assert client.wait("no-queue-1", timeout=30).status is JobStatus.SUCCEEDED
        left = [json.loads(raw)["headers"]["task"] for raw in broker.lrange("celery", 0, -1)]
        assert left == ["myapp.resize"]
        assert worker.log_file is not None
        log = Path(worker.log_file).read_text()
        assert "moved 1 pollen.submit message(s) from Celery's default queue 'celery'" in log
        assert "send them with queue='pollen.submit'" in log
    finally:
        broker.delete("celery")
        broker.close()
        producer.close()
