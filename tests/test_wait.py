"""Pollen.wait() honours its timeout, whatever it is: it listens in slices of at most
WAIT_SLICE, each read with its own timeout, so a wait outlives the client's socket timeout."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from pollen import Pollen, WaitTimeout
from pollen.client import WAIT_SLICE
from pollen.local.servers import Worker
from tests.helpers import accept_job

pytestmark = pytest.mark.integration


def unsent_job(deps: Any) -> str:
    """A job stored but never sent, that the session worker's reconciler leaves alone."""
    job_id = accept_job(deps, [0.2])
    deps.store.schedule.watch(job_id, time.time() + 3600)  # not overdue for an hour
    return job_id


@pytest.mark.parametrize(
    "timeout",
    [
        0.5,
        3.0,
        # slow on purpose (17 s): longer than the Redis client's socket timeout (5 s), and 15 s
        pytest.param(17.0, id="17s-over-socket-timeout-slow"),
    ],
)
def test_wait_on_a_job_without_events_raises_wait_timeout_in_time(
    client: Any, deps: Any, timeout: float
) -> None:
    job_id = unsent_job(deps)  # no worker moves it
    reads: list[float] = []
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=f"still queued after {timeout:g}s"):
        client.wait(job_id, timeout, on_change=lambda job: reads.append(time.monotonic()))
    elapsed = time.monotonic() - started
    assert timeout <= elapsed < timeout + 1
    # blocking reads, not polling: the creation event, then one read per slice
    assert len(reads) <= math.ceil(timeout / WAIT_SLICE) + 2


def test_a_wait_outlives_a_socket_timeout_shorter_than_its_slices(
    settings: Any, clean: None, deps: Any
) -> None:
    timeout = 3.0
    with Pollen(settings, redis_timeout=1.0) as short:  # socket timeout 1 s < WAIT_SLICE
        job_id = unsent_job(deps)
        reads: list[float] = []
        started = time.monotonic()
        with pytest.raises(WaitTimeout, match=f"still queued after {timeout:g}s"):
            short.wait(job_id, timeout, on_change=lambda job: reads.append(time.monotonic()))
    assert timeout <= time.monotonic() - started < timeout + 1
    assert len(reads) <= math.ceil(timeout / WAIT_SLICE) + 2  # no read per socket timeout


def test_wait_returns_a_job_that_finishes_after_the_first_slice(
    client: Any, deps: Any, worker: Worker
) -> None:
    job_id = unsent_job(deps)

    def send_later() -> None:  # the job starts only after wait()'s first slice has ended
        time.sleep(WAIT_SLICE + 0.5)
        client.celery.send_task(
            "pollen.submit",
            kwargs={"job_id": job_id},
            queue=client.settings.queues.submit,
            ignore_result=True,
        )

    sender = threading.Thread(target=send_later)
    started = time.monotonic()
    sender.start()
    try:
        job = client.wait(job_id, 40)
    finally:
        sender.join()
    elapsed = time.monotonic() - started
    assert job.status.value == "succeeded"
    assert WAIT_SLICE + 0.5 < elapsed < 30
