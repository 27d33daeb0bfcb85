"""Workers die mid-poll: a whole pod, one pool process, and a poison job that kills every
process that polls it."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from pollen import JobStatus
from pollen.local.servers import CallbackReceiver
from pollen.settings import Settings
from pollen.simulator import SimulatorServer
from pollen.store.outbox import delivery_id
from tests.conftest import eventually
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, sim_faults, sim_stats, start_pods, wait_all
from tests.faults.gate import Held, ProviderGate
from tests.faults.report import CaseRecord
from tests.faults.test_submit_loss import reconciler_counts
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

#: seconds from the kill to the end of the last job whose poll RabbitMQ gave back (case 1r):
#: the jobs end 1-2 s after the kill anyway, plus a 1 s poll interval and slack for load
RABBIT_RETURNED = 5.0


def test_a_pod_killed_during_a_stalled_poll_is_replaced_and_the_job_ends_once(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "1", "SIGKILL a whole worker pod (main + pool) mid-poll"
    case.proves = (
        "a second pod finishes the job once: one provider task, each generation recorded once, "
        "one completion callback"
    )
    case.how = (
        "The job's first poll stalls at the simulator (scripted `timeout` fault, 1.5 s, under "
        "the 3 s HTTP timeout); while it waits, the pod's main process and pool processes are "
        "SIGKILLed together, then pod-b starts. Its reconciler re-sends the poll; the dead "
        "pod's lease (the 12 s task time limit) expires and counts one worker loss."
    )
    fleet = make_fleet(POLLEN_TASK_TIME_LIMIT="12", POLLEN_VISIBILITY_TIMEOUT="15")
    start_pods(fleet, ["pod-a"])
    client = fleet.client()
    job_id = client.submit(
        "runware",
        video_request([0.5, 1.0]),
        callback_url=f"{receiver.url}/pod",
        events=["partial", "completed"],
        poll={"initial_delay": 1.0},
    )
    eventually(lambda: client.status(job_id) is JobStatus.SUBMITTED, what="submitted")
    sim_faults(fault_sim, ["timeout"])  # the next provider request is the first poll
    task = client.get(job_id).provider_task_id
    assert task is not None
    eventually(lambda: gate.polls(task) == 1, what="the first poll at the provider")
    eventually(lambda: sim_stats(fault_sim)["faults"].get("timeout") == 1, what="the stall")
    assert float(client.store.lifecycle.raw(job_id).get("lease_until") or 0) > time.time()
    fault_at = time.time()
    fleet.kill_pod("pod-a")
    assert client.get(job_id).polls == 0  # the stalled poll never recorded its answer
    start_pods(fleet, ["pod-b"])

    job = client.wait(job_id, timeout=40)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert len(job.results) == 2
    assert client.store.lifecycle.raw(job_id).get("worker_losses") == "1"
    completed = delivery_id(job_id, "completed")
    eventually(lambda: receiver.received("/pod"), what="the callbacks")
    eventually(
        lambda: any(p["headers"]["webhook-id"] == completed for p in receiver.received("/pod")),
        what="the completion callback",
    )
    time.sleep(1.5)  # anything duplicated would arrive now
    ids: dict[str, int] = defaultdict(int)
    for post in receiver.received("/pod"):
        ids[post["headers"]["webhook-id"]] += 1
    assert set(ids) == {
        completed,
        *(delivery_id(job_id, "partial", r.id) for r in job.results),
    }
    assert ids[completed] == 1
    result = tally(client, [job_id], sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, fault_at)
    result.assert_clean()
    assert result.repeated_posts == 0
    assert "pollen.poll" in fleet.log("pod-b")
    client.close()


def test_killed_pool_processes_requeue_the_poll_and_a_poison_job_is_given_up(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "2", "SIGKILL a prefork pool process mid-poll; a poison job"
    case.proves = (
        "the killed poll is requeued and its job completes; a job whose poll kills every "
        "process ends failed/workerLost after POLLEN_MAX_WORKER_LOSSES, and the pod keeps "
        "serving other jobs"
    )
    case.how = (
        "The provider gate holds the polls of chosen jobs and, while one waits, finds the pool "
        "process that sent it (psutil, by its TCP port) and SIGKILLs it: once for job A, every "
        "time for the poison job P (POLLEN_MAX_WORKER_LOSSES=2, task time limit 10 s)."
    )
    fleet = make_fleet(
        POLLEN_TASK_TIME_LIMIT="10",
        POLLEN_VISIBILITY_TIMEOUT="15",
        POLLEN_MAX_WORKER_LOSSES="2",
    )
    start_pods(fleet, ["pod"])
    client = fleet.client()
    kills: dict[str, list[int]] = defaultdict(list)

    def kill_requester(held: Held) -> None:
        process = fleet.process_with_port(held.client_port, gate.port)
        if process is None:
            raise RuntimeError(f"no pool process holds port {held.client_port}")
        process.kill()
        kills[held.task_uuid].append(process.pid)

    # First polls 0.6 s apart: each job's first poll is a batch of its own, so every kill is
    # one job's (a poison job inside a batch is test_poll_batch's "polled alone" case).
    slow, slower = {"initial_delay": 1.0}, {"initial_delay": 1.6}
    victim = client.submit("runware", video_request([0.5]), poll=slow, callback_url=receiver.url)
    poison = client.submit("runware", video_request([0.5]), poll=slower, callback_url=receiver.url)
    eventually(
        lambda: all(client.get(j).provider_task_id for j in (victim, poison)), what="submitted"
    )
    victim_task, poison_task = (client.get(j).provider_task_id or "" for j in (victim, poison))
    gate.hold(victim_task, times=1, seconds=0.8, then=kill_requester)
    gate.hold(poison_task, times=None, seconds=0.8, then=kill_requester)
    eventually(lambda: kills[victim_task] and kills[poison_task], what="the first kills")
    fault_at = time.time()
    # While the poison job takes processes down, the pod goes on serving other jobs.
    others = [
        client.submit("runware", video_request([0.3]), callback_url=receiver.url) for _ in range(10)
    ]
    jobs = {job.id: job for job in wait_all(client, [victim, poison, *others], timeout=60)}

    assert jobs[victim].status is JobStatus.SUCCEEDED, jobs[victim].error
    assert len(kills[victim_task]) == 1
    assert client.store.lifecycle.raw(victim)["worker_losses"] == "1"
    poison_error = jobs[poison].error
    assert jobs[poison].status is JobStatus.FAILED
    assert poison_error is not None and poison_error.code == "workerLost", poison_error
    assert len(kills[poison_task]) == 2  # a bounded number of redeliveries, then no more
    assert all(jobs[j].status is JobStatus.SUCCEEDED for j in others)
    assert fleet.alive("pod")
    gate.release(poison_task)
    after = client.submit("runware", video_request([0.2]), callback_url=receiver.url)
    assert client.wait(after, timeout=20).status is JobStatus.SUCCEEDED
    all_jobs = [victim, poison, *others, after]
    eventually(
        lambda: len({p["headers"]["webhook-id"] for p in receiver.received()}) == len(all_jobs),
        what="one completion callback per job",
    )
    time.sleep(1.0)
    result = tally(client, all_jobs, sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case)
    case.recovery_s = round(max(job.finished_at or 0 for job in jobs.values()) - fault_at, 2)
    case.notes.append(
        f"Pool processes killed: {len(kills[victim_task])} for A, {len(kills[poison_task])} "
        f"for P; P ended `{poison_error.code}`: {poison_error.message}"
    )
    result.assert_clean()
    assert not result.missing_completions()
    assert gate.polls(poison_task) == 2  # never asked again after the second loss
    client.close()


def test_a_provider_answer_slower_than_the_soft_time_limit_is_not_a_worker_loss(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "12", "A provider answer slower than the soft time limit"
    case.proves = "a slow poll is retried at once, not taken for a dead worker"
    case.how = (
        "Task time limit 11 s, so pollen's soft time limit is 1 s, under the 3 s HTTP timeout; "
        "the job's first poll is answered after 1.5 s (scripted `timeout` fault)."
    )
    fleet = make_fleet(POLLEN_TASK_TIME_LIMIT="11", POLLEN_VISIBILITY_TIMEOUT="15")
    start_pods(fleet, ["pod"])
    client = fleet.client()
    job_id = client.submit(
        "runware", video_request([0.3]), callback_url=receiver.url, poll={"initial_delay": 1.0}
    )
    eventually(lambda: client.status(job_id) is JobStatus.SUBMITTED, what="submitted")
    sim_faults(fault_sim, ["timeout"])
    fault_at = time.time()
    job = client.wait(job_id, timeout=30)
    eventually(receiver.received, what="the completion callback")
    result = tally(client, [job_id], sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, fault_at)
    losses = client.store.lifecycle.raw(job_id).get("worker_losses", "0")
    assert "Soft time limit (1s) exceeded" in fleet.log("pod")  # the fault did happen
    case.notes.append(
        f"The poll was interrupted by the soft time limit; the job ended {case.recovery_s} s "
        f"later with worker_losses={losses}."
    )
    result.assert_clean()
    assert job.status is JobStatus.SUCCEEDED
    assert losses == "0", f"worker_losses={losses}: no worker died"
    assert case.recovery_s is not None and case.recovery_s < 6
    client.close()


def test_a_killed_pods_jobs_resume_within_15_seconds(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
    broker_env: dict[str, str],
) -> None:
    on_rabbit = bool(broker_env)
    case.case = "1r" if on_rabbit else "1b"
    case.fault = "SIGKILL one of two pods with 200 jobs in flight" + (
        " (RabbitMQ broker)" if on_rabbit else ""
    )
    case.proves = (
        "RabbitMQ hands the dead pod's countdown polls to the other pod the moment its "
        "connection drops; a poll that was running waits out its lease: none lost, none "
        f"doubled; jobs whose polls came back end within {RABBIT_RETURNED:g} s of the kill"
        if on_rabbit
        else "with the default lease, grace and reconciler interval, the dead pod's jobs are "
        "polled again and end within 15 s of the kill: none lost, none doubled"
    )
    case.how = (
        "200 jobs of 3 s (submit_many), polled every second in batches by two pods; pod-a "
        "(main and pool processes) is SIGKILLed 2 s after the submit while it holds running "
        "and countdown poll batches. Its running polls' leases (POLLEN_POLL_LEASE, 10 s) stop "
        "being renewed; "
        + (
            "RabbitMQ requeues every message pod-a had not acknowledged (visibility timeout "
            "1 h, never reached); a returned poll whose lease is still held looks again after it."
            if on_rabbit
            else "the reconciler (every 2 s, grace 10 s) re-sends every overdue poll."
        )
    )
    defaults = {
        f"POLLEN_{name.upper()}": str(Settings.model_fields[name].default)
        for name in ("poll_lease", "reconcile_grace", "reconcile_interval", "tick_interval")
    }
    fleet = make_fleet(
        **defaults, POLLEN_TASK_TIME_LIMIT="120", POLLEN_VISIBILITY_TIMEOUT="3600", **broker_env
    )
    start_pods(fleet, ["pod-a", "pod-b"])
    client = fleet.client()
    steady = {"initial_delay": 1.0, "interval": 1.0, "factor": 1.0, "max_delay": 1.0}
    answer = client.submit_many(
        [
            {
                "provider": "runware",
                "request": video_request([3.0]),
                "poll": steady,
                "callback_url": f"{receiver.url}/kill",
            }
            for _ in range(200)
        ]
    )
    jobs = answer.accepted
    assert len(jobs) == 200
    time.sleep(2.0)
    fault_at = time.time()
    fleet.kill_pod("pod-a")
    finished = wait_all(client, jobs, timeout=60)
    assert all(job.status is JobStatus.SUCCEEDED for job in finished)
    eventually(lambda: len(receiver.received("/kill")) >= 200, timeout=30, what="the callbacks")
    time.sleep(1.0)
    result = tally(client, jobs, sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, fault_at)
    result.assert_clean()
    assert not result.missing_completions()
    assert "pollen.poll" in fleet.log("pod-b")
    recovery = result.recovery(fault_at)
    # a job whose poll was running in pod-a counts a worker loss when its lease is taken over
    losses = {
        j.id: int(client.store.lifecycle.raw(j.id).get("worker_losses") or 0) for j in finished
    }
    running = {job_id for job_id, count in losses.items() if count}
    returned = [j.finished_at or 0 for j in finished if j.id not in running]
    late = [t for t in returned if t - fault_at > RABBIT_RETURNED]
    # A poll pod-a ran to the end (its answer recorded) but was killed before it sent the
    # next one leaves no message to return and no lease to take over: the reconciler resumes
    # it (grace 10 s), so it counts among the re-polled jobs, not the returned ones.
    repolled = reconciler_counts(fleet)["repolled"]
    case.notes.append(
        f"The last job ended {recovery} s after the kill; {len(running)} jobs had a poll "
        f"running in pod-a; {repolled} were re-polled by the reconciler; the others' last ended "
        f"{max(returned) - fault_at:.2f} s after it ({len(late)} later than {RABBIT_RETURNED:g} s)."
    )
    print(case.notes[-1])
    assert recovery is not None and recovery <= 15.0, recovery
    if on_rabbit:  # no lease, grace or visibility timeout to wait for: the poll interval
        assert len(late) <= repolled, case.notes
    client.close()
