"""A provider that fails at random: 5xx, 429 with Retry-After, malformed JSON, timeouts."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from pollen import JobStatus
from pollen.local.servers import CallbackReceiver
from pollen.simulator import SimulatorServer
from tests.conftest import eventually
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, sim_faults, sim_stats, start_pods, wait_all
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

JOBS = 60
DEADLINE = 45.0
CHAOS = {
    "rate_5xx": 0.10,
    "rate_429": 0.05,
    "rate_malformed": 0.02,
    "rate_timeout": 0.02,
    "timeout_seconds": 2.5,  # longer than the workers' 1.5 s HTTP timeout: they give up
    "retry_after": 1,
}


def test_every_job_ends_clearly_under_provider_chaos(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "8", "Provider chaos: 10% 5xx, 5% 429, 2% malformed, 2% timeouts"
    case.proves = (
        f"each of {JOBS} jobs ends succeeded or with a clear terminal reason before its "
        "deadline; no worker crashes"
    )
    fleet = make_fleet(POLLEN_HTTP_TIMEOUT="1.5")
    pods = ["pod-a", "pod-b"]
    start_pods(fleet, pods)
    client = fleet.client()
    httpx.patch(f"{fault_sim.url}/_sim/config", json=CHAOS).raise_for_status()
    sim_faults(fault_sim, ["malformed", "timeout", "503", "429"])  # each kind at least once
    fault_at = time.time()
    rng = random.Random(8)
    jobs = [
        client.submit(
            "runware",
            video_request([round(rng.uniform(0.5, 3.0), 1)]),
            callback_url=f"{receiver.url}/chaos",
            deadline=DEADLINE,
        )
        for _ in range(JOBS)
    ]
    finished = wait_all(client, jobs, timeout=DEADLINE + 15)
    stats = sim_stats(fault_sim)
    httpx.patch(f"{fault_sim.url}/_sim/config", json={k: 0.0 for k in CHAOS if "rate" in k})
    for job in finished:
        assert job.finished_at is not None and job.deadline_at is not None
        assert job.finished_at <= job.deadline_at
        if job.status is not JobStatus.SUCCEEDED:
            assert job.error is not None and job.error.code and job.error.message, job
    assert all(fleet.alive(name) for name in pods)
    for name in pods:
        log = fleet.log(name)
        assert "Unrecoverable error" not in log and "WorkerLostError" not in log
        assert "raised unexpected" not in log, "a task failed with an unexpected exception"
    faults = stats["faults"]
    assert {"503", "429", "malformed", "timeout"} <= set(faults), faults  # chaos did happen
    eventually(lambda: len(receiver.received("/chaos")) >= JOBS, what="one callback per job")
    time.sleep(1.0)
    result = tally(client, jobs, sim_stats=stats, receiver=receiver)
    result.fill(case, fault_at)
    outcomes = {s.value: sum(j.status is s for j in finished) for s in JobStatus}
    case.how = (
        f"`PATCH /_sim/config` with the rates above (timeouts stall {CHAOS['timeout_seconds']} s, "
        f"past the workers' 1.5 s HTTP timeout; Retry-After 1 s), {JOBS} jobs with a "
        f"{DEADLINE:g} s deadline on two pods (plus one scripted fault of each kind, so that "
        "every kind occurs). The simulator injected "
        + ", ".join(f"{n} x {kind}" for kind, n in sorted(faults.items()))
        + f" over {stats['requests']} requests."
    )
    case.notes.append(
        "Outcomes: " + ", ".join(f"{n} {status}" for status, n in outcomes.items() if n) + "."
    )
    result.assert_clean()
    assert result.repeated_posts == 0 and not result.missing_completions()
    client.close()
