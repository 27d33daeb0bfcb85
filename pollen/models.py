"""What producers send and what pollen stores: the job's public shapes.

``JobRequest`` is the producer-facing payload (one subclass per provider dialect; the JSON
Schema is published in ``schema/job-request.schema.json``); ``Job`` is the stored view
returned by status/result.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from pollen.backoff import PollPolicy
from pollen.webhook_keys import secret_key

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
#: a tenant's name (part of Redis keys and metric labels)
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
#: the tenant of a job that names none: one shared tenant
DEFAULT_TENANT = "default"
#: the range of a job's priority
MAX_PRIORITY = 1000


class JobStatus(StrEnum):
    """A job's state. It only moves forward: queued → submitted → processing → terminal."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self.rank == TERMINAL_RANK


#: The one source of status ranks: the store's Lua scripts are generated from these.
TERMINAL_RANK = 3
_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.PROCESSING: 2,
    JobStatus.SUCCEEDED: TERMINAL_RANK,
    JobStatus.FAILED: TERMINAL_RANK,
    JobStatus.TIMED_OUT: TERMINAL_RANK,
    JobStatus.CANCELLED: TERMINAL_RANK,
}


class PollOverrides(BaseModel):
    """Per-job changes to the worker's default poll policy; unset fields keep the default."""

    model_config = ConfigDict(extra="forbid")

    initial_delay: float | None = Field(None, ge=0, le=3600)
    interval: float | None = Field(None, gt=0, le=3600)
    factor: float | None = Field(None, ge=1, le=10)
    max_delay: float | None = Field(None, gt=0, le=3600)
    min_delay: float | None = Field(None, ge=0, le=3600)
    jitter: float | None = Field(None, ge=0, le=1)

    def apply(self, base: PollPolicy, deadline: float | None = None) -> PollPolicy:
        merged = base.model_dump() | self.model_dump(exclude_none=True)
        if deadline is not None:
            merged["deadline"] = deadline
        return PollPolicy.model_validate(merged)


EventName = Literal["started", "progress", "partial", "completed", "result_stored"]
DEFAULT_EVENTS: tuple[EventName, ...] = ("completed",)


class PythonCallback(BaseModel):
    """A Celery task (by name) of the producer's own app; it is sent ``result=<final result>``."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(pattern=r"^[A-Za-z_][\w.:-]{0,199}$", examples=["myapp.video_done"])
    queue: str | None = Field(None, pattern=r"^[\w.:-]{1,200}$")


class JobRequest(BaseModel):
    """What a producer enqueues: provider, the provider's request, and how to report back.

    Each provider dialect subclasses this with a ``Literal`` provider name and its own request
    model (see :mod:`pollen.providers`); :func:`pollen.payloads.parse_job_request` picks the
    subclass from ``provider``.
    """

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(description="Which provider runs the job.")
    request: BaseModel = Field(description="The provider's request.")
    job_id: str | None = Field(
        None,
        pattern=JOB_ID_PATTERN,
        description="Client-chosen id and idempotency key: the same id twice is one job.",
    )
    callback_url: AnyHttpUrl | None = Field(
        None, max_length=2048, description="http(s) URL that receives signed webhook POSTs."
    )
    callback_secret: str | None = Field(
        None,
        description="This job's own signing secret (whsec_...), instead of the worker's.",
    )
    events: list[EventName] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        min_length=1,
        description="Which events the callback URL receives: started (the provider accepted), "
        "progress (rate-limited), partial (a generation finished), completed (terminal), "
        "result_stored (pollen's copy of a result's file is done or failed, where re-hosting "
        "is on; jobs that receive completed receive it too).",
    )
    python_callback: PythonCallback | None = Field(
        None, description="A Celery task of the producer's app to send the final result to."
    )
    poll: PollOverrides | None = Field(None, description="Changes to the default poll policy.")
    deadline: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="Seconds after acceptance before the job ends timed_out.",
    )
    metadata: dict[str, str] | None = Field(
        None, max_length=32, description="Producer's own tags, echoed in results and callbacks."
    )
    tenant: str | None = Field(
        None,
        pattern=TENANT_PATTERN,
        description="Who the job is for (your user, team or customer): jobs waiting for a capped "
        "provider account take turns by tenant. Unset: the shared tenant 'default'.",
    )
    priority: int | None = Field(
        None,
        strict=True,
        ge=-MAX_PRIORITY,
        le=MAX_PRIORITY,
        description="Jobs waiting for a capped provider account go highest priority first. "
        "Unset: 0.",
    )

    @property
    def expected_results(self) -> int:
        """How many generations the provider will produce for this request."""
        return 1

    @field_validator("deadline")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("deadline must be a finite number of seconds")
        return value

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[EventName]) -> list[EventName]:
        return list(dict.fromkeys(value))

    @field_validator("callback_secret")
    @classmethod
    def _usable_secret(cls, value: str | None) -> str | None:
        if value is not None:
            secret_key(value)  # raises ValueError with the reason
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, item in (value or {}).items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are at most 64 and values 512 characters")
        return value


class ErrorInfo(BaseModel):
    """Why a job or a generation failed: the provider's code and message when it gave them."""

    code: str
    message: str


class StoredCopy(BaseModel):
    """pollen's own copy of a generation's file (re-hosting, ``POLLEN_STORAGE__URL``).

    ``pending`` until a worker has copied the provider's file; then ``stored`` (``url`` serves
    the same bytes as long as the storage keeps them) or ``failed`` (``error`` says why).
    """

    status: Literal["pending", "stored", "failed"]
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    content_type: str | None = None
    attempts: int = 0
    error: str | None = None
    updated_at: float | None = None


class GenerationResult(BaseModel):
    """One finished generation, the same shape whatever the provider."""

    id: str = Field(description="Provider's media id (stable across polls).")
    kind: Literal["image", "video", "audio", "other"]
    url: str | None = None
    cost: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    seen_at: float = Field(description="Unix time pollen first saw this generation finished.")
    raw: dict[str, Any] = Field(default_factory=dict, description="The provider's item, as sent.")
    stored: StoredCopy | None = Field(
        None, description="pollen's copy of the file, where re-hosting is on."
    )


class GenerationError(BaseModel):
    """One generation that ended in error at the provider."""

    code: str
    message: str
    raw: dict[str, Any] = Field(default_factory=dict)


class Job(BaseModel):
    """A job as stored in Redis: what ``status``/``result`` return."""

    id: str
    provider: str
    status: JobStatus
    provider_task_id: str | None = None
    created_at: float
    submitted_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    deadline_at: float | None = None
    submit_attempts: int = 0
    polls: int = 0
    progress: float | None = None
    cost: float | None = None
    expected_results: int = 1
    error: ErrorInfo | None = None
    results: list[GenerationResult] = Field(default_factory=list)
    errors: list[GenerationError] = Field(default_factory=list)
    callback_url: str | None = None
    events: list[str] = Field(default_factory=lambda: ["completed"])
    python_callback: dict[str, Any] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    tenant: str = DEFAULT_TENANT
    priority: int = 0
    account: str | None = Field(
        None, description="The provider account the job's task belongs to (once admitted)."
    )
    queue_reason: str | None = Field(
        None, description="Why the job waits in pollen (queued for a capped provider's slot)."
    )
    request: dict[str, Any] = Field(default_factory=dict)
    policy: PollPolicy
    task_uuid: str = Field("", description="The idempotency key pollen sent to the provider.")
    poll_seq: int = Field(0, description="Number of the poll message allowed to act next.")
    next_poll_at: float | None = None
    cancel_note: str | None = Field(
        None, description="What a cancel did at the provider (cancelled jobs, once followed up)."
    )
    push_token: str | None = Field(
        None, exclude=True, repr=False, description="The job's push URL token (never shown)."
    )

    @property
    def terminal(self) -> bool:
        return self.status.terminal
