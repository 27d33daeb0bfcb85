"""The callback receiver is down for the whole run: dead letters, then a replay, once each."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook

from pollen import JobStatus
from pollen.local.servers import free_port
from pollen.simulator import SimulatorServer
from pollen.store import keys
from pollen.store.outbox import delivery_id
from tests.conftest import WEBHOOK_SECRET, eventually
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, receiver_on, sim_stats, start_pods, wait_all
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

JOBS = 5


def test_callbacks_to_a_receiver_that_is_down_dead_letter_and_replay_once(
    case: CaseRecord, make_fleet: MakeFleet, gate: ProviderGate, fault_sim: SimulatorServer
) -> None:
    case.case, case.fault = "9", "Callback receiver down for the whole run, then back"
    case.proves = (
        "jobs still succeed; deliveries exhaust the schedule into the dead letter; a replay "
        "delivers each exactly once with the same webhook-id"
    )
    port = free_port()  # nothing listens here until the receiver comes back
    case.how = (
        f"Callback URLs on 127.0.0.1:{port}, where nothing listens (connection refused); the "
        "workers' schedule is [0, 0.3, 0.6, 1.0] s. Then a receiver starts on that port and "
        "`Pollen.replay_callbacks(job_id)` runs for each job. Recovery: from the receiver "
        "starting to the last replayed callback."
    )
    fleet = make_fleet()
    start_pods(fleet, ["pod"])
    client = fleet.client()
    jobs = [
        client.submit("runware", video_request([0.3]), callback_url=f"http://127.0.0.1:{port}/j{i}")
        for i in range(JOBS)
    ]
    assert all(job.status is JobStatus.SUCCEEDED for job in wait_all(client, jobs, timeout=30))
    idents = {job_id: delivery_id(job_id, "completed") for job_id in jobs}
    eventually(
        lambda: all(client.store.redis.zscore(keys.DEAD, i) is not None for i in idents.values()),
        what="every delivery in the dead letter",
    )
    for job_id in jobs:
        [delivery] = client.callbacks(job_id)
        assert delivery["state"] == "dead"
        assert len(delivery["attempts"]) == 4  # the whole schedule, nothing more
        assert all(a["status_code"] is None and a["error"] for a in delivery["attempts"])

    with receiver_on(port) as receiver:
        back_at = time.time()
        for job_id in jobs:
            assert client.replay_callbacks(job_id) == [idents[job_id]]
        eventually(lambda: len(receiver.received()) >= JOBS, what="the replayed callbacks")
        time.sleep(1.5)  # anything sent twice would be here by now
        posts = receiver.received()
    assert sorted(p["headers"]["webhook-id"] for p in posts) == sorted(idents.values())
    for post in posts:
        Webhook(WEBHOOK_SECRET).verify(post["body"], post["headers"])
    for job_id in jobs:
        [delivery] = client.callbacks(job_id)
        assert delivery["state"] == "delivered" and delivery["replays"] == 1
        assert client.store.redis.zscore(keys.DEAD, idents[job_id]) is None
    result = tally(client, jobs, sim_stats=sim_stats(fault_sim), posts=posts)
    result.fill(case)
    case.recovery_s = round(max(p["received_at"] for p in posts) - back_at, 2)
    result.assert_clean()
    assert result.repeated_posts == 0 and not result.missing_completions()
    client.close()
