"""Runway through CometAPI's official-format wrapper: ``GET /runwayml/v1/tasks/{id}``.

Answers are wrapped: ``{"code", "message", "data": {"status", "progress": "45%",
"fail_reason", "data": <Runway's own task>}}``. A freshly created task may answer
``task_not_exist`` for a few seconds: inside ``comet.not_exist_grace`` seconds after submission
that means "not visible yet"; after it, the task is not found and the job fails. A task
whose Runway status is THROTTLED (past the account's concurrency) waits: it is polled every
``admission.throttled_poll_delay``.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pollen.errors import ProviderProtocolError, ProviderRejected, ProviderTaskNotFound
from pollen.models import GenerationError, GenerationResult, Job, JobRequest
from pollen.providers.base import (
    Provider,
    ProviderState,
    Snapshot,
    Submission,
    percent,
    progress_hint,
)
from pollen.providers.http import json_body
from pollen.providers.useapi import THROTTLED
from pollen.settings import AccountSettings

TASK_NOT_EXIST = "task_not_exist"
STATES: dict[str, ProviderState] = {
    "NOT_START": "pending",
    "SUBMITTED": "pending",
    "QUEUED": "pending",
    "IN_PROGRESS": "running",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
}
IMAGE_EXTENSIONS = {"png", "jpg", "jpeg", "webp"}


class CometRunwayRequest(BaseModel):
    """A Runway official-format create body; ``action`` picks the endpoint and is not sent."""

    model_config = ConfigDict(extra="allow", title="CometAPI Runway request")

    action: Literal["image_to_video", "text_to_video", "text_to_image"] = "image_to_video"
    model: str = Field(min_length=1, max_length=100, examples=["gen4_turbo"])
    promptText: str | None = Field(None, min_length=1, max_length=5000)
    promptImage: str | None = Field(None, min_length=1, max_length=20_000)
    ratio: str | None = Field(None, pattern=r"^\d+:\d+$", examples=["1280:720"])
    duration: Literal[5, 10] | None = None
    seed: int | None = Field(None, ge=0, le=4_294_967_295)

    @model_validator(mode="after")
    def _needs_a_prompt(self) -> CometRunwayRequest:
        if self.promptText is None and self.promptImage is None:
            raise ValueError("promptText or promptImage is required")
        return self


class CometRunwayJob(JobRequest):
    """A Runway generation through CometAPI's official-format wrapper."""

    model_config = ConfigDict(title="CometAPI Runway job")

    provider: Literal["comet_runway"]
    request: CometRunwayRequest


class CometTask(BaseModel):
    model_config = ConfigDict(extra="allow")

    task_id: str | None = None
    action: str | None = None
    status: str | None = None
    fail_reason: str | None = None
    progress: str | None = None
    data: dict[str, Any] | None = None


class CometEnvelope(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str | None = None
    message: str = ""
    data: CometTask | None = None


def _envelope(response: httpx.Response) -> CometEnvelope:
    body = json_body(response)
    try:
        return CometEnvelope.model_validate(body)
    except ValidationError as exc:
        raise ProviderProtocolError(
            f"CometAPI answer is not a code/message/data wrapper: {str(body)[:200]}",
            code="malformedResponse",
        ) from exc


def _rejected(envelope: CometEnvelope | None, response: httpx.Response) -> ProviderRejected:
    code = (envelope.code if envelope else None) or f"http{response.status_code}"
    message = (envelope.message if envelope else "") or f"HTTP {response.status_code}"
    return ProviderRejected(f"CometAPI: {message}", code=code, status=response.status_code)


def to_results(task: CometTask, now: float) -> list[GenerationResult]:
    nested = task.data or {}
    results = []
    for index, url in enumerate(nested.get("output") or []):
        extension = str(url).rsplit(".", 1)[-1].lower()
        results.append(
            GenerationResult(
                id=f"{task.task_id}:{index}",
                kind="image" if extension in IMAGE_EXTENSIONS else "video",
                url=str(url),
                metadata={k: v for k, v in nested.items() if k not in {"output", "status"}},
                seen_at=now,
                raw={"url": url, "task": nested},
            )
        )
    return results


class CometRunway(Provider):
    name = "comet_runway"
    job_model = CometRunwayJob
    credentials = (("comet", "api_key"),)

    def _headers(self, account: AccountSettings) -> dict[str, str]:
        headers = {"Authorization": self.bearer(account), "Accept": "application/json"}
        if self.settings.comet.runway_version:
            headers["X-Runway-Version"] = self.settings.comet.runway_version
        return headers

    def submit_request(self, job: Job, task_uuid: str) -> httpx.Request:
        body = {k: v for k, v in job.request.items() if k != "action"}
        action = job.request.get("action", "image_to_video")
        account = self.account(job)
        url = f"{self.base_url(account)}/runwayml/v1/{action}"
        return httpx.Request("POST", url, json=body, headers=self._headers(account))

    def parse_submit(self, job: Job, task_uuid: str, response: httpx.Response) -> Submission:
        body = json_body(response)
        if response.status_code >= 400:
            envelope = CometEnvelope.model_validate(body) if isinstance(body, dict) else None
            raise _rejected(envelope, response)
        data = body.get("data") if isinstance(body, dict) else None
        task_id = body.get("id") if isinstance(body, dict) else None
        if task_id is None and isinstance(data, dict):
            task_id = data.get("id") or data.get("task_id")
        if not task_id:
            raise ProviderProtocolError("CometAPI create answer has no task id", code="noTaskId")
        return Submission(str(task_id), body)

    def status_request(self, job: Job) -> httpx.Request:
        account = self.account(job)
        url = f"{self.base_url(account)}/runwayml/v1/tasks/{job.provider_task_id}"
        return httpx.Request("GET", url, headers=self._headers(account))

    def parse_status(self, job: Job, response: httpx.Response, now: float) -> Snapshot:
        envelope = _envelope(response)
        raw = envelope.model_dump(exclude_unset=True)
        if envelope.code == TASK_NOT_EXIST:
            since = now - (job.submitted_at or job.created_at)
            grace = self.settings.comet.not_exist_grace
            if since < grace:
                return Snapshot(state="pending", envelope=raw, provider_status=TASK_NOT_EXIST)
            raise ProviderTaskNotFound(
                f"CometAPI still answers task_not_exist {since:.0f}s after submission "
                f"(grace window {grace:g}s)",
                code=TASK_NOT_EXIST,
                status=response.status_code,
            )
        if response.status_code >= 400 or envelope.code not in ("success", None):
            raise _rejected(envelope, response)
        task = envelope.data
        if task is None:
            raise ProviderProtocolError("CometAPI answer has no data", code="malformedResponse")
        state = STATES.get(task.status or "", "running")  # unknown: keep polling
        nested_status = (task.data or {}).get("status")
        if nested_status == "CANCELLED":
            state = "cancelled"
        progress = percent(task.progress)
        errors = []
        if state in ("failed", "cancelled"):
            reason = task.fail_reason or (task.data or {}).get("failure") or "the task failed"
            code = (
                "cancelled"
                if state == "cancelled"
                else ((task.data or {}).get("failureCode") or "failed")
            )
            errors.append(GenerationError(code=str(code), message=str(reason), raw=raw))
        throttled = state == "pending" and nested_status == THROTTLED
        return Snapshot(
            state=state,
            envelope=raw,
            results=to_results(task, now) if state == "succeeded" else [],
            errors=errors,
            progress=1.0 if state == "succeeded" else progress,
            hint_delay=(
                self.settings.admission.throttled_poll_delay
                if throttled
                else progress_hint(job, now, progress)
            ),
            provider_status=THROTTLED if throttled else task.status,
        )
