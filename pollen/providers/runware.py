"""Runware's task-array API: ``deliveryMethod: "async"`` submission and ``getResponse`` polls.

One endpoint takes a JSON array of task objects and answers ``{"data": [...], "errors": [...]}``.
Processing and successful generations are ``data`` items; failed generations are ``errors``
items with ``"status": "error"``; request-level refusals (``taskNotFound``, bad parameters,
``conflictTaskUUID``) are ``errors`` items without a generation status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from pollen.errors import (
    ProviderProtocolError,
    ProviderRejected,
    ProviderTaskNotFound,
)
from pollen.models import GenerationError, GenerationResult, Job, JobRequest
from pollen.providers.base import Provider, ProviderState, Snapshot, Submission
from pollen.providers.http import json_body
from pollen.settings import AccountSettings

CONFLICT_TASK_UUID = "conflictTaskUUID"
TASK_NOT_FOUND = "taskNotFound"
MediaKind = Literal["video", "image", "audio", "other"]
MEDIA_KINDS: tuple[MediaKind, ...] = ("video", "image", "audio")


class RunwareTask(BaseModel):
    """One Runware inference task object, sent as-is with ``deliveryMethod: "async"``.

    The fields pollen relies on are typed; Runware's many other parameters pass through.
    ``taskUUID`` and ``deliveryMethod`` belong to pollen and are refused here.
    """

    model_config = ConfigDict(extra="allow", title="Runware task")

    taskType: str = Field(pattern=r"^[a-z][A-Za-z]*Inference$", examples=["videoInference"])
    model: str = Field(min_length=1, max_length=200, examples=["klingai:5@3"])
    positivePrompt: str | None = Field(None, min_length=1, max_length=10_000)
    numberResults: int = Field(1, ge=1, le=20)

    @model_validator(mode="after")
    def _pollen_owned_fields(self) -> RunwareTask:
        for owned in ("taskUUID", "deliveryMethod"):
            if owned in (self.model_extra or {}):
                raise ValueError(f"{owned} is set by pollen; leave it out of the request")
        return self


class RunwareInputs(BaseModel):
    """Media inputs of a Runware task (``inputs`` in the task-details seed)."""

    model_config = ConfigDict(extra="allow", title="Runware inputs")

    referenceImages: list[str] | None = Field(None, max_length=16)


class _RunwareMediaRequest(RunwareTask):
    """The fields image and video tasks share, typed."""

    positivePrompt: str | None = Field(None, min_length=1, max_length=10_000)
    negativePrompt: str | None = Field(None, min_length=1, max_length=10_000)
    width: int | None = Field(None, ge=64, le=8192, examples=[1024])
    height: int | None = Field(None, ge=64, le=8192, examples=[1024])
    seed: int | None = Field(None, ge=0)
    includeCost: bool | None = None
    inputs: RunwareInputs | None = None


class RunwareImageRequest(_RunwareMediaRequest):
    """A Runware ``imageInference`` task, with the fields Runware's documents show typed
    (``taskType`` is filled in); other parameters of Runware's API pass through."""

    # taskType has a default for Python callers; a JSON payload must say it (as at runtime)
    model_config = ConfigDict(
        extra="allow",
        title="Runware imageInference request",
        json_schema_extra={"required": ["taskType", "model"]},
    )

    taskType: Literal["imageInference"] = "imageInference"


class RunwareVideoRequest(_RunwareMediaRequest):
    """A Runware ``videoInference`` task, with the common fields typed (``taskType`` is
    filled in); other parameters of Runware's API pass through."""

    model_config = ConfigDict(
        extra="allow",
        title="Runware videoInference request",
        json_schema_extra={"required": ["taskType", "model"]},
    )

    taskType: Literal["videoInference"] = "videoInference"
    duration: int | float | None = Field(None, gt=0, le=600, examples=[5])  # kept as given


class RunwareOtherRequest(RunwareTask):
    """Any other Runware inference task (the typed ones have their own models)."""

    model_config = ConfigDict(
        extra="allow",
        title="Runware task (other task types)",
        json_schema_extra={
            "not": {
                "properties": {"taskType": {"enum": ["imageInference", "videoInference"]}},
                "required": ["taskType"],
            }
        },
    )


#: the tags of the Runware request variants (validation error paths leave them out)
REQUEST_TAGS = ("imageInference", "videoInference", "anyInference")


def _task_kind(value: Any) -> str:
    kind = value.get("taskType") if isinstance(value, dict) else getattr(value, "taskType", None)
    return kind if kind in REQUEST_TAGS[:2] else "anyInference"


RunwareRequest = Annotated[
    Annotated[RunwareImageRequest, Tag("imageInference")]
    | Annotated[RunwareVideoRequest, Tag("videoInference")]
    | Annotated[RunwareOtherRequest, Tag("anyInference")],
    Discriminator(_task_kind),
]


class RunwareJob(JobRequest):
    """A job for Runware's task-array API."""

    model_config = ConfigDict(title="Runware job")

    provider: Literal["runware"]
    request: RunwareRequest

    @property
    def expected_results(self) -> int:
        return self.request.numberResults


class RunwareItem(BaseModel):
    """A ``data`` item: a processing or successful generation, or a utility task's answer."""

    model_config = ConfigDict(extra="allow")

    taskType: str | None = None
    taskUUID: str | None = None
    status: str | None = None
    cost: float | None = None


class RunwareError(BaseModel):
    """An ``errors`` item: a failed generation (``status: "error"``) or a refused request."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str = ""
    status: str | None = None
    parameter: str | None = None
    type: str | None = None
    documentation: str | None = None
    taskUUID: str | None = None


class RunwareEnvelope(BaseModel):
    """Every Runware answer: ``data`` and/or ``errors``."""

    model_config = ConfigDict(extra="allow")

    data: list[RunwareItem] = []
    errors: list[RunwareError] = []


class RunwareTaskDetails(RunwareItem):
    """A ``getTaskDetails`` data item: the original request array and response envelope."""

    request: list[dict[str, Any]]
    response: RunwareEnvelope


def parse_envelope(response: httpx.Response) -> RunwareEnvelope:
    body = json_body(response)
    try:
        return RunwareEnvelope.model_validate(body)
    except ValidationError as exc:
        raise ProviderProtocolError(
            f"Runware answer is not a data/errors envelope: {str(body)[:200]}",
            code="malformedResponse",
            status=response.status_code,
        ) from exc


def to_result(item: RunwareItem, now: float) -> GenerationResult:
    """A successful generation item, normalised."""
    fields = item.model_dump(exclude_unset=True)
    extra = item.model_extra or {}
    kind: MediaKind
    for kind in MEDIA_KINDS:
        media_id = extra.get(f"{kind}UUID")
        url = extra.get(f"{kind}URL")
        if media_id or url:
            break
    else:
        kind, media_id, url = "other", None, None
    metadata = {
        k: v
        for k, v in fields.items()
        if k not in {"taskType", "taskUUID", "status", "cost", f"{kind}UUID", f"{kind}URL"}
    }
    return GenerationResult(
        id=str(media_id or url or f"{item.taskUUID}:{sorted(fields.items())!s}"),
        kind=kind,
        url=url,
        cost=item.cost,
        metadata=metadata,
        seen_at=now,
        raw=fields,
    )


def _refusal(error: RunwareError, http_status: int) -> ProviderRejected | ProviderTaskNotFound:
    message = error.message or error.code
    if error.parameter:
        message = f"{message} (parameter: {error.parameter})"
    if error.code == TASK_NOT_FOUND:
        return ProviderTaskNotFound(message, code=error.code, status=http_status)
    return ProviderRejected(message, code=error.code, status=http_status)


def _own(envelope: RunwareEnvelope, task_uuid: str | None) -> RunwareEnvelope:
    """One task's part of a batched answer: its items, its errors and the errors that name
    no task (which concern every task of the request)."""
    return RunwareEnvelope(
        data=[i for i in envelope.data if i.taskUUID == task_uuid],
        errors=[e for e in envelope.errors if e.taskUUID in (None, task_uuid)],
    )


def _state(results: int, errors: int, processing: int, expected: int) -> ProviderState:
    if results + errors >= expected:
        return "succeeded" if results else "failed"
    return "running" if results or errors or processing else "pending"


class Runware(Provider):
    name = "runware"
    job_model = RunwareJob
    credentials = (("runware", "api_key"),)

    def _post(self, tasks: list[dict[str, Any]], account: AccountSettings) -> httpx.Request:
        """One task array to ``account``'s endpoint (``base_url`` is the whole URL)."""
        return httpx.Request(
            "POST",
            account.base_url or "",
            json=tasks,
            headers={"Authorization": self.bearer(account), "Accept": "application/json"},
        )

    push_field = "webhookURL"

    def submit_request(self, job: Job, task_uuid: str) -> httpx.Request:
        return self._post([self._task(job, task_uuid)], self.account(job))

    def _task(self, job: Job, task_uuid: str) -> dict[str, Any]:
        task = {**job.request, "taskUUID": task_uuid, "deliveryMethod": "async"}
        url = self.push_url(job)  # None when the producer's request has a webhookURL
        if url is not None:
            task["webhookURL"] = url
        return task

    def parse_submit(self, job: Job, task_uuid: str, response: httpx.Response) -> Submission:
        return self._submission(task_uuid, parse_envelope(response), response.status_code)

    def submit_batch_request(self, jobs: Sequence[Job]) -> httpx.Request:
        """One request creating every job's task (a task array), each with its own
        ``taskUUID`` (the idempotency key)."""
        tasks = [self._task(job, job.task_uuid) for job in jobs]
        return self._post(tasks, self.batch_account(jobs))

    def parse_submit_batch(
        self, jobs: Sequence[Job], response: httpx.Response
    ) -> list[Submission | Exception]:
        """Each job's acknowledgement from one batched answer; a refused task fails only its
        own job. A task the answer does not mention is a protocol error (retried)."""
        envelope = parse_envelope(response)  # garbage fails the whole batch (retryable)
        answers: list[Submission | Exception] = []
        for job in jobs:
            mine = job.task_uuid
            own = _own(envelope, mine)
            if not own.data and not own.errors:  # the answer does not mention this task
                answers.append(
                    ProviderProtocolError(
                        f"Runware's answer does not mention task {mine}",
                        code="malformedResponse",
                    )
                )
                continue
            status = 200 if own.data else response.status_code
            try:
                answers.append(self._submission(mine, own, status))
            except Exception as exc:  # this job's refusal, not its neighbours'
                answers.append(exc)
        return answers

    def _submission(self, task_uuid: str, envelope: RunwareEnvelope, status: int) -> Submission:
        raw = envelope.model_dump(exclude_unset=True)
        for error in envelope.errors:
            if error.code == CONFLICT_TASK_UUID:
                # Our own earlier submit got through: the taskUUID is the idempotency key.
                return Submission(task_uuid, raw, already_submitted=True)
        if envelope.errors:
            raise _refusal(envelope.errors[0], status)
        if status >= 400:
            raise ProviderRejected(
                f"Runware refused the task (HTTP {status})",
                code=f"http{status}",
                status=status,
            )
        if not any(item.taskUUID == task_uuid for item in envelope.data):
            raise ProviderProtocolError(
                f"Runware acknowledgement does not mention task {task_uuid}",
                code="malformedResponse",
            )
        return Submission(task_uuid, raw)

    def status_request(self, job: Job) -> httpx.Request:
        task = {"taskType": "getResponse", "taskUUID": job.provider_task_id}
        return self._post([task], self.account(job))

    def parse_status(self, job: Job, response: httpx.Response, now: float) -> Snapshot:
        return self._snapshot(job, parse_envelope(response), response.status_code, now)

    supports_batching = True
    keyed_creates = True

    def status_batch_request(self, jobs: Sequence[Job]) -> httpx.Request:
        """One request with a ``getResponse`` task per job (Runware takes task arrays)."""
        tasks = [{"taskType": "getResponse", "taskUUID": job.provider_task_id} for job in jobs]
        return self._post(tasks, self.batch_account(jobs))

    def parse_status_batch(
        self, jobs: Sequence[Job], response: httpx.Response, now: float
    ) -> list[Snapshot | Exception]:
        """Each job's snapshot from one batched answer; a bad item fails only its own job."""
        envelope = parse_envelope(response)  # garbage fails the whole batch (retryable)
        answers: list[Snapshot | Exception] = []
        for job in jobs:
            own = _own(envelope, job.provider_task_id)
            status = (
                200
                if own.data or any(e.status == "error" for e in own.errors)
                else (response.status_code)
            )
            try:
                answers.append(self._snapshot(job, own, status, now))
            except Exception as exc:  # this job's refusal or oddity, not its neighbours'
                answers.append(exc)
        return answers

    def _snapshot(
        self, job: Job, envelope: RunwareEnvelope, http_status: int, now: float
    ) -> Snapshot:
        mine = job.provider_task_id
        refusals = [e for e in envelope.errors if e.status != "error"]
        if refusals:
            raise _refusal(refusals[0], http_status)
        if http_status >= 400 and not envelope.data and not envelope.errors:
            raise ProviderRejected(
                f"Runware refused the poll (HTTP {http_status})",
                code=f"http{http_status}",
                status=http_status,
            )
        items = [i for i in envelope.data if i.taskUUID in (mine, None)]
        results = [to_result(i, now) for i in items if i.status == "success"]
        processing = sum(1 for i in items if i.status == "processing")
        errors = [
            GenerationError(code=e.code, message=e.message, raw=e.model_dump(exclude_unset=True))
            for e in envelope.errors
            if e.taskUUID in (mine, None)
        ]
        expected = job.expected_results
        costs = [r.cost for r in results if r.cost is not None]
        return Snapshot(
            state=_state(len(results), len(errors), processing, expected),
            envelope=envelope.model_dump(exclude_unset=True),
            results=results,
            errors=errors,
            progress=min(1.0, (len(results) + len(errors)) / expected),
            cost=round(sum(costs), 6) if costs else None,
        )

    def task_details_request(self, job: Job) -> httpx.Request:
        """Runware's own ``getTaskDetails`` for the job's task (its original request and
        response), asked of the job's account."""
        task = {"taskType": "getTaskDetails", "taskUUID": job.provider_task_id}
        return self._post([task], self.account(job))

    def parse_task_details(self, response: httpx.Response) -> RunwareTaskDetails:
        envelope = parse_envelope(response)
        if envelope.errors:
            raise _refusal(envelope.errors[0], response.status_code)
        if not envelope.data:
            raise ProviderProtocolError("getTaskDetails answered no data", code="malformedResponse")
        try:
            item = envelope.data[0].model_dump(exclude_unset=True)
            return RunwareTaskDetails.model_validate(item)
        except ValidationError as exc:
            raise ProviderProtocolError(
                f"getTaskDetails item has no request/response: {exc}", code="malformedResponse"
            ) from exc
