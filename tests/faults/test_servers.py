"""The ingress and the dashboard with Redis away: 503 within 2 s, and SIGTERM still ends them.

Each runs as ``pollen ingress`` / ``pollen dashboard`` in a process of its own, on Redis
servers of the test's own, which the test then stops (SIGSTOP: it accepts connections and
never answers) or kills (connections refused).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from pollen.local.servers import RedisServer, free_port
from pollen.providers import push as tokens
from pollen.settings import SERVER_REDIS_TIMEOUT, shutdown_grace
from pollen.store import keys
from tests.faults.report import CaseRecord

pytestmark = [pytest.mark.faults, pytest.mark.integration]

#: the bound every answer must keep while Redis is away, seconds
ANSWER_BOUND = 2.0
#: how long the process may take to exit after SIGTERM: the grace it gives its requests
GRACE = shutdown_grace(SERVER_REDIS_TIMEOUT)
#: how the fault is made: a Redis that never answers, or one that is gone
FAULTS = {"stopped": "SIGSTOP (accepts, never answers)", "killed": "SIGKILL (refused)"}
JOB = "job-pushed"


class Server:
    """``pollen <command> ...`` on a free port, with the test's Redis in its environment."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("POLLEN_")}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pollen.cli", *args, "--port", str(self.port)],
                env={**clean, **env}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.answers():
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{args[0]} did not start:\n{log.read_text()}"
            time.sleep(0.1)

    def answers(self) -> bool:
        try:
            httpx.get(self.url, timeout=1)
            return True
        except httpx.TransportError:
            return False

    def timed(self, method: str, path: str) -> tuple[int, float]:
        """The status of one request and how long it took."""
        started = time.monotonic()
        status = httpx.request(method, self.url + path, content=b"{}", timeout=60).status_code
        return status, time.monotonic() - started

    def terminate_while(self, method: str, path: str) -> tuple[float, int | None]:
        """SIGTERM while ``method path`` is under way: seconds until the process exited, and
        the request's status (None if it got no answer)."""
        statuses: list[int | None] = []

        def call() -> None:
            try:
                statuses.append(self.timed(method, path)[0])
            except httpx.TransportError:
                statuses.append(None)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        finally:
            exited = time.monotonic() - started
            caller.join(60)
        return exited, statuses[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    """Redis servers of the test's own (woken if stopped, then stopped, at the end)."""
    started: list[RedisServer] = []
    yield started
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def redis_of_its_own(servers: list[RedisServer]) -> RedisServer:
    server = RedisServer()
    server.start()
    servers.append(server)
    return server


def take_away(server: RedisServer, fault: str) -> float:
    """Stop (SIGSTOP) or kill ``server``; when."""
    assert server.proc is not None
    at = time.time()
    if fault == "stopped":
        os.kill(server.proc.pid, signal.SIGSTOP)
    else:
        server.proc.kill()
        server.proc.wait(10)
    return at


def job_with_a_token(store_url: str) -> str:
    """A job in flight that pushes are for, as a worker stores it; its push path."""
    token = tokens.new_token(JOB)
    client = redis.Redis.from_url(store_url)
    try:
        fields = {"push_token": token, "provider": "runware", "status": "processing"}
        for name, value in (fields | {"poll_seq": "1"}).items():
            client.hset(keys.job(JOB), name, value)
    finally:
        client.close()
    return f"/push/runware/{token}"


def assert_quick_503s(
    case: CaseRecord, server: Server, requests: list[tuple[str, str]]
) -> list[float]:
    took = []
    for method, path in requests:
        status, elapsed = server.timed(method, path)
        assert status == 503, f"{method} {path}: {status}"
        assert elapsed <= ANSWER_BOUND, f"{method} {path}: 503 after {elapsed:.2f}s"
        took.append(elapsed)
    case.recovery_s = round(max(took), 2)
    return took


def assert_terminated_in_grace(case: CaseRecord, server: Server, method: str, path: str) -> None:
    exited, status = server.terminate_while(method, path)
    assert exited <= GRACE, f"exited {exited:.2f}s after SIGTERM (grace {GRACE}s)"
    assert status in (503, None)
    shown = "/push/runware/<token>" if path.startswith("/push/") else path
    case.notes.append(
        f"SIGTERM with `{method} {shown}` under way: exited "
        f"after {exited:.2f} s (grace {GRACE} s); the request got "
        f"{'no answer' if status is None else status}."
    )


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_ingress_answers_503_quickly_and_ends_on_sigterm_with_redis_away(
    case: CaseRecord, servers: list[RedisServer], tmp_path: Path, fault: str
) -> None:
    case.case = "22" if fault == "stopped" else "22r"
    case.fault = f"Redis {fault} under `pollen ingress`"
    case.proves = (
        f"a push and /readyz answer 503 within {ANSWER_BOUND:g} s; SIGTERM with a push under "
        f"way ends the process within its {GRACE} s grace"
    )
    case.how = (
        f"`pollen ingress` on a Redis of the test's own, then Redis {FAULTS[fault]}. Default "
        f"POLLEN_INGRESS__REDIS_TIMEOUT ({SERVER_REDIS_TIMEOUT:g} s). Recovery: the slowest "
        "503."
    )
    redis_server = redis_of_its_own(servers)
    env = {"POLLEN_REDIS_URL": redis_server.url(1), "POLLEN_BROKER_URL": redis_server.url(0)}
    push = job_with_a_token(env["POLLEN_REDIS_URL"])
    ingress = Server(["ingress", "--host", "127.0.0.1"], env, tmp_path / "ingress.log")
    try:
        assert ingress.timed("POST", push)[0] == 202  # up: the push is taken
        take_away(redis_server, fault)
        took = assert_quick_503s(case, ingress, [("POST", push), ("GET", "/readyz")])
        case.notes.append("503 after " + ", ".join(f"{t:.2f} s" for t in took) + " (push, /readyz)")
        assert_terminated_in_grace(case, ingress, "POST", push)
    finally:
        ingress.stop()


def test_the_ingress_answers_503_quickly_and_ends_on_sigterm_with_the_broker_away(
    case: CaseRecord, servers: list[RedisServer], tmp_path: Path
) -> None:
    case.case, case.fault = "22b", "The broker's Redis stopped under `pollen ingress`"
    case.proves = (
        f"a push whose poll cannot be published answers 503 within {ANSWER_BOUND:g} s; "
        f"SIGTERM with one under way ends the process within its {GRACE} s grace"
    )
    case.how = (
        "Store and broker on two Redis servers of the test's own; the broker's is SIGSTOPped "
        "(accepts, never answers), so the push reads its job and then waits on the publish. "
        "Before, that publish, and a SIGTERM behind it, waited for good. Recovery: the slowest "
        "503."
    )
    store, broker = redis_of_its_own(servers), redis_of_its_own(servers)
    env = {"POLLEN_REDIS_URL": store.url(1), "POLLEN_BROKER_URL": broker.url(0)}
    push = job_with_a_token(env["POLLEN_REDIS_URL"])
    ingress = Server(["ingress", "--host", "127.0.0.1"], env, tmp_path / "ingress.log")
    try:
        assert ingress.timed("POST", push)[0] == 202
        take_away(broker, "stopped")
        took = assert_quick_503s(case, ingress, [("POST", push), ("POST", push)])
        case.notes.append("503 after " + ", ".join(f"{t:.2f} s" for t in took) + " (two pushes)")
        assert ingress.timed("GET", "/readyz")[0] == 200  # the store answers
        assert_terminated_in_grace(case, ingress, "POST", push)
    finally:
        ingress.stop()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_dashboard_answers_503_quickly_and_ends_on_sigterm_with_redis_away(
    case: CaseRecord, servers: list[RedisServer], tmp_path: Path, fault: str
) -> None:
    case.case = "23" if fault == "stopped" else "23r"
    case.fault = f"Redis {fault} under `pollen dashboard`"
    case.proves = (
        f"the jobs page, the overview and /api/counts answer 503 within {ANSWER_BOUND:g} s; "
        f"SIGTERM with a page under way ends the process within its {GRACE} s grace"
    )
    case.how = (
        f"`pollen dashboard --no-auth` on a Redis of the test's own, then Redis "
        f"{FAULTS[fault]}. Default POLLEN_DASHBOARD__REDIS_TIMEOUT "
        f"({SERVER_REDIS_TIMEOUT:g} s). Recovery: the slowest 503."
    )
    redis_server = redis_of_its_own(servers)
    env = {"POLLEN_REDIS_URL": redis_server.url(1), "POLLEN_BROKER_URL": redis_server.url(0)}
    dashboard = Server(["dashboard", "--no-auth"], env, tmp_path / "dashboard.log")
    pages = [("GET", "/"), ("GET", "/overview"), ("GET", "/api/counts")]
    try:
        assert all(dashboard.timed(method, path)[0] == 200 for method, path in pages)
        take_away(redis_server, fault)
        took = assert_quick_503s(case, dashboard, pages)
        case.notes.append(
            "503 after " + ", ".join(f"{t:.2f} s" for t in took) + " (/, /overview, /api/counts)"
        )
        assert_terminated_in_grace(case, dashboard, "GET", "/overview")
    finally:
        dashboard.stop()
