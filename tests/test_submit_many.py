"""submit_many: many jobs in one store round trip and one message; the worker creates their
provider tasks together (a Runware task array) and their first polls travel as batches."""

from __future__ import annotations

from typing import Any

import pytest

from pollen import InvalidJob, JobStatus, Pollen, Submitted
from pollen.local.servers import Worker
from pollen.simulator import SimulatorServer
from pollen.store import keys
from tests.helpers import sim_stats, video_request

pytestmark = pytest.mark.integration


def _payload(job_id: str, durations: list[float] | None = None) -> dict[str, Any]:
    return {"provider": "runware", "job_id": job_id, "request": video_request(durations or [0.3])}


def test_one_bad_job_is_refused_by_name_and_the_others_run(
    worker: Worker, client: Pollen, simulator: SimulatorServer
) -> None:
    bad = {"provider": "runware", "request": {"taskType": "videoInference"}}  # no model
    payloads = [_payload(f"many-{i}") for i in range(4)]
    payloads.insert(2, bad)
    payloads.append(_payload("many-0"))  # the same id twice in one call
    answer = client.submit_many(payloads)
    assert isinstance(answer, Submitted)
    assert answer.job_ids == ["many-0", "many-1", None, "many-2", "many-3", None]
    assert set(answer.errors) == {2, 5}
    assert isinstance(answer.errors[2], InvalidJob) and "request.model" in str(answer.errors[2])
    assert "appears twice" in str(answer.errors[5])
    assert answer.accepted == ["many-0", "many-1", "many-2", "many-3"]
    for job_id in answer.accepted:
        assert client.wait(job_id, timeout=30).status is JobStatus.SUCCEEDED
    stored = {str(k) for k in client.store.redis.keys(keys.job("*"))}
    assert len([k for k in stored if k.count(":") == 2]) == 4  # nothing for the refused ones
    stats = sim_stats(simulator.url)
    assert stats["created"] == 4
    assert stats["requests_by_kind"]["submit"] == 1  # one Runware task array for all four


def test_the_first_polls_of_jobs_submitted_together_travel_together(
    worker: Worker, client: Pollen, simulator: SimulatorServer
) -> None:
    answer = client.submit_many([_payload(f"together-{i}", [0.1]) for i in range(20)])
    assert answer.errors == {}
    for job_id in answer.accepted:
        job = client.wait(job_id, timeout=30)
        assert job.status is JobStatus.SUCCEEDED and job.polls >= 1
    stats = sim_stats(simulator.url)
    assert stats["requests_by_kind"]["submit"] == 1
    # Twenty jobs, each polled at least once, in far fewer status requests.
    assert stats["requests_by_kind"]["status"] <= 10


def test_submit_many_again_is_idempotent(
    worker: Worker, client: Pollen, simulator: SimulatorServer
) -> None:
    payloads = [_payload(f"again-{i}") for i in range(3)]
    first = client.submit_many(payloads)
    for job_id in first.accepted:
        assert client.wait(job_id, timeout=30).status is JobStatus.SUCCEEDED
    second = client.submit_many(payloads)
    assert second.job_ids == first.job_ids and second.errors == {}
    changed = [dict(p, request=video_request([0.9])) for p in payloads[:1]]
    third = client.submit_many(changed)
    assert third.job_ids == [None] and "different request" in str(third.errors[0])
    assert sim_stats(simulator.url)["created"] == 3
