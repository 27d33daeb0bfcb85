"""``pollen stats`` reads the fleet's state from Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pollen import JobStatus, Pollen, payloads
from pollen.settings import Settings
from pollen.store import stats
from pollen.store.lifecycle import Move
from pollen.store.stats import collect
from pollen.worker.runtime import build_deps
from tests import steps
from tests.helpers import queue_for_slots, video_request
from tests.test_cli import assert_user_error
from tests.test_cli import pollen as run

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


def test_stats_by_tenant_count_queued_waiting_running_finished_and_cost(
    client: Pollen, settings: Settings, worker_env: dict[str, str]
) -> None:
    jobs = [("a-1", "acme"), ("a-2", "acme"), ("a-3", "acme"), ("b-1", "beta"), ("d-1", "default")]
    admitted = queue_for_slots(settings, client.store, jobs, slots=2)
    assert len(admitted.admitted) == 2 and len(admitted.waiting) == 3
    assert sorted(admitted.admitted) == ["a-1", "b-1"]  # tenants take turns
    deps = build_deps(client.settings)
    now = time.time()
    client.store.lifecycle.transition_many(
        [Move(j, JobStatus.SUBMITTED) for j in ("a-1", "b-1")], now=now
    )
    client.store.redis.hset("pollen:job:a-1", "cost", "0.25")
    steps.finish(deps, client.get("a-1"), JobStatus.SUCCEEDED)
    by_name = {t.tenant: t for t in client.store.run(stats.tenants(["runware", "comet_runway"]))}
    assert sorted(by_name) == ["acme", "beta", "default"]
    summary = {n: (t.queued, t.waiting, t.running, t.finished, t.cost) for n, t in by_name.items()}
    assert summary == {
        "acme": (2, 2, 0, 1, 0.25), "beta": (0, 0, 1, 0, 0.0), "default": (1, 1, 0, 0, 0.0),
    }  # fmt: skip
    table = run(worker_env, "stats", "--by", "tenant")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["TENANT", "QUEUED", "WAITING", "RUNNING", "FINISHED", "COST"]
    assert [row.split() for row in rows] == [
        ["acme", "2", "2", "0", "1", "0.25"], ["beta", "0", "0", "1", "0", "0.0"],
        ["default", "1", "1", "0", "0", "0.0"],
    ]  # fmt: skip
    printed = json.loads(run(worker_env, "stats", "--by", "tenant", "--json").stdout)
    assert printed["tenants"] == [t.as_dict() for t in by_name.values()]
    assert printed["tenants"][0]["finished"] == 1


def test_stats_show_the_slots_of_capped_accounts(
    client: Pollen, settings: Settings, worker_env: dict[str, str]
) -> None:
    queue_for_slots(settings, client.store, [(f"j-{i}", "acme") for i in range(3)], slots=2)
    capped = {**worker_env, "POLLEN_RUNWARE__MAX_IN_FLIGHT": "2"}
    text = run(capped, "stats")
    assert text.returncode == 0, text.stderr
    assert "slots runware/default: 2 of 2 in use" in text.stdout.splitlines()
    assert "waiting for runware: 1" in text.stdout.splitlines()
    printed = json.loads(run(capped, "stats", "--json").stdout)
    [queue] = printed["accounts"]
    assert queue["provider"] == "runware" and queue["waiting"] == {"acme": 1}
    assert queue["accounts"][0] | {"lowered_to": None} == {
        "account": "default", "cap": 2, "in_use": 2, "lowered_to": None, "effective_cap": 2,
    }  # fmt: skip
    uncapped = run(worker_env, "stats")  # no cap configured: no slot lines
    assert "slots" not in uncapped.stdout and uncapped.returncode == 0


@pytest.mark.parametrize("by", ["tenants", "provider", ""])
def test_stats_by_something_else_is_one_line(worker_env: dict[str, str], by: str) -> None:
    assert_user_error(run(worker_env, "stats", "--by", by), "give one of tenant", 2)
