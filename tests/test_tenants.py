"""The tenant and priority contract: every way a producer submits names them, the job record
and the status line show them, bad values are refused by name, the JSON Schema has them, and
the per-tenant counts follow each job (real Redis, worker and simulator)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import celery
import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev extras
import pytest

from pollen import AsyncPollen, InvalidJob, JobStatus, Pollen, payloads, schema
from pollen.local.servers import RedisServer, Worker
from pollen.settings import Settings
from pollen.store import keys
from pollen.worker import batch
from pollen.worker.runtime import Deps
from tests import steps
from tests.conftest import BROKER_DB
from tests.helpers import video_request
from tests.test_cli import assert_user_error, pollen

pytestmark = pytest.mark.integration

#: (field, value, what the error says): each refused by name, nothing stored
BAD = [
    ("tenant", "acme corp", "tenant: String should match pattern"),
    ("tenant", "a" * 129, "tenant: String should match pattern"),
    ("tenant", "", "tenant: String should match pattern"),
    ("tenant", "-acme", "tenant: String should match pattern"),
    ("tenant", 42, "tenant: Input should be a valid string"),
    ("priority", 1.5, "priority: Input should be a valid integer"),
    ("priority", "3", "priority: Input should be a valid integer"),
    ("priority", True, "priority: Input should be a valid integer"),
    ("priority", 1001, "priority: Input should be less than or equal to 1000"),
    ("priority", -1001, "priority: Input should be greater than or equal to -1000"),
]
#: the values at each limit, accepted
GOOD = [
    ("a" * 128, 1000),
    ("A", -1000),
    ("team-7.eu:user_42@acme", 0),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def producer(redis_server: RedisServer) -> Iterator[celery.Celery]:
    """A Celery app of a producer that does not install pollen."""
    app = celery.Celery(broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB))
    yield app
    app.close()


def tenant_stats(client: Pollen | Deps) -> dict[str, str]:
    return {str(k): str(v) for k, v in client.store.redis.hgetall(keys.TENANT_STATS).items()}


def job_count(client: Pollen) -> int:
    """Job records stored (not their results', events' and other keys)."""
    return len([k for k in client.store.redis.keys(keys.job("*")) if str(k).count(":") == 2])


def test_submit_names_the_tenant_and_priority_the_record_and_status_show(
    worker: Worker, worker_env: dict[str, str], client: Pollen
) -> None:
    job_id = client.submit("runware", video_request([0.2]), tenant="acme", priority=7)
    job = client.wait(job_id, timeout=30)
    assert (job.status, job.tenant, job.priority) == (JobStatus.SUCCEEDED, "acme", 7)
    assert client.get(job_id).model_dump(include={"tenant", "priority"}) == {
        "tenant": "acme",
        "priority": 7,
    }
    status = pollen(worker_env, "status", job_id)
    assert status.returncode == 0, status.stderr
    assert " tenant=acme priority=7" in status.stdout
    result = json.loads(pollen(worker_env, "result", job_id).stdout)
    assert (result["tenant"], result["priority"]) == ("acme", 7)


def test_a_job_without_a_tenant_belongs_to_the_default_one(worker: Worker, client: Pollen) -> None:
    job_id = client.submit("runware", video_request([0.2]))
    job = client.wait(job_id, timeout=30)
    assert (job.tenant, job.priority) == ("default", 0)
    assert tenant_stats(client)["default|succeeded"] == "1"
    explicit = client.submit_payload(
        {"provider": "runware", "request": video_request([0.2]), "tenant": None, "priority": None}
    )
    assert (client.get(explicit).tenant, client.get(explicit).priority) == ("default", 0)


@pytest.mark.parametrize(("name", "value", "says"), BAD)
def test_bad_values_are_refused_by_name_and_store_nothing(
    client: Pollen, name: str, value: Any, says: str
) -> None:
    with pytest.raises(InvalidJob) as caught:
        client.submit_payload({"provider": "runware", "request": video_request([0.2]),
                               name: value})  # fmt: skip
    assert str(caught.value).startswith(says)
    assert job_count(client) == 0


@pytest.mark.parametrize(("tenant", "priority"), GOOD)
def test_the_values_at_each_limit_are_taken(client: Pollen, tenant: str, priority: int) -> None:
    job_id = client.submit_payload(
        {"provider": "runware", "request": video_request([0.2]), "tenant": tenant,
         "priority": priority}
    )  # fmt: skip
    assert client.get(job_id).model_dump(include={"tenant", "priority"}) == {
        "tenant": tenant,
        "priority": priority,
    }


def test_the_client_keywords_are_checked_too(client: Pollen) -> None:
    with pytest.raises(InvalidJob, match=r"^priority: Input should be a valid integer"):
        client.submit("runware", video_request([0.2]), priority=2.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidJob, match=r"^tenant: "):
        client.submit("runware", video_request([0.2]), tenant="two words")
    assert job_count(client) == 0


def test_submit_many_takes_each_jobs_own_and_refuses_a_bad_one_by_name(
    worker: Worker, client: Pollen
) -> None:
    jobs: list[dict[str, Any]] = [
        {"provider": "runware", "request": video_request([0.2]), "tenant": "acme", "priority": 3},
        {"provider": "runware", "request": video_request([0.2]), "tenant": "acme corp"},
        {"provider": "runware", "request": video_request([0.2]), "priority": -2},
        {"provider": "runware", "request": video_request([0.2]), "priority": "high"},
    ]
    answer = client.submit_many(jobs)
    assert sorted(answer.errors) == [1, 3]
    assert str(answer.errors[1]).startswith("tenant: ")
    assert str(answer.errors[3]).startswith("priority: ")
    first, third = answer.accepted
    assert client.wait(first, timeout=30).model_dump(include={"tenant", "priority"}) == {
        "tenant": "acme",
        "priority": 3,
    }
    assert client.wait(third, timeout=30).model_dump(include={"tenant", "priority"}) == {
        "tenant": "default",
        "priority": -2,
    }


@pytest.mark.anyio
async def test_the_async_client_names_them_too(
    worker: Worker, settings: Settings, clean: None
) -> None:
    async with AsyncPollen(settings) as client:
        job_id = await client.submit("runware", video_request([0.2]), tenant="acme", priority=-5)
        job = await client.wait(job_id, timeout=30)
        assert (job.status, job.tenant, job.priority) == (JobStatus.SUCCEEDED, "acme", -5)
        many = await client.submit_many(
            [{"provider": "runware", "request": video_request([0.2]), "tenant": "beta"},
             {"provider": "runware", "request": video_request([0.2]), "priority": 1001}]
        )  # fmt: skip
        assert str(many.errors[1]).startswith("priority: Input should be less than or equal")
        assert (await client.get(many.accepted[0])).tenant == "beta"
        with pytest.raises(InvalidJob, match=r"^tenant: "):
            await client.submit("runware", video_request([0.2]), tenant="a" * 129)


def test_a_plain_send_task_names_them_in_the_job_payload(
    worker: Worker, client: Pollen, producer: Any
) -> None:
    payload = {
        "provider": "runware",
        "job_id": "plain-tenant-1",
        "request": video_request([0.2]),
        "tenant": "acme",
        "priority": 12,
    }
    answer = producer.send_task("pollen.submit", kwargs={"job": payload}, queue="pollen.submit")
    assert answer.get(timeout=20) == {"job_id": "plain-tenant-1", "created": True}
    job = client.wait("plain-tenant-1", timeout=20)
    assert (job.status, job.tenant, job.priority) == (JobStatus.SUCCEEDED, "acme", 12)
    for name, value in [("tenant", "acme corp"), ("priority", True), ("tenant", 7)]:
        bad = {"provider": "runware", "request": video_request([0.2]), name: value}
        refused = producer.send_task("pollen.submit", kwargs={"job": bad}, queue="pollen.submit")
        with pytest.raises(Exception) as caught:
            refused.get(timeout=20)
        assert type(caught.value).__name__ == "InvalidJob"
        assert str(caught.value).startswith(f"{name}: ")
    assert job_count(client) == 1


def test_the_command_line_refuses_a_bad_tenant_in_one_line(
    worker_env: dict[str, str], client: Pollen
) -> None:
    bad = {"provider": "runware", "request": video_request([0.2]), "tenant": "acme corp"}
    assert_user_error(pollen(worker_env, "submit", json.dumps(bad)), "tenant: ", code=2)
    assert job_count(client) == 0


def test_the_json_schema_has_both_fields() -> None:
    assert schema.stale() == []  # the published copies are what the models say
    checked = pollen({}, "schema", "--check")
    assert (checked.returncode, checked.stdout) == (0, "schema is current\n")
    published = json.loads(schema.PACKAGED_PATH.read_text())
    for name, good in (("tenant", "acme"), ("priority", 5)):
        job: dict[str, Any] = {"provider": "runware", "request": video_request([0.2]), name: good}
        jsonschema.validate(job, published)
    for name, value, _ in BAD:
        job = {"provider": "runware", "request": video_request([0.2]), name: value}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(job, published)
    runware = next(
        variant
        for variant in published["$defs"].values()
        if variant.get("properties", {}).get("provider", {}).get("const") == "runware"
    )
    assert {"tenant", "priority"} <= set(runware["properties"])


def test_the_tenant_counts_follow_the_job_and_sum_its_cost(deps: Deps) -> None:
    def accept(durations: list[float]) -> str:
        job = {"provider": "runware", "request": video_request(durations), "tenant": "acme"}
        return payloads.accept(deps.settings, deps.store, job, now=time.time())[0]

    ids = [accept([0.6]), accept([0.6, 0.6])]
    assert tenant_stats(deps) == {"acme|queued": "2"}
    for job_id in ids:
        steps.submit(deps, job_id)
    assert tenant_stats(deps) == {"acme|queued": "0", "acme|submitted": "2"}
    batch.poll_batch(deps, [(job_id, 1) for job_id in ids])  # still running at the provider
    assert tenant_stats(deps) == {"acme|queued": "0", "acme|submitted": "0",
                                  "acme|processing": "2"}  # fmt: skip
    time.sleep(0.8)
    assert sorted(batch.poll_batch(deps, [(job_id, 2) for job_id in ids]).finished) == sorted(ids)
    costs = [deps.store.lifecycle.get(job_id).cost for job_id in ids]
    assert all(cost for cost in costs)
    stats = tenant_stats(deps)
    assert float(stats.pop("acme|cost")) == pytest.approx(sum(c for c in costs if c))
    assert stats == {"acme|queued": "0", "acme|submitted": "0", "acme|processing": "0",
                     "acme|succeeded": "2"}  # fmt: skip
