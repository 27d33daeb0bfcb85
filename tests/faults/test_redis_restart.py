"""Redis restarts under running workers: with AOF nothing is lost; without persistence the loss
is detected and reported."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from pollen import JobLost, JobStatus, Pollen
from pollen.local.servers import CallbackReceiver, RedisServer, free_port
from pollen.simulator import SimulatorServer
from tests.conftest import eventually
from tests.faults import broker
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, sim_stats, start_pods, unsuccessful, wait_all
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.fleet import Fleet
from tests.helpers import video_request

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
REDIS_CONF = ROOT / "config" / "redis.conf"


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    """Redis servers a test starts (each stopped at the end)."""
    started: list[RedisServer] = []
    yield started
    for server in started:
        server.stop()


def restart(
    servers: list[RedisServer], config_file: str | None = None, workdir: str | None = None
) -> float:
    """Stop the last server (SIGTERM: Redis flushes its AOF) and start a new one on the same
    port; returns when the old one was told to stop."""
    old = servers[-1]
    stopped_at = time.time()
    old.stop()
    new = RedisServer(old.port, config_file=config_file, workdir=workdir)
    new.start()
    servers.append(new)
    return stopped_at


def supervise(fleet: Fleet, names: list[str]) -> list[str]:
    """Start again every pod that is not running, as Kubernetes or compose would."""
    dead = [name for name in names if not fleet.alive(name)]
    start_pods(fleet, dead)
    return dead


def durable_redis(servers: list[RedisServer], workdir: Path) -> RedisServer:
    workdir.mkdir()
    server = RedisServer(config_file=str(REDIS_CONF), workdir=str(workdir))
    server.start()
    servers.append(server)
    return server


def test_redis_restarted_with_aof_mid_run_loses_nothing(
    case: CaseRecord,
    servers: list[RedisServer],
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    receiver: CallbackReceiver,
    tmp_path: Path,
) -> None:
    case.case, case.fault = "6", "Restart Redis (AOF everysec, config/redis.conf) mid-run"
    case.proves = (
        "every accepted job completes, once, with one callback each (pods that die are "
        "restarted, as Kubernetes would; see 6s for the pods themselves)"
    )
    server = durable_redis(servers, tmp_path / "redis-data")
    fleet = make_fleet(redis_url=server.url(0))
    pods = ["pod-a", "pod-b"]
    start_pods(fleet, pods)
    client = fleet.client()
    rng = random.Random(6)
    jobs = [
        client.submit(
            "runware",
            video_request([round(rng.uniform(3.0, 6.0), 1)]),  # 10 at once, even under load
            callback_url=f"{receiver.url}/aof",
        )
        for _ in range(20)
    ]
    eventually(
        lambda: sum(client.status(j) is JobStatus.PROCESSING for j in jobs) >= 10,
        what="jobs being polled",
    )
    fault_at = restart(servers, str(REDIS_CONF), str(server.workdir))
    down = time.time() - fault_at
    time.sleep(1.0)
    restarted = supervise(fleet, pods)
    finished = wait_all(client, jobs, timeout=60)
    assert not unsuccessful(finished)
    eventually(lambda: len(receiver.received("/aof")) >= len(jobs), what="one callback per job")
    time.sleep(1.5)
    result = tally(client, jobs, sim_stats=sim_stats(fault_sim), receiver=receiver)
    result.fill(case, fault_at)
    case.how = (
        "Broker and store on a Redis of the test's own (`config/redis.conf`, own dir), "
        f"SIGTERMed while the jobs are polled and started again on the same port and dir "
        f"({down:.1f} s down). Pods restarted because they had died: {len(restarted)} of 2."
    )
    case.notes.append(
        "Countdown polls a worker held are lost with the worker or its broker connection; they "
        "stay unacknowledged in Redis and the reconciler re-sends them after its grace."
    )
    result.assert_clean()
    assert result.repeated_posts == 0 and not result.missing_completions()
    client.close()


RESTARTS = 3


def all_submitted(client: Pollen, jobs: list[str]) -> bool:
    return all(client.status(j) is JobStatus.SUBMITTED for j in jobs)


def test_workers_holding_countdown_polls_survive_redis_restarts(
    case: CaseRecord,
    servers: list[RedisServer],
    make_fleet: MakeFleet,
    gate: ProviderGate,
    fault_sim: SimulatorServer,
    tmp_path: Path,
) -> None:
    case.case, case.fault = "6s", "Restart Redis (AOF) under idle workers holding countdown polls"
    case.proves = "a worker rides out Redis restarts: it reconnects and goes on polling"
    case.how = (
        f"Up to {RESTARTS} rounds: one pod holds three countdown polls (first poll 4 s away) "
        "and waits for messages; Redis is SIGTERMed and started again on the same port and dir. "
        "Without pollen's kombu patch (pollen.worker.resilience) the worker exited at the first "
        "restart nearly every time (AttributeError from the Redis channel's close)."
    )
    server = durable_redis(servers, tmp_path / "redis-data")
    fleet = make_fleet(redis_url=server.url(0))
    start_pods(fleet, ["pod"])
    client = fleet.client()
    jobs: list[str] = []
    survived, fault_at = 0, time.time()
    for _ in range(RESTARTS):
        held = [
            client.submit("runware", video_request([0.5]), poll={"initial_delay": 4.0})
            for _ in range(3)
        ]
        jobs += held
        eventually(partial(all_submitted, client, held), what="countdown polls held")
        fault_at = restart(servers, str(REDIS_CONF), str(server.workdir))
        time.sleep(2.0)
        if not fleet.alive("pod"):
            break
        survived += 1
        wait_all(client, held, timeout=30)
    log = fleet.log("pod")
    if "Unrecoverable error" in log:
        case.notes.append(
            f"The worker survived {survived} restart(s), then logged: " + _unrecoverable(log)
        )
    supervise(fleet, ["pod"])  # so that the jobs still finish (counted in the report)
    finished = wait_all(client, jobs, timeout=30)
    result = tally(client, jobs, sim_stats=sim_stats(fault_sim))
    result.fill(case, fault_at)
    assert not unsuccessful(finished)
    assert survived == RESTARTS, f"the worker exited at Redis restart {survived + 1}"
    result.assert_clean()
    client.close()


def _unrecoverable(log: str) -> str:
    for line in log.splitlines():
        if "Unrecoverable error" in line:
            return str(json.loads(line)["message"]) if line.startswith("{") else line
    return ""


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    return sum(values)


def lose_the_store(
    servers: list[RedisServer], make_fleet: MakeFleet, *, in_flight: int, with_pod: bool = False
) -> tuple[Fleet, Pollen, list[str], int, float]:
    """A pod on a Redis without persistence, three finished jobs and ``in_flight`` running ones;
    then Redis restarts empty (``with_pod``: the pod goes down with it and starts again).
    Returns (fleet, client, jobs, metrics port, restart time)."""
    servers.append(RedisServer())
    servers[0].start()
    metrics_port = free_port()
    fleet = make_fleet(redis_url=servers[0].url(0))
    start_pods(fleet, ["pod"], POLLEN_METRICS_PORT=str(metrics_port))
    client = fleet.client()
    done = [client.submit("runware", video_request([0.3])) for _ in range(3)]
    assert not unsuccessful(wait_all(client, done, timeout=20))
    running = [client.submit("runware", video_request([30.0])) for _ in range(in_flight)]
    eventually(lambda: all(client.status(j) is JobStatus.PROCESSING for j in running), what="poll")
    redis_broker = broker.connect(fleet.env["POLLEN_BROKER_URL"])
    if not in_flight:  # the pod holds nothing: every message is acknowledged
        eventually(lambda: not broker.unacked(redis_broker), what="nothing unacknowledged")
    redis_broker.close()
    assert client.store_status()["data_loss"] is None
    if with_pod:
        fleet.kill_pod("pod")
    fault_at = restart(servers)
    if with_pod:
        start_pods(fleet, ["pod"], POLLEN_METRICS_PORT=str(metrics_port))
    return fleet, client, [*done, *running], metrics_port, fault_at


def assert_loss_reported(
    case: CaseRecord, fleet: Fleet, client: Pollen, jobs: list[str], metrics_port: int,
    fault_at: float,
) -> None:  # fmt: skip
    loss = eventually(
        lambda: client.store_status()["data_loss"], timeout=8, what="the loss recorded"
    )
    case.recovery_s = round(float(loss["detected_at"]) - fault_at, 2)
    for job_id in jobs:
        with pytest.raises(JobLost):
            client.get(job_id)
    eventually(lambda: metric(metrics_port, "pollen_store_data_loss_total") >= 1, what="the metric")
    health = subprocess.run(
        [sys.executable, "-m", "pollen.cli", "health"],
        env={**os.environ, **fleet.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert health.returncode == 1, health.stdout + health.stderr
    [line] = [line for line in health.stdout.splitlines() if "durability" in line]
    assert line.startswith("FAIL") and "lost its data" in line
    case.notes.append(f"`pollen health` printed: {line.strip()}")
    assert fleet.alive("pod")


def test_redis_restarted_without_persistence_reports_the_loss(
    case: CaseRecord,
    servers: list[RedisServer],
    make_fleet: MakeFleet,
    gate: ProviderGate,
) -> None:
    case.case, case.fault = "7", "Restart Redis with persistence off (`--save ''`, no AOF)"
    case.proves = (
        "the loss is detected and reported: store_status, JobLost, the metric, `pollen health`"
    )
    case.how = (
        "A Redis of the test's own without persistence and an idle pod (its three jobs "
        "finished); "
        "SIGTERM, then a new empty server on the same port. Recovery: until a worker recorded "
        "the loss."
    )
    fleet, client, jobs, port, fault_at = lose_the_store(servers, make_fleet, in_flight=0)
    try:
        assert_loss_reported(case, fleet, client, jobs, port, fault_at)
    finally:
        recovery = case.recovery_s
        tally(client, jobs).fill(case)
        case.recovery_s = recovery
    client.close()


def test_a_store_lost_while_the_workers_restart_is_reported(
    case: CaseRecord,
    servers: list[RedisServer],
    make_fleet: MakeFleet,
    gate: ProviderGate,
) -> None:
    case.case, case.fault = "7r", "Redis (no persistence) and the pod restart together"
    case.proves = "the loss is reported even by a worker that restarted along with Redis"
    case.how = (
        "As 7 with three jobs being polled, but the pod goes down with Redis (SIGKILL, as in a "
        "node failure, or as the pod itself does in 6s) and starts again once Redis is back."
    )
    fleet, client, jobs, port, fault_at = lose_the_store(
        servers, make_fleet, in_flight=3, with_pod=True
    )
    try:
        assert_loss_reported(case, fleet, client, jobs, port, fault_at)
    finally:
        recovery = case.recovery_s
        tally(client, jobs).fill(case)
        case.recovery_s = recovery
    client.close()
