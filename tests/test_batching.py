"""The batcher (polls that fire together share a request) and Runware's batched answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import httpx
import pytest

from pollen.errors import ProviderProtocolError, ProviderRejected, ProviderTaskNotFound
from pollen.models import Job
from pollen.providers.batching import Batcher
from pollen.providers.runware import Runware
from pollen.settings import Settings


def run_concurrently(batcher: Batcher[int, int], items: list[int]) -> dict[int, object]:
    answers: dict[int, object] = {}

    def one(item: int) -> None:
        try:
            answers[item] = batcher.call(item)
        except Exception as exc:
            answers[item] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    return answers


def test_a_lone_item_is_flushed_when_the_wait_is_over() -> None:
    flushed: list[list[int]] = []

    def flush(items: Sequence[int]) -> list[int]:
        flushed.append(list(items))
        return [i * 2 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_size=10, max_wait=0.1)
    started = time.monotonic()
    assert batcher.call(21) == 42
    assert 0.09 <= time.monotonic() - started < 1.0
    assert flushed == [[21]]


def test_a_full_batch_goes_at_once_in_one_call() -> None:
    calls: list[Sequence[int]] = []

    def flush(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        return [i + 1 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_size=8, max_wait=5.0)
    started = time.monotonic()
    answers = run_concurrently(batcher, list(range(8)))
    assert time.monotonic() - started < 2.0  # did not wait the 5 s: the batch filled up
    assert answers == {i: i + 1 for i in range(8)}
    assert [len(c) for c in calls] == [8]
    assert (batcher.batches, batcher.items) == (1, 8)


def test_more_items_than_fit_make_several_batches() -> None:
    batcher: Batcher[int, int] = Batcher(list, max_size=5, max_wait=0.2)
    answers = run_concurrently(batcher, list(range(12)))
    assert answers == {i: i for i in range(12)}
    assert batcher.batches >= 3 and batcher.items == 12


def test_one_failing_item_does_not_fail_the_batch() -> None:
    def flush(items: Sequence[int]) -> list[int | Exception]:
        return [ValueError(f"bad {i}") if i == 3 else i for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_size=6, max_wait=1.0)
    answers = run_concurrently(batcher, list(range(6)))
    assert isinstance(answers[3], ValueError) and str(answers[3]) == "bad 3"
    assert {i: answers[i] for i in (0, 1, 2, 4, 5)} == {0: 0, 1: 1, 2: 2, 4: 4, 5: 5}


def test_a_flush_that_raises_fails_every_caller_of_that_batch() -> None:
    def flush(items: Sequence[int]) -> list[int]:
        raise ConnectionError("provider down")

    batcher: Batcher[int, int] = Batcher(flush, max_size=3, max_wait=1.0)
    answers = run_concurrently(batcher, [1, 2, 3])
    assert all(isinstance(a, ConnectionError) for a in answers.values())
    with pytest.raises(ValueError):
        Batcher(flush, max_size=0, max_wait=1.0)


def job(task_id: str, expected: int = 1) -> Job:
    return Job.model_validate(
        {
            "id": f"job-{task_id}",
            "provider": "runware",
            "status": "processing",
            "provider_task_id": task_id,
            "created_at": 1.0,
            "updated_at": 1.0,
            "expected_results": expected,
            "policy": {},
        }
    )


def test_runware_batched_answer_is_split_per_job() -> None:
    runware = Runware(Settings(runware={"api_key": "test-key"}))
    jobs = [job("t1", 2), job("t2"), job("t3")]
    request = runware.status_batch_request(jobs)
    assert [t["taskUUID"] for t in httpx.Response(200, content=request.content).json()] == [
        "t1",
        "t2",
        "t3",
    ]
    body = {
        "data": [
            {"taskType": "videoInference", "taskUUID": "t1", "status": "processing"},
            {
                "taskType": "videoInference",
                "taskUUID": "t1",
                "status": "success",
                "videoUUID": "v1",
                "videoURL": "https://x/v1.mp4",
                "cost": 0.1,
            },
            {"taskType": "imageInference", "taskUUID": "t2", "status": "processing"},
        ],
        "errors": [
            {"code": "taskNotFound", "message": "No task found", "taskUUID": "t3"},
        ],
    }
    first, second, third = runware.parse_status_batch(jobs, httpx.Response(200, json=body), 5.0)
    assert not isinstance(first, Exception) and first.state == "running"
    assert [r.id for r in first.results] == ["v1"]
    assert not isinstance(second, Exception) and second.state == "running"
    assert isinstance(third, ProviderTaskNotFound)  # only the unknown task fails
    with pytest.raises(ProviderProtocolError):
        runware.parse_status_batch(jobs, httpx.Response(200, content=b"{not json"), 5.0)


def test_runware_batched_submit_answer_is_split_per_job() -> None:
    runware = Runware(Settings(runware={"api_key": "test-key"}))
    jobs = [
        job("t1").model_copy(update={"task_uuid": "u1", "request": {"taskType": "x"}}),
        job("t2").model_copy(update={"task_uuid": "u2", "request": {"taskType": "x"}}),
        job("t3").model_copy(update={"task_uuid": "u3", "request": {"taskType": "x"}}),
    ]
    sent = httpx.Response(200, content=runware.submit_batch_request(jobs).content).json()
    assert [(t["taskUUID"], t["deliveryMethod"]) for t in sent] == [
        ("u1", "async"), ("u2", "async"), ("u3", "async"),
    ]  # fmt: skip
    body = {
        "data": [{"taskType": "x", "taskUUID": "u1"}],
        "errors": [{"code": "invalidModel", "message": "bad model", "taskUUID": "u2"}],
    }
    # The whole array answered 400: only the task it names is refused; the one it does not
    # mention is a protocol error (retried), not a refusal.
    first, second, third = runware.parse_submit_batch(jobs, httpx.Response(400, json=body))
    assert not isinstance(first, Exception) and first.provider_task_id == "u1"
    assert isinstance(second, ProviderRejected) and second.code == "invalidModel"
    assert isinstance(third, ProviderProtocolError)
