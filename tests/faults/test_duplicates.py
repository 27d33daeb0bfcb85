"""Copies of one poll message: redelivered after the visibility timeout, redelivered after a
crash between the retry publish and the ack, and two copies polling the provider at once.

Polls are fenced (each message carries its attempt number and must take that attempt's lease),
so every copy but one must be a no-op: one poll chain, each generation recorded once, one
completion callback. "One poll chain" is measured at the provider: it was asked about the task
exactly as many times as the job recorded a poll.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from pollen import JobStatus
from pollen.local.servers import CallbackReceiver
from pollen.simulator import SimulatorServer
from pollen.store import keys
from pollen.store.outbox import delivery_id
from tests.conftest import eventually
from tests.faults import broker
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, consume, sim_stats, start_pods, stop_consuming
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.fleet import Fleet
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

STEADY = {"initial_delay": 1.0, "interval": 1.0, "factor": 1.0, "jitter": 0.0, "max_delay": 1.0}


def received(fleet: Fleet, task_id: str) -> int:
    """How many messages with this task id the fleet's pods received (a poll chain keeps one
    task id through its retries)."""
    pattern = rf"Task pollen\.poll\[{re.escape(task_id)}\] received"
    return sum(len(re.findall(pattern, fleet.log(name))) for name in fleet.workers)


def runs(fleet: Fleet, job_id: str, attempt: int) -> list[tuple[str, str]]:
    """(pod, outcome) of every run of poll ``attempt`` of the job, from the pods' JSON logs;
    outcome is ``retry`` (it scheduled a poll) or ``succeeded`` (it returned)."""
    found = []
    for name in fleet.workers:
        for line in fleet.log(name).splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            message = str(entry.get("message", ""))
            if (
                entry.get("logger") == "celery.app.trace"
                and message.startswith("Task pollen.poll[")
                and entry.get("job_id") == job_id
                and entry.get("attempt") == attempt
            ):
                found.append((name, "retry" if "] retry:" in message else message.split()[2]))
    return found


def one_chain_and_one_callback(
    case: CaseRecord,
    fleet: Fleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
    job_id: str,
    fault_at: float,
) -> None:
    client = fleet.client()
    job = client.wait(job_id, timeout=30)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.provider_task_id is not None
    eventually(receiver.received, what="the completion callback")
    time.sleep(1.0)
    result = tally(client, [job_id], sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, fault_at)
    result.assert_clean()
    assert result.callback_posts == 1
    [post] = receiver.received()
    assert post["headers"]["webhook-id"] == delivery_id(job_id, "completed")
    assert gate.polls(job.provider_task_id) == job.polls  # no second chain asked the provider
    case.notes.append(f"The provider was polled {job.polls} times, once per recorded poll.")
    client.close()


def test_a_countdown_longer_than_the_visibility_timeout_is_redelivered_harmlessly(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    visibility, countdown = 6, 10
    case.case, case.fault = (
        "4",
        f"A {countdown} s countdown with a {visibility} s visibility timeout",
    )
    case.proves = "Redis redelivers the waiting poll; both copies run, one acts: one chain"
    case.how = (
        f"Visibility timeout {visibility} s (task time limit 4 s, poll max_delay 1 s). The job is "
        "submitted while no pod consumes the poll queue; its own first poll message is "
        f"dropped and the test sends `pollen.poll(attempt=1)` with countdown={countdown}. Once "
        "a pod has held it unacknowledged for longer than the visibility timeout, kombu's "
        "restore sweep (`QoS.restore_visible`, which every worker runs at start-up and then "
        "every 100 s) runs once from the test and puts it back on the queue: two copies wait "
        "for the same ETA."
    )
    fleet = make_fleet(
        POLLEN_VISIBILITY_TIMEOUT=str(visibility),
        POLLEN_TASK_TIME_LIMIT="4",
        POLLEN_RECONCILE_GRACE="30",  # the reconciler stays out of it
    )
    queues = fleet.settings().queues
    start_pods(fleet, ["pod-a", "pod-b"], queues=[queues.submit, queues.callbacks])
    client = fleet.client()
    redis_broker = broker.connect(fleet.env["POLLEN_BROKER_URL"])
    job_id = client.submit(
        "runware", video_request([countdown + 1.5]), callback_url=f"{receiver.url}/vt"
    )
    eventually(lambda: redis_broker.llen(queues.poll) == 1, what="the job's own first poll")
    assert client.status(job_id) is JobStatus.SUBMITTED
    redis_broker.delete(queues.poll)
    sent = client.celery.send_task(
        "pollen.poll",
        kwargs={"job_id": job_id, "attempt": 1},
        queue=queues.poll,
        countdown=countdown,
    )
    due = time.time() + countdown
    for pod in ("pod-a", "pod-b"):
        consume(client, fleet, pod, [queues.poll])
    eventually(lambda: received(fleet, sent.id) == 1, what="a pod holding the poll")
    time.sleep(visibility + 0.3)
    fault_at = time.time()
    with client.celery.connection_for_write() as connection:  # pollen's transport options
        connection.default_channel.qos.restore_visible(num=100)
    eventually(lambda: received(fleet, sent.id) == 2, timeout=due - time.time(), what="redelivery")
    assert time.time() < due  # both copies were waiting for the same ETA
    eventually(lambda: len(runs(fleet, job_id, 1)) >= 2, what="both copies running")
    one_chain_and_one_callback(case, fleet, gate, fault_sim, receiver, job_id, fault_at)
    redis_broker.close()


def test_a_crash_between_the_retry_publish_and_the_ack_leaves_one_poll_chain(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "5", "Crash between the retry publish and the ack of the original"
    case.proves = "the original poll, run again after its successor exists, changes nothing"
    case.how = (
        "Reproduced by redelivery rather than by a SIGKILL timed into the microseconds between "
        "the two: a copy of poll 2's message is taken from kombu's unacked hash while it waits; "
        "once poll 2 has recorded its answer, published poll 3 (the retry) and been "
        "acknowledged, the copy goes back on the queue — what the visibility-timeout sweep does "
        "when the ack was lost with the worker."
    )
    fleet = make_fleet()
    start_pods(fleet, ["pod"])
    client = fleet.client()
    redis_broker = broker.connect(fleet.env["POLLEN_BROKER_URL"])
    job_id = client.submit(
        "runware", video_request([4.5]), callback_url=f"{receiver.url}/crash", poll=STEADY
    )
    original = eventually(
        lambda: broker.poll_message(redis_broker, job_id, 2), what="poll 2 waiting"
    )
    eventually(
        lambda: (
            int(client.store.lifecycle.raw(job_id)["poll_seq"]) == 3
            and broker.poll_message(redis_broker, job_id, 2) is None
            and broker.poll_message(redis_broker, job_id, 3) is not None
        ),
        what="poll 2 recorded, poll 3 published, poll 2 acknowledged",
    )
    fault_at = time.time()
    broker.redeliver(redis_broker, original)
    # The original ran twice: first for real (it published poll 3), then as a no-op.
    eventually(lambda: len(runs(fleet, job_id, 2)) == 2, what="the original running again")
    assert runs(fleet, job_id, 2) == [("pod", "retry"), ("pod", "succeeded")]
    one_chain_and_one_callback(case, fleet, gate, fault_sim, receiver, job_id, fault_at)
    redis_broker.close()


def test_two_workers_polling_one_provider_task_at_once_record_it_once(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "10", "Two workers polling the same provider task at once"
    case.proves = "both ask the provider; the one that records second changes nothing"
    case.how = (
        "Two pods with one process each. The gate holds the first poll at the provider; "
        "meanwhile the test expires the job's poll lease by hand and redelivers a copy of the "
        "message, which the other pod runs to the end (both generations finished). Then the "
        "gate lets the first answer through."
    )
    fleet = make_fleet()
    start_pods(fleet, ["pod-a", "pod-b"], concurrency=1)
    client = fleet.client()
    redis_broker = broker.connect(fleet.env["POLLEN_BROKER_URL"])
    job_id = client.submit(
        "runware",
        video_request([0.5, 0.8]),
        callback_url=f"{receiver.url}/twice",
        events=["partial", "completed"],
        poll={"initial_delay": 1.0},
    )
    eventually(lambda: client.get(job_id).provider_task_id, what="submitted")
    task = client.get(job_id).provider_task_id or ""
    gate.hold(task, times=1, seconds=3.0)
    [first] = eventually(lambda: gate.held_for(task), what="the first poll held at the provider")
    owner = fleet.process_with_port(first.client_port, gate.port)
    assert owner is not None
    original = broker.poll_message(redis_broker, job_id, 1)
    assert original is not None
    # The copy must run on the other pod: the holder takes no more polls from now on.
    holder = next(
        pod for pod in ("pod-a", "pod-b") if owner.pid in {p.pid for p in fleet.pool_processes(pod)}
    )
    stop_consuming(client, fleet, holder, [fleet.settings().queues.poll])
    time.sleep(1.5)  # a BRPOP already waiting on the queue ends within kombu's 1 s timeout
    fault_at = time.time()
    client.store.redis.hset(keys.job(job_id), "lease_until", repr(time.time() - 1))
    broker.redeliver(redis_broker, original)
    job = client.wait(job_id, timeout=20)  # finished by the copy while the first still waits
    assert not gate.held_for(task)[1:]  # the copy was not held
    gate.release(task)
    eventually(lambda: len(runs(fleet, job_id, 1)) == 2, what="both copies")
    assert {pod for pod, _ in runs(fleet, job_id, 1)} == {"pod-a", "pod-b"}  # one on each
    eventually(lambda: len(receiver.received("/twice")) >= 3, what="2 partial + 1 completed")
    time.sleep(1.5)  # the first copy's answer has arrived and been refused by now
    assert job.status is JobStatus.SUCCEEDED and len(job.results) == 2
    assert gate.polls(task) == 2  # both copies asked the provider
    assert client.get(job_id).polls == 1  # one of them was recorded
    result = tally(client, [job_id], sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, fault_at)
    result.assert_clean()
    assert result.callback_posts == 3 and result.repeated_posts == 0
    client.close()
    redis_broker.close()
