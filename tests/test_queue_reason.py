"""Why a job waits for a capped provider account's slot: every job admission queues, a new
one or one the provider refused for capacity, carries a reason, and loses it once admitted.
On the session's Redis, through the admission script itself."""

from __future__ import annotations

import time

import pytest

from pollen import Pollen
from pollen.settings import Settings
from pollen.store import admission
from tests.helpers import queue_for_slots

pytestmark = pytest.mark.integration


def test_a_job_refused_for_capacity_waits_with_a_reason(client: Pollen, settings: Settings) -> None:
    jobs = [(f"j-{i}", "acme") for i in range(3)]
    first = queue_for_slots(settings, client.store, jobs, slots=2)
    assert list(first.admitted) == ["j-0", "j-1"] and list(first.waiting) == ["j-2"]
    assert client.get("j-0").queue_reason is None and client.get("j-0").account == "default"
    now = time.time()
    refused = client.store.run(
        admission.admit(
            "runware", now=now, limit=0, caps=[("default", 2)], shares={}, submit_watch=now,
            grace=1, requeue=[("j-0", "default", "capacity")], cooldown_until=now + 60,
        )
    )  # fmt: skip
    assert refused.requeued == 1
    job = client.get("j-0")
    assert job.account is None
    assert job.queue_reason == refused.waiting["j-0"]
    assert job.queue_reason == (
        "waiting for capacity on runware (1 of 1 slots in use across 1 account(s); 2 jobs "
        "waiting across 1 tenant(s), 0 of tenant acme ahead of this one)"
    )
    # once the cooldown is over, its slot comes back and the reason goes with admission
    later = now + 61
    again = client.store.run(
        admission.admit(
            "runware", now=later, limit=10, caps=[("default", 2)], shares={},
            submit_watch=later + 3600, grace=1,
        )
    )  # fmt: skip
    assert list(again.admitted) == ["j-0"]
    assert client.get("j-0").queue_reason is None and client.get("j-2").queue_reason
