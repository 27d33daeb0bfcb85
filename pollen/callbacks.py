"""Completion callbacks: the JSON body and one HTTP delivery.

Delivery never changes a job's status; its outcome is recorded beside the job.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from pollen.models import Job


def completion_payload(job: Job) -> dict[str, Any]:
    """The body POSTed when a job ends (and what Python callbacks receive)."""
    return {
        "event": "job.completed",
        "job_id": job.id,
        "status": job.status.value,
        "provider": job.provider,
        "provider_task_id": job.provider_task_id,
        "results": [r.model_dump(exclude={"raw"}) for r in job.results],
        "errors": [e.model_dump(exclude={"raw"}) for e in job.errors],
        "error": job.error.model_dump() if job.error else None,
        "cost": job.cost,
        "metadata": job.metadata,
        "timings": {
            "created_at": job.created_at,
            "submitted_at": job.submitted_at,
            "finished_at": job.finished_at,
            "polls": job.polls,
            "submit_attempts": job.submit_attempts,
        },
    }


def post_json(
    http: httpx.Client, url: str, payload: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """POST once; return a delivery record (never raises for HTTP or transport failures)."""
    started = time.monotonic()
    record: dict[str, Any] = {"at": time.time(), "url": url}
    try:
        response = http.post(url, json=payload, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        record |= {"state": "failed", "status_code": None, "error": f"{type(exc).__name__}: {exc}"}
    else:
        ok = 200 <= response.status_code < 300
        record |= {
            "state": "delivered" if ok else "failed",
            "status_code": response.status_code,
            "error": None if ok else f"HTTP {response.status_code}: {response.text[:200]}",
        }
    record["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    return record
