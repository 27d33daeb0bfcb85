"""A capped provider key's slots are never leaked: a pod killed mid-submit or mid-poll, and a
job whose record expired while it held a slot, all give their slot back.

Every case runs two pods against a simulator key capped at :data:`CAP` tasks, with pollen told
the same cap (``POLLEN_RUNWARE__MAX_IN_FLIGHT``). The cap is checked from the simulator's own
count of running tasks; the slots from Redis (``store.admission.queue_state`` and every
``pollen:admit:runware:slots:*`` and ``held:*`` set, and the ``owners`` hash).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from pollen import JobStatus, Pollen
from pollen.local.servers import CallbackReceiver
from pollen.simulator import SimulatorServer
from pollen.store import keys
from tests.conftest import eventually
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, sim_stats, start_pods, unsuccessful, wait_all
from tests.faults.gate import Held, ProviderGate
from tests.faults.report import CaseRecord
from tests.fleet import Fleet
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

CAP = 3
CAPPED = {"POLLEN_RUNWARE__MAX_IN_FLIGHT": str(CAP), "POLLEN_ADMISSION__COOLDOWN": "2"}


@pytest.fixture
def capped_sim(fault_sim: SimulatorServer, gate: ProviderGate) -> Iterator[SimulatorServer]:
    """The case's simulator with its key capped at :data:`CAP` running tasks (429 past it)."""
    config = f"{fault_sim.url}/_sim/config"
    httpx.patch(config, json={"max_running_per_key": CAP}).raise_for_status()
    yield fault_sim
    httpx.patch(config, json={"max_running_per_key": None}).raise_for_status()


def two_capped_pods(make_fleet: MakeFleet) -> Fleet:
    """A fleet told the cap, with two pods consuming."""
    fleet = make_fleet(**CAPPED)
    start_pods(fleet, ["pod-a", "pod-b"])
    return fleet


def key_view(sim: SimulatorServer) -> dict[str, Any]:
    """The simulator's counters of the fleet's API key: running, peak_running, refusals."""
    return dict(sim_stats(sim)["keys"].get(sim.config.api_key, {}))


def slots_held(client: Pollen) -> dict[str, int]:
    """What the admission state holds: slots in use and jobs waiting (queue_state), the
    members of every slots and held set in Redis, and the slot owners' tenants."""
    state = client.store.admission.queue_state("runware", [("default", CAP)], now=time.time())
    redis = client.store.redis
    members = {
        pattern: sum(
            int(redis.zcard(key)) for key in redis.scan_iter(keys.admit("runware", pattern))
        )
        for pattern in ("slots:*", "held:*")
    }
    owners = int(redis.hlen(keys.admit("runware", "owners")))
    return {"in_use": state.in_use, "waiting": state.total_waiting, "owners": owners, **members}


def assert_slots_back(client: Pollen) -> None:
    eventually(lambda: not any(slots_held(client).values()), timeout=15, what="every slot back")


def pod_of(fleet: Fleet, process: psutil.Process) -> str:
    """The pod a pool process belongs to."""
    for name in fleet.workers:
        if fleet.alive(name) and process.pid in {p.pid for p in fleet.pod(name)}:
            return name
    raise RuntimeError(f"process {process.pid} is in no running pod")


def kill_sender(fleet: Fleet, gate: ProviderGate, killed: list[tuple[str, float]]) -> Any:
    """A gate hook: SIGKILL the whole pod whose pool process sent the held request."""

    def kill(held: Held) -> None:
        process = fleet.process_with_port(held.client_port, gate.port)
        if process is None:
            raise RuntimeError(f"no pool process holds port {held.client_port}")
        name = pod_of(fleet, process)
        fleet.kill_pod(name)
        killed.append((name, time.time()))

    return kill


def run_capped(
    case: CaseRecord,
    fleet: Fleet,
    sim: SimulatorServer,
    receiver: CallbackReceiver,
    killed: list[tuple[str, float]],
    earlier: tuple[str, ...] = (),
) -> None:
    """Submit jobs of 1 s to two pods (12 with the ``earlier`` ones), wait for the kill the
    gate was told to make, then for every job; check the cap, the slots and the effects, and
    fill the record."""
    client = fleet.client()
    job_ids = [*earlier] + [
        client.submit("runware", video_request([1.0]), callback_url=f"{receiver.url}/slots")
        for _ in range(12 - len(earlier))
    ]
    jobs = len(job_ids)
    eventually(lambda: killed, timeout=30, what="the kill")
    [(pod, fault_at)] = killed
    finished = wait_all(client, job_ids, timeout=90)
    assert not unsuccessful(finished), [(j.id, j.status, j.error) for j in finished]
    assert_slots_back(client)
    key = key_view(sim)
    eventually(lambda: len(receiver.received("/slots")) >= jobs, timeout=20, what="callbacks")
    time.sleep(1.0)
    result = tally(client, job_ids, sim_stats=sim_stats(sim), receiver=receiver)
    result.fill(case, fault_at)
    case.notes.append(
        f"Killed {pod}; the simulator's peak running tasks {key.get('peak_running')} "
        f"(cap {CAP}), creates refused for capacity {key.get('refused_for_capacity')}; every "
        f"slot back {time.time() - fault_at:.1f} s after the kill."
    )
    assert key["peak_running"] <= CAP
    result.assert_clean()
    assert not result.missing_completions()
    client.close()


def test_a_pod_killed_mid_submit_gives_its_slots_back(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    capped_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "13", f"SIGKILL one of two pods mid-submit, key capped at {CAP}"
    case.proves = (
        "the admitted jobs of a pod killed while its create was on the wire are sent again and "
        "end; every slot comes back and the provider never runs more than the cap"
    )
    case.how = (
        "12 jobs of 1 s; the provider gate holds the first create request 1 s and, while it "
        "waits, SIGKILLs the pod whose pool process sent it (main and pool processes); then "
        "it forwards the create, so the provider has the task its creator never heard of. "
        "The reconciler re-sends the overdue submits (POLLEN_SUBMIT_GRACE 2 s)."
    )
    fleet = two_capped_pods(make_fleet)
    killed: list[tuple[str, float]] = []
    gate.hold_creates(times=1, seconds=1.0, then=kill_sender(fleet, gate, killed))
    run_capped(case, fleet, capped_sim, receiver, killed)


def test_a_pod_killed_mid_poll_gives_its_slots_back(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    capped_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "14", f"SIGKILL one of two pods mid-poll, key capped at {CAP}"
    case.proves = (
        "the jobs a pod was polling when it was killed are polled again and end; their slots "
        "come back and the waiting jobs are admitted, never past the cap"
    )
    case.how = (
        "12 jobs of 1 s; once the first job has its provider task, the gate holds that task's "
        "next poll 1 s and SIGKILLs the pod whose pool process sent it. The poll's lease "
        "(POLLEN_POLL_LEASE) runs out and the reconciler re-sends it."
    )
    fleet = two_capped_pods(make_fleet)
    killed: list[tuple[str, float]] = []
    client = fleet.client()
    first = client.submit("runware", video_request([1.0]), callback_url=f"{receiver.url}/slots")
    eventually(lambda: client.get(first).provider_task_id, what="the first job submitted")
    task = client.get(first).provider_task_id or ""
    gate.hold(task, times=1, seconds=1.0, then=kill_sender(fleet, gate, killed))
    run_capped(case, fleet, capped_sim, receiver, killed, earlier=(first,))
    assert gate.polls(task) >= 2  # the killed poll, then the one that saw it finished
    client.close()


def test_an_expired_record_gives_its_slot_back_through_the_sweep(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    capped_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "15", f"A job's record expires while it holds a slot (cap {CAP})"
    case.proves = (
        "the reconciler's sweep takes the vanished job's slot back and admits the next waiting "
        "job, which the provider accepts; every other job ends and no slot stays held"
    )
    case.how = (
        f"Of {CAP} jobs holding every slot, one of 0.5 s is not polled for 20 s and two run "
        "6 s; 3 jobs of 0.5 s wait. Once the short job's provider task has ended, its record "
        "(the job hash) is deleted, as its TTL would. The sweep runs every reconciler round "
        "(POLLEN_RECONCILE_INTERVAL 0.5 s)."
    )
    fleet = two_capped_pods(make_fleet)
    client = fleet.client()
    url = f"{receiver.url}/slots"
    late = {"initial_delay": 20.0}
    gone = client.submit("runware", video_request([0.5]), callback_url=url, poll=late)
    kept = [client.submit("runware", video_request([6.0]), callback_url=url) for _ in range(2)]
    holders = [gone, *kept]
    eventually(
        lambda: all(client.status(j) is JobStatus.SUBMITTED for j in holders), what="running"
    )
    waiting = [client.submit("runware", video_request([0.5]), callback_url=url) for _ in range(3)]
    eventually(lambda: slots_held(client)["waiting"] == 3, what="the others waiting")
    time.sleep(1.0)  # the short job's provider task has ended; pollen has not polled it
    slots = keys.slots("runware", "default")
    assert client.store.redis.zscore(slots, gone) is not None
    client.store.redis.delete(keys.job(gone))
    fault_at = time.time()
    eventually(lambda: client.store.redis.zscore(slots, gone) is None, what="the slot swept")
    swept_in = time.time() - fault_at
    eventually(
        lambda: any(client.status(j) is not JobStatus.QUEUED for j in waiting),
        timeout=5,
        what="a waiting job admitted and created",
    )
    admitted_in = time.time() - fault_at
    others = [*kept, *waiting]
    finished = wait_all(client, others, timeout=60)
    assert not unsuccessful(finished), [(j.id, j.status, j.error) for j in finished]
    assert_slots_back(client)
    eventually(lambda: len(receiver.received("/slots")) >= len(others), what="callbacks")
    time.sleep(1.0)
    key = key_view(capped_sim)
    stats = sim_stats(capped_sim)
    stats["created"] -= 1  # the vanished job's task: it has no record to count it against
    result = tally(client, others, sim_stats=stats, receiver=receiver)
    result.fill(case, fault_at)
    case.notes.append(
        f"The slot was swept {swept_in:.1f} s after the record went and a waiting job created "
        f"at the provider {admitted_in:.1f} s after, while the 6 s jobs still ran; peak running "
        f"at the simulator {key.get('peak_running')} (cap {CAP}), creates refused for capacity "
        f"{key.get('refused_for_capacity')}. The vanished job itself is not counted: its record "
        "is gone."
    )
    assert admitted_in < 3.5  # freed by the sweep, not by a running job ending
    assert key["peak_running"] <= CAP
    assert key["refused_for_capacity"] == 0
    result.assert_clean()
    assert not result.missing_completions()
    client.close()
