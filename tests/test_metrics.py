"""The worker's Prometheus endpoint, scraped around a real end-to-end job (prefork pool)."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pollen import JobStatus, Pollen
from pollen.capacity import Capacity
from pollen.local.servers import CallbackReceiver, Worker
from pollen.settings import Settings
from pollen.store import admission
from pollen.worker.metrics import OVERFLOW_TENANT, RedisGauges, TenantLabels, job_finished
from tests.conftest import eventually, settings_from
from tests.helpers import capped, queue_for_slots, video_request

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: str) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


@pytest.mark.integration
def test_metrics_count_a_job_end_to_end(
    worker: Worker, client: Pollen, worker_env: dict[str, str], receiver: CallbackReceiver
) -> None:
    port = worker_env["POLLEN_METRICS_PORT"]
    before = scrape(port)
    job_id = client.submit("runware", video_request([0.3, 0.5]), callback_url=f"{receiver.url}/m")
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED
    eventually(lambda: receiver.received("/m"), what="callback")

    def counted() -> Samples | None:
        after = scrape(port)
        key = ("pollen_callbacks_total", (("result", "delivered"),))
        return after if after.get(key, 0) > before.get(key, 0) else None

    after = eventually(counted, what="callback counted")
    rw = {"provider": "runware"}
    for name, labels in [
        ("pollen_jobs_started_total", rw),
        ("pollen_submits_total", {**rw, "result": "accepted"}),
        ("pollen_polls_total", {**rw, "result": "succeeded"}),
        ("pollen_jobs_finished_total", {**rw, "status": "succeeded", "tenant": "default"}),
        ("pollen_provider_request_seconds_count", {**rw, "kind": "status"}),
        ("pollen_provider_request_seconds_count", {**rw, "kind": "submit"}),
        ("pollen_poll_seconds_count", rw),
        ("pollen_completion_to_callback_seconds_count", {}),
    ]:
        assert value(after, name, **labels) > value(before, name, **labels), (name, labels)
    # Gauges read from Redis at scrape time.
    assert value(after, "pollen_jobs", status="succeeded") >= 1
    assert ("pollen_queue_depth", (("queue", "pollen.poll"),)) in after
    assert ("pollen_inflight_jobs", ()) in after
    assert ("pollen_callbacks_dead_letter", ()) in after


@pytest.mark.integration
def test_finished_jobs_and_their_cost_are_counted_by_tenant(
    worker: Worker, client: Pollen, worker_env: dict[str, str]
) -> None:
    port = worker_env["POLLEN_METRICS_PORT"]
    before = scrape(port)
    done = client.submit("runware", video_request([0.2]), tenant="acme")
    running = client.submit("runware", video_request([30.0]), tenant="acme")
    assert client.wait(done, timeout=20).status is JobStatus.SUCCEEDED
    eventually(lambda: client.get(running).status is JobStatus.PROCESSING, what="processing")
    client.cancel(running)
    acme = {"provider": "runware", "tenant": "acme"}

    def counted() -> Samples | None:
        after = scrape(port)
        cancelled = value(after, "pollen_jobs_finished_total", **acme, status="cancelled")
        return after if cancelled else None

    after = eventually(counted, what="the cancel counted")
    finished = value(after, "pollen_jobs_finished_total", **acme, status="succeeded")
    assert finished - value(before, "pollen_jobs_finished_total", **acme, status="succeeded") == 1
    cost = value(after, "pollen_cost_total", **acme) - value(before, "pollen_cost_total", **acme)
    assert cost == pytest.approx(client.get(done).cost)
    assert cost > 0


def test_tenant_labels_are_bounded_per_process() -> None:
    labels = TenantLabels(["vip"], limit=2)
    assert [labels(t) for t in ("a", "b", "c", "a", "vip", "default", "d")] == [
        "a", "b", OVERFLOW_TENANT, "a", "vip", "default", OVERFLOW_TENANT,
    ]  # fmt: skip
    none = TenantLabels([], limit=0)
    assert [none("a"), none("default")] == [OVERFLOW_TENANT, "default"]


def test_a_finished_job_counts_its_cost_and_never_a_negative_one() -> None:
    labels = TenantLabels([], limit=1)
    for cost in (0.5, None, -2.0, 0.25):
        job_finished(labels, "comet_runway", "succeeded", "unit-tenant", cost)
    key = {"provider": "comet_runway", "tenant": "unit-tenant"}
    assert REGISTRY.get_sample_value("pollen_cost_total", key) == 0.75
    succeeded = key | {"status": "succeeded"}
    assert REGISTRY.get_sample_value("pollen_jobs_finished_total", succeeded) == 4


def test_the_metrics_tenant_bound_is_a_checked_setting() -> None:
    assert settings_from({"POLLEN_METRICS_MAX_TENANTS": "0"}).metrics_max_tenants == 0
    assert Settings().metrics_max_tenants == 50
    with pytest.raises(ValueError, match="metrics_max_tenants"):
        settings_from({"POLLEN_METRICS_MAX_TENANTS": "-1"})


@pytest.mark.integration
def test_slots_and_waiting_jobs_are_read_from_redis_at_scrape_time(
    client: Pollen, settings: Settings
) -> None:
    three = [(f"job-{i}", "acme") for i in range(3)]
    admitted = queue_for_slots(settings, client.store, three, slots=2)
    gauges = RedisGauges(client.store, list, [], Capacity.of(capped(settings, 2)))

    def read() -> dict[str, dict[tuple[str, ...], float]]:
        return {
            family.name: {tuple(s.labels.values()): s.value for s in family.samples}
            for family in gauges.collect()
        }

    read_now = read()
    account = ("runware", "default")
    assert read_now["pollen_account_slots_in_use"] == {account: 2}
    assert read_now["pollen_account_slots_cap"] == {account: 2}
    assert read_now["pollen_admission_waiting_jobs"] == {("runware",): 1}
    # a capacity refusal gives one slot back and lowers the cap to what is still held
    refused = next(iter(admitted.admitted))
    now = time.time()
    client.store.run(
        admission.admit(
            "runware", now=now, limit=0, caps=[("default", 2)], shares={}, submit_watch=now,
            grace=1, requeue=[(refused, "default", "capacity")], cooldown_until=now + 60,
        )
    )  # fmt: skip
    lowered = read()
    assert lowered["pollen_account_slots_in_use"] == {account: 1}
    assert lowered["pollen_account_slots_cap"] == {account: 1}
    assert lowered["pollen_admission_waiting_jobs"] == {("runware",): 2}
    # no capped provider: no slot series at all
    plain = RedisGauges(client.store, list, [], Capacity.of(settings))
    assert "pollen_account_slots_in_use" not in {f.name for f in plain.collect()}
