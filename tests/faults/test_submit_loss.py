"""A worker dies holding submit messages: the plain ``send_task`` contract and a backlog.

On the Redis broker a message a dead worker took waits in kombu's unacked hash until the
visibility timeout; with plain ``send_task`` the job has no record until its submit runs. These
cases run the documented defaults for recovery (reconcile grace 10 s, interval 2 s, submit
grace 60 s, worker lease 5 s, the derived visibility timeout) so the recovery shown is the
claims', not a shortened timeout's.
"""

from __future__ import annotations

import json
import re
import time

import celery
import pytest
import redis

from pollen import Job, JobStatus, Pollen, contract, payloads
from pollen.local.servers import CallbackReceiver
from pollen.payloads import message_job_id
from pollen.simulator import SimulatorServer
from pollen.store import keys
from pollen.store.claims import Held
from pollen.store.orphans import Orphans
from tests.conftest import eventually
from tests.faults.audit import Tally, tally
from tests.faults.conftest import MakeFleet, sim_stats, start_pods, unsuccessful, wait_all
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.fleet import Fleet
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

#: the recovery settings as documented (the fault suite's defaults shorten them)
DOCUMENTED = {
    "POLLEN_RECONCILE_GRACE": "10",
    "POLLEN_RECONCILE_INTERVAL": "2",
    "POLLEN_TICK_INTERVAL": "1",
    "POLLEN_SUBMIT_GRACE": "60",
    "POLLEN_VISIBILITY_TIMEOUT": "0",  # derived: 2 x (30 + 14) = 88 s with the suite's limit
}
RECONCILER_LINE = re.compile(
    r"reconciler: resubmitted (\d+), re-polled (\d+), dropped (\d+), cancel follow-ups re-sent "
    r"(\d+), dead workers' submit messages re-sent (\d+), unclaimed ones (\d+)"
)


def held_by(client: Pollen, fleet: Fleet, pod: str) -> list[Held]:
    """The submit messages the pod's worker instance holds, by its claims."""
    store = client.store.redis
    node = f"{fleet.workers[pod].name}@"
    messages: list[Held] = []
    for holder in store.zrange(keys.HOLDERS, 0, -1):
        if str(holder).startswith(node):
            messages += [Held.load(str(v)) for v in store.hvals(keys.held(str(holder)))]
    return messages


def unclaimed(client: Pollen, fleet: Fleet) -> list[Held]:
    """Submit messages of the fleet's queue the broker handed over that nobody claims."""
    broker = redis.Redis.from_url(fleet.env["POLLEN_BROKER_URL"], decode_responses=True)
    found, _ = Orphans(broker, fleet.settings().queues.submit).scan(0, time.time(), 100_000)
    claimed = client.store.claims.claimed()
    broker.close()
    return [held for held in found if held.tag not in claimed]


def jobs_of(messages: list[Held]) -> set[str]:
    """The jobs those messages bring or name (a payload's id derives from its task id)."""
    jobs: set[str] = set()
    for message in messages:
        payload = message.kwargs.get("job")
        if isinstance(payload, dict):
            jobs.add(str(payload.get("job_id") or message_job_id(message.task_id)))
        jobs.update(message.job_ids())
    return jobs


def reconciler_counts(fleet: Fleet) -> dict[str, int]:
    """What every pod's reconciler did, summed from their log lines."""
    totals = dict.fromkeys(("resubmitted", "repolled", "dropped", "cancels", "held", "orphans"), 0)
    for pod in fleet.workers:
        for line in fleet.log(pod).splitlines():
            try:
                message = str(json.loads(line).get("message", ""))
            except ValueError:
                continue
            if found := RECONCILER_LINE.search(message):
                for name, value in zip(totals, found.groups(), strict=True):
                    totals[name] += int(value)
    return totals


def wait_stored(client: Pollen, job_ids: list[str], timeout: float) -> None:
    """Until every job has a record (a plain ``send_task`` job has none before its submit
    runs); fails naming how many never got one."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [j for j, job in zip(job_ids, client.store.lifecycle.get_many(job_ids),
                                       strict=True) if job is None]  # fmt: skip
        if not missing:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{len(missing)} jobs never stored, e.g. {missing[:3]}")
        time.sleep(0.2)


def no_orphans(client: Pollen) -> list[str]:
    """Ids the store's indexes name without a job record (there must be none)."""
    store = client.store.redis
    named: set[str] = set()
    for key in [keys.INFLIGHT, keys.BY_AGE, *store.scan_iter(match=f"{keys.INDEX_PREFIX}*")]:
        if str(key) != keys.INDEX_EXPIRY:
            named.update(str(m) for m in store.zrange(key, 0, -1))
    return sorted(job for job in named if not store.exists(keys.job(job)))


def test_a_pod_killed_during_a_burst_of_plain_send_task_submits_loses_and_doubles_nothing(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
    broker_env: dict[str, str],
) -> None:
    jobs = 300
    on_rabbit = bool(broker_env)
    case.case = "16r" if on_rabbit else "16"
    case.fault = "SIGKILL a pod during a burst of plain send_task submits" + (
        " (RabbitMQ broker)" if on_rabbit else ""
    )
    case.proves = (
        "RabbitMQ returns the dead pod's unacknowledged messages at once: none lost, none "
        "doubled, every job done within 15 s of the kill"
        if on_rabbit
        else "submit messages the dead pod held (running or waiting in its hands, most with no "
        "job record yet) are sent again from its claims once its 5 s lease lapses, and those "
        "it had only just taken (recorded in kombu's unacked hash by the take itself) from "
        "the orphan scan: none lost, none doubled, the last of its jobs done within 15 s of "
        "the kill"
    )
    case.how = (
        f"{jobs} jobs of 3 s sent with a bare Celery app's `send_task('pollen.submit', "
        "kwargs={'job': payload})` (no job id: the worker derives it from the task id), two "
        "pods of 8 threads, provider creates held 0.5 s each at the gate (the wakes that submit "
        "the stored payloads are in hand); pod-a is SIGKILLed after the first half of the "
        "sends, the second half goes on, and pod-c starts 1 s after the kill. Documented "
        "recovery settings (visibility timeout derived: 88 s, longer than the bound)."
    )
    fleet = make_fleet(**DOCUMENTED, **broker_env)
    start_pods(fleet, ["pod-a", "pod-b"], pool="threads", concurrency=8)
    client = fleet.client()
    gate.hold_creates(times=None, seconds=0.5)
    producer = celery.Celery(broker=fleet.env["POLLEN_BROKER_URL"])
    submit_queue = fleet.settings().queues.submit
    job_ids = []

    def send(count: int) -> None:
        for _ in range(count):
            payload = {
                "provider": "runware",
                "request": video_request([3.0]),
                "callback_url": f"{receiver.url}/burst",
                "events": ["completed"],
            }
            sent = producer.send_task("pollen.submit", kwargs={"job": payload}, queue=submit_queue)
            job_ids.append(message_job_id(str(sent.id)))

    send(jobs // 2)
    fault_at = time.time()
    fleet.kill_pod("pod-a")
    held = held_by(client, fleet, "pod-a")
    send(jobs - jobs // 2)
    # a live pod's message is unclaimed for an instant (taken, or done and not yet acked):
    # pod-a's unclaimed ones are those still unclaimed a second later
    first = [] if on_rabbit else unclaimed(client, fleet)
    time.sleep(1.0)
    still = {m.tag for m in ([] if on_rabbit else unclaimed(client, fleet))}
    lost_claims = [m for m in first if m.tag in still]
    # on RabbitMQ nothing is claimed (the broker returns the messages): every job counts
    affected = set(job_ids) if on_rabbit else jobs_of(held + lost_claims)
    unrecorded = [job for job in affected if not client.store.redis.exists(keys.job(job))]
    start_pods(fleet, ["pod-c"], pool="threads", concurrency=8)

    wait_stored(client, job_ids, timeout=60)
    finished, recovery, result, counts = after_kill(
        case, fleet, client, gate, job_ids, affected, fault_at, fault_sim, receiver, timeout=60
    )
    on_kill = (
        f"RabbitMQ: nothing is claimed; {len(unrecorded)} jobs had no record at the kill"
        if on_rabbit
        else f"pod-a held {len(held)} claimed submit messages at the kill and "
        f"{len(lost_claims)} it took but had not claimed yet ({len(unrecorded)} of their jobs "
        f"had no record); the reconciler sent {counts['held']} + {counts['orphans']} again"
    )
    case.notes = [
        f"{on_kill}; overdue queued jobs resubmitted: {counts['resubmitted']}",
        f"the last of pod-a's jobs ended {recovery} s after the kill; every job "
        f"{round(max(j.finished_at or 0 for j in finished) - fault_at, 2)} s",
    ]
    print("\n".join(case.notes))
    result.assert_clean()
    if not on_rabbit:
        assert held, "the kill found pod-a holding no submit message: nothing was tested"
        assert counts["held"] == len(held)
        assert counts["orphans"] == len(lost_claims)
    assert recovery is not None and recovery <= 15.0, case.notes
    assert client.store.redis.zcard(keys.index("runware", JobStatus.SUCCEEDED.value)) == jobs
    assert no_orphans(client) == []


def after_kill(
    case: CaseRecord,
    fleet: Fleet,
    client: Pollen,
    gate: ProviderGate,
    job_ids: list[str],
    affected: set[str],
    fault_at: float,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
    *,
    timeout: float,
) -> tuple[list[Job], float | None, Tally, dict[str, int]]:
    """The end of a burst case: every job done (creates let through once they are), the
    recovery (the last ``affected`` job's end after ``fault_at``), the tally once anything
    doubled would have arrived, and what the reconciler did: (jobs, recovery, tally, counts)."""
    finished = wait_all(client, job_ids, timeout=timeout)
    gate.release("<creates>")
    assert unsuccessful(finished) == []
    ends = [job.finished_at or 0 for job in finished if job.id in affected]
    recovery = round(max(ends) - fault_at, 2) if ends else None
    time.sleep(1.5)  # anything doubled would arrive now
    result = tally(client, job_ids, sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case)
    case.recovery_s = recovery
    return finished, recovery, result, reconciler_counts(fleet)


def stored_and_sent(client: Pollen, queue: str) -> str:
    """One job stored and its own ``pollen.submit(job_id=...)`` message sent: a backlog of
    messages for stored jobs, which the reconciler must not mistake for lost submits."""
    payload = {"provider": "runware", "request": video_request([0.5])}
    job_id, _ = payloads.accept(client.settings, client.store, payload, now=time.time())
    client.celery.send_task(
        contract.SUBMIT, kwargs={"job_id": job_id}, queue=queue, ignore_result=True
    )
    return job_id


def test_a_submitter_killed_over_a_backlog_resubmits_only_its_own_jobs(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
) -> None:
    jobs = 2000
    case.case, case.fault = "17", "SIGKILL a submitter while the submit queue holds thousands"
    case.proves = (
        "the reconciler sends again only the messages the dead worker held (by its claims), "
        "never a job still waiting in the queue, though every waiting job is long past its "
        "submit grace (at most a job a live worker was taking as the queue emptied)"
    )
    case.how = (
        f"{jobs} jobs stored, each sent as its own `pollen.submit(job_id=...)` message (a "
        "producer that stores its jobs itself; `Pollen.submit` now sends wakes) into a fleet that "
        "consumes slowly (two pods of 4 threads, creates held 0.05 s at the gate); submit grace "
        "2 s, so every waiting job is overdue within seconds. pod-a is SIGKILLed while more "
        "than a thousand messages wait; pod-c replaces it. Resubmits are counted from the "
        "reconcilers' log lines."
    )
    fleet = make_fleet(POLLEN_SUBMIT_GRACE="2", POLLEN_RECONCILE_GRACE="2")
    queues = fleet.settings().queues
    client = fleet.client()
    gate.hold_creates(times=None, seconds=0.05)
    job_ids = [stored_and_sent(client, queues.submit) for _ in range(jobs)]
    start_pods(fleet, ["pod-a", "pod-b"], pool="threads", concurrency=4)
    broker = redis.Redis.from_url(fleet.env["POLLEN_BROKER_URL"])
    eventually(lambda: held_by(client, fleet, "pod-a"), what="pod-a holding submits")
    time.sleep(3.0)  # every waiting job is now past its submit grace
    # the kill lands while pod-a holds claimed messages (between two of its tasks it may, for
    # an instant, hold none: then there would be nothing of its own to resend)
    eventually(lambda: held_by(client, fleet, "pod-a"), interval=0.01, what="pod-a holding")
    waiting = int(broker.llen(queues.submit))
    fault_at = time.time()
    fleet.kill_pod("pod-a")
    held = held_by(client, fleet, "pod-a")
    start_pods(fleet, ["pod-c"], pool="threads", concurrency=4)

    finished = wait_all(client, job_ids, timeout=240)
    gate.release("<creates>")
    assert unsuccessful(finished) == []
    result = tally(client, job_ids, sim_stats=sim_stats(fault_sim))
    result.fill(case, fault_at)
    counts = reconciler_counts(fleet)
    case.notes = [
        f"{waiting} submit messages waited in the queue at the kill; pod-a held {len(held)}",
        f"resent from claims: {counts['held']}; resubmitted as overdue: {counts['resubmitted']}",
    ]
    print("\n".join(case.notes))
    result.assert_clean()
    assert waiting >= 1000, "no backlog at the kill: nothing was tested"
    assert held, "the kill found pod-a holding no submit message"
    assert counts["held"] == len(held)
    # without the backlog rule every waiting job (over a thousand) would be sent again; what
    # may remain is a job whose message a live worker took the instant the queue emptied
    assert counts["resubmitted"] <= 3, case.notes


def test_a_pod_killed_holding_a_wakes_jobs_loses_and_doubles_nothing(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
    broker_env: dict[str, str],
) -> None:
    jobs = 300
    on_rabbit = bool(broker_env)
    case.case = "16wr" if on_rabbit else "16w"
    case.fault = "SIGKILL a pod submitting the jobs a Pollen.submit wake took" + (
        " (RabbitMQ broker)" if on_rabbit else ""
    )
    case.proves = (
        "a wake sends the jobs it took on as batch messages, which RabbitMQ returns at once "
        "from a dead pod: none lost, none doubled, every job done within 15 s of the kill"
        if on_rabbit
        else "the jobs a wake took are named in the wake's claim, rewritten by the take itself: "
        "once the dead pod's 5 s lease lapses they are sent again: none lost, none doubled, the "
        "last of them done within 15 s of the kill"
    )
    case.how = (
        f"{jobs} jobs of 3 s stored by `Pollen.submit` in a burst (group commit: a few wakes "
        "carry them all), two pods of 8 threads, every provider create held 1 s at the gate; "
        "pod-a is SIGKILLed while its wakes' jobs wait at the gate, and pod-c starts 1 s later. "
        "Documented recovery settings."
    )
    fleet = make_fleet(**DOCUMENTED, **broker_env)
    start_pods(fleet, ["pod-a", "pod-b"], pool="threads", concurrency=8)
    client = fleet.client()
    gate.hold_creates(times=None, seconds=1.0)  # under the fleet's HTTP timeout
    job_ids = [
        client.submit("runware", video_request([3.0]), callback_url=f"{receiver.url}/wake")
        for _ in range(jobs)
    ]

    def taken() -> list[Held]:  # pod-a's claims that name jobs a wake took
        return [m for m in held_by(client, fleet, "pod-a") if m.kwargs.get("job_ids")]

    if on_rabbit:
        time.sleep(1.5)  # RabbitMQ keeps no claims: the kill lands while creates are held
    else:
        eventually(taken, interval=0.01, what="pod-a submitting the jobs a wake took")
    fault_at = time.time()
    fleet.kill_pod("pod-a")
    held = taken()
    start_pods(fleet, ["pod-c"], pool="threads", concurrency=8)

    affected = set(job_ids) if on_rabbit else jobs_of(held)
    _, recovery, result, counts = after_kill(
        case, fleet, client, gate, job_ids, affected, fault_at, fault_sim, receiver, timeout=90
    )
    case.notes = [
        (
            "RabbitMQ: nothing is claimed, every job counts"
            if on_rabbit
            else f"pod-a's claims named {len(affected)} jobs its wakes took; the reconciler "
            f"sent {counts['held']} of its messages again"
        ),
        f"the last of those jobs ended {recovery} s after the kill; overdue queued jobs "
        f"resubmitted: {counts['resubmitted']}",
    ]
    print("\n".join(case.notes))
    result.assert_clean()
    if not on_rabbit:
        assert held, "the kill found pod-a holding no wake's jobs: nothing was tested"
        assert counts["held"] >= len(held)
    assert recovery is not None and recovery <= 15.0, case.notes
    assert no_orphans(client) == []
