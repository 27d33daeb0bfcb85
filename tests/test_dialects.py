"""Runway through useapi.net and through CometAPI: seeds, status tables, and end to end."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest

from pollen import JobStatus, Pollen
from pollen.errors import ProviderRejected, ProviderTaskNotFound
from pollen.local.servers import Worker
from pollen.models import Job
from pollen.providers.base import Snapshot
from pollen.providers.comet import STATES as COMET_STATES
from pollen.providers.comet import CometRunway
from pollen.providers.useapi import STATES as USEAPI_STATES
from pollen.providers.useapi import UseapiRunway
from pollen.settings import Settings
from tests.helpers import kept_responses, seeds

NOW = 1_800_000_000.0


def seed_json(name: str, after: str = "") -> str:
    """The first balanced {...} block in a seed page, after the text ``after``."""
    text = next(seeds().glob(f"{name}_*.txt")).read_text()
    start = text.index("{", text.index(after))
    depth = 0
    for end, char in enumerate(text[start:], start):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return text[start : end + 1]
    raise AssertionError("unbalanced JSON in seed")


def useapi_seed() -> dict[str, Any]:
    raw = seed_json("002", after="200 OK")
    # The page's example omits the comma after its first member; that is the only defect.
    fixed = re.sub(r'("taskId": "[^"]+")\s*\n(\s*"id")', r"\1,\n\2", raw, count=1)
    return dict(json.loads(fixed))


def job(provider: str, *, submitted_at: float = NOW - 10, task_id: str = "t-1") -> Job:
    return Job.model_validate(
        {
            "id": "job-1",
            "provider": provider,
            "status": "processing",
            "provider_task_id": task_id,
            "created_at": submitted_at - 1,
            "submitted_at": submitted_at,
            "updated_at": submitted_at,
            "policy": {},
        }
    )


def parse(
    provider: UseapiRunway | CometRunway, body: Any, status: int = 200, **kw: Any
) -> Snapshot:
    return provider.parse_status(job(provider.name, **kw), httpx.Response(status, json=body), NOW)


@pytest.fixture
def useapi() -> UseapiRunway:
    return UseapiRunway(Settings())


@pytest.fixture
def comet() -> CometRunway:
    return CometRunway(Settings(comet={"not_exist_grace": 30}))


def test_useapi_seed_example_normalises_exactly(useapi: UseapiRunway) -> None:
    body = useapi_seed()
    snapshot = parse(useapi, body)
    assert snapshot.state == "succeeded"
    assert snapshot.progress == 1.0
    assert snapshot.provider_status == "SUCCEEDED"
    assert snapshot.envelope == body  # the raw task object is kept for audit, untouched
    [result] = snapshot.results
    assert result.url == "<asset url>"
    assert result.id == "<asset uuid>"
    assert result.kind == "video"
    assert result.metadata == {
        "frameRate": 24,
        "duration": 5.209,
        "dimensions": [1280, 768],
        "size": {"width": 1280, "height": 768},
    }
    assert result.raw == body["artifacts"][0]


def test_comet_seed_example_normalises_exactly(comet: CometRunway) -> None:
    body = json.loads(seed_json("003", after="Bearer <token>"))
    snapshot = parse(comet, body)
    assert snapshot.state == "pending"  # QUEUED
    assert snapshot.progress == 0.0  # "0%"
    assert snapshot.provider_status == "QUEUED"
    assert snapshot.results == [] and snapshot.errors == []
    assert snapshot.envelope == body
    assert snapshot.envelope["data"]["data"]["status"] == "PENDING"  # nested provider object


USEAPI_TABLE = [
    ("PENDING", "pending"),
    ("THROTTLED", "pending"),
    ("RUNNING", "running"),
    ("SUCCEEDED", "succeeded"),
    ("FAILED", "failed"),
    ("CANCELLED", "cancelled"),
    ("SOMETHING_NEW", "running"),  # unknown: keep polling, never crash
]
COMET_TABLE = [
    ("NOT_START", "pending"),
    ("SUBMITTED", "pending"),
    ("QUEUED", "pending"),
    ("IN_PROGRESS", "running"),
    ("SUCCESS", "succeeded"),
    ("FAILURE", "failed"),
    ("SOMETHING_NEW", "running"),
]
RUNWARE_TABLE = [
    # (generation statuses seen, expected results) -> state
    (["processing", "processing"], "running"),
    ([], "pending"),
    (["success", "processing"], "running"),
    (["success", "success"], "succeeded"),
    (["success", "error"], "succeeded"),
    (["error", "error"], "failed"),
]


def test_the_tables_cover_every_documented_status() -> None:
    assert {s for s, _ in USEAPI_TABLE[:-1]} == set(USEAPI_STATES)
    assert {s for s, _ in COMET_TABLE[:-1]} == set(COMET_STATES)


@pytest.mark.parametrize(("status", "state"), USEAPI_TABLE)
def test_useapi_status_maps_to_state(useapi: UseapiRunway, status: str, state: str) -> None:
    body: dict[str, Any] = {
        "taskId": "t-1",
        "status": status,
        "progressRatio": "0.5",
        "artifacts": [],
    }
    if status == "SUCCEEDED":
        body["artifacts"] = [{"id": "a", "url": "https://x/a.mp4"}]
    if status == "FAILED":
        body["error"] = {"message": "Task failed.", "reason": "SAFETY.INPUT.TEXT"}
    assert parse(useapi, body).state == state


@pytest.mark.parametrize(("status", "state"), COMET_TABLE)
def test_comet_status_maps_to_state(comet: CometRunway, status: str, state: str) -> None:
    body = {"code": "success", "message": "", "data": {"task_id": "t-1", "status": status}}
    assert parse(comet, body).state == state


def test_comet_nested_cancelled_is_cancelled(comet: CometRunway) -> None:
    body = {
        "code": "success",
        "data": {"task_id": "t", "status": "FAILURE", "data": {"status": "CANCELLED"}},
    }
    snapshot = parse(comet, body)
    assert snapshot.state == "cancelled"
    assert snapshot.errors[0].code == "cancelled"


@pytest.mark.parametrize(("generations", "state"), RUNWARE_TABLE)
def test_runware_generations_map_to_state(generations: list[str], state: str) -> None:
    from pollen.providers.runware import Runware

    data = [
        {"taskType": "videoInference", "taskUUID": "t-1", "status": s}
        | ({"videoUUID": f"v{i}", "videoURL": f"https://x/{i}.mp4"} if s == "success" else {})
        for i, s in enumerate(generations)
        if s != "error"
    ]
    errors = [
        {"code": "timeoutProvider", "status": "error", "message": "m", "taskUUID": "t-1"}
        for s in generations
        if s == "error"
    ]
    runware_job = job("runware").model_copy(update={"expected_results": 2})
    response = httpx.Response(200, json={"data": data, "errors": errors})
    assert Runware(Settings()).parse_status(runware_job, response, NOW).state == state


def test_useapi_progress_and_estimated_start_hint(useapi: UseapiRunway) -> None:
    waiting = parse(useapi, {"status": "PENDING", "estimatedTimeToStartSeconds": 42})
    assert waiting.hint_delay == 42
    running = parse(useapi, {"status": "RUNNING", "progressRatio": "0.25"}, submitted_at=NOW - 10)
    assert running.progress == 0.25
    assert running.hint_delay == pytest.approx(30.0)  # 10 s for 25 %: about 30 s to go
    garbage = parse(useapi, {"status": "RUNNING", "progressRatio": "lots"})
    assert garbage.progress is None and garbage.hint_delay is None


def test_useapi_failure_reason_and_http_errors(useapi: UseapiRunway) -> None:
    failed = parse(
        useapi,
        {"status": "FAILED", "error": {"errorMessage": "Bad input.", "reason": "SAFETY.INPUT"}},
    )
    assert failed.state == "failed"
    assert failed.errors[0].code == "SAFETY.INPUT"
    assert "Bad input." in failed.errors[0].message
    with pytest.raises(ProviderRejected, match="Unauthorized"):
        parse(useapi, {"error": "Unauthorized", "code": 401}, status=401)
    with pytest.raises(ProviderRejected, match="bad prompt"):
        parse(useapi, {"error": "bad prompt", "code": 400}, status=400)
    with pytest.raises(ProviderTaskNotFound):
        parse(useapi, {"error": "Not found.", "code": 404}, status=404)


def test_comet_task_not_exist_is_pending_inside_the_grace_window(comet: CometRunway) -> None:
    not_exist = {"code": "task_not_exist", "message": "task_not_exist", "data": None}
    early = parse(comet, not_exist, status=400, submitted_at=NOW - 5)
    assert early.state == "pending"
    with pytest.raises(ProviderTaskNotFound, match="grace window 30s"):
        parse(comet, not_exist, status=400, submitted_at=NOW - 31)


def test_comet_progress_and_failure(comet: CometRunway) -> None:
    body = {"code": "success", "data": {"task_id": "t", "status": "IN_PROGRESS", "progress": "45%"}}
    assert parse(comet, body).progress == pytest.approx(0.45)
    failed = {
        "code": "success",
        "data": {"task_id": "t", "status": "FAILURE", "fail_reason": "moderation"},
    }
    snapshot = parse(comet, failed)
    assert snapshot.state == "failed" and snapshot.errors[0].message == "moderation"


def test_throttled_is_pending_and_polled_on_the_slow_schedule() -> None:
    """Runway's THROTTLED (a task past the account's concurrency) waits: pending, with
    ``admission.throttled_poll_delay`` as the next poll's hint, through both wrappers."""
    settings = Settings(admission={"throttled_poll_delay": 7.5})
    throttled = parse(
        UseapiRunway(settings), {"status": "THROTTLED", "estimatedTimeToStartSeconds": 1}
    )
    assert (throttled.state, throttled.provider_status) == ("pending", "THROTTLED")
    assert throttled.hint_delay == 7.5
    pending = parse(UseapiRunway(settings), {"status": "PENDING", "estimatedTimeToStartSeconds": 1})
    assert pending.hint_delay == 1
    task: dict[str, Any] = {"task_id": "t", "status": "QUEUED", "progress": "0%"}
    wrapped = {"code": "success", "data": task}
    task["data"] = {"id": "t", "status": "THROTTLED"}
    snapshot = parse(CometRunway(settings), wrapped)
    assert (snapshot.state, snapshot.provider_status, snapshot.hint_delay) == (
        "pending",
        "THROTTLED",
        7.5,
    )
    task["data"] = {"id": "t", "status": "PENDING"}
    queued = parse(CometRunway(settings), wrapped)
    assert (queued.provider_status, queued.hint_delay) == ("QUEUED", None)
    assert Settings().admission.throttled_poll_delay == 10.0


def test_throttled_poll_delay_is_bounded() -> None:
    assert Settings(admission={"throttled_poll_delay": 0}).admission.throttled_poll_delay == 0
    assert Settings(admission={"throttled_poll_delay": 3600}).admission.throttled_poll_delay == 3600
    for bad in (-1, 3601):
        with pytest.raises(ValueError, match="throttled_poll_delay"):
            Settings(admission={"throttled_poll_delay": bad})


# --- end to end against the simulator -----------------------------------------------------


def _useapi(simulate: dict[str, Any]) -> dict[str, Any]:
    return {"text_prompt": "slow motion zoom in, cat chasing dog", "simulate": simulate}


def _comet(simulate: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "gen4_turbo",
        "promptImage": "https://example.invalid/cat.png",
        "promptText": "the cat jumps",
        "simulate": simulate,
    }


def _provider_statuses(client: Pollen, job_id: str) -> list[str]:
    seen: list[str] = []
    for entry in kept_responses(client.store, job_id):
        envelope = entry["envelope"]
        status = envelope.get("status") or (envelope.get("data") or {}).get("status")
        if status is None and envelope.get("code") == "task_not_exist":
            status = "task_not_exist"
        if status and (not seen or seen[-1] != status):
            seen.append(status)
    return seen


@pytest.mark.integration
def test_useapi_throttled_then_running_then_succeeded(worker: Worker, client: Pollen) -> None:
    job_id = client.submit(
        "useapi_runway",
        _useapi({"duration": 2.0, "throttled_seconds": 1.0}),
        poll={"max_delay": 0.3},
    )
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.SUCCEEDED
    assert job.provider_task_id and job.provider_task_id.startswith("user:")
    [result] = job.results
    assert result.url and result.url.endswith(".mp4")
    assert result.metadata["frameRate"] == 24
    statuses = _provider_statuses(client, job_id)
    assert statuses[-1] == "SUCCEEDED"
    assert statuses.index("THROTTLED") < statuses.index("RUNNING") < statuses.index("SUCCEEDED")


@pytest.mark.integration
def test_useapi_failure_with_reason(worker: Worker, client: Pollen) -> None:
    fail = {"errorMessage": "Prompt flagged.", "reason": "SAFETY.INPUT.TEXT", "message": "Failed."}
    job_id = client.submit("useapi_runway", _useapi({"duration": 0.5, "fail": fail}))
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code == "SAFETY.INPUT.TEXT"
    assert "Prompt flagged." in job.error.message


@pytest.mark.integration
def test_useapi_unknown_status_polls_until_the_deadline(worker: Worker, client: Pollen) -> None:
    job_id = client.submit(
        "useapi_runway",
        _useapi({"duration": 1, "status_sequence": ["PENDING", "MYSTERY"]}),
        deadline=3,
    )
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.TIMED_OUT
    assert "MYSTERY" in _provider_statuses(client, job_id)
    assert job.polls >= 3


@pytest.mark.integration
def test_comet_task_not_exist_for_a_while_then_success(worker: Worker, client: Pollen) -> None:
    job_id = client.submit(
        "comet_runway", _comet({"duration": 1.0, "not_exist_seconds": 1.5}), poll={"max_delay": 0.3}
    )
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.SUCCEEDED, job.error
    [result] = job.results
    assert result.url and result.url.endswith(".mp4")
    statuses = _provider_statuses(client, job_id)
    assert statuses[0] == "task_not_exist"
    assert statuses[-1] == "SUCCESS"


@pytest.mark.integration
def test_comet_not_found_after_the_grace_window_fails_clearly(
    worker: Worker, client: Pollen
) -> None:
    # The worker's grace window is 3 s (conftest); this task stays invisible for 60 s.
    job_id = client.submit("comet_runway", _comet({"duration": 1.0, "not_exist_seconds": 60}))
    started = time.monotonic()
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code == "task_not_exist"
    assert "grace window 3s" in job.error.message
    assert time.monotonic() - started < 10


@pytest.mark.integration
def test_comet_failure_with_reason(worker: Worker, client: Pollen) -> None:
    job_id = client.submit(
        "comet_runway", _comet({"duration": 0.5, "not_exist_seconds": 0, "fail_reason": "nsfw"})
    )
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.message == "nsfw"


@pytest.mark.integration
def test_comet_unknown_status_polls_until_the_deadline(worker: Worker, client: Pollen) -> None:
    job_id = client.submit(
        "comet_runway",
        _comet({"duration": 1, "not_exist_seconds": 0, "status_sequence": ["QUEUED", "ODD"]}),
        deadline=3,
    )
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.TIMED_OUT
    assert "ODD" in _provider_statuses(client, job_id)
