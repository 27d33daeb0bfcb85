"""Admission's edges, on the session's Redis: a slot that is only a field, a queue whose cap
went away, a Retry-After longer than the cooldown, bookkeeping that must not grow, a cost no
counter can take, and the default tenant in the idempotency key."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pollen import Pollen
from pollen.models import JobStatus
from pollen.settings import Settings
from pollen.store import admission, keys
from pollen.store.lifecycle import Move
from pollen.worker import admission as admitting
from pollen.worker.admission import MAX_COOLDOWN
from tests.helpers import image_request, queue_for_slots

pytestmark = pytest.mark.integration


def test_an_account_field_without_its_slot_is_not_an_admission(
    client: Pollen, settings: Settings
) -> None:
    """A copy of a submit that wrote the job's account back after another copy's refusal
    gave the slot away: the job is queued again, not sent as if it held a slot."""
    first = queue_for_slots(settings, client.store, [("j-0", "t"), ("j-1", "t")], slots=1)
    assert list(first.admitted) == ["j-0"]
    client.store.redis.hset(keys.job("j-1"), "account", "default")  # no slot behind it
    job = client.get("j-1")
    now = time.time()
    again = client.store.run(
        admission.admit(
            "runware", now=now, limit=5, caps=[("default", 1)], shares={}, submit_watch=now,
            grace=1, enqueue=[admitting.entry(job)],
        )
    )  # fmt: skip
    assert again.held == {} and again.admitted == {}
    assert client.store.redis.hget(keys.job("j-1"), "account") is None
    assert client.store.redis.hget(keys.job("j-1"), "waiting") == "1"


def test_jobs_still_waiting_when_the_cap_is_removed_everywhere_are_drained(
    client: Pollen, settings: Settings, deps: Any
) -> None:
    queue_for_slots(settings, client.store, [(f"j-{i}", "t") for i in range(4)], slots=1)
    assert not deps.capacity.capped("runware")  # the session's workers have no cap
    sent: list[list[str]] = []
    assert admitting.pump(deps, ["runware"], sent.append, now=time.time()) == 0  # not drained
    # a worker that knows the cap admitted lately (a rolling deploy): the queue is tended
    assert admitting.pump(deps, deps.providers, sent.append, now=time.time(), drain=True) == 0
    assert sent == [] and not client.store.admission.stranded("runware")
    client.store.redis.delete(keys.admit("runware", "capped"))  # its mark ran out
    assert client.store.admission.stranded("runware")
    count = admitting.pump(deps, deps.providers, sent.append, now=time.time(), drain=True)
    assert count == 3 and sorted(j for message in sent for j in message) == ["j-1", "j-2", "j-3"]
    assert not client.store.admission.stranded("runware")
    assert client.store.redis.ttl(keys.admit("runware", "capped")) == -2  # draining marks nothing


def test_a_retry_after_longer_than_the_cooldown_holds_the_cap_down(
    client: Pollen, settings: Settings, deps: Any
) -> None:
    capped = settings.model_copy(update={"runware": settings.runware.model_copy(
        update={"max_in_flight": 1})})  # fmt: skip
    deps.capacity = type(deps.capacity).of(capped)
    queue_for_slots(settings, client.store, [("j-0", "t")], slots=1)
    job = client.get("j-0")
    now = time.time()
    for retry_after, lowered_for in ((5.0, settings.admission.cooldown), (600.0, 600.0),
                                     (10 * MAX_COOLDOWN, MAX_COOLDOWN)):  # fmt: skip
        client.store.redis.hset(keys.job("j-0"), "account", "default")
        client.store.redis.zadd(keys.slots("runware", "default"), {"j-0": now})
        client.store.redis.hdel(keys.job("j-0"), "waiting")
        requeued = admitting.requeue(
            deps, "runware", [job], now=now, kind="capacity", retry_after=retry_after
        )
        assert requeued == 1
        low = client.store.redis.hget(keys.admit("runware", "lowered"), "default")
        assert low is not None
        assert float(str(low).partition("|")[2]) == pytest.approx(now + lowered_for)


def test_turn_bookkeeping_of_tenants_gone_is_pruned(client: Pollen, settings: Settings) -> None:
    jobs = [(f"j-{i}", f"t{i}") for i in range(3)]
    queue_for_slots(settings, client.store, jobs, slots=1)
    r = client.store.redis
    for job_id, _ in jobs:  # each ends: j-0 ran, j-1 and j-2 leave the queue
        client.store.lifecycle.transition_many([Move(job_id, JobStatus.CANCELLED)], now=time.time())
    left = keys.admit("runware", "left")
    # each tenant kept its pass on leaving: t0 one turn on (it was served), t1 and t2 none
    assert r.hgetall(left) == {"0|t0": "1", "0|t1": "0", "0|t2": "0"}
    assert set(r.hkeys(keys.admit("runware", "served"))) == {"#", "0|t0"}
    # t1's and t2's passes are the turn's own: moot. t0's is ahead of it: kept, and so is
    # when t0 was last served (both still decide where t0 goes if it waits again)
    assert client.store.admission.prune("runware") == 2
    assert r.hgetall(left) == {"0|t0": "1"}
    assert set(r.hkeys(keys.admit("runware", "served"))) == {"#", "0|t0"}
    assert client.store.admission.prune("runware") == 0
    # once the turn has passed t0 too, both go
    r.hset(keys.admit("runware", "vt"), "0", "1")
    assert client.store.admission.prune("runware") == 2
    assert r.hgetall(left) == {} and r.hkeys(keys.admit("runware", "served")) == ["#"]


def test_new_jobs_that_all_find_a_slot_take_it_at_once(client: Pollen, settings: Settings) -> None:
    """Nobody waits and every new job finds a slot: no queue, no turns kept; when they do not
    all fit, they all go through the fair order (tenants in turn), not arrival order."""
    fits = queue_for_slots(settings, client.store, [("f-0", "a"), ("f-1", "a")], slots=2)
    assert list(fits.admitted) == ["f-0", "f-1"] and not fits.waiting
    r = client.store.redis
    assert not r.keys("pollen:admit:runware:t:*") and not r.exists(keys.admit("runware", "vt"))
    r.delete(*r.keys("pollen:admit:*"))  # a fresh queue (the f- jobs' slots go with it)
    jobs = [("g-0", "a"), ("g-1", "a"), ("g-2", "b")]
    crowded = queue_for_slots(settings, client.store, jobs, slots=2)
    assert sorted(crowded.admitted) == ["g-0", "g-2"] and list(crowded.waiting) == ["g-1"]


@pytest.mark.parametrize("cost", ["inf", "nan", "-2.5"])
def test_a_cost_no_counter_can_take_still_ends_the_job(
    client: Pollen, settings: Settings, cost: str
) -> None:
    payload = {"provider": "runware", "request": image_request("c"), "job_id": "c", "tenant": "t"}
    client.submit_payload(payload)
    client.store.redis.hset(keys.job("c"), "cost", cost)
    moved = client.store.lifecycle.transition_many(
        [Move("c", JobStatus.SUCCEEDED)], now=time.time()
    )
    assert moved == [1]
    job = client.get("c")
    assert job.status is JobStatus.SUCCEEDED and job.finished_at is not None
    assert client.store.redis.hget(keys.TENANT_STATS, "t|cost") is None
    assert client.store.redis.hget(keys.TENANT_STATS, "t|succeeded") == "1"


def test_naming_the_default_tenant_is_the_same_job_as_naming_none(client: Pollen) -> None:
    payload = {"provider": "runware", "request": image_request("d"), "job_id": "same"}
    assert client.submit_payload(payload) == "same"
    assert client.submit_payload(payload | {"tenant": "default", "priority": 0}) == "same"
    assert client.get("same").tenant == "default"
