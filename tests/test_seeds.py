"""Runware's documented JSON examples, parsed verbatim from the provider documents.

The documents live in ``shared/seeds`` beside the repository (see its README). The JSON blocks
are extracted at test time, so a change of the documents is a change of these tests' inputs.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollen.backoff import PollPolicy
from pollen.errors import ProviderTaskNotFound
from pollen.models import Job, JobStatus
from pollen.providers.runware import (
    Runware,
    RunwareEnvelope,
    RunwareTaskDetails,
)
from pollen.settings import RunwareSettings, Settings
from tests.helpers import seeds

POLLING = "000_90f715ea97071e94.txt"  # Task Polling (plain text)
RESPONSES = "001_4c4507e5ab0f9ba9.txt"  # Task Responses (markdown, JS-style examples)
DETAILS = "004_2b2491cabc0fb897.txt"  # Task Details (plain text)

SEED_TASK_UUID = "24cd5dff-cb81-4db5-8506-b72a9425f9d1"
SEED_VIDEO_UUID = "b7db282d-2943-4f12-992f-77df3ad3ec71"
SEED_TIMEOUT_MESSAGE = (
    "The external provider did not respond within the timeout window. "
    "The request was automatically terminated."
)
NOW = 1_761_500_000.0


# --------------------------------------------------------------------------- extraction


def seed_text(name: str) -> str:
    return (seeds() / name).read_text(encoding="utf-8")


def json_blocks(text: str) -> list[str]:
    """Every example block: from a line that is only ``{`` or ``[`` (at column 0) to the
    first following line that is only the matching closing bracket at column 0.

    That is how the documents lay out their examples, with or without ``` fences.
    """
    closing = {"{": "}", "[": "]"}
    blocks: list[str] = []
    lines = text.splitlines()
    start: int | None = None
    for number, line in enumerate(lines):
        if start is None and line in closing:
            start = number
        elif start is not None and line == closing[lines[start]]:
            blocks.append("\n".join(lines[start : number + 1]))
            start = None
    assert start is None, f"unterminated JSON block starting at line {start}"
    return blocks


def relaxed_json(block: str) -> Any:
    """Parse a JavaScript-style example: ``//`` comments and trailing commas.

    Seed 001 (Runware's "Task Responses" page) writes its examples as JS object literals:
    the response example annotates the arrays with ``// ...`` comment lines, and both the
    request example (``"taskUUID": "...",`` before ``}``) and the processing item of the
    response example end an object with a trailing comma. Neither is JSON, and neither
    carries data, so both are removed here -- but only outside string literals (URLs in the
    examples contain ``//``), by a small scanner rather than a regular expression over the
    whole text. Everything else is handed to the strict ``json`` parser unchanged.
    """
    out: list[str] = []
    i, n = 0, len(block)
    while i < n:
        char = block[i]
        if char == '"':  # copy a string literal, escapes included
            end = i + 1
            while block[end] != '"':
                end += 2 if block[end] == "\\" else 1
            out.append(block[i : end + 1])
            i = end + 1
        elif block.startswith("//", i):  # comment to the end of the line
            while i < n and block[i] != "\n":
                i += 1
        elif char == ",":
            rest = re.match(r"(\s|//[^\n]*)*", block[i + 1 :])
            after = i + 1 + (rest.end() if rest else 0)
            if after < n and block[after] in "}]":
                i += 1  # trailing comma: drop it
            else:
                out.append(char)
                i += 1
        else:
            out.append(char)
            i += 1
    return json.loads("".join(out))


@cache
def examples(name: str) -> tuple[str, ...]:
    return tuple(json_blocks(seed_text(name)))


def strict_example(name: str, index: int) -> Any:
    """A block that must already be valid JSON (seeds 000 and 004)."""
    return json.loads(examples(name)[index])


def polling_response() -> dict[str, Any]:
    value = strict_example(POLLING, 1)
    assert isinstance(value, dict)
    return value


def responses_response() -> dict[str, Any]:
    value = relaxed_json(examples(RESPONSES)[1])
    assert isinstance(value, dict)
    return value


def details_example(index: int) -> dict[str, Any]:
    value = strict_example(DETAILS, index)
    assert isinstance(value, dict)
    return value


DETAILS_SUCCESS, DETAILS_FAILURE, DETAILS_NOT_FOUND = 1, 2, 3


# --------------------------------------------------------------------------- the documents


def test_the_documents_have_the_expected_examples() -> None:
    assert len(examples(POLLING)) == 2  # request, response
    assert len(examples(RESPONSES)) == 2  # request, response
    assert len(examples(DETAILS)) == 4  # request, success, failure, not found
    assert strict_example(POLLING, 0) == {
        "taskType": "getResponse",
        "taskUUID": "50836053-a0ee-4cf5-b9d6-ae7c5d140ada",
    }
    request = strict_example(DETAILS, 0)
    assert request == [
        {"taskType": "getTaskDetails", "taskUUID": "a770f077-f413-47de-9dac-be0b26a35da6"}
    ]
    assert "taskNotFound" in examples(DETAILS)[DETAILS_NOT_FOUND]


def test_seed_001_examples_are_js_not_json_and_are_read_explicitly() -> None:
    request_block, response_block = examples(RESPONSES)
    # The documents are copied verbatim: these examples really are not strict JSON ...
    for block in (request_block, response_block):
        with pytest.raises(json.JSONDecodeError):
            json.loads(block)
    assert '"50836053-a0ee-4cf5-b9d6-ae7c5d140ada",\n}' in request_block  # trailing comma
    assert "// All processing inference tasks" in response_block
    # ... and once comments and trailing commas are gone they say the same as seed 000.
    assert relaxed_json(request_block) == strict_example(POLLING, 0)
    same = responses_response()
    other = polling_response()
    assert same["data"] == other["data"]
    assert [{**e, "documentation": ""} for e in same["errors"]] == [
        {**e, "documentation": ""} for e in other["errors"]
    ]
    # URLs inside strings keep their "//".
    assert same["data"][1]["videoURL"].startswith("https://im.runware.ai/")


def test_relaxed_json_only_drops_comments_and_trailing_commas() -> None:
    text = '{\n  // note\n  "a": "x // not a comment, ]",\n  "b": [1, 2,],\n  "c": "\\"q\\"",\n}'
    assert relaxed_json(text) == {"a": "x // not a comment, ]", "b": [1, 2], "c": '"q"'}


# --------------------------------------------------------------------------- exact round trips


def get_response_cases() -> list[Any]:
    return [
        pytest.param(polling_response, id="000-getResponse"),
        pytest.param(responses_response, id="001-getResponse"),
        pytest.param(lambda: details_example(DETAILS_SUCCESS), id="004-details-success"),
        pytest.param(lambda: details_example(DETAILS_FAILURE), id="004-details-failure"),
        pytest.param(lambda: details_example(DETAILS_NOT_FOUND), id="004-taskNotFound"),
    ]


@pytest.mark.parametrize("load", get_response_cases())
def test_envelope_round_trips_exactly(load: Any) -> None:
    obj = load()
    envelope = RunwareEnvelope.model_validate(obj)
    assert envelope.model_dump(exclude_unset=True) == obj
    # The JSON form round-trips too (what pollen stores as the audit envelope).
    assert json.loads(envelope.model_dump_json(exclude_unset=True)) == obj


@pytest.mark.parametrize("index", [DETAILS_SUCCESS, DETAILS_FAILURE])
def test_task_details_item_keeps_request_and_response_exactly(index: int) -> None:
    obj = details_example(index)
    item = obj["data"][0]
    details = RunwareTaskDetails.model_validate(item)
    assert details.model_dump(exclude_unset=True) == item
    assert details.request == item["request"]
    assert details.response.model_dump(exclude_unset=True) == item["response"]


# --------------------------------------------------------------------------- normalised view


def runware() -> Runware:
    return Runware(Settings(runware=RunwareSettings(api_key="seed-key")))


def job_for(task_uuid: str, expected_results: int) -> Job:
    return Job(
        id="seed-job",
        provider="runware",
        status=JobStatus.PROCESSING,
        provider_task_id=task_uuid,
        created_at=NOW - 60,
        submitted_at=NOW - 59,
        updated_at=NOW - 10,
        deadline_at=NOW + 3540,
        expected_results=expected_results,
        policy=PollPolicy(),
        task_uuid=task_uuid,
    )


@pytest.mark.parametrize("load", [polling_response, responses_response], ids=["000", "001"])
def test_get_response_example_normalises(load: Any) -> None:
    obj = load()
    snapshot = runware().parse_status(
        job_for(SEED_TASK_UUID, expected_results=2), httpx.Response(200, json=obj), NOW
    )
    assert len(snapshot.results) == 1
    result = snapshot.results[0]
    assert result.id == SEED_VIDEO_UUID
    assert result.url == obj["data"][1]["videoURL"]
    assert result.url is not None
    assert result.url.endswith(f"{SEED_VIDEO_UUID}.mp4")
    assert result.kind == "video"
    assert result.cost == 0.18
    assert result.seen_at == NOW
    assert result.raw == obj["data"][1]
    assert result.metadata == {}
    assert len(snapshot.errors) == 1
    error = snapshot.errors[0]
    assert error.code == "timeoutProvider"
    assert error.message == SEED_TIMEOUT_MESSAGE
    assert error.raw == obj["errors"][0]
    # Two generations expected, both finished (one success, one error): the task succeeded.
    assert snapshot.state == "succeeded"
    assert snapshot.progress == 1.0
    assert snapshot.cost == 0.18
    assert snapshot.envelope == obj


def test_get_response_example_with_three_generations_is_still_running() -> None:
    # Read as three generations (processing, success, error), one is still running.
    snapshot = runware().parse_status(
        job_for(SEED_TASK_UUID, expected_results=3),
        httpx.Response(200, json=polling_response()),
        NOW,
    )
    assert snapshot.state == "running"
    assert snapshot.progress == pytest.approx(2 / 3)
    assert [r.id for r in snapshot.results] == [SEED_VIDEO_UUID]
    assert [e.code for e in snapshot.errors] == ["timeoutProvider"]


def test_get_response_example_for_another_task_is_ignored() -> None:
    snapshot = runware().parse_status(
        job_for("00000000-0000-4000-8000-000000000000", expected_results=2),
        httpx.Response(200, json=polling_response()),
        NOW,
    )
    assert snapshot.state == "pending"
    assert snapshot.results == []
    assert snapshot.errors == []


def test_task_not_found_example_is_terminal() -> None:
    obj = details_example(DETAILS_NOT_FOUND)
    task_uuid = obj["errors"][0]["taskUUID"]
    with pytest.raises(ProviderTaskNotFound) as info:
        runware().parse_status(
            job_for(task_uuid, expected_results=1), httpx.Response(400, json=obj), NOW
        )
    assert info.value.code == "taskNotFound"
    assert info.value.status == 400
    assert obj["errors"][0]["message"] in info.value.message
    assert "taskUUID" in info.value.message  # the parameter is named
    # The same answer with HTTP 200 is refused just as well.
    with pytest.raises(ProviderTaskNotFound):
        runware().parse_status(
            job_for(task_uuid, expected_results=1), httpx.Response(200, json=obj), NOW
        )
    with pytest.raises(ProviderTaskNotFound):
        runware().parse_task_details(httpx.Response(400, json=obj))


def test_parse_task_details_success_example() -> None:
    obj = details_example(DETAILS_SUCCESS)
    item = obj["data"][0]
    details = runware().parse_task_details(httpx.Response(200, json=obj))
    assert details.taskType == "getTaskDetails"
    assert details.taskUUID == "a770f077-f413-47de-9dac-be0b26a35da6"
    assert details.request == item["request"]
    assert details.response.model_dump(exclude_unset=True) == item["response"]
    image = details.response.data[0]
    assert image.model_extra is not None
    assert image.model_extra["imageUUID"] == "77da2d99-a6d3-44d9-b8c0-ae9fb06b6200"
    assert image.cost == 0.0013
    assert details.response.errors == []


def test_parse_task_details_failure_example() -> None:
    obj = details_example(DETAILS_FAILURE)
    item = obj["data"][0]
    details = runware().parse_task_details(httpx.Response(200, json=obj))
    assert details.taskUUID == "b880f077-e514-58ef-0ebd-ce1c37b46eb7"
    assert details.request == item["request"]
    assert len(details.request[0]["inputs"]["referenceImages"]) == 5
    assert details.response.model_dump(exclude_unset=True) == item["response"]
    assert details.response.data == []
    error = details.response.errors[0]
    assert error.code == "invalidReferenceImagesCount"
    assert error.parameter == "inputs.referenceImages"
    assert error.type == "string[]"


@pytest.mark.parametrize("index", [DETAILS_SUCCESS, DETAILS_FAILURE])
def test_parse_task_details_keeps_the_item_exactly(index: int) -> None:
    obj = details_example(index)
    details = runware().parse_task_details(httpx.Response(200, json=obj))
    assert details.model_dump(exclude_unset=True) == obj["data"][0]


def test_missing_documents_fail_in_ci_and_skip_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import helpers

    monkeypatch.setattr(helpers, "SEEDS", tmp_path / "absent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="provider documents not found"):
        helpers.seeds()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        helpers.seeds()
    monkeypatch.setattr(helpers, "SEEDS", tmp_path)
    assert helpers.seeds() == tmp_path
