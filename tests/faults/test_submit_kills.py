"""A worker SIGKILLed in the middle of a submit batch: each create's answer was recorded as it
arrived, so the jobs whose answers came are never created a second time.

The simulator answers creates one at a time (``create_gap``), so the test kills the pod when a
known number of creates have been answered and recorded and none is being handled. The Runway
dialects (useapi.net, CometAPI) take no idempotency key: their worker talks to the simulator
directly, and a create still waiting its turn when its worker dies is dropped by the simulator
(the provider never made that task). Runware goes through the provider gate, so the create
request on the wire at the kill still reaches the provider: its tasks exist, unrecorded, and
the resent creates find them by ``taskUUID``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest

from pollen import Pollen
from pollen.local.servers import CallbackReceiver
from pollen.simulator import SimulatorServer
from pollen.store import keys
from pollen.worker.deliveries import LEASE_MARGIN
from tests.faults.audit import tally
from tests.faults.conftest import (
    FAULT_ENV,
    MakeFleet,
    sim_stats,
    start_pods,
    unsuccessful,
    wait_all,
)
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.fleet import Fleet
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

JOBS = 40
ANSWERED_AT_KILL = 20  #: creates answered (and recorded) when the pod is killed
GAP = 0.25  #: seconds between two create answers at the simulator
#: longer than the whole paced batch (JOBS * GAP): no create times out waiting its turn and the
#: batch is not cut by the task's soft time limit; the dead pod's submit message comes back
#: from the broker only after the test (visibility timeout): its claim brings it back first
ENV = {
    "POLLEN_HTTP_TIMEOUT": "15",
    "POLLEN_TASK_TIME_LIMIT": "60",
    "POLLEN_VISIBILITY_TIMEOUT": "120",
}
#: seconds from the kill to the last job's end: the dead pod's lease (5 s), the resent creates
#: (paced, up to 20 x GAP), the jobs themselves (CometAPI: 3 s before a new task is visible)
RECOVERY_BOUND = 30.0
DIALECTS = {"useapi_runway": "useapi", "comet_runway": "comet"}


def _prompt(index: int) -> str:
    return f"mid-batch kill, job {index}"


def _request(provider: str, index: int) -> dict[str, Any]:
    """A request whose prompt names the job, so the simulator's tasks can be told apart."""
    prompt = _prompt(index)
    if provider == "useapi_runway":
        return {"text_prompt": prompt, "simulate": {"duration": 0.5}}
    if provider == "comet_runway":
        return {"model": "gen4_turbo", "promptText": prompt,
                "promptImage": "https://example.invalid/harbour.png"}  # fmt: skip
    return {**video_request([0.5]), "positivePrompt": prompt}


def _pace(sim: SimulatorServer, gap: float) -> None:
    httpx.patch(f"{sim.url}/_sim/config", json={"create_gap": gap}).raise_for_status()


def _recorded(client: Pollen, job_ids: list[str]) -> set[str]:
    """The jobs whose provider task id is stored."""
    pipe = client.store.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "provider_task_id")
    return {job_id for job_id, task in zip(job_ids, pipe.execute(), strict=True) if task}


def _kill_between_answers(
    fleet: Fleet, sim: SimulatorServer, client: Pollen, ids: list[str]
) -> float:
    """SIGKILL pod-a once ANSWERED_AT_KILL creates were answered, between two answers: as soon
    as every answered create is recorded, or half a gap after the last answer at the latest
    (the next create is handled a whole gap after it); the kill's time."""
    deadline = time.monotonic() + 60
    while (created := sim_stats(sim)["created"]) < ANSWERED_AT_KILL:
        if time.monotonic() > deadline:
            pytest.fail("the creates were not answered in time")
        time.sleep(0.01)
    settle_by = time.monotonic() + GAP / 2
    while len(_recorded(client, ids)) < created and time.monotonic() < settle_by:
        time.sleep(0.01)
    fault_at = time.time()
    fleet.kill_pod("pod-a")
    return fault_at


def _tasks_per_job(sim: SimulatorServer, dialect: str, requests: dict[str, str]) -> Counter[str]:
    """How many provider tasks the simulator holds for each job (by the job's prompt)."""
    view = httpx.get(f"{sim.url}/_sim/finished", params={"dialect": dialect}).json()
    labels = Counter(task["label"] for task in view["tasks"].values())
    return Counter({job_id: labels[prompt] for job_id, prompt in requests.items()})


def _run(
    case: CaseRecord,
    fleet: Fleet,
    sim: SimulatorServer,
    receiver: CallbackReceiver,
    provider: str,
    dialect: str,
) -> None:
    start_pods(fleet, ["pod-a"])
    client = fleet.client()
    _pace(sim, GAP)
    try:
        payloads = [
            {"provider": provider, "request": _request(provider, i), "callback_url": receiver.url}
            for i in range(JOBS)
        ]
        ids = client.submit_many(payloads).accepted
        assert len(ids) == JOBS
        prompts = {job_id: _prompt(i) for i, job_id in enumerate(ids)}
        fault_at = _kill_between_answers(fleet, sim, client, ids)
        answered = _recorded(client, ids)
        time.sleep(1.0)  # what was on its way reaches the provider (or is dropped) meanwhile
        settled = sim_stats(sim)
        start_pods(fleet, ["pod-b"])
        finished = wait_all(client, ids, timeout=90)
    finally:
        _pace(sim, 0.0)
    stats = sim_stats(sim)
    assert not unsuccessful(finished)
    per_job = _tasks_per_job(sim, dialect, prompts)
    doubled_answered = sum(per_job[job_id] - 1 for job_id in answered)
    # a job pod-a finished just before the kill may have had its callback in pod-a's hands:
    # it is sent again once the delivery's claim lapses (callback timeout + LEASE_MARGIN)
    lapse = float(FAULT_ENV["POLLEN_CALLBACKS__TIMEOUT"]) + LEASE_MARGIN
    result = tally(client, ids, sim_stats=stats, receiver=receiver, settle=lapse + 5)
    result.fill(case, fault_at)
    in_flight = settled["created"] - len(answered)  # created at the kill, never recorded
    ambiguous = fleet.log("pod-b").count("was never answered")
    case.notes.append(
        f"{len(answered)} of {JOBS} creates answered and recorded at the kill; "
        f"{settled['creates_dropped']} creates waiting at the provider were dropped with the "
        f"worker; creates in flight at the kill: {in_flight}; provider tasks created twice: "
        f"{result.extra_provider_tasks} ({doubled_answered} among the jobs answered before the "
        f"kill); resent after an unanswered create (pollen_submit_ambiguous_total): {ambiguous}; "
        f"last job ended {case.recovery_s} s after the kill."
    )
    print(case.notes[-1])
    assert doubled_answered == 0, per_job
    assert len(answered) >= ANSWERED_AT_KILL  # recorded as they arrived, not at the end
    if provider != "runware":  # nothing on the wire at the kill: the provider dropped it
        assert in_flight == 0, in_flight
    result.assert_clean()
    assert not result.missing_completions()
    assert case.recovery_s is not None and case.recovery_s <= RECOVERY_BOUND, case.recovery_s
    client.close()


@pytest.mark.parametrize("provider", list(DIALECTS))
def test_a_pod_killed_mid_batch_never_repeats_an_answered_runway_create(
    case: CaseRecord,
    make_fleet: MakeFleet,
    fault_sim: SimulatorServer,
    gate: ProviderGate,
    receiver: CallbackReceiver,
    provider: str,
) -> None:
    dialect = DIALECTS[provider]
    case.case, case.fault = (
        f"18{dialect[0]}",
        f"SIGKILL a pod mid-way through a {provider} submit batch",
    )
    case.proves = (
        "each create's answer is recorded as it arrives: the jobs whose creates were answered "
        "before the kill get no second provider task; every job ends succeeded once"
    )
    case.how = (
        f"{JOBS} jobs in one submit_many; the simulator answers creates one at a time, "
        f"{GAP} s apart (create_gap), to a worker sending 16 at once; pod-a (main and pool "
        f"processes) is SIGKILLed once {ANSWERED_AT_KILL} creates are answered and recorded, "
        "between two answers; the creates still waiting at the simulator are dropped with "
        "their connections. pod-b starts at once; its reconciler sends the dead pod's claimed "
        "submit message again once the pod's lease lapses (POLLEN_WORKER_LEASE)."
    )
    base = fault_sim.url
    fleet = make_fleet(**ENV, POLLEN_USEAPI__BASE_URL=base, POLLEN_COMET__BASE_URL=base)
    _run(case, fleet, fault_sim, receiver, provider, dialect)


def test_a_pod_killed_mid_batch_never_repeats_an_answered_runware_create(
    case: CaseRecord,
    make_fleet: MakeFleet,
    fault_sim: SimulatorServer,
    gate: ProviderGate,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "19", "SIGKILL a pod mid-way through a Runware submit_many batch"
    case.proves = (
        "no job gets a second provider task, even those whose create was on the wire at the "
        "kill and reached the provider: the resent creates carry the same taskUUID"
    )
    case.how = (
        f"{JOBS} jobs in one submit_many, sent as task arrays of 10 (POLLEN_BATCH_SIZE) through "
        f"the provider gate; the simulator answers one array at a time, {GAP} s apart; pod-a is "
        f"SIGKILLed once {ANSWERED_AT_KILL} creates are answered and recorded. The next array "
        "is on its way through the gate and still reaches the provider. pod-b starts at once."
    )
    fleet = make_fleet(**ENV, POLLEN_BATCH_SIZE="10")
    _run(case, fleet, fault_sim, receiver, "runware", "runware")
