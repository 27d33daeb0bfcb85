"""Long poll waits wait in Redis, not as countdown messages in a worker's memory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from pollen import JobStatus
from pollen.local.servers import CallbackReceiver, RedisServer
from pollen.simulator import SimulatorServer
from pollen.store import keys
from tests.conftest import BROKER_DB, eventually
from tests.fleet import Fleet
from tests.helpers import sim_stats, video_request

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path: Path, clean: None
) -> Iterator[Fleet]:
    with Fleet(
        worker_env,
        redis_server.url(BROKER_DB),
        tmp_path,
        POLLEN_PARK_AFTER="0.5",
        POLLEN_TICK_INTERVAL="0.2",
    ) as built:
        yield built


def test_parked_polls_are_released_on_time_and_jobs_complete(
    fleet: Fleet, simulator: SimulatorServer, receiver: CallbackReceiver
) -> None:
    worker = fleet.start("pod", concurrency=4, pool="threads")
    client = fleet.client()
    jobs = [
        client.submit(
            "runware",
            video_request([2.5]),
            callback_url=f"{receiver.url}/p{i}",
            poll={"initial_delay": 1.5, "interval": 1.0, "factor": 1.0, "max_delay": 1.0},
        )
        for i in range(20)
    ]
    # While they wait, the worker holds no countdown polls: they sit in the parked set.
    eventually(lambda: client.store.redis.zcard(keys.PARKED_POLLS) >= 15, what="parked polls")
    scheduled = client.celery.control.inspect(timeout=2).scheduled() or {}
    mine = {name: tasks for name, tasks in scheduled.items() if name.startswith(worker.name)}
    assert mine, "the fleet's worker did not answer"
    assert sum(len(tasks) for tasks in mine.values()) <= 5
    for job_id in jobs:
        job = client.wait(job_id, timeout=30)
        assert job.status is JobStatus.SUCCEEDED
        assert 2.5 <= job.finished_at - job.submitted_at <= 6.0  # type: ignore[operator]
    stats = sim_stats(simulator.url)
    assert stats["created"] == 20
    for path in [f"/p{i}" for i in range(20)]:
        eventually(partial(receiver.received, path), what=f"callback {path}")
    time.sleep(0.5)
    assert all(len(receiver.received(f"/p{i}")) == 1 for i in range(20))
    client.close()
