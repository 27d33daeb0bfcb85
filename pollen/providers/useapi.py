"""Runway through useapi.net: ``POST /v1/runwayml/gen3/create``, ``GET /v1/runwayml/tasks/{id}``.

Task statuses: PENDING, THROTTLED, RUNNING, SUCCEEDED, FAILED, CANCELLED (anything else keeps
the job polling). ``progressRatio`` is a string; ``estimatedTimeToStartSeconds`` hints the
next poll, except for a THROTTLED task (held back past the account's concurrency), polled
every ``admission.throttled_poll_delay``; ``artifacts[]`` are the results; ``error``
explains a failure. 400/401 end the job with useapi.net's message, 404 ends it as not found.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pollen.errors import ProviderProtocolError, ProviderRejected, ProviderTaskNotFound
from pollen.models import GenerationError, GenerationResult, Job, JobRequest
from pollen.providers.base import (
    Provider,
    ProviderState,
    Snapshot,
    Submission,
    progress_hint,
    ratio,
)
from pollen.providers.http import json_body
from pollen.settings import AccountSettings

#: Runway's status of a task held back past the account's concurrency: polled slowly
THROTTLED = "THROTTLED"
STATES: dict[str, ProviderState] = {
    "PENDING": "pending",
    "THROTTLED": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
}


class UseapiRunwayRequest(BaseModel):
    """The body of useapi.net's Runway create call, with the options its task object echoes
    typed; other documented options pass through."""

    model_config = ConfigDict(extra="allow", title="useapi.net Runway create request")

    text_prompt: str = Field(min_length=1, max_length=5000)
    seconds: Literal[5, 10] = 5
    model: str | None = Field(None, min_length=1, max_length=100, examples=["gen3turbo"])
    image: str | None = Field(None, min_length=1, max_length=20_000, description="init image")
    seed: int | None = Field(None, ge=0, le=4_294_967_294)
    exploreMode: bool | None = None
    watermark: bool | None = None
    enhance_prompt: bool | None = None
    resolution: Literal["720p", "1080p"] | None = None


class UseapiRunwayJob(JobRequest):
    """A Runway generation through useapi.net."""

    model_config = ConfigDict(title="useapi.net Runway job")

    provider: Literal["useapi_runway"]
    request: UseapiRunwayRequest


class UseapiArtifact(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    url: str | None = None
    metadata: dict[str, Any] | None = None


class UseapiTask(BaseModel):
    """The task object (every field optional, as useapi.net's model says)."""

    model_config = ConfigDict(extra="allow")

    taskId: str | None = None
    id: str | None = None
    taskType: str | None = None
    status: str | None = None
    error: dict[str, Any] | str | None = None
    progressRatio: str | None = None
    estimatedTimeToStartSeconds: float | None = None
    artifacts: list[UseapiArtifact] | None = None


def _task(response: httpx.Response) -> UseapiTask:
    body = json_body(response)
    if response.status_code in (400, 401, 403):
        message = body.get("error") if isinstance(body, dict) else None
        raise ProviderRejected(
            str(message or f"useapi.net refused the request (HTTP {response.status_code})"),
            code=f"http{response.status_code}",
            status=response.status_code,
        )
    if response.status_code == 404:
        raise ProviderTaskNotFound("useapi.net: task not found", code="notFound", status=404)
    try:
        return UseapiTask.model_validate(body)
    except ValidationError as exc:
        raise ProviderProtocolError(
            f"useapi.net answer is not a task object: {str(body)[:200]}", code="malformedResponse"
        ) from exc


def failure_reason(error: dict[str, Any] | str | None) -> tuple[str, str]:
    """(code, message) from useapi.net's ``error`` object."""
    if isinstance(error, str):
        return "failed", error
    error = error or {}
    message = error.get("message") or error.get("errorMessage") or "the task failed"
    detail = error.get("errorMessage")
    if detail and detail != message:
        message = f"{message} {detail}"
    return str(error.get("reason") or "failed"), str(message)


def to_result(artifact: UseapiArtifact, now: float) -> GenerationResult:
    raw = artifact.model_dump(exclude_unset=True)
    url = artifact.url or ""
    kind = "image" if url.rsplit(".", 1)[-1].lower() in {"png", "jpg", "jpeg", "webp"} else "video"
    return GenerationResult(
        id=artifact.id or url,
        kind=kind,
        url=artifact.url,
        metadata=artifact.metadata or {},
        seen_at=now,
        raw=raw,
    )


class UseapiRunway(Provider):
    name = "useapi_runway"
    job_model = UseapiRunwayJob
    credentials = (("useapi", "api_key"),)

    def _headers(self, account: AccountSettings) -> dict[str, str]:
        return {"Authorization": self.bearer(account), "Accept": "application/json"}

    push_field = "replyUrl"

    def submit_request(self, job: Job, task_uuid: str) -> httpx.Request:
        account = self.account(job)
        url = self.base_url(account) + self.settings.useapi.create_path
        body = dict(job.request)
        push = self.push_url(job)  # None when the producer's request has a replyUrl
        if push is not None:
            body.update(replyUrl=push, replyRef=job.id)
        return httpx.Request("POST", url, json=body, headers=self._headers(account))

    def parse_submit(self, job: Job, task_uuid: str, response: httpx.Response) -> Submission:
        task = _task(response)
        if not task.taskId:
            raise ProviderProtocolError("useapi.net create answer has no taskId", code="noTaskId")
        return Submission(task.taskId, task.model_dump(exclude_unset=True))

    def _task_request(self, method: str, job: Job) -> httpx.Request:
        """``method`` on the job's task, at the account that created it."""
        account = self.account(job)
        task_id = quote(job.provider_task_id or "", safe=":@-_.")
        url = f"{self.base_url(account)}/v1/runwayml/tasks/{task_id}"
        return httpx.Request(method, url, headers=self._headers(account))

    def status_request(self, job: Job) -> httpx.Request:
        return self._task_request("GET", job)

    supports_cancel = True

    def cancel_request(self, job: Job) -> httpx.Request:
        """``DELETE /v1/runwayml/tasks/{taskId}``."""
        return self._task_request("DELETE", job)

    def parse_cancel(self, job: Job, response: httpx.Response) -> str:
        if response.status_code == 404:
            return "useapi.net no longer has the task (HTTP 404): nothing left to cancel"
        if response.status_code in (400, 401, 403):
            _task(response)  # raises ProviderRejected with useapi.net's message
        if not 200 <= response.status_code < 300:
            raise ProviderRejected(
                f"useapi.net did not delete the task (HTTP {response.status_code}): "
                f"{response.text[:120]!r}",
                code=f"http{response.status_code}",
                status=response.status_code,
            )
        return f"task deleted at useapi.net (HTTP {response.status_code})"

    def parse_status(self, job: Job, response: httpx.Response, now: float) -> Snapshot:
        task = _task(response)
        state = STATES.get(task.status or "", "running")  # unknown: keep polling
        progress = ratio(task.progressRatio)
        results = [to_result(a, now) for a in task.artifacts or [] if a.url]
        errors = []
        if state in ("failed", "cancelled"):
            code, message = failure_reason(task.error)
            if state == "cancelled":
                code = "cancelled"
            errors.append(GenerationError(code=code, message=message, raw={"error": task.error}))
        hint = task.estimatedTimeToStartSeconds
        if task.status == THROTTLED:  # waits for a slot of the account: no hurry to ask
            hint = self.settings.admission.throttled_poll_delay
        elif hint is None:
            hint = progress_hint(job, now, progress)
        return Snapshot(
            state=state,
            envelope=task.model_dump(exclude_unset=True),
            results=results if state == "succeeded" else [],
            errors=errors,
            progress=1.0 if state == "succeeded" else progress,
            hint_delay=hint,
            provider_status=task.status,
        )
