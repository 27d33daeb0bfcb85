"""Worker pods come and go: SIGTERM loses nothing, and two named workers never double a job."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from pollen import JobStatus
from pollen.local.servers import CallbackReceiver, RedisServer
from pollen.simulator import SimulatorServer
from pollen.store import keys
from tests.conftest import BROKER_DB, eventually
from tests.fleet import Fleet
from tests.helpers import sim_faults, sim_stats, video_request

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(
    worker_env: dict[str, str],
    redis_server: RedisServer,
    tmp_path: Path,
    clean: None,
    broker_env: dict[str, str],
) -> Iterator[Fleet]:
    # A 20 s periodic round: first polls due sooner are countdown messages a pod holds (what
    # these tests hand over), not parked in Redis for the round. On each broker: RabbitMQ
    # returns what a stopping worker held, kombu's Redis transport restores it to the list.
    with Fleet(
        worker_env, redis_server.url(BROKER_DB), tmp_path, POLLEN_TICK_INTERVAL="20", **broker_env
    ) as built:
        yield built


def executed(log: str, task: str) -> set[str]:
    """Task ids this worker's log says it finished (succeeded or retried)."""
    pattern = rf"Task {re.escape(task)}\[([0-9a-f-]+)\] (?:succeeded|retry)"
    return set(re.findall(pattern, log))


def test_sigterm_finishes_the_running_task_and_hands_scheduled_polls_over(
    fleet: Fleet, simulator: SimulatorServer, receiver: CallbackReceiver
) -> None:
    a = fleet.start("pod-a", concurrency=2)
    client = fleet.client()
    # Ten jobs whose first poll is 10 s away: pod-a holds them all as countdown messages.
    waiting = [
        client.submit("runware", video_request([1.0]), callback_url=f"{receiver.url}/w{i}",
                      poll={"initial_delay": 10.0})
        for i in range(10)
    ]  # fmt: skip
    eventually(
        lambda: all(client.status(j) is JobStatus.SUBMITTED for j in waiting), what="submitted"
    )
    # One more job whose submit answer takes 1.8 s (under the 2 s HTTP timeout): a task that
    # is running when SIGTERM arrives.
    httpx.patch(f"{simulator.url}/_sim/config", json={"timeout_seconds": 1.8}).raise_for_status()
    sim_faults(simulator.url, ["timeout"])
    running = client.submit("runware", video_request([0.5]), callback_url=f"{receiver.url}/r")
    eventually(lambda: sim_stats(simulator.url)["created"] == 11, what="the stalled submit")
    b = fleet.start("pod-b", concurrency=2)
    assert a.proc is not None
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(30)  # warm shutdown: finishes the running task, restores the reserved ones
    httpx.patch(f"{simulator.url}/_sim/config", json={"timeout_seconds": 5}).raise_for_status()
    # The running submit completed on pod-a before it exited: one attempt, provider task kept.
    assert client.status(running) is not JobStatus.QUEUED
    for job_id in [*waiting, running]:
        job = client.wait(job_id, timeout=40)
        assert job.status is JobStatus.SUCCEEDED, (job_id, job.error)
        assert job.submit_attempts == 1
    # The running submit finished on pod-a; every scheduled poll ran on pod-b.
    assert "pollen.submit" in fleet.log("pod-a") and b.proc is not None
    polls_a = executed(fleet.log("pod-a"), "pollen.poll")
    # jobs submitted together poll together: one batch may still be delivering callbacks
    polls_b = eventually(lambda: executed(fleet.log("pod-b"), "pollen.poll"), what="pod-b's polls")
    assert not polls_a & polls_b
    # Nothing lost, nothing doubled: one provider task, one callback per job.
    stats = sim_stats(simulator.url)
    assert stats["created"] == 11
    for path in [f"/w{i}" for i in range(10)]:
        eventually(partial(receiver.received, path), what=f"callback {path}")
    eventually(lambda: receiver.received("/r"), what="callback of the running job")
    time.sleep(1.0)
    assert all(len(receiver.received(f"/w{i}")) == 1 for i in range(10))
    assert len(receiver.received("/r")) == 1
    client.close()


def test_two_named_workers_share_one_queue_without_doing_a_job_twice(
    fleet: Fleet, simulator: SimulatorServer, receiver: CallbackReceiver
) -> None:
    fleet.start("pod-1", concurrency=2)
    fleet.start("pod-2", concurrency=2)
    client = fleet.client()
    jobs = [
        client.submit("runware", video_request([0.3, 0.6]), callback_url=f"{receiver.url}/j{i}")
        for i in range(20)
    ]
    for job_id in jobs:
        job = client.wait(job_id, timeout=40)
        assert job.status is JobStatus.SUCCEEDED
        assert len(job.results) == 2
        assert client.store.redis.llen(keys.result_order(job_id)) == 2
    for path in [f"/j{i}" for i in range(20)]:
        eventually(partial(receiver.received, path), what=f"callback {path}")
    time.sleep(1.0)
    assert all(len(receiver.received(f"/j{i}")) == 1 for i in range(20))
    stats = sim_stats(simulator.url)
    assert stats["created"] == 20
    assert all(count == 1 for count in stats["submits_by_task"].values())
    # Pollen.submit sends wakes (group commit): a few submit messages carry the 20 jobs; a
    # poll's retries keep its task id, so they may run on either pod
    submits = {pod: executed(fleet.log(pod), "pollen.submit") for pod in ("pod-1", "pod-2")}
    polls = {pod: executed(fleet.log(pod), "pollen.poll") for pod in ("pod-1", "pod-2")}
    assert all(submits[pod] | polls[pod] for pod in submits)  # both pods took work
    assert not submits["pod-1"] & submits["pod-2"]  # and no submit ran on both
    client.close()
