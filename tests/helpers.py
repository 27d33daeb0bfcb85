"""Small helpers shared by the integration tests."""

from __future__ import annotations

import time
from typing import Any

import httpx

from pollen import payloads


def video_request(durations: list[float], errors: list[str | None] | None = None) -> dict[str, Any]:
    """A Runware videoInference task whose generations the simulator finishes on cue."""
    simulate: dict[str, Any] = {"durations": durations}
    if errors is not None:
        simulate["errors"] = errors
    return {
        "taskType": "videoInference",
        "model": "klingai:5@3",
        "positivePrompt": "a fox running through snow, cinematic",
        "numberResults": len(durations),
        "simulate": simulate,
    }


def accept_job(deps: Any, durations: list[float]) -> str:
    """Store a new video job directly through the accept step (no message is sent)."""

    payload = {"provider": "runware", "request": video_request(durations)}
    job_id, created = payloads.accept(deps.settings, deps.store, payload, now=time.time())
    assert created
    return job_id


def sim_stats(sim_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{sim_url}/_sim/stats").json())


def sim_faults(sim_url: str, faults: list[str], retry_after: int = 1) -> None:
    httpx.post(
        f"{sim_url}/_sim/faults",
        json={"faults": faults, "retry_after": retry_after, "path_prefix": "/v1"},
    ).raise_for_status()
