"""Small helpers shared by the integration tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollen import payloads
from pollen.settings import Settings
from pollen.store import admission, lifecycle
from pollen.store.admission import Admitted
from pollen.store.sync import Store
from pollen.worker.admission import entry


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


def image_request(prompt: str, output_format: str | None = None) -> dict[str, Any]:
    """A Runware imageInference task (``output_format`` "PNG": the simulator serves real PNGs
    at its result URLs)."""
    request: dict[str, Any] = {
        "taskType": "imageInference",
        "model": "runware:101@1",
        "positivePrompt": prompt,
        "width": 512,
        "height": 512,
    }
    if output_format is not None:
        request["outputFormat"] = output_format
    return request


def kept_responses(store: Store, job_id: str) -> list[dict[str, Any]]:
    """The provider envelopes kept for the job's audit, oldest first (its audit record, as
    the dashboard reads it)."""
    audit = store.run(lifecycle.audit(job_id))
    assert audit is not None, f"job {job_id} is missing"
    return audit.responses


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


#: the provider documents (``shared/seeds`` beside the repository, see its README)
SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def seeds() -> Path:
    """The provider documents; missing, a test skips on a developer's machine but fails in CI
    (``CI`` set), where they are always laid beside the checkout."""
    if not SEEDS.is_dir():
        message = f"provider documents not found at {SEEDS} (shared/seeds beside the repo)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SEEDS


def capped(settings: Settings, slots: int) -> Settings:
    """``settings`` with runware's one key capped at ``slots`` tasks at once."""
    runware = settings.runware.model_copy(update={"max_in_flight": slots})
    return settings.model_copy(update={"runware": runware})


def queue_for_slots(
    settings: Settings, store: Store, jobs: list[tuple[str, str]], slots: int
) -> Admitted:
    """Store runware jobs (id, tenant) without a submit message and run admission on them
    against ``slots`` slots of its one account: the first ``slots`` hold one (for an hour as
    far as the reconciler is concerned: nothing resubmits them), the others wait."""
    now = time.time()
    for job_id, tenant in jobs:
        payload = {"provider": "runware", "request": image_request(job_id), "job_id": job_id}
        payloads.accept(settings, store, payload | {"tenant": tenant}, now=now)
    stored = [job for job in store.lifecycle.get_many([j for j, _ in jobs]) if job is not None]
    op = admission.admit(
        "runware", now=now, limit=len(jobs), caps=[("default", slots)], shares={},
        submit_watch=now + 3600, grace=settings.reconcile_grace,
        enqueue=[entry(job) for job in stored],
    )  # fmt: skip
    return store.run(op)
