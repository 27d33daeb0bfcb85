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
from dataclasses import dataclass
from pathlib import Path

import pytest
from kombu.connection import Connection

from pollen import JobNotFound, JobStatus, Pollen, contract
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
#: seconds from the node being back to the last job's end. A worker's consumer retries its
#: connection 2, 6, 12, 20 and 30 s after the loss (kombu: first retry 2 s, each wait 2 s
#: longer), so it sees the node back up to 10 s late; then overdue polls are re-sent
#: (grace 2 s) and the jobs (1-3 s) end. Measured 4.7-13.3 s on 2 shared cores.
BOUND = 20.0


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
    """Starts again every pod that is not running, every half second, as Kubernetes would
    (without waiting for it: a pod started while the node is away connects when it is back)."""

    def __init__(self, fleet: Fleet, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.fleet, self.names = fleet, names
        self.restarts: list[str] = []  #: each restart: the pod, how it had ended
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            for name in self.names:
                if not self.done.is_set() and not self.fleet.alive(name):
                    self.restarts.append(f"{name} ({self.why(name)})")
                    self.fleet.start(name, wait=False)

    def why(self, name: str) -> str:
        """How the pod ended: its exit code and the last error its log names."""
        proc = self.fleet.workers[name].proc
        errors = [line for line in self.fleet.log(name).splitlines() if "rror" in line]
        return f"exit {proc.returncode if proc else '?'}: {errors[-1][-300:] if errors else ''}"

    def stop(self) -> None:
        self.done.set()
        self.join(30)


class Producer(threading.Thread):
    """Submits a job every 0.1 s (on a client of its own) until stopped; keeps the ids of those
    ``submit`` accepted and of those it refused."""

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

    def stop(self) -> None:
        self.done.set()
        self.join(30)


class Burst(threading.Thread):
    """Publishes with pollen's Celery settings to a queue nobody consumes until a publish
    raises (the node went away); counts the publishes that returned."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(daemon=True)
        self.app = contract.producer_app(fleet.settings())
        self.queue = f"burst.{fleet.suffix}"
        self.sent = 0

    def run(self) -> None:
        while True:
            try:
                self.app.send_task("pollen.burst", queue=self.queue, retry=False)
            except Exception:
                return
            self.sent += 1

    def kept(self, url: str) -> int:
        """How many of its messages the node holds."""
        with Connection(url) as connection:  # type: ignore[no-untyped-call]
            declared = connection.default_channel.queue_declare(self.queue, passive=True)
        self.app.close()
        return int(declared.message_count)


def exists(client: Pollen, job_id: str) -> bool:
    try:
        client.get(job_id)
    except JobNotFound:
        return False
    return True


@dataclass
class Restart:
    at: float  #: when the node was told to stop (or killed)
    down: float  #: seconds until it accepted connections again
    queues: dict[str, dict[str, str]]  #: pollen's queues just before
    burst: Burst  #: publishing up to the fault


def restart_while_polled(
    how: str, node: rabbitmq.RabbitServer, fleet: Fleet, client: Pollen, producer: Producer
) -> Restart:
    """Once jobs are being polled, stop or kill the node and start it again; submits go on
    for 2 s after."""
    eventually(
        lambda: sum(client.status(j) is JobStatus.PROCESSING for j in producer.accepted) >= 5,
        what="jobs being polled",
    )
    names = fleet.settings().queues.model_dump().values()
    before = {name: node.queues()[name] for name in names}
    burst = Burst(fleet)
    burst.start()
    eventually(lambda: burst.sent >= 5, what="the burst publishing")
    fault_at = time.time()
    node.stop() if how == "stop" else node.kill()
    burst.join(30)
    node.start()
    down = time.time() - fault_at
    time.sleep(2.0)
    return Restart(fault_at, down, before, burst)


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
    case.case = "25" if how == "stop" else "25k"
    case.fault = (
        f"{'Stop' if how == 'stop' else 'SIGKILL'} the RabbitMQ node mid-run, start it again"
    )
    case.proves = (
        "every job whose submit was accepted completes once with one callback; a submit refused "
        f"while the node is away leaves nothing; the last job ends within {BOUND:g} s of the node "
        "being back"
    )
    fleet = make_fleet(POLLEN_BROKER_URL=own_rabbit.url)
    start_pods(fleet, PODS)
    client = fleet.client()
    producer = Producer(fleet, f"{receiver.url}/restart")
    supervisor = Supervisor(fleet, PODS)
    producer.start()
    supervisor.start()
    try:
        restart = restart_while_polled(how, own_rabbit, fleet, client, producer)
        producer.stop()
        finished = wait_all(client, producer.accepted, timeout=90)
    finally:
        producer.stop()
        supervisor.stop()
        producer.client.close()
    jobs = producer.accepted
    assert not unsuccessful(finished)
    eventually(lambda: len(receiver.received("/restart")) >= len(jobs), what="one callback each")
    time.sleep(1.5)  # anything doubled would arrive now
    result = tally(client, jobs, sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, restart.at)
    counts = reconciler_counts(fleet)
    held = sum(int(row["messages"]) for row in restart.queues.values())
    persistent = sum(int(row["messages_persistent"]) for row in restart.queues.values())
    durable = all(row["durable"] == "true" for row in restart.queues.values())
    stopped = "stopped (`rabbitmqctl stop`)" if how == "stop" else "SIGKILLed (node and script)"
    case.how = (
        "Jobs of 1-3 s submitted every 0.1 s by `Pollen.submit` to two pods (prefork) on a "
        f"RabbitMQ node of the test's own; while they are polled the node is {stopped} and "
        f"started again on the same port and data ({restart.down:.1f} s down). A supervisor "
        "starts again every pod that exits. A burst of publishes with pollen's Celery settings "
        "runs up to the fault; every one that returned must be on the node after its restart."
    )
    kept = restart.burst.kept(own_rabbit.url)
    case.notes = [
        f"A burst of publishes up to the fault: {restart.burst.sent} returned, {kept} kept.",
        f"At the fault pollen's queues held {held} messages, {persistent} of them persistent, "
        f"every queue durable: {durable}.",
        f"{len(jobs)} submits accepted, {len(producer.refused)} refused (rolled back) while "
        f"the node was away; the reconciler resubmitted {counts['resubmitted']} and re-polled "
        f"{counts['repolled']}; pods restarted: {supervisor.restarts or 'none'}.",
        f"The last job ended {case.recovery_s} s after the fault, "
        f"{(case.recovery_s or 0) - restart.down:.1f} s after the node was back.",
    ]
    print("\n".join(case.notes))
    result.assert_clean()
    assert result.repeated_posts == 0 and not result.missing_completions()
    assert durable and held and persistent == held, restart.queues
    assert [job for job in producer.refused if exists(client, job)] == []
    # a publish that returned is on the node's disk (unconfirmed, a kill lost them all)
    assert kept >= restart.burst.sent, case.notes
    assert case.recovery_s is not None and case.recovery_s - restart.down <= BOUND, case.notes
    client.close()
