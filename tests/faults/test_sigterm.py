"""SIGTERM a pod that holds only scheduled (countdown) polls: every one of them still runs."""

from __future__ import annotations

import re
import signal
import time

import pytest

from pollen import JobStatus
from pollen.local.servers import CallbackReceiver
from pollen.simulator import SimulatorServer
from tests.conftest import eventually
from tests.faults import broker
from tests.faults.audit import tally
from tests.faults.conftest import (
    MakeFleet,
    consume,
    sim_stats,
    unsuccessful,
    wait_all,
)
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

JOBS = 8
FIRST_POLL = 6.0  # seconds: long enough to stop the first pod before the polls are due


def ran(log: str, task: str) -> int:
    """How many runs of ``task`` this worker's log says finished (succeeded or retried)."""
    return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] (?:succeeded|retry)", log))


@pytest.mark.parametrize(
    ("variant", "env"),
    [
        pytest.param(
            "3a",
            {"REMAP_SIGTERM": "SIGQUIT", "POLLEN_SOFT_SHUTDOWN_TIMEOUT": "30"},
            id="cold-shutdown-as-deployed",
        ),
        pytest.param("3b", {}, id="warm-shutdown"),
    ],
)
def test_sigterm_hands_every_scheduled_poll_to_another_pod(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
    variant: str,
    env: dict[str, str],
) -> None:
    how = "REMAP_SIGTERM=SIGQUIT and a 30 s soft shutdown, as deployed" if env else "warm shutdown"
    case.case, case.fault = variant, f"SIGTERM a pod holding only countdown polls ({how})"
    case.proves = "every scheduled poll is requeued and runs on the other pod, on time, once"
    case.how = (
        f"{JOBS} jobs whose first poll is {FIRST_POLL:g} s away: pod-a holds them as "
        "unacknowledged countdown messages, then gets SIGTERM while pod-b starts consuming the "
        "fleet's queues. The reconciler's grace is 30 s, so only the requeue can bring the "
        "polls back in time."
    )
    # No parking (the waits stay countdown messages) and no rescue by the reconciler.
    # First polls due after the next periodic round wait in Redis; a long round keeps them
    # as countdown messages held by pod-a, which is what this case stops.
    fleet = make_fleet(
        POLLEN_RECONCILE_GRACE="30", POLLEN_PARK_AFTER="60", POLLEN_TICK_INTERVAL="20", **env
    )
    queues = fleet.settings().queues
    # pod-b is up from the start but consumes nothing of the fleet's until pod-a stops, so
    # that pod-a holds every poll.
    fleet.start("pod-a", wait=False)
    fleet.start("pod-b", wait=False, queues=[f"standby.{fleet.suffix}"])
    fleet.wait_ready("pod-a")
    fleet.wait_ready("pod-b")
    client = fleet.client()
    jobs = [
        client.submit(
            "runware",
            video_request([0.5]),
            callback_url=f"{receiver.url}/{variant}",
            poll={"initial_delay": FIRST_POLL},
        )
        for _ in range(JOBS)
    ]
    eventually(lambda: all(client.status(j) is JobStatus.SUBMITTED for j in jobs), what="submitted")
    redis_broker = broker.connect(fleet.env["POLLEN_BROKER_URL"])

    def held() -> list[broker.Message]:
        return [m for m in broker.unacked(redis_broker) if set(broker.job_ids(m)) & set(jobs)]

    def only_polls() -> list[broker.Message]:
        """pod-a holds countdown polls for every job (batches: jobs submitted together poll
        together), and nothing else (its submits are acknowledged)."""
        messages = held()
        covered = {job for m in messages for job in broker.job_ids(m)}
        polls = all(m.task == "pollen.poll" for m in messages)
        return messages if polls and covered == set(jobs) else []

    polls = len(eventually(only_polls, what="only countdown polls held"))
    pod_a = fleet.workers["pod-a"].proc
    assert pod_a is not None
    fault_at = time.time()
    pod_a.send_signal(signal.SIGTERM)
    consume(client, fleet, "pod-b", [queues.submit, queues.poll, queues.callbacks])
    pod_a.wait(30)
    stopped_in = time.time() - fault_at
    assert stopped_in < 10  # nothing was running: no soft-shutdown wait

    finished = wait_all(client, jobs, timeout=30)
    assert not unsuccessful(finished)
    for job in finished:  # the first poll ran when it was due, not when something noticed
        assert job.finished_at is not None and job.submitted_at is not None
        assert job.finished_at - job.submitted_at < FIRST_POLL + 4
    eventually(lambda: ran(fleet.log("pod-b"), "pollen.poll") >= polls, what="pod-b's log")
    assert ran(fleet.log("pod-a"), "pollen.poll") == 0
    assert "reconciler:" not in fleet.log("pod-b")
    eventually(lambda: len(receiver.received(f"/{variant}")) >= JOBS, what="the callbacks")
    time.sleep(1.0)
    result = tally(client, jobs, sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, fault_at)
    case.notes.append(f"The pod exited {stopped_in:.1f} s after SIGTERM (code {pod_a.returncode}).")
    result.assert_clean()
    assert result.callback_posts == JOBS and not result.missing_completions()
    client.close()
