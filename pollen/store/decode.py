"""Decoding a stored job: the public :class:`~pollen.models.Job` from its Redis hash."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from pollen.backoff import PollPolicy
from pollen.models import (
    DEFAULT_TENANT,
    ErrorInfo,
    GenerationError,
    GenerationResult,
    Job,
    JobStatus,
    StoredCopy,
)


def optional_float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _with_copy(result: str, stored: Mapping[str, str]) -> GenerationResult:
    """One result with pollen's copy of its file (``stored``: generation id -> its JSON)."""
    parsed = GenerationResult.model_validate_json(result)
    copy = stored.get(parsed.id)
    if copy is not None:
        parsed.stored = StoredCopy.model_validate_json(copy)
    return parsed


def job_from_fields(
    fields: dict[str, str], results: Sequence[str], stored: Mapping[str, str] | None = None
) -> Job:
    """Build the public Job view from the stored hash and result JSON documents; ``stored``
    (generation id -> ``StoredCopy`` JSON) fills in each result's re-hosted copy."""
    error = (
        ErrorInfo(code=fields["error_code"], message=fields.get("error_message", ""))
        if fields.get("error_code")
        else None
    )
    return Job(
        id=fields["id"],
        provider=fields["provider"],
        status=JobStatus(fields["status"]),
        provider_task_id=fields.get("provider_task_id") or None,
        created_at=float(fields["created_at"]),
        submitted_at=optional_float(fields.get("submitted_at")),
        finished_at=optional_float(fields.get("finished_at")),
        updated_at=float(fields.get("updated_at") or fields["created_at"]),
        deadline_at=optional_float(fields.get("deadline_at")),
        submit_attempts=int(fields.get("submit_attempts") or 0),
        polls=int(fields.get("polls") or 0),
        progress=optional_float(fields.get("progress")),
        cost=optional_float(fields.get("cost")),
        expected_results=int(fields.get("expected_results") or 1),
        error=error,
        results=[_with_copy(r, stored or {}) for r in results],
        errors=[
            GenerationError.model_validate(e) for e in json.loads(fields.get("errors") or "[]")
        ],
        callback_url=fields.get("callback_url") or None,
        events=json.loads(fields.get("events") or '["completed"]'),
        python_callback=json.loads(fields["python_callback"])
        if fields.get("python_callback")
        else None,
        metadata=json.loads(fields.get("metadata") or "{}"),
        tenant=fields.get("tenant") or DEFAULT_TENANT,
        priority=int(fields.get("priority") or 0),
        account=fields.get("account") or None,
        queue_reason=fields.get("queue_reason") or None,
        request=json.loads(fields.get("request") or "{}"),
        policy=PollPolicy.model_validate_json(fields["policy"]),
        task_uuid=fields.get("task_uuid", ""),
        poll_seq=int(fields.get("poll_seq") or 0),
        next_poll_at=optional_float(fields.get("next_poll_at")),
        cancel_note=fields.get("cancel_note") or None,
        push_token=fields.get("push_token") or None,
    )
