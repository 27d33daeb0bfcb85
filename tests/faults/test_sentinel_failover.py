"""A Sentinel failover under load: the primary is SIGKILLed while jobs are submitted and polled;
the Sentinels promote the replica and the workers, the store and the producer follow it."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from pollen import JobStatus, StoreUnavailable
from pollen.local.servers import CallbackReceiver
from pollen.simulator import SimulatorServer
from tests.conftest import eventually
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, sim_stats, start_pods, unsuccessful, wait_all
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.helpers import video_request
from tests.sentinel import MASTER, SentinelGroup

pytestmark = [pytest.mark.faults, pytest.mark.integration]

#: jobs submitted before the kill, and (tried) in the seconds after it
BEFORE, AFTER = 20, 10
#: the last affected job must be done this long after the kill
RECOVERY_LIMIT_S = 30.0


def test_sentinel_failover_under_load_loses_and_doubles_nothing(
    case: CaseRecord,
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
    tmp_path: Path,
) -> None:
    case.case, case.fault = "24", "Sentinel failover under load (primary SIGKILLed)"
    case.proves = (
        "every acknowledged job completes, once, with one completion callback, and the last "
        f"affected job is done within {RECOVERY_LIMIT_S:g} s of the kill"
    )
    (tmp_path / "sentinels").mkdir()
    with SentinelGroup(tmp_path / "sentinels") as group:
        fleet = make_fleet(
            redis_url=group.primary.url(0),  # a fresh server: the fleet flushes it
            POLLEN_BROKER_URL=group.url(0),
            POLLEN_REDIS_URL=group.url(2),
            POLLEN_SENTINEL_MASTER=MASTER,
        )
        pods = ["pod-a", "pod-b"]
        start_pods(fleet, pods)
        client = fleet.client()
        rng = random.Random(26)

        def submit() -> str:
            # 3-6 s: half of them are still polled when the kill comes, even on a loaded machine
            request = video_request([round(rng.uniform(3.0, 6.0), 1)])
            return client.submit("runware", request, callback_url=f"{receiver.url}/sentinel")

        jobs = [submit() for _ in range(BEFORE)]
        eventually(
            lambda: sum(client.status(j) is JobStatus.PROCESSING for j in jobs) >= BEFORE // 2,
            what="jobs being polled",
        )
        fault_at = time.time()
        group.kill_primary()
        refused, deadline = 0, time.monotonic() + RECOVERY_LIMIT_S
        while len(jobs) < BEFORE + AFTER:  # submits go on: only acknowledged ones count
            assert time.monotonic() < deadline, (
                f"{len(jobs) - BEFORE} of {AFTER} submits acknowledged {RECOVERY_LIMIT_S:g} s "
                f"after the kill ({refused} refused): no primary was named"
            )
            try:
                jobs.append(submit())
            except StoreUnavailable:
                refused += 1
        acknowledged_after = time.time() - fault_at
        finished = wait_all(client, jobs, timeout=60)
        assert not unsuccessful(finished)
        eventually(
            lambda: len(receiver.received("/sentinel")) >= len(jobs), what="one callback per job"
        )
        time.sleep(1.5)
        result = tally(client, jobs, sim_stats=sim_stats(fault_sim), receiver=receiver)
        result.fill(case, fault_at)
        case.how = (
            "Broker and store on a primary with one replica and three Sentinels of the test's "
            "own (down-after 1 s), two pods of two processes; the primary is SIGKILLed while "
            f"{BEFORE} jobs are polled, and {AFTER} more are submitted right after "
            f"({refused} submits refused while no primary was named; the last acknowledged "
            f"{acknowledged_after:.1f} s after the kill)."
        )
        print(f"sentinel failover: last affected job done {case.recovery_s} s after the kill")
        result.assert_clean()
        assert result.repeated_posts == 0 and not result.missing_completions()
        assert case.recovery_s is not None and case.recovery_s <= RECOVERY_LIMIT_S
        client.close()
        for name in pods:
            fleet.kill_pod(name)
