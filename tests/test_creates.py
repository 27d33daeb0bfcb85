"""Each create's answer is recorded the moment it arrives, and a create that was sent but never
answered is counted when its job is created again. The submit step on the session's Redis and
simulator (the fault suite kills real workers mid-batch: tests/faults/test_submit_kills.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY

from pollen import JobStatus, payloads
from pollen.errors import ProviderRejected, ProviderUnavailable, RateLimited
from pollen.providers.base import Submission
from pollen.simulator import SimulatorConfig, SimulatorServer
from pollen.worker import submits
from tests.helpers import sim_faults, sim_stats, video_request

pytestmark = pytest.mark.integration

REQUESTS: dict[str, dict[str, Any]] = {
    "useapi_runway": {"text_prompt": "a slow pan over a harbour", "simulate": {"duration": 30}},
    "comet_runway": {
        "model": "gen4_turbo",
        "promptText": "a harbour at dawn",
        "promptImage": "https://example.invalid/harbour.png",
    },
    "runware": video_request([30.0]),
}


def _accept(deps: Any, provider: str, count: int) -> list[str]:
    payload = {"provider": provider, "request": REQUESTS[provider]}
    accept = payloads.accept
    return [accept(deps.settings, deps.store, payload, now=time.time())[0] for _ in range(count)]


def _ambiguous(provider: str) -> float:
    value = REGISTRY.get_sample_value("pollen_submit_ambiguous_total", {"provider": provider})
    return value or 0.0


@pytest.mark.parametrize("provider", ["useapi_runway", "comet_runway", "runware"])
def test_each_create_is_recorded_before_the_batch_ends(
    deps: Any, simulator: SimulatorServer, provider: str
) -> None:
    ids = _accept(deps, provider, 4)
    real = deps.calls.submit_many
    seen: dict[str, tuple[str | None, ...]] = {}
    marks_sent: list[str | None] = []

    def watching(name: str, jobs: Sequence[Any], arrived: Any, sending: Any) -> Any:
        def mark_then_look(index: int) -> None:
            sending(index)
            marks_sent.append(deps.store.lifecycle.field(jobs[index].id, "create_pending"))

        def record_then_look(indexes: Sequence[int], answers: Sequence[Any]) -> None:
            arrived(indexes, answers)
            for index in indexes:
                job_id = jobs[index].id
                fields = ("status", "provider_task_id", "create_pending")
                seen[job_id] = tuple(deps.store.lifecycle.fields(job_id, *fields))

        marking = None if sending is None else mark_then_look
        return real(name, jobs, record_then_look, sending=marking)

    deps.calls.submit_many = watching
    try:
        out = submits.submit_batch(deps, ids)
    finally:
        deps.calls.submit_many = real
    assert sorted(due.job_id for due in out.polls) == sorted(ids)
    for job_id in ids:
        status, task, mark = seen[job_id]  # as its answer arrived, before the batch ended
        assert status == JobStatus.SUBMITTED.value and task
        assert mark is None
        assert deps.store.lifecycle.get(job_id).provider_task_id == task
    if provider == "runware":  # keyed by taskUUID: nothing to mark
        assert marks_sent == []
    else:  # marked as sent just before each request
        assert len(marks_sent) == 4
        assert all(mark and mark.startswith("1@") for mark in marks_sent), marks_sent


def test_a_create_never_answered_is_counted_and_logged_when_created_again(
    deps: Any, simulator: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, unsent = _accept(deps, "useapi_runway", 2)
    # a worker began a submit of both and sent one create, then died before its answer came
    begun = deps.store.lifecycle.begin_submits([(job_id, {}), (unsent, {})], marks=True)
    assert begun.attempts == [1, 1] and begun.unanswered == {}
    deps.store.lifecycle.mark_sent(job_id, 1, now=time.time())
    before = _ambiguous("useapi_runway")
    with caplog.at_level(logging.WARNING, "pollen.worker.submits"):
        out = submits.submit_batch(deps, [job_id, unsent])
    assert sorted(due.job_id for due in out.polls) == sorted([job_id, unsent])
    job = deps.store.lifecycle.get(job_id)
    assert job.status is JobStatus.SUBMITTED and job.submit_attempts == 2
    assert _ambiguous("useapi_runway") == before + 1  # not the one never sent
    [message] = [r.getMessage() for r in caplog.records if "never answered" in r.getMessage()]
    assert "create attempt 1 " in message and "attempt 2 creates the task again" in message
    assert deps.store.lifecycle.field(job_id, "create_pending") is None


def test_a_create_the_provider_answered_with_an_error_is_not_ambiguous(
    deps: Any, simulator: SimulatorServer
) -> None:
    [job_id] = _accept(deps, "useapi_runway", 1)
    sim_faults(simulator.url, ["503"])  # its create is answered 503, nothing created
    out = submits.submit_batch(deps, [job_id])
    assert [j for j, _ in out.retries] == [job_id]
    assert deps.store.lifecycle.field(job_id, "create_pending") is None  # answered: cleared
    before = _ambiguous("useapi_runway")
    submits.submit_batch(deps, [job_id])
    assert deps.store.lifecycle.get(job_id).status is JobStatus.SUBMITTED
    assert _ambiguous("useapi_runway") == before


@pytest.mark.parametrize(
    ("answer", "answered"),
    [
        (Submission("task-1", {}), True),
        (ProviderUnavailable("503", code="http503"), True),
        (RateLimited("slow down", retry_after=1.0), True),
        (ProviderRejected("no", code="http400", status=400), True),
        (ProviderUnavailable("timed out", code="timeout"), False),
        (ProviderUnavailable("reset", code="connection"), False),
        (RuntimeError("soft time limit"), False),
    ],
)
def test_which_outcomes_are_the_providers_answer(answer: Any, answered: bool) -> None:
    assert submits.answered(answer) is answered


@pytest.mark.parametrize(("free", "requests"), [(3, 6), (7, 7), (8, 1), (0, 4)])
def test_a_task_array_past_the_accounts_cap_creates_what_fits(
    worker_env: dict[str, str], clean: None, free: int, requests: int
) -> None:
    """Runware refuses a whole task array past the key's cap (429, nothing created). An
    uncapped account's batch is halved until what fits is created, instead of refusing the
    same array again at every retry; the rest waits its retry. A batch that fits is one
    request, and an account with no free slot costs log2(batch) + 1 requests, all refused."""
    from pollen.worker.runtime import build_deps
    from tests.conftest import settings_from

    config = SimulatorConfig(duration_min=30, duration_max=30, max_running_per_key=max(free, 1))
    with SimulatorServer(config) as sim:
        env = {**worker_env, "POLLEN_RUNWARE__BASE_URL": f"{sim.url}/v1"}
        deps = build_deps(settings_from(env))
        try:
            if free == 0:  # fill the key first: one job takes its only slot
                submits.submit_batch(deps, _accept(deps, "runware", 1))
            before = sim_stats(sim.url)["requests_by_kind"].get("submit", 0)
            ids = _accept(deps, "runware", 8)
            out = submits.submit_batch(deps, ids)
            jobs = deps.store.lifecycle.get_many(ids)
            created = [j for j in jobs if j is not None and j.status is JobStatus.SUBMITTED]
            waiting = [j for j in jobs if j is not None and j.status is JobStatus.QUEUED]
            assert len(created) == min(free, 8) and len(waiting) == 8 - min(free, 8)
            assert {job_id for job_id, _ in out.retries} == {j.id for j in waiting}
            assert sim_stats(sim.url)["created"] == min(free, 8) + (free == 0)
            assert sim_stats(sim.url)["requests_by_kind"]["submit"] - before == requests
        finally:
            deps.http.close()
            deps.store.redis.close()
