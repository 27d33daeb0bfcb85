"""Fixtures of the fault suite: fleets of real workers behind a provider gate, and the report.

Every case runs its own :class:`~tests.fleet.Fleet` (own queues, own store db), talks to the
provider through a :class:`~tests.faults.gate.ProviderGate` in front of a simulator of its own
(so patched fault rates never leak into other tests) and records a
:class:`~tests.faults.report.CaseRecord`. With ``POLLEN_RELIABILITY_REPORT=path`` the records
are written there as JSON at the end of the session (``tasks/reliability`` renders them).
"""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from pollen import JobStatus, Pollen
from pollen.local.servers import CallbackReceiver, RedisServer
from pollen.models import Job
from pollen.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import BROKER_DB
from tests.faults.gate import ProviderGate
from tests.faults.report import REPORT_ENV, CaseRecord, write
from tests.fleet import Fleet

#: Settings every fault fleet starts from (a case overrides what it needs).
#: pollen's soft time limit is 10 s under the hard one (at least 1 s): 14 s leaves a poll 4 s.
FAULT_ENV = {
    "POLLEN_TASK_TIME_LIMIT": "14",
    "POLLEN_VISIBILITY_TIMEOUT": "20",
    "POLLEN_RECONCILE_GRACE": "2",
    "POLLEN_SUBMIT_GRACE": "2",
    "POLLEN_RECONCILE_INTERVAL": "0.5",
    "POLLEN_TICK_INTERVAL": "0.5",
    "POLLEN_HTTP_TIMEOUT": "3",
    "POLLEN_CALLBACKS__TIMEOUT": "2",
    "POLLEN_LOG_FORMAT": "json",
}
SIM_DEFAULTS: dict[str, Any] = {
    "timeout_seconds": 1.5,
    "rate_5xx": 0.0,
    "rate_429": 0.0,
    "rate_malformed": 0.0,
    "rate_timeout": 0.0,
    "retry_after": 1,
}

#: ``make_fleet(redis_url=None, **env)`` (see the fixture)
MakeFleet = Callable[..., Fleet]

_RECORDS: list[CaseRecord] = []
_OUTCOMES: dict[str, str] = {}
_STARTED = time.time()


# --------------------------------------------------------------------------- the report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each case's outcome for the report (xfail: a known pollen bug)."""
    report = yield
    if hasattr(report, "wasxfail"):
        outcome = "xfailed (pollen bug)" if report.skipped else "XPASS"
    else:
        outcome = report.outcome
    if report.when == "call" or (report.when == "setup" and outcome != "passed"):
        _OUTCOMES[item.nodeid] = outcome
    elif report.when == "teardown" and report.failed:
        _OUTCOMES[item.nodeid] = "error in teardown"
    return report


def _redis_version(url: str) -> str:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = client.info("server")
    finally:
        client.close()
    name = str(info.get("server_name") or "redis")
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


@pytest.fixture(scope="session")
def reliability(
    redis_server: RedisServer, pytestconfig: pytest.Config
) -> Iterator[list[CaseRecord]]:
    """The session's case records; written as JSON to $POLLEN_RELIABILITY_REPORT at the end."""
    yield _RECORDS
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    for record in _RECORDS:
        record.outcome = _OUTCOMES.get(record.nodeid, record.outcome)
    args = " ".join(pytestconfig.invocation_params.args)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(terse=True),
            "python": platform.python_version(),
            "redis": _redis_version(redis_server.url(BROKER_DB)),
        },
        "command": os.environ.get("POLLEN_RELIABILITY_COMMAND") or f"pytest {args}",
        "duration_s": round(time.time() - _STARTED, 1),
    }
    write(Path(target), _RECORDS, meta)


@pytest.fixture
def case(request: pytest.FixtureRequest, reliability: list[CaseRecord]) -> CaseRecord:
    """This test's record in the report (the test fills in what it measured)."""
    record = CaseRecord(case="?", fault=request.node.name, nodeid=request.node.nodeid)
    reliability.append(record)
    return record


# --------------------------------------------------------------------------- provider


@pytest.fixture(scope="session")
def fault_sim() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(duration_min=0.3, duration_max=1.0, seed=11, **SIM_DEFAULTS)
    with SimulatorServer(config) as sim:
        yield sim


@pytest.fixture(scope="session")
def session_gate(fault_sim: SimulatorServer) -> Iterator[ProviderGate]:
    with ProviderGate(fault_sim.url) as gate:
        yield gate


@pytest.fixture
def gate(session_gate: ProviderGate, fault_sim: SimulatorServer) -> Iterator[ProviderGate]:
    """The provider as this case sees it: a fresh simulator (no tasks, default rates) behind
    the gate; rates and faults are put back afterwards."""
    session_gate.reset()
    httpx.patch(f"{fault_sim.url}/_sim/config", json=SIM_DEFAULTS).raise_for_status()
    httpx.post(f"{fault_sim.url}/_sim/reset").raise_for_status()
    yield session_gate
    assert not session_gate.errors, session_gate.errors
    session_gate.reset()
    httpx.delete(f"{fault_sim.url}/_sim/faults").raise_for_status()
    httpx.patch(f"{fault_sim.url}/_sim/config", json=SIM_DEFAULTS).raise_for_status()


def sim_stats(sim: SimulatorServer) -> dict[str, Any]:
    return dict(httpx.get(f"{sim.url}/_sim/stats").json())


def sim_faults(sim: SimulatorServer, faults: list[str]) -> None:
    body = {"faults": faults, "path_prefix": "/v1"}
    httpx.post(f"{sim.url}/_sim/faults", json=body).raise_for_status()


# --------------------------------------------------------------------------- fleets


@pytest.fixture
def make_fleet(
    worker_env: dict[str, str],
    redis_server: RedisServer,
    gate: ProviderGate,
    tmp_path: Path,
) -> Iterator[MakeFleet]:
    """``make_fleet(redis_url=..., **env)``: a fleet on the session's Redis (or ``redis_url``),
    whose provider is the gate. Every pod is killed at the end and the tails of their logs
    printed (pytest shows them when the test failed)."""
    fleets: list[Fleet] = []

    def build(redis_url: str | None = None, **env: str) -> Fleet:
        url = redis_url or redis_server.url(BROKER_DB)
        base = {**worker_env, **FAULT_ENV, "POLLEN_RUNWARE__BASE_URL": f"{gate.url}/v1"}
        if redis_url:
            base["POLLEN_BROKER_URL"] = url
        fleet = Fleet(base, url, tmp_path / f"fleet{len(fleets)}", **env)
        fleet.logdir.mkdir()
        fleets.append(fleet)
        return fleet

    yield build
    for fleet in fleets:
        for name in list(fleet.workers):
            if fleet.alive(name):
                fleet.kill_pod(name)
            print(f"----- {name} log (last 80 lines) -----")
            print("\n".join(fleet.log(name).splitlines()[-80:]))


def start_pods(fleet: Fleet, names: Iterable[str], **options: Any) -> None:
    """Start several pods at once and wait until each is consuming."""
    names = list(names)
    for name in names:
        fleet.start(name, wait=False, **options)
    for name in names:
        fleet.wait_ready(name)


def nodename(fleet: Fleet, pod: str) -> str:
    """The pod's Celery node name (what remote control commands address)."""
    return f"{fleet.workers[pod].name}@{socket.gethostname()}"


def consume(client: Pollen, fleet: Fleet, pod: str, queues: Iterable[str]) -> None:
    """Make a running pod consume ``queues`` too (Celery's ``add_consumer`` control command)."""
    control = client.celery.control
    for queue in queues:
        replies = control.add_consumer(queue, destination=[nodename(fleet, pod)], reply=True)
        assert replies and "ok" in str(replies), replies


def stop_consuming(client: Pollen, fleet: Fleet, pod: str, queues: Iterable[str]) -> None:
    """Make a running pod stop taking messages from ``queues`` (``cancel_consumer``); what it
    already holds it still runs."""
    control = client.celery.control
    for queue in queues:
        replies = control.cancel_consumer(queue, destination=[nodename(fleet, pod)], reply=True)
        assert replies and "ok" in str(replies), replies


def wait_all(client: Pollen, job_ids: Iterable[str], timeout: float) -> list[Job]:
    """Every job's final state (fails the test if one is not terminal within ``timeout``)."""
    deadline = time.monotonic() + timeout
    return [
        client.wait(job_id, timeout=max(0.1, deadline - time.monotonic())) for job_id in job_ids
    ]


def unsuccessful(jobs: Iterable[Job]) -> list[str]:
    """Ids of the jobs that did not succeed."""
    return [job.id for job in jobs if job.status is not JobStatus.SUCCEEDED]


def receiver_on(port: int) -> CallbackReceiver:
    """A :class:`CallbackReceiver` on a chosen ``port`` (``with`` it to start serving)."""
    receiver = CallbackReceiver()
    handler = receiver.server.RequestHandlerClass
    receiver.server.server_close()
    receiver.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    receiver.port = port
    receiver.url = f"http://127.0.0.1:{port}"
    receiver._thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    return receiver
