"""Callbacks: which events a job sends, and their bodies.

Bodies follow the Standard Webhooks shape ``{"type", "timestamp", "data"}``; a Python
callback receives the ``data`` of ``job.completed``. The worker records and sends them
(:mod:`pollen.worker.deliveries`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pollen.models import GenerationResult, Job


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def envelope(kind: str, data: dict[str, Any], now: float) -> str:
    """A Standard Webhooks body: ``{"type": "job.<kind>", "timestamp": ..., "data": ...}``."""
    body = {"type": f"job.{kind}", "timestamp": _timestamp(now), "data": data}
    return json.dumps(body, separators=(",", ":"), default=str)


def completion_payload(job: Job) -> dict[str, Any]:
    """The final result: the ``data`` of ``job.completed`` and what Python callbacks receive."""
    return {
        **_summary(job),
        "results": [r.model_dump(exclude={"raw"}) for r in job.results],
        "errors": [e.model_dump(exclude={"raw"}) for e in job.errors],
        "error": job.error.model_dump() if job.error else None,
        "cost": job.cost,
        "timings": {
            "created_at": job.created_at,
            "submitted_at": job.submitted_at,
            "finished_at": job.finished_at,
            "polls": job.polls,
            "submit_attempts": job.submit_attempts,
        },
        # a cancelled job: what the cancel did at the provider
        **({"cancel_note": job.cancel_note} if job.cancel_note else {}),
    }


def _summary(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status.value,
        "provider": job.provider,
        "provider_task_id": job.provider_task_id,
        "metadata": job.metadata,
    }


def started_payload(job: Job) -> dict[str, Any]:
    return _summary(job)


def progress_payload(job: Job, progress: float) -> dict[str, Any]:
    return {**_summary(job), "progress": progress}


def partial_payload(job: Job, result: GenerationResult, index: int) -> dict[str, Any]:
    return {
        **_summary(job),
        "index": index,
        "expected_results": job.expected_results,
        "result": result.model_dump(exclude={"raw"}),
    }


def stored_payload(job: Job, result: GenerationResult) -> dict[str, Any]:
    """The ``data`` of ``job.result_stored``: the result with its copy (``result.stored``:
    ``stored`` with its URL and checksum, or ``failed`` with the error)."""
    index = next((n for n, r in enumerate(job.results, start=1) if r.id == result.id), 0)
    return {**_summary(job), "index": index, "result": result.model_dump(exclude={"raw"})}


def subscribed(job: Job, kind: str) -> bool:
    """Whether the job's callback URL receives ``kind``: the events it lists; ``result_stored``
    also where it lists ``completed`` (the copy is the completion's follow-up)."""
    return kind in job.events or (kind == "result_stored" and "completed" in job.events)


def wants(job: Job, kind: str) -> bool:
    """Whether the event ``kind`` of this job goes anywhere (saves building its body)."""
    return bool(job.callback_url and subscribed(job, kind)) or bool(
        job.python_callback and kind == "completed"
    )
