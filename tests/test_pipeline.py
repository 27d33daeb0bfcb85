"""End to end on real parts: Redis, a Celery worker subprocess, the simulator over HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pollen import JobStatus, Pollen
from pollen.local.servers import CallbackReceiver, Worker
from pollen.simulator import SimulatorServer
from tests.conftest import eventually
from tests.helpers import kept_responses, sim_faults, sim_stats, video_request

pytestmark = pytest.mark.integration


def test_partial_results_arrive_in_order_then_one_callback(
    worker: Worker, client: Pollen, simulator: SimulatorServer, receiver: CallbackReceiver
) -> None:
    job_id = client.submit(
        "runware",
        video_request([0.4, 1.6, 3.2]),
        callback_url=f"{receiver.url}/done",
        metadata={"user": "42"},
    )
    # Watch the store while the job runs: record when each result count is first seen.
    seen: dict[int, tuple[float, JobStatus]] = {}
    started = time.monotonic()
    while time.monotonic() - started < 30:
        job = client.get(job_id)
        seen.setdefault(len(job.results), (time.monotonic() - started, job.status))
        if job.terminal:
            break
        time.sleep(0.05)
    job = client.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert len(job.results) == 3
    # Partial results were readable while the job was still processing.
    assert seen[1][1] is JobStatus.PROCESSING
    assert seen[2][1] is JobStatus.PROCESSING
    assert seen[1][0] < seen[2][0] < seen[3][0]
    # In order of completion at the provider, each once.
    sim_tasks = [
        simulator_task(simulator, job.provider_task_id)["generations"][i] for i in range(3)
    ]
    assert [r.seen_at for r in job.results] == sorted(r.seen_at for r in job.results)
    assert len({r.id for r in job.results}) == 3
    assert all(g["status"] == "success" for g in sim_tasks)
    assert all(r.url and r.url.endswith(".mp4") and r.kind == "video" for r in job.results)
    assert job.cost == pytest.approx(sum(r.cost or 0 for r in job.results))
    # Exactly one completion POST, with the stored results.
    eventually(lambda: receiver.received("/done"), what="callback")
    time.sleep(1.0)
    posts = receiver.received("/done")
    assert len(posts) == 1
    assert posts[0]["json"]["type"] == "job.completed"
    body = posts[0]["json"]["data"]
    assert body["job_id"] == job_id
    assert body["status"] == "succeeded"
    assert [r["id"] for r in body["results"]] == [r.id for r in job.results]
    assert body["metadata"] == {"user": "42"}
    [delivery] = client.callbacks(job_id)
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [200]


def simulator_task(simulator: SimulatorServer, task_id: str | None) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(f"{simulator.url}/_sim/tasks/{task_id}").json())


def test_generation_errors_are_recorded_and_all_failed_fails_the_job(
    worker: Worker, client: Pollen
) -> None:
    mixed = client.submit("runware", video_request([0.3, 0.6], errors=["timeoutProvider", None]))
    failed = client.submit(
        "runware",
        video_request([0.3, 0.5], errors=["timeoutProvider", "timeoutProvider"]),
    )
    mixed_job = client.wait(mixed, timeout=20)
    assert mixed_job.status is JobStatus.SUCCEEDED
    assert len(mixed_job.results) == 1
    assert [e.code for e in mixed_job.errors] == ["timeoutProvider"]

    failed_job = client.wait(failed, timeout=20)
    assert failed_job.status is JobStatus.FAILED
    assert failed_job.results == []
    assert [e.code for e in failed_job.errors] == ["timeoutProvider", "timeoutProvider"]
    assert failed_job.error is not None
    assert failed_job.error.code == "timeoutProvider"
    assert "did not respond within the timeout window" in failed_job.error.message


def test_deadline_times_out_fires_callback_and_stops_polling(
    worker: Worker, client: Pollen, simulator: SimulatorServer, receiver: CallbackReceiver
) -> None:
    job_id = client.submit(
        "runware", video_request([60.0]), deadline=2.0, callback_url=f"{receiver.url}/t"
    )
    job = client.wait(job_id, timeout=15)
    assert job.status is JobStatus.TIMED_OUT
    assert job.error is not None and job.error.code == "deadline"
    assert "2s deadline" in job.error.message
    eventually(lambda: receiver.received("/t"), what="timed_out callback")
    assert receiver.received("/t")[0]["json"]["data"]["status"] == "timed_out"
    polls = sim_stats(simulator.url)["tasks"].get("getResponse", 0)
    time.sleep(2.0)
    assert sim_stats(simulator.url)["tasks"].get("getResponse", 0) == polls
    assert len(receiver.received("/t")) == 1


def test_provider_503_and_429_for_a_while_then_success(
    worker: Worker, client: Pollen, simulator: SimulatorServer
) -> None:
    sim_faults(simulator.url, ["503", "429", "503", "429", "500"], retry_after=1)
    job_id = client.submit("runware", video_request([0.5]))
    job = client.wait(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED
    assert len(job.results) == 1
    failed_polls = [r for r in kept_responses(client.store, job_id) if "error" in r["envelope"]]
    # Five faults hit submit and polls: every one is recorded as an attempt.
    assert job.submit_attempts + len(failed_polls) - 1 == 5
    assert sim_stats(simulator.url)["by_status"].get("429") == 2
