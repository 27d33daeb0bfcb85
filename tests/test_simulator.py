"""Tests of the provider simulator, through a real uvicorn server on a free port."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from pollen.simulator import SimulatorConfig, SimulatorServer, build_simulator_app
from pollen.simulator.app import build_app
from pollen.simulator.concurrency import Concurrency
from pollen.simulator.core import Simulator
from pollen.simulator.ratelimit import SimulatedRateLimit, Timeline, max_in_window

KEY = "test-key"

# JSON examples copied verbatim from the provider pages in ../shared/seeds.
SEED_000_RESPONSE = """
{
  "data": [
    {
      "taskType": "videoInference",
      "taskUUID": "24cd5dff-cb81-4db5-8506-b72a9425f9d1",
      "status": "processing"
    },
    {
      "taskType": "videoInference",
      "taskUUID": "24cd5dff-cb81-4db5-8506-b72a9425f9d1",
      "status": "success",
      "videoUUID": "b7db282d-2943-4f12-992f-77df3ad3ec71",
      "videoURL": "https://im.runware.ai/video/ws/0.5/vi/b7db282d-2943-4f12-992f-77df3ad3ec71.mp4",
      "cost": 0.18
    }
  ],
  "errors": [
    {
      "code": "timeoutProvider",
      "status": "error",
      "message": "The external provider did not respond within the timeout window. The request was automatically terminated.",
      "documentation": "https://runware.ai/docs/platform/errors",
      "taskUUID": "24cd5dff-cb81-4db5-8506-b72a9425f9d1"
    }
  ]
}
"""  # noqa: E501
SEED_004_NOT_FOUND = """
{
  "data": [],
  "errors": [
    {
      "code": "taskNotFound",
      "message": "No task found for the provided 'taskUUID'. The taskUUID may not exist or may belong to a different organization.",
      "parameter": "taskUUID",
      "type": "string",
      "documentation": "https://runware.ai/docs",
      "taskUUID": "abcdc144-7364-4a7c-b6e4-fadb3dbf2f67"
    }
  ]
}
"""  # noqa: E501
SEED_003_QUEUED = """
{
  "code": "success",
  "message": "",
  "data": {
    "task_id": "3d957031-9a2a-45e2-9dc7-bc8513059c50",
    "action": "IMAGE_TO_VIDEO",
    "status": "QUEUED",
    "fail_reason": "",
    "submit_time": 1773366766,
    "start_time": 0,
    "finish_time": 0,
    "progress": "0%",
    "data": {
      "id": "3d957031-9a2a-45e2-9dc7-bc8513059c50",
      "status": "PENDING",
      "createdAt": "2026-03-13T09:52:46+08:00"
    }
  }
}
"""
# Seed 002's 200 example is not valid JSON (a comma is missing), so its keys are listed here.
SEED_002_TASK_KEYS = [
    "taskId", "id", "name", "image", "createdAt", "updatedAt", "taskType", "options", "status",
    "error", "progressText", "progressRatio", "estimatedTimeToStartSeconds", "artifacts",
    "sharedAsset",
]  # fmt: skip
SEED_002_ARTIFACT_KEYS = {
    "assetId", "id", "createdAt", "updatedAt", "userId", "createdBy", "taskId",
    "parentAssetGroupId", "filename", "url", "fileSize", "isDirectory", "previewUrls", "private",
    "privateInTeam", "deleted", "reported", "metadata", "favorite",
}  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(
        api_key=KEY, duration_min=0.2, duration_max=0.3, comet_not_exist_seconds=0.3, seed=7
    )
    with SimulatorServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def admin(server: SimulatorServer) -> Iterator[httpx.Client]:
    """A client without credentials (admin routes need none)."""
    with httpx.Client(base_url=server.url, trust_env=False, timeout=5.0) as client:
        yield client


@pytest.fixture(scope="module")
def authed(server: SimulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, trust_env=False, timeout=5.0) as c:
        yield c


@pytest.fixture
def client(authed: httpx.Client, admin: httpx.Client) -> httpx.Client:
    """The authenticated client, on a freshly reset simulator with its default config."""
    assert admin.post("/_sim/reset").status_code == 200
    defaults = {
        "rate_5xx": 0.0,
        "rate_429": 0.0,
        "rate_malformed": 0.0,
        "rate_timeout": 0.0,
        "rate_limit": None,
    }
    assert admin.patch("/_sim/config", json={**defaults, "timeout_seconds": 30.0}).is_success
    return authed


def new_uuid() -> str:
    return str(uuid.uuid4())


def inference(task_uuid: str, **extra: Any) -> dict[str, Any]:
    task = {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "model": "runware:101@1",
        "positivePrompt": "a cat",
        "deliveryMethod": "async",
    }
    return {**task, **extra}


def get_response(client: httpx.Client, *task_uuids: str) -> httpx.Response:
    return client.post("/v1", json=[{"taskType": "getResponse", "taskUUID": u} for u in task_uuids])


def wait_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


# --- config and app -----------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    config = SimulatorConfig()
    assert config.api_key == "sim-key"
    assert (config.duration_min, config.duration_max, config.retry_after) == (1.0, 3.0, 1)
    assert config.seed is None
    with pytest.raises(ValidationError):
        SimulatorConfig(rate_5xx=1.5)
    with pytest.raises(ValidationError):
        SimulatorConfig(duration_min=-1)
    with pytest.raises(ValidationError):
        SimulatorConfig(duration_min=3, duration_max=1)
    with pytest.raises(ValueError, match="unknown config fields"):
        config.patched({"nope": 1})


def test_create_app_routes() -> None:
    paths = {getattr(route, "path", "") for route in build_simulator_app(SimulatorConfig()).routes}
    assert {"/v1", "/v1/runwayml/gen3/create", "/runwayml/v1/tasks/{task_id}"} <= paths
    assert {"/healthz", "/_sim/stats", "/_sim/faults", "/_sim/reset"} <= paths


def test_server_exposes_url_port_and_live_config(
    server: SimulatorServer, admin: httpx.Client
) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert admin.get("/healthz").json() == {"ok": True}
    answer = admin.patch("/_sim/config", json={"retry_after": 4})
    assert answer.json()["retry_after"] == 4
    assert server.config.retry_after == 4
    assert admin.get("/_sim/config").json()["retry_after"] == 4
    assert admin.patch("/_sim/config", json={"rate_429": 2}).status_code == 400
    assert admin.patch("/_sim/config", json={"duration_min": 9}).status_code == 400
    assert admin.patch("/_sim/config", json={"retry_after": 1}).is_success


def test_useapi_phases_with_a_fake_clock() -> None:
    """In-process app (ASGI transport) on a hand-driven clock: exact phase boundaries."""
    now = [1_000.0]
    sim = Simulator(SimulatorConfig(api_key=KEY), clock=lambda: now[0])
    expected = [
        (1.9, "PENDING", "0", 5.1),
        (2.0, "THROTTLED", "0", 5.0),
        (7.0, "RUNNING", "0.25", None),
        (9.0, "RUNNING", "0.41", None),
        (14.99, "RUNNING", "0.9", None),
        (15.0, "SUCCEEDED", "1", None),
    ]

    async def scenario() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=build_app(sim))
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sim", headers=headers
        ) as local:
            simulate = {"duration": 10.0, "throttled_seconds": 5.0}
            created = await local.post(
                "/v1/runwayml/gen3/create", json={"text_prompt": "x", "simulate": simulate}
            )
            task = created.json()
            body: dict[str, Any] = {}
            for elapsed, status, ratio, eta in expected:
                now[0] = 1_000.0 + elapsed
                body = (await local.get(f"/v1/runwayml/tasks/{task['taskId']}")).json()
                got = (body["status"], body["progressRatio"], body["estimatedTimeToStartSeconds"])
                assert got == (status, ratio, eta), elapsed
            return body

    final = asyncio.run(scenario())
    assert final["createdAt"] == "1970-01-01T00:16:40.000Z"
    assert final["updatedAt"] == "1970-01-01T00:16:55.000Z"


def test_server_stops_cleanly() -> None:
    with SimulatorServer() as sim:
        url = sim.url
        assert httpx.get(f"{url}/healthz", trust_env=False).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", trust_env=False, timeout=1.0)


def test_stop_releases_a_stalled_request_quickly() -> None:
    config = SimulatorConfig(rate_timeout=1.0, timeout_seconds=30.0)
    answers: list[int] = []
    with SimulatorServer(config) as sim:

        def call() -> None:
            task = {"taskType": "getResponse", "taskUUID": new_uuid()}
            headers = {"Authorization": "Bearer sim-key"}
            with httpx.Client(trust_env=False, timeout=10.0) as c:
                answers.append(c.post(f"{sim.url}/v1", json=[task], headers=headers).status_code)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)
        started = time.monotonic()
    caller.join(5.0)
    assert time.monotonic() - started < 2.0
    assert answers == [400]  # answered normally (taskNotFound) instead of after 30 s


# --- Runware ------------------------------------------------------------------------------------


def test_runware_async_ack(client: httpx.Client) -> None:
    task_uuid = new_uuid()
    answer = client.post("/v1", json=[inference(task_uuid)])
    assert answer.status_code == 200
    assert answer.json() == {"data": [{"taskType": "imageInference", "taskUUID": task_uuid}]}


def test_runware_sync_request_is_acknowledged_like_async(client: httpx.Client) -> None:
    task_uuid = new_uuid()
    task = inference(task_uuid)
    del task["deliveryMethod"]
    answer = client.post("/v1", json=[task])
    assert answer.json() == {"data": [{"taskType": "imageInference", "taskUUID": task_uuid}]}


def test_runware_partial_results_then_success(client: httpx.Client) -> None:
    task_uuid = new_uuid()
    start = time.monotonic()
    task = inference(
        task_uuid, taskType="videoInference", numberResults=2, simulate={"durations": [0.2, 0.6]}
    )
    assert client.post("/v1", json=[task]).status_code == 200

    first = get_response(client, task_uuid).json()
    assert [item["status"] for item in first["data"]] == ["processing", "processing"]
    assert first["data"][0] == {
        "taskType": "videoInference",
        "taskUUID": task_uuid,
        "status": "processing",
    }

    wait_until(start + 0.35)
    partial = get_response(client, task_uuid)
    assert partial.status_code == 200
    done, running = partial.json()["data"]
    assert running["status"] == "processing"
    assert done["status"] == "success"
    assert set(done) == {"taskType", "taskUUID", "status", "videoUUID", "videoURL", "cost"}
    assert done["videoURL"] == f"{client.base_url}/media/video/{done['videoUUID']}.mp4"
    assert isinstance(done["cost"], float)
    assert uuid.UUID(done["videoUUID"]).version == 4

    wait_until(start + 0.75)
    final = get_response(client, task_uuid).json()
    assert "errors" not in final
    assert [item["status"] for item in final["data"]] == ["success", "success"]
    assert final["data"][0] == done  # the finished generation is stable across polls
    assert final["data"][0]["videoUUID"] != final["data"][1]["videoUUID"]


def test_runware_generation_errors_match_seed_000(client: httpx.Client) -> None:
    seed = json.loads(SEED_000_RESPONSE)
    task_uuid = new_uuid()
    task = inference(
        task_uuid,
        taskType="videoInference",
        numberResults=2,
        simulate={"durations": [0.0, 0.0], "errors": [None, "timeoutProvider"]},
    )
    client.post("/v1", json=[task])
    answer = get_response(client, task_uuid)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body["data"][0]) == set(seed["data"][1])
    assert body["errors"] == [{**seed["errors"][0], "taskUUID": task_uuid}]


def test_runware_all_generations_failed_is_still_http_200(client: httpx.Client) -> None:
    task_uuid = new_uuid()
    simulate = {"durations": [0.0], "errors": ["someNewCode"]}
    client.post("/v1", json=[inference(task_uuid, simulate=simulate)])
    answer = get_response(client, task_uuid)
    assert answer.status_code == 200
    assert answer.json()["data"] == []
    error = answer.json()["errors"][0]
    assert (error["code"], error["status"], error["taskUUID"]) == (
        "someNewCode",
        "error",
        task_uuid,
    )
    assert "someNewCode" in error["message"]


def test_runware_conflict_task_uuid_keeps_original(client: httpx.Client) -> None:
    task_uuid = new_uuid()
    client.post("/v1", json=[inference(task_uuid)])
    again = client.post("/v1", json=[inference(task_uuid, positivePrompt="a dog")])
    assert again.status_code == 400
    error = again.json()["errors"][0]
    assert (error["code"], error["parameter"], error["taskUUID"]) == (
        "conflictTaskUUID",
        "taskUUID",
        task_uuid,
    )
    details = client.post("/v1", json=[{"taskType": "getTaskDetails", "taskUUID": task_uuid}])
    assert details.json()["data"][0]["request"][0]["positivePrompt"] == "a cat"


def test_runware_task_not_found_matches_seed_004(client: httpx.Client) -> None:
    seed = json.loads(SEED_004_NOT_FOUND)
    missing = "abcdc144-7364-4a7c-b6e4-fadb3dbf2f67"
    for task_type in ("getResponse", "getTaskDetails"):
        answer = client.post("/v1", json=[{"taskType": task_type, "taskUUID": missing}])
        assert answer.status_code == 400
        body = answer.json()
        assert body["data"] == []
        expected = seed["errors"][0]
        got = body["errors"][0]
        assert set(got) == set(expected)
        for key in ("code", "message", "parameter", "type", "taskUUID"):
            assert got[key] == expected[key]


def test_runware_task_details_returns_request_and_envelope(client: httpx.Client) -> None:
    ok_uuid, bad_uuid = new_uuid(), new_uuid()
    ok_task = inference(ok_uuid, width=1024, height=1024, includeCost=True)
    ok_task["simulate"] = {"durations": [0]}
    bad_task = inference(bad_uuid, simulate={"durations": [0], "errors": ["providerError"]})
    client.post("/v1", json=[ok_task, bad_task])
    details = client.post(
        "/v1",
        json=[
            {"taskType": "getTaskDetails", "taskUUID": ok_uuid},
            {"taskType": "getTaskDetails", "taskUUID": bad_uuid},
        ],
    )
    assert details.status_code == 200
    ok_item, bad_item = details.json()["data"]
    assert ok_item["taskType"] == "getTaskDetails"
    assert ok_item["taskUUID"] == ok_uuid
    assert ok_item["request"] == [ok_task]
    assert list(ok_item["response"]) == ["data"]
    result = ok_item["response"]["data"][0]
    assert result["imageURL"].endswith(f"/image/{result['imageUUID']}.jpg")
    assert bad_item["request"] == [bad_task]
    assert list(bad_item["response"]) == ["errors"]
    assert bad_item["response"]["errors"][0]["code"] == "providerError"


def test_runware_batch_of_get_response(client: httpx.Client) -> None:
    uuids = [new_uuid() for _ in range(3)]
    tasks = [inference(u, simulate={"durations": [0.0]}) for u in uuids]
    assert client.post("/v1", json=tasks).json()["data"] == [
        {"taskType": "imageInference", "taskUUID": u} for u in uuids
    ]
    unknown = new_uuid()
    answer = get_response(client, uuids[0], unknown, uuids[1], uuids[2])
    assert answer.status_code == 200
    body = answer.json()
    assert [item["taskUUID"] for item in body["data"]] == uuids
    assert all(item["status"] == "success" for item in body["data"])
    assert [(e["code"], e["taskUUID"]) for e in body["errors"]] == [("taskNotFound", unknown)]


def test_runware_unauthorized(client: httpx.Client, admin: httpx.Client) -> None:
    expected = {
        "code": "invalidApiKey",
        "documentation": "https://runware.ai/docs/platform/errors",
    }
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = admin.post("/v1", json=[inference(new_uuid())], headers=headers)
        assert answer.status_code == 401
        (error,) = answer.json()["errors"]
        assert {k: error[k] for k in expected} == expected
        assert error["message"].startswith("Invalid API key")
    assert admin.get("/_sim/stats").json()["created"] == 0


def test_runware_validation_errors(client: httpx.Client) -> None:
    not_array = client.post("/v1", json={"taskType": "getResponse"})
    assert not_array.status_code == 400
    assert not_array.json()["errors"][0]["code"] == "invalidRequestBody"
    task_uuid = new_uuid()
    cases = [
        ({"taskType": "imageInference", "model": "m", "positivePrompt": "p"}, "missingParameter"),
        (inference("not-a-uuid"), "invalidTaskUUID"),
        ({**inference(task_uuid), "positivePrompt": None}, "missingParameter"),
        (inference(task_uuid, positivePrompt=""), "invalidPositivePrompt"),
        (inference(task_uuid, numberResults=21), "invalidNumberResults"),
        ({"taskType": "imageUpscale", "taskUUID": task_uuid}, "unsupportedTaskType"),
    ]
    for task, code in cases:
        answer = client.post("/v1", json=[task])
        assert answer.status_code == 400, task
        error = answer.json()["errors"][0]
        assert error["code"] == code, task
        if code != "unsupportedTaskType":
            assert set(error) >= {"code", "message", "parameter", "type", "documentation"}
    missing_prompt = client.post("/v1", json=[{**inference(task_uuid), "positivePrompt": None}])
    assert missing_prompt.json()["errors"][0]["parameter"] == "positivePrompt"
    assert missing_prompt.json()["errors"][0]["taskUUID"] == task_uuid
    assert get_response(client, task_uuid).status_code == 400  # refused tasks are not created


# --- faults -------------------------------------------------------------------------------------


def script_faults(admin: httpx.Client, *faults: str, **extra: Any) -> None:
    answer = admin.post("/_sim/faults", json={"faults": list(faults), **extra})
    assert answer.status_code == 200


def test_scripted_503_creates_no_task(client: httpx.Client, admin: httpx.Client) -> None:
    script_faults(admin, "503")
    task_uuid = new_uuid()
    answer = client.post("/v1", json=[inference(task_uuid)])
    assert answer.status_code == 503
    assert answer.json()["errors"][0]["code"] == "serviceUnavailable"
    assert admin.get(f"/_sim/tasks/{task_uuid}").status_code == 404
    assert client.post("/v1", json=[inference(task_uuid)]).status_code == 200  # queue consumed


def test_scripted_429_has_retry_after(client: httpx.Client, admin: httpx.Client) -> None:
    script_faults(admin, "429", "429", retry_after=7)
    for _ in range(2):
        answer = get_response(client, new_uuid())
        assert answer.status_code == 429
        assert answer.headers["Retry-After"] == "7"
        assert answer.json()["errors"][0]["code"] == "rateLimitExceeded"
    assert get_response(client, new_uuid()).status_code == 400


def test_scripted_malformed_body(client: httpx.Client, admin: httpx.Client) -> None:
    script_faults(admin, "malformed")
    answer = get_response(client, new_uuid())
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.text)


def test_scripted_timeout_stalls_then_answers(client: httpx.Client, admin: httpx.Client) -> None:
    admin.patch("/_sim/config", json={"timeout_seconds": 0.4})
    script_faults(admin, "timeout")
    task_uuid = new_uuid()
    start = time.monotonic()
    answer = client.post("/v1", json=[inference(task_uuid)])
    assert time.monotonic() - start >= 0.4
    assert answer.json()["data"] == [{"taskType": "imageInference", "taskUUID": task_uuid}]


def test_scripted_faults_respect_path_prefix_and_clear(
    client: httpx.Client, admin: httpx.Client
) -> None:
    script_faults(admin, "500", path_prefix="/runwayml")
    assert get_response(client, new_uuid()).status_code == 400  # /v1 does not consume it
    assert admin.get("/_sim/faults").json()["queued"] == 1
    assert client.get(f"/runwayml/v1/tasks/{new_uuid()}").status_code == 500
    script_faults(admin, "503", "503")
    assert admin.delete("/_sim/faults").json()["queued"] == 0
    assert get_response(client, new_uuid()).status_code == 400
    assert admin.post("/_sim/faults", json={"faults": ["boom"]}).status_code == 400


def test_random_fault_rates(client: httpx.Client, admin: httpx.Client) -> None:
    admin.patch("/_sim/config", json={"rate_5xx": 1.0})
    assert [get_response(client, new_uuid()).status_code for _ in range(3)] == [503] * 3
    assert admin.get("/healthz").status_code == 200  # admin routes are never faulted
    admin.patch("/_sim/config", json={"rate_5xx": 0.0, "rate_429": 1.0})
    assert get_response(client, new_uuid()).headers["Retry-After"] == "1"
    admin.patch("/_sim/config", json={"rate_429": 0.0})
    assert get_response(client, new_uuid()).status_code == 400


def test_stats_counts(client: httpx.Client, admin: httpx.Client) -> None:
    task_uuid = new_uuid()
    client.post("/v1", json=[inference(task_uuid, simulate={"durations": [0]})])
    client.post("/v1", json=[inference(task_uuid)])  # refused: conflict
    get_response(client, task_uuid, task_uuid)
    script_faults(admin, "503")
    get_response(client, task_uuid)
    stats = admin.get("/_sim/stats").json()
    assert stats["requests"] == 4
    assert stats["by_status"] == {"200": 2, "400": 1, "503": 1}
    assert stats["tasks"] == {"imageInference": 2, "getResponse": 2}
    assert stats["submits_by_task"] == {task_uuid: 2}
    assert stats["created"] == 1


def test_sim_task_view(client: httpx.Client, admin: httpx.Client) -> None:
    task_uuid = new_uuid()
    task = inference(task_uuid, numberResults=2, simulate={"durations": [0.0, 5.0]})
    client.post("/v1", json=[task])
    view = admin.get(f"/_sim/tasks/{task_uuid}").json()
    assert view["dialect"] == "runware"
    assert view["request"] == task
    first, second = view["generations"]
    assert (first["index"], first["status"], first["error"]) == (0, "success", None)
    assert second["status"] == "processing"
    assert second["finished_at"] == pytest.approx(view["created_at"] + 5.0)
    assert admin.get(f"/_sim/tasks/{new_uuid()}").status_code == 404
    assert admin.post("/_sim/reset").status_code == 200
    assert admin.get(f"/_sim/tasks/{task_uuid}").status_code == 404


# --- useapi.net Runway --------------------------------------------------------------------------


def poll_statuses(
    client: httpx.Client, path: str, until: set[str], key: str = "status"
) -> list[dict[str, Any]]:
    """Poll ``path`` every 30 ms until its status is in ``until``; every snapshot seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        answer = client.get(path)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen.append(body)
        status = body["data"][key] if "data" in body and "code" in body else body[key]
        if status in until:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"no status in {until} after 5 s")


def distinct(values: list[str]) -> list[str]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def test_useapi_lifecycle_to_succeeded(client: httpx.Client) -> None:
    body = {
        "text_prompt": "cat chasing dog",
        "simulate": {"duration": 0.5, "throttled_seconds": 0.2},
    }
    created = client.post("/v1/runwayml/gen3/create", json=body)
    assert created.status_code == 200
    task = created.json()
    assert list(task) == SEED_002_TASK_KEYS
    assert task["status"] == "PENDING"
    assert task["taskId"] == f"user:1000-runwayml:sim@pollen.invalid-task:{task['id']}"
    assert task["options"]["text_prompt"] == "cat chasing dog"
    assert task["options"]["seconds"] == 5

    seen = poll_statuses(client, f"/v1/runwayml/tasks/{task['taskId']}", {"SUCCEEDED", "FAILED"})
    assert distinct([s["status"] for s in seen]) == ["PENDING", "THROTTLED", "RUNNING", "SUCCEEDED"]
    for snap in seen:
        assert list(snap) == SEED_002_TASK_KEYS
        assert isinstance(snap["progressRatio"], str)
        waiting = snap["status"] in ("PENDING", "THROTTLED")
        assert isinstance(snap["estimatedTimeToStartSeconds"], int | float) == waiting
        assert snap["error"] is None
    ratios = [float(s["progressRatio"]) for s in seen if s["status"] == "RUNNING"]
    assert all(0.25 <= r <= 0.9 for r in ratios)
    assert ratios == sorted(ratios)
    final = seen[-1]
    assert final["progressRatio"] == "1"
    assert final["estimatedTimeToStartSeconds"] is None
    (artifact,) = final["artifacts"]
    assert set(artifact) == SEED_002_ARTIFACT_KEYS
    assert artifact["url"].startswith(f"{client.base_url}/media/runway/")
    assert artifact["metadata"]["dimensions"] == [1280, 768]
    assert set(artifact["metadata"]) == {"frameRate", "duration", "dimensions", "size"}
    assert client.get(f"/v1/runwayml/tasks/{task['id']}").json()["status"] == "SUCCEEDED"


def test_useapi_failed_with_error_object(client: httpx.Client) -> None:
    fail = {"errorMessage": "Blocked", "reason": "SAFETY.INPUT.TEXT", "message": "moderated"}
    body = {"text_prompt": "x", "seconds": 10, "simulate": {"duration": 0.1, "fail": fail}}
    task = client.post("/v1/runwayml/gen3/create", json=body).json()
    seen = poll_statuses(client, f"/v1/runwayml/tasks/{task['taskId']}", {"SUCCEEDED", "FAILED"})
    final = seen[-1]
    assert final["status"] == "FAILED"
    assert final["error"] == fail
    assert final["artifacts"] == []


def test_useapi_status_sequence_and_errors(client: httpx.Client, admin: httpx.Client) -> None:
    simulate = {"duration": 0.2, "status_sequence": ["PENDING", "WEIRD_STATUS"]}
    task = client.post(
        "/v1/runwayml/gen3/create", json={"text_prompt": "x", "simulate": simulate}
    ).json()
    seen = poll_statuses(client, f"/v1/runwayml/tasks/{task['taskId']}", {"WEIRD_STATUS"})
    assert seen[-1]["artifacts"] == []

    missing = client.get("/v1/runwayml/tasks/user:1-runwayml:a@b.c-task:nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "Not found.", "code": 404})
    bad = client.post("/v1/runwayml/gen3/create", json={"seconds": 5})
    assert bad.status_code == 400
    assert bad.json()["code"] == 400
    assert isinstance(bad.json()["error"], str)
    assert client.post("/v1/runwayml/gen3/create", json={"text_prompt": "x", "seconds": 7}).is_error
    unauthorized = admin.get(f"/v1/runwayml/tasks/{task['taskId']}")
    assert (unauthorized.status_code, unauthorized.json()) == (
        401,
        {"error": "Unauthorized", "code": 401},
    )


# --- CometAPI Runway wrapper ---------------------------------------------------------------------


def test_comet_not_exist_window_then_success(client: httpx.Client, admin: httpx.Client) -> None:
    seed = json.loads(SEED_003_QUEUED)
    body = {
        "model": "gen4_turbo",
        "promptImage": "https://example.invalid/cat.png",
        "promptText": "cat",
        "ratio": "1280:720",
        "duration": 5,
        "simulate": {"duration": 0.5},
    }
    headers = {"X-Runway-Version": "2024-11-06"}
    start = time.monotonic()
    created = client.post("/runwayml/v1/image_to_video", json=body, headers=headers)
    assert created.status_code == 200
    (task_id,) = created.json().values()
    early = client.get(f"/runwayml/v1/tasks/{task_id}")
    assert early.status_code == 400
    assert early.json() == {"code": "task_not_exist", "message": "task_not_exist", "data": None}

    while client.get(f"/runwayml/v1/tasks/{task_id}").status_code == 400:
        assert time.monotonic() - start < 3.0
        time.sleep(0.02)
    assert time.monotonic() - start >= 0.3  # comet_not_exist_seconds of the fixture
    seen = poll_statuses(client, f"/runwayml/v1/tasks/{task_id}", {"SUCCESS", "FAILURE"})
    assert time.monotonic() - start >= 0.8  # visible after 0.3 s, then 0.5 s of work
    assert distinct([s["data"]["status"] for s in seen]) == ["QUEUED", "IN_PROGRESS", "SUCCESS"]
    first = seen[0]
    assert set(first) == set(seed)
    assert set(first["data"]) == set(seed["data"])
    assert set(first["data"]["data"]) == set(seed["data"]["data"])
    assert (first["data"]["progress"], first["data"]["data"]["status"]) == ("0%", "PENDING")
    assert (first["data"]["start_time"], first["data"]["finish_time"]) == (0, 0)
    final = seen[-1]["data"]
    assert final["action"] == "IMAGE_TO_VIDEO"
    assert final["progress"] == "100%"
    assert final["fail_reason"] == ""
    assert final["finish_time"] >= final["start_time"] >= final["submit_time"] > 0
    assert final["data"]["status"] == "SUCCEEDED"
    assert final["data"]["output"] == [f"{client.base_url}/media/runway/{task_id}.mp4"]
    view = admin.get(f"/_sim/tasks/{task_id}").json()
    assert view["params"]["runway_version"] == "2024-11-06"
    assert view["provider_status"] == "SUCCESS"


def test_comet_failure_and_errors(client: httpx.Client, admin: httpx.Client) -> None:
    simulate = {"duration": 0.0, "not_exist_seconds": 0.0, "fail_reason": "Content moderated"}
    body = {"model": "gen4_image", "promptText": "x", "simulate": simulate}
    task_id = client.post("/runwayml/v1/text_to_image", json=body).json()["id"]
    data = client.get(f"/runwayml/v1/tasks/{task_id}").json()["data"]
    assert (data["status"], data["fail_reason"], data["action"]) == (
        "FAILURE",
        "Content moderated",
        "TEXT_TO_IMAGE",
    )
    assert data["data"]["status"] == "FAILED"
    assert data["data"]["failure"] == "Content moderated"
    assert isinstance(data["data"]["failureCode"], str)
    assert "output" not in data["data"]

    never = client.get(f"/runwayml/v1/tasks/{new_uuid()}")
    assert (never.status_code, never.json()["code"]) == (400, "task_not_exist")
    invalid = client.post("/runwayml/v1/image_to_video", json={"promptText": "no model"})
    assert invalid.status_code == 400
    assert invalid.json()["code"] == "invalid_request"
    assert invalid.json()["data"] is None
    unauthorized = admin.get(f"/runwayml/v1/tasks/{task_id}")
    assert unauthorized.status_code == 401
    assert unauthorized.json()["code"] == "unauthorized"


# --- rate limit, request kinds, bulk finish times (used by the benchmark) ----------------------


def test_rate_limiter_is_a_sliding_one_second_window() -> None:
    limiter = SimulatedRateLimit()
    assert all(limiter.allow(10.0 + i * 0.1, 3) for i in range(3))  # 10.0, 10.1, 10.2
    assert not limiter.allow(10.5, 3)
    assert not limiter.allow(10.99, 3)
    assert limiter.allow(11.0, 3)  # 10.0 has left the window
    assert not limiter.allow(11.05, 3)
    assert limiter.allow(11.15, 3)
    assert all(limiter.allow(11.2, None) for _ in range(100))  # no limit
    limiter.clear()
    assert limiter.allow(11.2, 1)


def test_max_in_window_over_buckets() -> None:
    assert max_in_window({}) == 0
    assert max_in_window({0: 5, 9: 5, 10: 7}) == 12  # buckets 1..10
    assert max_in_window({0: 5, 20: 3}) == 5
    assert max_in_window({3: 1, 4: 1, 5: 1}, per_window=2) == 2


def test_timeline_view_counts_requests_and_limited() -> None:
    timeline = Timeline()
    for t in (100.0, 100.05, 100.5, 100.95, 101.5, 103.0):
        timeline.add(t, limited=t == 100.5)
    view = timeline.view(limit=3)
    assert view["requests"] == 6
    assert view["rate_limited"] == 1
    assert view["max_requests_in_window"] == 4  # 100.0 .. 100.95
    assert view["max_accepted_in_window"] == 3
    assert view["series"][0] == [100.0, 2, 0]
    assert [row[1] for row in view["series"]] == [2, 1, 1, 1, 1]


def test_global_rate_limit_on_a_fake_clock() -> None:
    now = [5_000.0]
    sim = Simulator(SimulatorConfig(api_key=KEY, rate_limit=2, retry_after=3), clock=lambda: now[0])

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(sim))
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sim", headers=headers
        ) as local:
            answers = []
            for step, task in enumerate([new_uuid() for _ in range(4)]):
                now[0] = 5_000.0 + step * 0.3  # 0, 0.3, 0.6, 0.9: two fit in the window
                answers.append(await local.post("/v1", json=[inference(task)]))
            now[0] = 5_001.0  # the first accepted request has left the window
            answers.append(await local.post("/v1/runwayml/gen3/create", json={"text_prompt": "x"}))
            return answers

    answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200, 200, 429, 429, 200]
    assert answers[2].headers["Retry-After"] == "3"
    assert answers[2].json()["errors"][0]["code"] == "rateLimitExceeded"
    assert len(sim.store) == 3  # the limited requests created nothing
    stats = sim.stats.snapshot()
    assert stats["rate_limited"] == 2
    assert stats["rate_limited_by_kind"] == {"submit": 2}
    assert stats["requests_by_kind"] == {"submit": 5}
    assert stats["by_status"] == {"200": 3, "429": 2}
    assert stats["faults"] == {}


def test_rate_limit_over_http_and_the_rate_view(client: httpx.Client, admin: httpx.Client) -> None:
    assert admin.patch("/_sim/config", json={"rate_limit": 3}).json()["rate_limit"] == 3
    codes = [get_response(client, new_uuid()).status_code for _ in range(8)]
    assert codes.count(429) >= 5  # 8 requests well within one second: 3 accepted at most
    rate = admin.get("/_sim/rate").json()
    assert rate["limit"] == 3
    assert rate["requests"] == 8
    assert rate["rate_limited"] == codes.count(429)
    assert rate["max_accepted_in_window"] <= 3
    assert rate["max_requests_in_window"] >= 5
    assert sum(row[1] for row in rate["series"]) == 8
    assert admin.patch("/_sim/config", json={"rate_limit": 0}).status_code == 400
    admin.patch("/_sim/config", json={"rate_limit": None})
    assert get_response(client, new_uuid()).status_code == 400  # taskNotFound: not limited
    assert admin.post("/_sim/reset").status_code == 200
    assert admin.get("/_sim/rate").json()["requests"] == 0


def test_requests_are_counted_by_kind(client: httpx.Client, admin: httpx.Client) -> None:
    task_uuid = new_uuid()
    client.post("/v1", json=[inference(task_uuid, simulate={"durations": [0]})])
    get_response(client, task_uuid)
    get_response(client, task_uuid)
    client.post("/v1", json=[{"taskType": "getTaskDetails", "taskUUID": task_uuid}])
    created = client.post("/v1/runwayml/gen3/create", json={"text_prompt": "x"}).json()
    client.get(f"/v1/runwayml/tasks/{created['taskId']}")
    script_faults(admin, "503")
    get_response(client, task_uuid)  # faulted requests are counted too
    stats = admin.get("/_sim/stats").json()
    assert stats["requests_by_kind"] == {"submit": 2, "status": 4, "other": 1}
    assert stats["rate_limited"] == 0


def test_bulk_finished_view(client: httpx.Client, admin: httpx.Client) -> None:
    first, second = new_uuid(), new_uuid()
    client.post(
        "/v1",
        json=[
            inference(first, positivePrompt="bench job-1", simulate={"durations": [0.0]}),
            inference(
                second,
                numberResults=2,
                simulate={"durations": [1.0, 2.0], "errors": [None, "providerError"]},
            ),
        ],
    )
    client.post("/v1/runwayml/gen3/create", json={"text_prompt": "runway job"})
    view = admin.get("/_sim/finished").json()
    assert len(view["tasks"]) == 3
    one, two = view["tasks"][first], view["tasks"][second]
    assert one["label"] == "bench job-1"
    assert one["finished_at"] == [pytest.approx(one["created_at"])]
    assert two["finished_at"] == [
        pytest.approx(two["created_at"] + 1.0),
        pytest.approx(two["created_at"] + 2.0),
    ]
    assert two["errors"] == [None, "providerError"]
    assert view["now"] >= one["created_at"]
    runware = admin.get("/_sim/finished", params={"dialect": "runware"}).json()["tasks"]
    assert set(runware) == {first, second}
    useapi = admin.get("/_sim/finished", params={"dialect": "useapi"}).json()["tasks"]
    assert [task["label"] for task in useapi.values()] == ["runway job"]
    assert admin.post("/_sim/reset").status_code == 200
    assert admin.get("/_sim/finished").json()["tasks"] == {}


def test_result_urls_serve_the_same_bytes_each_time(client: httpx.Client) -> None:
    image = client.get("/media/image/abc.png")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert client.get("/media/image/abc.png").content == image.content
    assert client.get("/media/image/abd.png").content != image.content
    video = client.get("/media/runway/xyz.mp4")
    assert (video.status_code, video.headers["content-type"]) == (200, "video/mp4")
    assert len(video.content) > 0


def test_media_url_setting_moves_result_urls(client: httpx.Client, admin: httpx.Client) -> None:
    assert admin.patch("/_sim/config", json={"media_url": "https://cdn.example/files"}).is_success
    try:
        task_uuid = new_uuid()
        assert client.post("/v1", json=[inference(task_uuid)]).status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            items = get_response(client, task_uuid).json()["data"]
            if items and items[0]["status"] == "success":
                break
            time.sleep(0.05)
        assert items[0]["imageURL"].startswith("https://cdn.example/files/image/")
    finally:
        assert admin.patch("/_sim/config", json={"media_url": None}).is_success


def test_runware_output_format_png_gives_a_png_url_that_serves_a_png(client: httpx.Client) -> None:
    task_uuid = new_uuid()
    task = inference(task_uuid, outputFormat="PNG", simulate={"durations": [0]})
    assert client.post("/v1", json=[task]).status_code == 200
    [item] = get_response(client, task_uuid).json()["data"]
    assert item["imageURL"].endswith(f"/image/{item['imageUUID']}.png")
    served = httpx.get(item["imageURL"])
    assert served.headers["content-type"] == "image/png"
    assert served.content.startswith(b"\x89PNG\r\n\x1a\n")


# --- per-key caps (accounts) --------------------------------------------------------------------


def on_fake_clock(
    config: SimulatorConfig, steps: Any, start: float = 10_000.0
) -> tuple[Simulator, list[Any]]:
    """Run ``steps(call, set_time)`` against an in-process simulator on a hand-driven clock;
    ``call(key, method, path, json)`` sends one request with that bearer key."""
    now = [start]
    sim = Simulator(config, clock=lambda: now[0])

    async def scenario() -> list[Any]:
        transport = httpx.ASGITransport(app=build_app(sim))
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as local:

            async def call(key: str, method: str, path: str, body: Any = None) -> httpx.Response:
                headers = {"Authorization": f"Bearer {key}"}
                return await local.request(method, path, json=body, headers=headers)

            def set_time(seconds: float) -> None:
                now[0] = start + seconds

            result: list[Any] = await steps(call, set_time)
            return result

    return sim, asyncio.run(scenario())


def one_second(task_uuid: str) -> dict[str, Any]:
    return inference(task_uuid, simulate={"durations": [1.0]})


def test_config_keys_and_caps_validation() -> None:
    config = SimulatorConfig(api_key=KEY, keys={"a": 1, "b": None}, max_running_per_key=3)
    assert [config.key_valid(k) for k in (KEY, "a", "b", "c")] == [True, True, True, False]
    assert [config.cap_of(k) for k in (KEY, "a", "b")] == [3, 1, 3]
    assert SimulatorConfig().cap_of("sim-key") is None
    assert (config.throttles("runware"), config.throttles("useapi")) == (False, False)
    assert config.throttles("comet")
    assert SimulatorConfig(cap_mode={"useapi": "throttle"}).throttles("useapi")
    with pytest.raises(ValidationError, match="cap >= 1"):
        SimulatorConfig(keys={"a": 0})
    with pytest.raises(ValidationError):
        SimulatorConfig(max_running_per_key=0)
    with pytest.raises(ValidationError, match="runware has no waiting status"):
        SimulatorConfig(cap_mode={"runware": "throttle"})
    with pytest.raises(ValidationError, match="unknown dialects nope"):
        SimulatorConfig(cap_mode={"nope": "refuse"})
    with pytest.raises(ValidationError):
        SimulatorConfig(cap_mode={"comet": "wait"})


def test_runware_cap_per_key_refuses_with_429_until_a_slot_frees() -> None:
    config = SimulatorConfig(api_key=KEY, keys={"a": 2, "b": 1}, retry_after=2)
    ids = [new_uuid() for _ in range(6)]

    async def steps(call: Any, set_time: Any) -> list[httpx.Response]:
        answers = [await call("a", "POST", "/v1", [one_second(ids[0])])]
        answers.append(await call("a", "POST", "/v1", [one_second(ids[1])]))
        answers.append(await call("a", "POST", "/v1", [one_second(ids[2])]))  # a is full
        answers.append(await call("b", "POST", "/v1", [one_second(ids[3])]))  # b has its own
        answers.append(await call("nobody", "POST", "/v1", [one_second(ids[4])]))
        set_time(0.999)
        answers.append(await call("a", "POST", "/v1", [one_second(ids[2])]))  # still full
        set_time(1.0)  # the first two finished
        both = [one_second(ids[2]), one_second(ids[5]), one_second(new_uuid())]
        answers.append(await call("a", "POST", "/v1", both))  # 3 do not fit in 2: none made
        answers.append(await call("a", "POST", "/v1", both[:2]))
        return answers

    sim, answers = on_fake_clock(config, steps)
    assert [a.status_code for a in answers] == [200, 200, 429, 200, 401, 429, 429, 200]
    refused = answers[2]
    assert refused.headers["Retry-After"] == "2"
    assert refused.json()["errors"][0]["code"] == "rateLimitExceeded"
    assert not sim.store.exists(ids[4])
    assert len(sim.store) == 5
    keys = sim.concurrency.snapshot(sim.clock())
    assert keys["a"]["peak_running"] == 2
    assert keys["a"]["refused_for_capacity"] == 3
    assert keys["a"]["running"] == 2
    assert keys["b"]["peak_running"] == 1
    assert keys["b"]["refused_for_capacity"] == 0
    assert "nobody" not in keys


def test_runware_cap_counts_every_generation_until_the_last() -> None:
    config = SimulatorConfig(api_key=KEY, max_running_per_key=1)

    async def steps(call: Any, set_time: Any) -> list[int]:
        long_task = inference(new_uuid(), numberResults=2, simulate={"durations": [1.0, 3.0]})
        codes = [(await call(KEY, "POST", "/v1", [long_task])).status_code]
        set_time(2.9)
        codes.append((await call(KEY, "POST", "/v1", [one_second(new_uuid())])).status_code)
        set_time(3.0)
        codes.append((await call(KEY, "POST", "/v1", [one_second(new_uuid())])).status_code)
        return codes

    _, codes = on_fake_clock(config, steps)
    assert codes == [200, 429, 200]


def test_polls_with_another_accounts_key_find_nothing() -> None:
    config = SimulatorConfig(api_key=KEY, keys={"a": None, "b": None})
    task = new_uuid()

    async def steps(call: Any, set_time: Any) -> list[httpx.Response]:
        await call("a", "POST", "/v1", [one_second(task)])
        poll = [{"taskType": "getResponse", "taskUUID": task}]
        created = await call("b", "POST", "/v1/runwayml/gen3/create", {"text_prompt": "x"})
        task_id = created.json()["taskId"]
        return [
            await call("a", "POST", "/v1", poll),
            await call("b", "POST", "/v1", poll),
            await call("b", "GET", f"/v1/runwayml/tasks/{task_id}"),
            await call("a", "GET", f"/v1/runwayml/tasks/{task_id}"),
            await call("a", "DELETE", f"/v1/runwayml/tasks/{task_id}"),
        ]

    sim, answers = on_fake_clock(config, steps)
    assert [a.status_code for a in answers] == [200, 400, 200, 404, 404]
    assert answers[1].json()["errors"][0]["code"] == "taskNotFound"
    keys = sim.concurrency.snapshot(sim.clock())
    assert (keys["a"]["foreign_lookups"], keys["b"]["foreign_lookups"]) == (2, 1)
    assert keys["a"]["requests_by_kind"] == {"submit": 1, "status": 2, "cancel": 1}
    assert keys["b"]["requests_by_kind"] == {"status": 2, "submit": 1}


def test_useapi_refuses_past_the_cap_by_default_and_throttles_when_asked() -> None:
    config = SimulatorConfig(api_key=KEY, max_running_per_key=1)
    body = {"text_prompt": "x", "simulate": {"duration": 10.0}}

    async def steps(call: Any, set_time: Any) -> list[Any]:
        create = "/v1/runwayml/gen3/create"
        return [await call(KEY, "POST", create, body), await call(KEY, "POST", create, body)]

    sim, (first, second) = on_fake_clock(config, steps)
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.json() == {"error": second.json()["error"], "code": 429}
    assert second.headers["Retry-After"] == "1"

    config = SimulatorConfig(api_key=KEY, max_running_per_key=1, cap_mode={"useapi": "throttle"})

    async def throttled(call: Any, set_time: Any) -> list[Any]:
        create = "/v1/runwayml/gen3/create"
        tasks = [(await call(KEY, "POST", create, body)).json() for _ in range(3)]
        seen = []
        for moment in (0.0, 9.99, 10.0, 12.0, 19.99, 20.0, 30.0):
            set_time(moment)
            polls = [await call(KEY, "GET", f"/v1/runwayml/tasks/{t['taskId']}") for t in tasks]
            seen.append([p.json()["status"] for p in polls])
        return [tasks, seen]

    sim, (tasks, seen) = on_fake_clock(config, throttled)
    assert [t["status"] for t in tasks] == ["PENDING", "THROTTLED", "THROTTLED"]
    assert tasks[1]["estimatedTimeToStartSeconds"] == 12.0  # 10 s held + 20% of its own
    assert seen == [
        ["PENDING", "THROTTLED", "THROTTLED"],
        ["RUNNING", "THROTTLED", "THROTTLED"],
        ["SUCCEEDED", "PENDING", "THROTTLED"],
        ["SUCCEEDED", "RUNNING", "THROTTLED"],
        ["SUCCEEDED", "RUNNING", "THROTTLED"],
        ["SUCCEEDED", "SUCCEEDED", "PENDING"],
        ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"],
    ]
    keys = sim.concurrency.snapshot(sim.clock())[KEY]
    assert (keys["peak_running"], keys["throttled"], keys["refused_for_capacity"]) == (1, 2, 0)


def test_useapi_cancel_frees_the_slot() -> None:
    config = SimulatorConfig(api_key=KEY, max_running_per_key=1)
    body = {"text_prompt": "x", "simulate": {"duration": 10.0}}

    async def steps(call: Any, set_time: Any) -> list[int]:
        create = "/v1/runwayml/gen3/create"
        task = (await call(KEY, "POST", create, body)).json()
        codes = [(await call(KEY, "POST", create, body)).status_code]
        set_time(1.0)
        codes.append((await call(KEY, "DELETE", f"/v1/runwayml/tasks/{task['id']}")).status_code)
        codes.append((await call(KEY, "POST", create, body)).status_code)
        return codes

    _, codes = on_fake_clock(config, steps)
    assert codes == [429, 204, 200]


def test_comet_throttles_past_the_cap_in_creation_order() -> None:
    config = SimulatorConfig(api_key=KEY, keys={"c": 2}, comet_not_exist_seconds=0.0)
    body = {"model": "gen4_turbo", "promptText": "x", "simulate": {"duration": 10.0}}

    async def steps(call: Any, set_time: Any) -> list[Any]:
        ids = []
        for _ in range(4):
            created = await call("c", "POST", "/runwayml/v1/text_to_video", body)
            ids.append(created.json()["id"])
        seen = []
        for moment in (0.0, 9.99, 10.0, 20.0):
            set_time(moment)
            polls = [await call("c", "GET", f"/runwayml/v1/tasks/{i}") for i in ids]
            data = [p.json()["data"] for p in polls]
            seen.append([(d["status"], d["data"]["status"]) for d in data])
        return seen

    sim, seen = on_fake_clock(config, steps)
    queued, throttled = ("QUEUED", "PENDING"), ("QUEUED", "THROTTLED")
    done, running = ("SUCCESS", "SUCCEEDED"), ("IN_PROGRESS", "RUNNING")
    assert seen == [
        [queued, queued, throttled, throttled],
        [running, running, throttled, throttled],
        [done, done, queued, queued],
        [done, done, done, done],
    ]
    keys = sim.concurrency.snapshot(sim.clock())["c"]
    assert (keys["peak_running"], keys["throttled"], keys["created"]) == (2, 2, 4)


def test_cap_stats_over_http_and_reset(client: httpx.Client, admin: httpx.Client) -> None:
    patch = {"keys": {"acct-1": 1}, "cap_bodies": {"runware": {"error": "busy"}}}
    assert admin.patch("/_sim/config", json=patch).is_success
    try:
        headers = {"Authorization": "Bearer acct-1"}
        task = [inference(new_uuid(), simulate={"durations": [5.0]})]
        assert client.post("/v1", json=task, headers=headers).status_code == 200
        refused = client.post("/v1", json=[inference(new_uuid())], headers=headers)
        assert (refused.status_code, refused.json()) == (429, {"error": "busy"})
        view = admin.get("/_sim/stats").json()["keys"]["acct-1"]
        assert (view["running"], view["peak_running"], view["refused_for_capacity"]) == (1, 1, 1)
        assert admin.post("/_sim/reset").is_success
        assert admin.get("/_sim/stats").json()["keys"] == {}
        assert client.post("/v1", json=[inference(new_uuid())], headers=headers).status_code == 200
    finally:
        assert admin.patch("/_sim/config", json={"keys": {}, "cap_bodies": {}}).is_success


def test_paced_creates_are_answered_one_at_a_time_and_one_whose_client_left_is_dropped(
    client: httpx.Client, admin: httpx.Client, server: SimulatorServer
) -> None:
    assert not admin.patch("/_sim/config", json={"create_gap": -0.1}).is_success
    assert not admin.patch("/_sim/config", json={"create_gap": 60.1}).is_success
    assert admin.patch("/_sim/config", json={"create_gap": 0.3}).is_success
    body = {"text_prompt": "a harbour at dawn"}
    answered: list[float] = []

    def create() -> None:
        client.post("/v1/runwayml/gen3/create", json=body).raise_for_status()
        answered.append(time.monotonic())

    try:
        threads = [threading.Thread(target=create) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answered.sort()
        gaps = [later - earlier for earlier, later in itertools.pairwise(answered)]
        assert min(gaps) > 0.25, gaps  # one at a time, the gap apart
        headers = {"Authorization": f"Bearer {KEY}"}
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=0.1) as leaving,
            pytest.raises(httpx.ReadTimeout),
        ):
            leaving.post("/v1/runwayml/gen3/create", json=body)  # waits its turn; leaves
        time.sleep(0.4)  # past its turn: it was dropped, not handled
        stats = admin.get("/_sim/stats").json()
        assert (stats["created"], stats["creates_dropped"], stats["creates_waiting"]) == (3, 1, 0)
        assert admin.post("/_sim/reset").is_success
        assert admin.get("/_sim/stats").json()["creates_dropped"] == 0
    finally:
        assert admin.patch("/_sim/config", json={"create_gap": 0.0}).is_success
    started = time.monotonic()
    for _ in range(3):
        create()
    assert time.monotonic() - started < 0.3  # unpaced again


class _NaiveKey:
    """The simulator's per-key rules written the plain way (every live task looked at on every
    step), to check the logarithmic bookkeeping of :mod:`pollen.simulator.concurrency`."""

    def __init__(self) -> None:
        self.tasks: dict[str, list[float]] = {}
        self.peak = self.refused = self.throttled = 0

    def live(self, now: float) -> list[list[float]]:
        self.tasks = {t: se for t, se in self.tasks.items() if se[1] > now}
        return list(self.tasks.values())

    def running(self, now: float) -> int:
        return sum(1 for start, end in self.live(now) if start <= now < end)

    def schedule(
        self, task_id: str, now: float, length: float, cap: int | None, wait: bool
    ) -> float | None:
        live = self.live(now)
        start = max([now, *(s for s, _ in live)])
        ends = sorted(e for _, e in live)
        if cap is not None and len(ends) >= cap:
            start = max(start, ends[len(ends) - cap])
        if start > now and not wait:
            self.refused += 1
            return None
        self.throttled += start > now
        running = sum(1 for _, e in live if e > start)
        self.tasks[task_id] = [start, start + length]
        self.peak = max(self.peak, running + 1 if length > 0 else running)
        return start


@pytest.mark.parametrize("seed", range(6))
def test_per_key_concurrency_follows_the_plain_rules(seed: int) -> None:
    rng = random.Random(seed)
    cap = rng.choice([None, 1, 3, 8])
    fast, naive = Concurrency(), _NaiveKey()
    now = 0.0
    for n in range(600):
        now += rng.choice([0.0, 0.01, 0.1, 0.5])
        task = f"t{n}"
        step = rng.random()
        if step < 0.6:
            length = rng.choice([0.0, 0.2, 1.0, 3.0])
            wait = rng.random() < 0.7
            assert fast.schedule("k", task, now, length, cap, wait) == naive.schedule(
                task, now, length, cap, wait
            )
        elif step < 0.75 and naive.tasks:  # a cancel frees the slot at once
            victim = rng.choice(sorted(naive.tasks))
            fast.finish("k", victim, now)
            start, end = naive.tasks[victim]
            naive.tasks[victim][1] = min(end, max(now, start))
        elif step < 0.85:
            count = rng.choice([1, 2, 5])
            free = cap is None or naive.running(now) + count <= cap
            naive.refused += not free
            assert fast.room("k", now, cap, count) is free
        seen = fast.snapshot(now).get("k")
        if seen is not None:
            live = naive.live(now)
            assert seen["running"] == naive.running(now)
            assert seen["waiting"] == sum(1 for start, _ in live if start > now)
            assert (seen["peak_running"], seen["refused_for_capacity"], seen["throttled"]) == (
                naive.peak, naive.refused, naive.throttled,
            )  # fmt: skip
