"""Provider answers mapped onto pollen's error tree: :mod:`pollen.providers.http` and the
Runware dialect's ``parse_submit``/``parse_status``. Parsing only: httpx.MockTransport, no
network, no Redis.
"""

from __future__ import annotations

import email.utils
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pollen.backoff import PollPolicy
from pollen.errors import (
    ProviderError,
    ProviderProtocolError,
    ProviderRejected,
    ProviderTaskNotFound,
    ProviderUnavailable,
    RateLimited,
    RetryableProviderError,
    TerminalProviderError,
)
from pollen.models import Job, JobStatus
from pollen.providers.http import MAX_RETRY_AFTER, json_body, parse_retry_after, send
from pollen.providers.runware import Runware
from pollen.settings import RunwareSettings, Settings

NOW = 1_700_000_000.0
URL = "https://api.runware.test/v1"
Handler = Callable[[httpx.Request], httpx.Response]


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def send_with(handler: Handler) -> httpx.Response:
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        return send(http, httpx.Request("POST", URL, json=[{"taskType": "getResponse"}]))


def answer(status: int, *, headers: dict[str, str] | None = None, text: str = "") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, text=text)

    return handler


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


# --------------------------------------------------------------------------- parse_retry_after


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  7 ", 7.0),
        ("1.5", 1.5),
        ("3600", 3600.0),
    ],
)
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date_is_relative_to_now() -> None:
    assert parse_retry_after(http_date(NOW + 30), now=NOW) == 30.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:20 GMT", now=NOW) == 0.0  # exactly NOW
    assert parse_retry_after("Tue, 14 Nov 2023 22:14:20 GMT", now=NOW) == 60.0
    assert parse_retry_after(http_date(NOW - 300), now=NOW) == 0.0  # in the past: no wait


def test_retry_after_http_date_uses_the_clock_by_default() -> None:
    import time

    seconds = parse_retry_after(http_date(time.time() + 100))
    assert seconds is not None
    assert 95 <= seconds <= 100


@pytest.mark.parametrize(
    "value",
    [None, "", "soon", "nan", "NaN", "0x10", "12 seconds", "Wed, 99 Foo 2015", "Wed, 21 Oct 99999"],
)
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("value", ["-5", "-0.5", "-inf"])
def test_retry_after_negative_never_means_a_negative_wait(value: str) -> None:
    assert parse_retry_after(value, now=NOW) in (None, 0.0)


@pytest.mark.parametrize(
    "value", ["3601", "999999999", "1e400", "inf", "Fri, 31 Dec 9999 23:59:59 GMT"]
)
def test_retry_after_huge_is_capped(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == MAX_RETRY_AFTER == 3600.0


# --------------------------------------------------------------------------- send


def test_send_passes_ordinary_answers_through() -> None:
    for status in (200, 400, 401, 404):
        response = send_with(answer(status, text='{"data": []}'))
        assert response.status_code == status
        assert response.json() == {"data": []}


def test_429_is_rate_limited_with_retry_after() -> None:
    with pytest.raises(RateLimited) as info:
        send_with(answer(429, headers={"Retry-After": "17"}, text="slow down"))
    assert info.value.retry_after == 17.0
    assert info.value.status == 429
    assert info.value.code == "rateLimited"
    assert "slow down" in info.value.message
    assert isinstance(info.value, RetryableProviderError)


def test_429_without_retry_after() -> None:
    with pytest.raises(RateLimited) as info:
        send_with(answer(429))
    assert info.value.retry_after is None


def test_429_with_an_http_date_retry_after() -> None:
    import time

    with pytest.raises(RateLimited) as info:
        send_with(answer(429, headers={"Retry-After": http_date(time.time() + 60)}))
    assert info.value.retry_after is not None
    assert 55 <= info.value.retry_after <= 60


def test_503_with_retry_after_is_rate_limited() -> None:
    with pytest.raises(RateLimited) as info:
        send_with(answer(503, headers={"Retry-After": "5"}, text="maintenance"))
    assert info.value.retry_after == 5.0
    assert info.value.status == 503


def test_503_without_a_usable_retry_after_is_unavailable() -> None:
    for headers in ({}, {"Retry-After": "later"}):
        with pytest.raises(ProviderUnavailable) as info:
            send_with(answer(503, headers=headers))
        assert not isinstance(info.value, RateLimited)
        assert info.value.status == 503
        assert info.value.code == "http503"


@pytest.mark.parametrize("status", [500, 502, 504, 599])
def test_5xx_is_unavailable(status: int) -> None:
    with pytest.raises(ProviderUnavailable) as info:
        send_with(answer(status, headers={"Retry-After": "5"}, text="<html>oops</html>"))
    assert not isinstance(info.value, RateLimited)
    assert info.value.status == status
    assert info.value.code == f"http{status}"
    assert f"HTTP {status}" in info.value.message


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectTimeout("connect timed out"), "timeout"),
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.PoolTimeout("pool"), "timeout"),
        (httpx.ConnectError("connection refused"), "connection"),
        (httpx.ReadError("reset by peer"), "connection"),
        (httpx.RemoteProtocolError("server disconnected"), "connection"),
    ],
)
def test_transport_failures_are_unavailable(exc: httpx.TransportError, code: str) -> None:
    with pytest.raises(ProviderUnavailable) as info:
        send_with(raising(exc))
    assert info.value.code == code
    assert info.value.status is None
    assert info.value.__cause__ is exc


def test_undecodable_body_is_a_protocol_error() -> None:
    # Regression: httpx.DecodingError (a RequestError, not a TransportError) used to escape.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    with pytest.raises(ProviderProtocolError) as info:
        send_with(handler)
    assert info.value.code == "malformedResponse"
    assert isinstance(info.value.__cause__, httpx.DecodingError)


def test_other_request_errors_are_unavailable() -> None:
    with pytest.raises(ProviderUnavailable) as info:
        send_with(raising(httpx.TooManyRedirects("loop")))
    assert isinstance(info.value, RetryableProviderError)


# --------------------------------------------------------------------------- json_body


@pytest.mark.parametrize(
    "content",
    [b"", b"<html>502 Bad Gateway</html>", b'{"data": [', b"\xff\xfe\xfa garbage", b"data: []"],
)
def test_json_body_garbage_is_a_protocol_error(content: bytes) -> None:
    response = httpx.Response(200, content=content)
    with pytest.raises(ProviderProtocolError) as info:
        json_body(response)
    assert info.value.code == "malformedResponse"
    assert info.value.status == 200
    assert isinstance(info.value, RetryableProviderError)


def test_json_body_decodes_json() -> None:
    assert json_body(httpx.Response(200, json={"data": [1]})) == {"data": [1]}
    assert json_body(httpx.Response(200, json=[1, 2])) == [1, 2]


# --------------------------------------------------------------------------- Runware submit


def runware() -> Runware:
    return Runware(Settings(runware=RunwareSettings(base_url=URL, api_key="k-123")))


def make_job(
    task_uuid: str, *, provider_task_id: str | None = None, expected_results: int = 1
) -> Job:
    return Job(
        id="job-1",
        provider="runware",
        status=JobStatus.SUBMITTED if provider_task_id else JobStatus.QUEUED,
        provider_task_id=provider_task_id,
        created_at=NOW,
        updated_at=NOW,
        expected_results=expected_results,
        request={"taskType": "videoInference", "model": "klingai:5@3", "numberResults": 1},
        policy=PollPolicy(),
        task_uuid=task_uuid,
    )


def submit_answer(status: int, body: Any) -> tuple[Job, str, httpx.Response]:
    task_uuid = str(uuid.uuid4())
    if callable(body):
        body = body(task_uuid)
    return make_job(task_uuid), task_uuid, httpx.Response(status, json=body)


def test_submit_request_carries_our_task_uuid_and_async_delivery() -> None:
    job = make_job("11111111-1111-4111-8111-111111111111")
    request = runware().submit_request(job, job.task_uuid)
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["authorization"] == "Bearer k-123"
    import json

    assert json.loads(request.content) == [
        {**job.request, "taskUUID": job.task_uuid, "deliveryMethod": "async"}
    ]


def test_submit_ack_gives_the_task_uuid() -> None:
    job, task_uuid, response = submit_answer(
        200, lambda u: {"data": [{"taskType": "videoInference", "taskUUID": u}]}
    )
    submission = runware().parse_submit(job, task_uuid, response)
    assert submission.provider_task_id == task_uuid
    assert submission.already_submitted is False
    assert submission.envelope == {"data": [{"taskType": "videoInference", "taskUUID": task_uuid}]}


def test_submit_conflict_task_uuid_means_already_submitted() -> None:
    job, task_uuid, response = submit_answer(
        400,
        lambda u: {
            "errors": [
                {
                    "code": "conflictTaskUUID",
                    "message": "The taskUUID is already in use.",
                    "parameter": "taskUUID",
                    "taskUUID": u,
                }
            ]
        },
    )
    submission = runware().parse_submit(job, task_uuid, response)
    assert submission.already_submitted is True
    assert submission.provider_task_id == task_uuid


def test_submit_invalid_api_key_is_rejected_with_the_providers_words() -> None:
    message = "Invalid API key. Get your API key from the dashboard."
    job, task_uuid, response = submit_answer(
        401, {"errors": [{"code": "invalidApiKey", "message": message}]}
    )
    with pytest.raises(ProviderRejected) as info:
        runware().parse_submit(job, task_uuid, response)
    assert info.value.code == "invalidApiKey"
    assert info.value.message == message
    assert info.value.status == 401
    assert isinstance(info.value, TerminalProviderError)


def test_submit_parameter_error_names_the_parameter() -> None:
    job, task_uuid, response = submit_answer(
        400,
        lambda u: {
            "data": [],
            "errors": [
                {
                    "code": "invalidDuration",
                    "message": "Invalid value for 'duration' parameter.",
                    "parameter": "duration",
                    "type": "float",
                    "taskUUID": u,
                }
            ],
        },
    )
    with pytest.raises(ProviderRejected) as info:
        runware().parse_submit(job, task_uuid, response)
    assert info.value.code == "invalidDuration"
    assert "duration" in info.value.message
    assert "(parameter: duration)" in info.value.message
    assert info.value.status == 400


def test_submit_4xx_without_errors_is_rejected() -> None:
    job, task_uuid, response = submit_answer(403, {"data": []})
    with pytest.raises(ProviderRejected) as info:
        runware().parse_submit(job, task_uuid, response)
    assert info.value.code == "http403"


@pytest.mark.parametrize(
    "body",
    [
        {"data": [{"taskType": "videoInference", "taskUUID": str(uuid.uuid4())}]},
        {"data": [{"taskType": "videoInference"}]},
        {"data": []},
        {},
    ],
    ids=["other-uuid", "no-uuid", "empty-data", "empty-object"],
)
def test_submit_ack_not_mentioning_our_task_is_a_protocol_error(body: dict[str, Any]) -> None:
    job, task_uuid, response = submit_answer(200, body)
    with pytest.raises(ProviderProtocolError) as info:
        runware().parse_submit(job, task_uuid, response)
    assert task_uuid in info.value.message
    assert info.value.code == "malformedResponse"


@pytest.mark.parametrize(
    "body",
    [[{"taskType": "videoInference"}], "accepted", 42, None, {"data": "yes"}, {"errors": [{}]}],
    ids=["array", "string", "number", "null", "data-not-list", "error-without-code"],
)
def test_submit_answer_that_is_not_an_envelope_is_a_protocol_error(body: Any) -> None:
    job, task_uuid, response = submit_answer(200, body)
    with pytest.raises(ProviderProtocolError) as info:
        runware().parse_submit(job, task_uuid, response)
    assert info.value.code == "malformedResponse"


def test_submit_garbage_body_is_a_protocol_error() -> None:
    job = make_job(str(uuid.uuid4()))
    with pytest.raises(ProviderProtocolError):
        runware().parse_submit(job, job.task_uuid, httpx.Response(200, text="OK"))


@pytest.mark.parametrize("status", [401, 403])
def test_submit_credential_refusal_with_a_non_json_body_is_rejected(status: int) -> None:
    # A gateway's HTML page: retrying a bad key until the deadline would only hide it.
    job = make_job(str(uuid.uuid4()))
    response = httpx.Response(status, text=f"<html>{status} Authorization Required</html>")
    with pytest.raises(ProviderRejected) as info:
        runware().parse_submit(job, job.task_uuid, response)
    assert info.value.code == f"http{status}"
    assert info.value.status == status


@pytest.mark.parametrize("status", [400, 404, 200])
def test_submit_other_non_json_answers_stay_protocol_errors(status: int) -> None:
    job = make_job(str(uuid.uuid4()))
    with pytest.raises(ProviderProtocolError):
        runware().parse_submit(job, job.task_uuid, httpx.Response(status, text="<html/>"))


# --------------------------------------------------------------------------- Runware status


def status_of(items: list[dict[str, Any]], errors: list[dict[str, Any]], expected: int) -> Any:
    task = str(uuid.uuid4())
    job = make_job(task, provider_task_id=task, expected_results=expected)
    body: dict[str, Any] = {
        "data": [{"taskType": "videoInference", "taskUUID": task, **i} for i in items]
    }
    if errors:
        body["errors"] = [{"taskUUID": task, "status": "error", **e} for e in errors]
    return runware().parse_status(job, httpx.Response(200, json=body), NOW)


def success(n: int) -> dict[str, Any]:
    return {
        "status": "success",
        "videoUUID": f"v-{n}",
        "videoURL": f"https://im.runware.test/v-{n}.mp4",
        "cost": 0.1,
        "seed": n,
    }


def test_status_nothing_yet_is_pending() -> None:
    snapshot = status_of([], [], expected=2)
    assert snapshot.state == "pending"
    assert snapshot.progress == 0.0
    assert snapshot.results == []
    assert snapshot.cost is None


def test_status_all_processing_is_running() -> None:
    snapshot = status_of([{"status": "processing"}] * 3, [], expected=3)
    assert snapshot.state == "running"
    assert snapshot.progress == 0.0
    assert snapshot.results == []
    assert snapshot.errors == []


def test_status_partial_success_is_running_with_one_result() -> None:
    snapshot = status_of([success(1), {"status": "processing"}, {"status": "processing"}], [], 3)
    assert snapshot.state == "running"
    assert snapshot.progress == pytest.approx(1 / 3)
    assert [r.id for r in snapshot.results] == ["v-1"]
    assert snapshot.results[0].url == "https://im.runware.test/v-1.mp4"
    assert snapshot.results[0].metadata == {"seed": 1}
    assert snapshot.cost == 0.1


def test_status_all_done_succeeds_and_adds_up_the_cost() -> None:
    snapshot = status_of([success(1), success(2), success(3)], [], 3)
    assert snapshot.state == "succeeded"
    assert snapshot.progress == 1.0
    assert snapshot.cost == pytest.approx(0.3)
    assert len({r.id for r in snapshot.results}) == 3


def test_status_all_failed_is_failed() -> None:
    snapshot = status_of([], [{"code": "timeoutProvider", "message": "too slow"}] * 2, 2)
    assert snapshot.state == "failed"
    assert [e.code for e in snapshot.errors] == ["timeoutProvider"] * 2
    assert snapshot.errors[0].message == "too slow"


def test_status_image_result_kind() -> None:
    snapshot = status_of(
        [{"status": "success", "imageUUID": "i-1", "imageURL": "https://x.test/i-1.png"}], [], 1
    )
    assert snapshot.results[0].kind == "image"
    assert snapshot.results[0].id == "i-1"


@pytest.mark.parametrize(
    ("status", "error", "exc_type"),
    [
        (400, {"code": "taskNotFound", "message": "No task found"}, ProviderTaskNotFound),
        (401, {"code": "invalidApiKey", "message": "bad key"}, ProviderRejected),
    ],
)
def test_status_refusals_are_terminal(
    status: int, error: dict[str, Any], exc_type: type[ProviderError]
) -> None:
    task = str(uuid.uuid4())
    job = make_job(task, provider_task_id=task)
    with pytest.raises(exc_type) as info:
        runware().parse_status(job, httpx.Response(status, json={"errors": [error]}), NOW)
    assert info.value.code == error["code"]
    assert info.value.status == status


@pytest.mark.parametrize("body", [[], "processing", {"data": [1]}])
def test_status_non_envelope_is_a_protocol_error(body: Any) -> None:
    task = str(uuid.uuid4())
    job = make_job(task, provider_task_id=task)
    with pytest.raises(ProviderProtocolError):
        runware().parse_status(job, httpx.Response(200, json=body), NOW)


def test_status_request_asks_for_our_task() -> None:
    import json

    job = make_job("t", provider_task_id="p-1")
    request = runware().status_request(job)
    assert json.loads(request.content) == [{"taskType": "getResponse", "taskUUID": "p-1"}]
