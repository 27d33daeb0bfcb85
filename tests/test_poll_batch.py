"""The batch poll: many jobs per message, per request and per Redis round trip, each job
fenced and scheduled on its own (real Redis, the simulator over HTTP, a real worker)."""

from __future__ import annotations

import time
from functools import partial

import pytest

from pollen import JobStatus, Pollen
from pollen.local.servers import CallbackReceiver, Worker
from pollen.simulator import SimulatorServer
from pollen.store import keys, lifecycle
from pollen.worker import batch, submits
from pollen.worker.runtime import Deps
from tests import steps
from tests.conftest import eventually
from tests.helpers import accept_job, kept_responses, sim_faults, sim_stats, video_request

pytestmark = pytest.mark.integration


def _submitted(deps: Deps, durations: list[float], count: int) -> list[str]:
    ids = [accept_job(deps, durations) for _ in range(count)]
    for job_id in ids:
        steps.submit(deps, job_id)
    return ids


def _status_requests(simulator: SimulatorServer) -> int:
    return int(sim_stats(simulator.url)["requests_by_kind"].get("status", 0))


def test_one_request_and_one_message_poll_every_job_of_a_batch(
    deps: Deps, simulator: SimulatorServer
) -> None:
    ids = _submitted(deps, [0.05], 12)
    time.sleep(0.3)
    before = _status_requests(simulator)
    out = batch.poll_batch(deps, [(job_id, 1) for job_id in ids])
    assert _status_requests(simulator) - before == 1  # one Runware task array for all twelve
    assert sorted(out.finished) == sorted(ids)
    for job_id in ids:
        job = deps.store.lifecycle.get(job_id)
        assert job.status is JobStatus.SUCCEEDED and len(job.results) == 1 and job.polls == 1


def test_a_stale_copy_of_one_job_changes_nothing_while_the_others_proceed(
    deps: Deps, simulator: SimulatorServer
) -> None:
    stale, *others = _submitted(deps, [30.0], 3)
    batch.poll_batch(deps, [(stale, 1)])  # poll 1 of this job already ran: the chain is at 2
    before = deps.store.lifecycle.raw(stale)
    out = batch.poll_batch(deps, [(stale, 1), *((job_id, 1) for job_id in others)])
    assert deps.store.lifecycle.raw(stale) == before  # the stale copy wrote nothing
    assert sorted(p.job_id for p in out.polls) == sorted(others)  # only theirs go on
    for job_id in others:
        job = deps.store.lifecycle.get(job_id)
        assert job.poll_seq == 2 and job.polls == 1 and job.status is JobStatus.PROCESSING


def test_one_bad_item_fails_only_itself(deps: Deps, simulator: SimulatorServer) -> None:
    bad, *good = _submitted(deps, [0.05], 3)
    # The provider no longer knows this job's task: its own error, not its neighbours'.
    unknown = {"provider_task_id": "00000000-0000-4000-8000-000000000000"}
    assert deps.store.run(lifecycle.set_if_exists(bad, unknown))
    time.sleep(0.3)
    out = batch.poll_batch(deps, [(bad, 1), ("no-such-job", 1), *((j, 1) for j in good)])
    assert sorted(out.finished) == sorted([bad, *good])
    assert deps.store.lifecycle.get(bad).status is JobStatus.FAILED
    assert deps.store.lifecycle.get(bad).error is not None
    for job_id in good:
        assert deps.store.lifecycle.get(job_id).status is JobStatus.SUCCEEDED


def test_a_failed_request_retries_every_job_on_its_own_schedule(
    deps: Deps, simulator: SimulatorServer
) -> None:
    ids = _submitted(deps, [30.0], 5)
    sim_faults(simulator.url, ["500"])
    now = time.time()
    out = batch.poll_batch(deps, [(job_id, 1) for job_id in ids])
    assert out.finished == []
    assert sorted(p.job_id for p in out.polls) == sorted(ids)
    policy = deps.store.lifecycle.get(ids[0]).policy
    for poll in out.polls:
        job = deps.store.lifecycle.get(poll.job_id)
        assert job.poll_seq == 2 and poll.attempt == 2
        assert job.next_poll_at == pytest.approx(poll.due)
        # each job's own backoff after poll 1 (jittered down by at most its jitter)
        assert now + policy.interval * (1 - policy.jitter) - 0.5 <= poll.due
        assert poll.due <= now + policy.interval + 0.5
        assert deps.store.lifecycle.field(poll.job_id, "last_error")
    assert len({p.due for p in out.polls}) == len(ids)  # jitter per job: own due times
    assert len(kept_responses(deps.store, ids[0])) == 1  # the failure is kept for the audit


def test_a_batch_through_the_worker_finishes_each_job_once_with_its_partials_in_order(
    worker: Worker,
    client: Pollen,
    simulator: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    durations = {"fast": [0.2], "mid": [0.3, 1.2], "slow": [0.5, 1.5, 2.5]}
    ids = {
        name: client.submit(
            "runware",
            video_request(d),
            callback_url=f"{receiver.url}/{name}",
            events=["partial", "completed"],
        )
        for name, d in durations.items()
    }
    # Stray extra copy of a batch that names all three (a redelivery): changes nothing.
    eventually(
        lambda: all(client.store.lifecycle.field(i, "poll_seq") for i in ids.values()),
        what="submitted",
    )
    client.celery.send_task(
        "pollen.poll", kwargs={"items": [[i, 1] for i in ids.values()]}, queue="pollen.poll"
    )
    for name, job_id in ids.items():
        job = client.wait(job_id, timeout=30)
        assert job.status is JobStatus.SUCCEEDED
        assert len(job.results) == len(durations[name])

    def completed(path: str) -> bool:
        return any(r["json"]["type"] == "job.completed" for r in receiver.received(path))

    for name in ids:
        eventually(partial(completed, f"/{name}"), what=f"{name} completed")
    time.sleep(0.5)
    for name in ids:
        types = [r["json"]["type"] for r in receiver.received(f"/{name}")]
        assert types == ["job.partial"] * len(durations[name]) + ["job.completed"], (name, types)
        indexes = [r["json"]["data"]["index"] for r in receiver.received(f"/{name}")[:-1]]
        assert indexes == list(range(1, len(durations[name]) + 1))


def test_a_poll_message_with_a_malformed_item_is_refused(worker: Worker, client: Pollen) -> None:
    job_id = client.submit("runware", video_request([0.2]))
    client.celery.send_task("pollen.poll", kwargs={"items": [["x"], [job_id]]}, queue="pollen.poll")
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED
    assert client.store.redis.exists(keys.job("x")) == 0


def test_a_job_whose_last_poller_died_is_polled_alone_and_the_death_counted_once(
    deps: Deps, simulator: SimulatorServer
) -> None:
    suspect, other = _submitted(deps, [30.0], 2)
    now = time.time()
    # A worker took poll 1's lease and died without recording (the lease ran out).
    assert deps.store.polls.claim([(suspect, 1)], now=now - 200, lease=60)[0].verdict == "ok"
    before = deps.store.lifecycle.raw(suspect)
    out = batch.poll_batch(deps, [(suspect, 1), (other, 1)])
    assert (
        deps.store.lifecycle.raw(suspect) == before
    )  # not polled with the others, nothing counted
    (alone,) = [p for p in out.polls if p.job_id == suspect]
    assert alone.alone and alone.attempt == 1 and alone.due <= time.time()
    assert deps.store.lifecycle.get(other).polls == 1  # its batch-mate went ahead
    # On its own, the death is counted once and the job is polled.
    batch.poll_batch(deps, [(suspect, 1)])
    assert deps.store.lifecycle.field(suspect, "worker_losses") == "1"
    assert deps.store.lifecycle.get(suspect).polls == 1


def test_a_batch_that_fails_before_recording_gives_its_leases_back(
    deps: Deps, simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _submitted(deps, [30.0], 3)

    def interrupted(*_: object) -> None:
        raise TimeoutError("soft time limit")

    monkeypatch.setattr(deps.calls, "status_many", interrupted)
    with pytest.raises(TimeoutError):
        batch.poll_batch(deps, [(job_id, 1) for job_id in ids])
    monkeypatch.undo()
    # The next copy acts at once, and nobody is blamed for a worker death.
    out = batch.poll_batch(deps, [(job_id, 1) for job_id in ids])
    assert sorted(p.job_id for p in out.polls) == sorted(ids) and not any(
        p.alone for p in out.polls
    )
    for job_id in ids:
        assert deps.store.lifecycle.field(job_id, "worker_losses") is None
        assert deps.store.lifecycle.get(job_id).polls == 1


def test_a_submit_that_got_no_answer_is_retried_not_failed(
    deps: Deps, simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = accept_job(deps, [0.2])
    monkeypatch.setattr(
        deps.calls,
        "submit_many",
        lambda provider, jobs, *_, **__: [RuntimeError("parser bug")] * len(jobs),
    )
    out = submits.submit_batch(deps, [job_id])
    assert out.finished == [] and [j for j, _ in out.retries] == [job_id]
    assert deps.store.lifecycle.get(job_id).status is JobStatus.QUEUED
    assert (deps.store.lifecycle.field(job_id, "last_error") or "").startswith("interrupted:")
