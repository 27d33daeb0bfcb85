"""The RabbitMQ broker restarts under running workers, with jobs being submitted and polled.

pollen's queues are classic durable queues on durable exchanges and Celery publishes its
messages persistent, so what RabbitMQ holds (ready, or unacknowledged in a worker's hands)
survives the node's restart. A publish that fails while the node is away raises at the sender:
the producer's ``submit`` says so, a worker's poll is re-sent by the reconciler.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollen import JobNotFound, JobStatus, Pollen
from pollen.errors import StoreUnavailable
from pollen.local.servers import CallbackReceiver
from pollen.simulator import SimulatorServer
from tests import rabbitmq
from tests.conftest import eventually
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, sim_stats, start_pods, unsuccessful, wait_all
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.faults.test_submit_loss import reconciler_counts
from tests.fleet import Fleet
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PODS = ["pod-a", "pod-b"]
#: seconds from the node's stop to the last job's end: measured 8-10 s on 2 cores (down ~4 s)
BOUND = 25.0


@pytest.fixture
def own_rabbit(tmp_path: Path) -> Iterator[rabbitmq.RabbitServer]:
    """A RabbitMQ node of this test's own (the session's node is never restarted)."""
    if (why := rabbitmq.missing()) is not None:
        pytest.skip(why)
    root = tmp_path / "rabbit"
    root.mkdir()
    with rabbitmq.RabbitServer(root) as server:
        yield server


class Supervisor(threading.Thread):
    """Starts again every pod that is not running, every half second, as Kubernetes would."""

    def __init__(self, fleet: Fleet, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.fleet, self.names = fleet, names
        self.restarts: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            dead = [name for name in self.names if not self.fleet.alive(name)]
            start_pods(self.fleet, dead)
            self.restarts += dead


class Producer(threading.Thread):
    """Submits a job every 0.1 s (on a client of its own) until stopped; keeps the ids of those
    ``submit`` accepted and counts those it refused."""

    def __init__(self, fleet: Fleet, callback_url: str) -> None:
        super().__init__(daemon=True)
        self.client = fleet.client()
        self.callback_url = callback_url
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        rng = random.Random(24)
        while not self.done.wait(0.1):
            request = video_request([round(rng.uniform(1.0, 3.0), 1)])
            job_id = uuid.uuid4().hex
            try:
                self.client.submit(
                    "runware", request, job_id=job_id, callback_url=self.callback_url
                )
            except StoreUnavailable:  # "could not enqueue": the job was rolled back
                self.refused.append(job_id)
            else:
                self.accepted.append(job_id)


def exists(client: Pollen, job_id: str) -> bool:
    try:
        client.get(job_id)
    except JobNotFound:
        return False
    return True


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_rabbitmq_restarted_mid_run_loses_and_doubles_nothing(
    how: str,
    case: CaseRecord,
    own_rabbit: rabbitmq.RabbitServer,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
) -> None:
    case.case, case.fault = "24", "Restart the RabbitMQ broker mid-run (classic durable queues)"
    case.proves = (
        "every job submit accepted completes once with one callback, through the node's stop "
        f"and start; pods that die are restarted; the last job ends within {BOUND:g} s"
    )
    fleet = make_fleet(POLLEN_BROKER_URL=own_rabbit.url)
    start_pods(fleet, PODS)
    client = fleet.client()
    producer = Producer(fleet, f"{receiver.url}/restart")
    supervisor = Supervisor(fleet, PODS)
    producer.start()
    supervisor.start()
    try:
        eventually(
            lambda: sum(client.status(j) is JobStatus.PROCESSING for j in producer.accepted) >= 5,
            what="jobs being polled",
        )
        queues = fleet.settings().queues
        before = {name: own_rabbit.queues()[name] for name in queues.model_dump().values()}
        fault_at = time.time()
        own_rabbit.stop() if how == "stop" else own_rabbit.kill()
        own_rabbit.start()
        down = time.time() - fault_at
        time.sleep(2.0)  # submits go on after the restart
    finally:
        producer.done.set()
        producer.join(30)
    jobs = producer.accepted
    finished = wait_all(client, jobs, timeout=60)
    supervisor.done.set()
    supervisor.join(60)
    assert not unsuccessful(finished)
    eventually(lambda: len(receiver.received("/restart")) >= len(jobs), what="one callback each")
    time.sleep(1.5)  # anything doubled would arrive now
    result = tally(client, jobs, sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, fault_at)
    counts = reconciler_counts(fleet)
    held = sum(int(row["messages"]) for row in before.values())
    persistent = sum(int(row["messages_persistent"]) for row in before.values())
    case.how = (
        f"Jobs of 1-3 s submitted every 0.1 s by `Pollen.submit` to two pods (prefork) on a "
        f"RabbitMQ node of the test's own; while they are polled the node is stopped "
        f"(`rabbitmqctl stop`) and started again on the same port and data ({down:.1f} s "
        f"down). A supervisor starts again every pod that exits."
    )
    case.notes = [
        f"At the stop pollen's queues held {held} messages, {persistent} of them persistent, "
        f"every queue durable: {all(row['durable'] == 'true' for row in before.values())}",
        f"{len(jobs)} submits accepted, {len(producer.refused)} refused (rolled back) while "
        f"the node was away; pods restarted: {len(supervisor.restarts)}; the reconciler "
        f"resubmitted {counts['resubmitted']} and re-polled {counts['repolled']}",
        f"the node was down {down:.1f} s; the last job ended {case.recovery_s} s after the "
        f"{how}, {(case.recovery_s or 0) - down:.1f} s after the node was back",
    ]
    print("\n".join(case.notes))
    result.assert_clean()
    assert result.repeated_posts == 0 and not result.missing_completions()
    assert all(row["durable"] == "true" for row in before.values()), before
    assert held and persistent == held, before
    assert [job for job in producer.refused if exists(client, job)] == []
    # a publish is confirmed once RabbitMQ has the message on disk: no accepted submit was
    # lost with the node (the reconciler would resend it only after its submit grace)
    assert counts["resubmitted"] == 0, case.notes
    assert case.recovery_s is not None and case.recovery_s <= BOUND, case.notes
    producer.client.close()
    client.close()
