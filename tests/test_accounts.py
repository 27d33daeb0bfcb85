"""Provider accounts end to end: real workers, a real Redis, a simulator with one key (and
one cap) per account. What ran where, and how much at once, is read from the simulator."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pollen import JobStatus, Pollen
from pollen.capacity import Capacity
from pollen.local.servers import RedisServer
from pollen.models import Job
from pollen.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import BROKER_DB, eventually
from tests.fleet import Fleet
from tests.helpers import kept_responses, video_request

pytestmark = pytest.mark.integration

#: the simulator's keys, one per account, and each key's cap at the simulator
SIM_KEYS = {"key-a": 3, "key-b": 3, "key-c": 1}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(
        api_key="key-default", keys=SIM_KEYS, duration_min=0.2, duration_max=0.4, seed=11,
        comet_not_exist_seconds=0.1,
    )  # fmt: skip
    with SimulatorServer(config) as server:
        yield server


@pytest.fixture
def fresh(sim: SimulatorServer) -> SimulatorServer:
    httpx.post(f"{sim.url}/_sim/reset").raise_for_status()
    return sim


def account(name: str, key: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "api_key": key, "base_url": url, **extra}


def accounts_env(group: str, accounts: list[dict[str, Any]]) -> dict[str, str]:
    """A provider configured by an accounts list (its single api_key unset)."""
    prefix = f"POLLEN_{group.upper()}__"
    return {f"{prefix}API_KEY": "", f"{prefix}ACCOUNTS": json.dumps(accounts)}


@pytest.fixture
def make_fleet(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path: Path, clean: None
) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def build(**env: str) -> Fleet:
        fleet = Fleet(
            worker_env, redis_server.url(BROKER_DB), tmp_path / f"fleet{len(fleets)}",
            POLLEN_TICK_INTERVAL="0.2", **env,
        )  # fmt: skip
        (tmp_path / f"fleet{len(fleets)}").mkdir()
        fleets.append(fleet)
        return fleet

    yield build
    for fleet in fleets:
        fleet.stop()


def runware_fleet(make_fleet: Any, sim: SimulatorServer, caps: dict[str, int], **env: str) -> Fleet:
    """A fleet whose Runware accounts are ``caps`` (name -> max_in_flight), each with the
    simulator key ``key-<name>``."""
    url = f"{sim.url}/v1"
    accounts = [account(name, f"key-{name}", url, max_in_flight=cap) for name, cap in caps.items()]
    fleet: Fleet = make_fleet(
        POLLEN_RUNWARE__BASE_URL=url, **accounts_env("runware", accounts), **env
    )
    return fleet


def keys_view(sim: SimulatorServer) -> dict[str, dict[str, Any]]:
    keys: dict[str, dict[str, Any]] = httpx.get(f"{sim.url}/_sim/stats").json()["keys"]
    return keys


def task_key(sim: SimulatorServer, job: Job) -> str:
    """The simulator key that created the job's provider task."""
    view = httpx.get(f"{sim.url}/_sim/tasks/{job.provider_task_id}").json()
    return str(view["api_key"])


def wait_all(client: Pollen, job_ids: list[str], timeout: float) -> list[Job]:
    return [client.wait(job_id, timeout=timeout) for job_id in job_ids]


def submit_videos(client: Pollen, count: int, seconds: float, **extra: Any) -> list[str]:
    payloads = [
        {"provider": "runware", "request": video_request([seconds]), **extra} for _ in range(count)
    ]
    submitted = client.submit_many(payloads)
    assert not submitted.errors
    return submitted.accepted


def test_capped_accounts_share_the_jobs_and_each_job_polls_its_own(
    fresh: SimulatorServer, make_fleet: Any
) -> None:
    fleet = runware_fleet(make_fleet, fresh, {"a": 2, "b": 2})
    fleet.start("pod", concurrency=4, pool="threads")
    with fleet.client() as client:
        jobs = wait_all(client, submit_videos(client, 10, 0.6), timeout=60)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    keys = keys_view(fresh)
    for job in jobs:
        assert job.account in ("a", "b")
        assert task_key(fresh, job) == f"key-{job.account}"
    assert {job.account for job in jobs} == {"a", "b"}
    for key in ("key-a", "key-b"):
        assert keys[key]["foreign_lookups"] == 0  # every poll asked the creating account
        assert keys[key]["requests_by_kind"]["status"] >= 1
        assert 1 <= keys[key]["peak_running"] <= 2
        assert keys[key]["refused_for_capacity"] == 0
    assert keys["key-a"]["created"] + keys["key-b"]["created"] == 10
    assert "key-default" not in keys


def test_uncapped_accounts_take_turns_and_one_bad_key_fails_only_its_jobs(
    fresh: SimulatorServer, make_fleet: Any
) -> None:
    accounts = [
        account("unset", "", fresh.url),  # no key: warned about at start, never given a job
        account("good", "key-b", fresh.url),
        account("revoked", "no-such-key", fresh.url),
    ]
    fleet = make_fleet(**accounts_env("useapi", accounts))
    fleet.start("pod", concurrency=2, pool="threads")
    fleet.wait_ready("pod")
    warnings = [json.loads(line)["message"] for line in fleet.log("pod").splitlines()
                if "is not set" in line]  # fmt: skip
    assert warnings == [
        "useapi_runway: POLLEN_USEAPI__ACCOUNTS (account 'unset': api_key) is not set; "
        "its jobs will fail"
    ]
    body = {"text_prompt": "a fox", "simulate": {"duration": 0.3}}
    with fleet.client() as client:
        submitted = client.submit_many([{"provider": "useapi_runway", "request": body}] * 6)
        jobs = wait_all(client, submitted.accepted, timeout=30)
    by_account: dict[str | None, set[JobStatus]] = {}
    for job in jobs:
        by_account.setdefault(job.account, set()).add(job.status)
    assert by_account == {"good": {JobStatus.SUCCEEDED}, "revoked": {JobStatus.FAILED}}
    assert sum(job.account == "good" for job in jobs) == 3  # in turns: 3 and 3
    for job in jobs:
        if job.status is JobStatus.FAILED:
            assert job.error is not None and "Unauthorized" in job.error.message
        else:
            assert task_key(fresh, job) == "key-b"
    view = keys_view(fresh)["key-b"]
    assert view["foreign_lookups"] == 0
    assert view["created"] == 3


def test_a_429_on_a_capped_accounts_create_requeues_the_job(
    fresh: SimulatorServer, make_fleet: Any
) -> None:
    """pollen believes key-c takes 3 at once; the provider says 1: the refused creates wait
    in pollen (no failure) and every job completes."""
    fleet = runware_fleet(
        make_fleet, fresh, {"c": 3}, POLLEN_ADMISSION__COOLDOWN="1", POLLEN_BATCH_SIZE="1"
    )
    fleet.start("pod", concurrency=4, pool="threads")
    with fleet.client() as client:
        job_ids = submit_videos(client, 5, 0.5)
        jobs = wait_all(client, job_ids, timeout=60)
        assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
        assert {job.account for job in jobs} == {"c"}
        view = keys_view(fresh)["key-c"]
        assert view["refused_for_capacity"] >= 1  # pollen did meet the provider's cap
        assert view["peak_running"] == 1
        assert view["created"] == 5
        refusals = [
            int(client.store.lifecycle.raw(job_id).get("capacity_refusals", 0))
            for job_id in job_ids
        ]
        assert sum(refusals) >= 1
        queue = client.store.admission.queue_state("runware", [("c", 3)], now=time.time())
        assert (queue.in_use, queue.total_waiting) == (0, 0)


def test_throttled_tasks_wait_at_the_provider_and_are_polled_slowly(
    fresh: SimulatorServer, make_fleet: Any
) -> None:
    """CometAPI accepts creates past key-c's cap of 1 as THROTTLED: pollen keeps polling
    them, every ``throttled_poll_delay``, until they run and succeed."""
    fleet = make_fleet(
        POLLEN_POLL__MAX_DELAY="5",
        POLLEN_ADMISSION__THROTTLED_POLL_DELAY="2",
        **accounts_env("comet", [account("c", "key-c", fresh.url)]),
    )
    fleet.start("pod", concurrency=2, pool="threads")
    body = {"model": "gen4_turbo", "promptText": "a fox", "action": "text_to_video"}
    with fleet.client() as client:
        first = client.submit("comet_runway", {**body, "simulate": {"duration": 4.0}})
        eventually(lambda: client.get(first).provider_task_id, timeout=10, what="first task")
        second = client.submit("comet_runway", {**body, "simulate": {"duration": 0.3}})
        jobs = wait_all(client, [first, second], timeout=40)
        assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
        nested = [
            ((entry["envelope"].get("data") or {}).get("data") or {}).get("status")
            for entry in kept_responses(client.store, second)
        ]
        polls = int(client.store.lifecycle.raw(second)["polls"])
    assert "THROTTLED" in nested
    # held back ~4 s: every 2 s that is 3 polls and one more once it runs; the job's own
    # schedule (0.2 s, growing 1.5x) would have asked 6 times before it even started
    assert 2 <= polls <= 4, (polls, nested)
    view = keys_view(fresh)["key-c"]
    assert (view["throttled"], view["peak_running"], view["refused_for_capacity"]) == (1, 1, 0)


def test_fleet_wide_cap_holds_across_two_workers(fresh: SimulatorServer, make_fleet: Any) -> None:
    """Two worker processes, one account capped at 3 (the simulator refuses a 4th): the
    simulator never runs more than 3 of the 30 jobs at once, and every slot comes back."""
    fleet = runware_fleet(make_fleet, fresh, {"a": 3})
    fleet.start("one", concurrency=3, pool="threads", wait=False)
    fleet.start("two", concurrency=3, pool="prefork", wait=False)
    fleet.wait_ready("one")
    fleet.wait_ready("two")
    with fleet.client() as client:
        half = submit_videos(client, 15, 0.3, tenant="t1")
        job_ids = half + submit_videos(client, 15, 0.3, tenant="t2")
        jobs = wait_all(client, job_ids, timeout=90)
        assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
        caps = Capacity.of(client.settings).caps("runware")
        assert caps == [("a", 3)]
        queue = client.store.admission.queue_state("runware", caps, now=time.time())
        assert (queue.in_use, queue.total_waiting) == (0, 0)
    view = keys_view(fresh)["key-a"]
    assert view["created"] == 30
    assert view["peak_running"] == 3  # used to the full, never past it
    assert view["refused_for_capacity"] == 0
    logs = fleet.log("one") + fleet.log("two")
    assert "submitted (accepted)" in fleet.log("one") and "submitted (accepted)" in fleet.log("two")
    assert "create(s) for capacity" not in logs  # pollen never sent a create past the cap


def test_a_deadline_passing_while_queued_times_the_job_out(
    fresh: SimulatorServer, make_fleet: Any
) -> None:
    fleet = runware_fleet(make_fleet, fresh, {"c": 1})
    fleet.start("pod", concurrency=2, pool="threads")
    with fleet.client() as client:
        (long_job,) = submit_videos(client, 1, 4.0)
        eventually(lambda: client.get(long_job).account, timeout=10, what="the slot taken")
        (late,) = submit_videos(client, 1, 0.2, deadline=1.5)
        waiting = eventually(lambda: client.get(late).queue_reason, timeout=5, what="waiting")
        assert waiting.startswith("waiting for capacity on runware (1 of 1 slots in use")
        timed_out = client.wait(late, timeout=20)
        assert timed_out.status is JobStatus.TIMED_OUT
        assert timed_out.error is not None
        message = timed_out.error.message
        assert message.startswith("no result within the 1.5s deadline (never admitted: it was")
        assert "waiting for capacity on runware" in message
        assert timed_out.provider_task_id is None
        assert client.wait(long_job, timeout=20).status is JobStatus.SUCCEEDED
    assert keys_view(fresh)["key-c"]["created"] == 1  # the late job never reached the provider


def test_a_capped_account_whose_key_is_refused_or_unset_sends_its_jobs_to_the_others(
    fresh: SimulatorServer, make_fleet: Any
) -> None:
    """Admission fills the account with the most free slots: an account without a key takes
    no job, and one whose key the provider refuses (401) gives its jobs back to the queue and
    takes none for the cooldown, instead of failing the backlog one job at a time."""
    url = f"{fresh.url}/v1"
    accounts = [
        account("a", "key-a", url, max_in_flight=2),
        account("revoked", "no-such-key", url, max_in_flight=2),
        account("unset", "", url, max_in_flight=2),
    ]
    fleet = make_fleet(POLLEN_RUNWARE__BASE_URL=url, **accounts_env("runware", accounts))
    fleet.start("pod", concurrency=4, pool="threads")
    with fleet.client() as client:
        jobs = wait_all(client, submit_videos(client, 8, 0.3), timeout=60)
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 8
    assert {job.account for job in jobs} == {"a"}
    keys = keys_view(fresh)
    assert keys["key-a"]["created"] == 8 and keys["key-a"]["peak_running"] <= 2
    refusals = [line for line in fleet.log("pod").splitlines() if "refused the key" in line]
    assert refusals, "the revoked account's refusal is logged"
    assert len(refusals) <= 2  # set aside for the cooldown after its first refusal
