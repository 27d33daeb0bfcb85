"""``pollen stats`` reads the fleet's state from Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pollen import JobStatus, Pollen, payloads
from pollen.store.stats import collect
from pollen.worker.runtime import build_deps
from tests import steps
from tests.helpers import video_request

pytestmark = pytest.mark.integration


def test_stats_count_states_and_find_the_oldest_job(
    client: Pollen, worker_env: dict[str, str]
) -> None:
    # Stored without a submit message, so they stay queued even if a worker runs.
    for job_id in ("old-one", "new-one"):
        payload = {"provider": "runware", "request": video_request([1.0]), "job_id": job_id}
        payloads.accept(client.settings, client.store, payload, now=time.time())
        time.sleep(0.05)
    first = "old-one"
    current = collect(client.store)
    assert current.by_status.get("queued") == 2
    assert current.inflight == 2
    assert current.oldest_job == first and current.oldest_status == "queued"
    assert current.oldest_age is not None and current.oldest_age >= 0.05
    # Finishing one moves the counts.
    job = client.get("new-one")
    deps = build_deps(client.settings)
    steps.finish(  # the same path the poll step takes when a job ends
        deps,
        job,
        JobStatus.FAILED,
        "test",
        "ended by the test",
    )
    current = collect(client.store)
    assert current.by_status.get("queued") == 1
    assert current.by_status.get("failed") == 1
    assert current.inflight == 1
    result = subprocess.run(
        [sys.executable, "-m", "pollen.cli", "stats", "--json"],
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    printed = json.loads(result.stdout)
    assert printed["inflight"] == 1 and printed["oldest_job"] == "old-one"
