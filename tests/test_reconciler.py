"""Jobs whose message chain was lost are resumed; finished jobs are left alone."""

from __future__ import annotations

import time

import pytest

from pollen import JobStatus, Pollen
from pollen.local.servers import Worker
from pollen.simulator import SimulatorServer
from pollen.store import keys
from pollen.worker import batch
from pollen.worker.reconciler import reconcile
from pollen.worker.runtime import Deps
from tests import steps
from tests.helpers import accept_job, sim_stats

pytestmark = pytest.mark.integration


def test_reconcile_sends_the_missing_step_once_per_grace_period(deps: Deps) -> None:
    queued = accept_job(deps, [0.2])
    submitted = accept_job(deps, [5.0])
    steps.submit(deps, submitted)
    finished = accept_job(deps, [0.05])
    steps.submit(deps, finished)
    time.sleep(0.3)
    batch.poll_batch(deps, [(finished, 1)])
    assert deps.store.lifecycle.get(finished).status is JobStatus.SUCCEEDED
    # Finishing a job expires the job's own keys, never the shared in-flight index.
    assert deps.store.redis.ttl(keys.job(finished)) > 0
    assert deps.store.redis.ttl(keys.INFLIGHT) == -1
    assert deps.store.redis.zscore(keys.INFLIGHT, finished) is None
    sent: list[tuple[str, dict[str, object]]] = []
    later = time.time() + deps.settings.reconcile_grace + 10
    report = reconcile(deps.store, lambda name, kw: sent.append((name, kw)), now=later)
    assert sorted(sent, key=str) == sorted(
        [
            ("pollen.submit", {"job_ids": [queued]}),
            ("pollen.poll", {"items": [[submitted, 1]]}),
        ],
        key=str,
    )
    assert report.actions == 2
    # Not again in the same grace period.
    sent.clear()
    reconcile(deps.store, lambda name, kw: sent.append((name, kw)), now=later + 1)
    assert sent == []
    # A job whose record expired is dropped from the watch list.
    deps.store.redis.delete(keys.job(submitted))
    report = reconcile(deps.store, lambda n, k: None, now=later + 3 * deps.settings.reconcile_grace)
    assert submitted in report.dropped


def test_a_lost_poll_chain_is_resumed_by_the_worker(
    worker: Worker, client: Pollen, deps: Deps, simulator: SimulatorServer
) -> None:
    # Submit by hand and publish no poll message: as if the worker died right after submitting.
    job_id = accept_job(deps, [0.3, 0.6])
    assert steps.submit(deps, job_id).poll_in is not None
    job = client.wait(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED
    assert len(job.results) == 2
    assert sim_stats(simulator.url)["created"] == 1


def test_a_lost_submit_message_is_resumed_by_the_worker(
    worker: Worker, client: Pollen, deps: Deps
) -> None:
    job_id = accept_job(deps, [0.2])  # stored, but no pollen.submit message was ever sent
    job = client.wait(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED
