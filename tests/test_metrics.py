"""The worker's Prometheus endpoint, scraped around a real end-to-end job (prefork pool)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pollen import JobStatus, Pollen
from pollen.local.servers import CallbackReceiver, Worker
from tests.conftest import eventually
from tests.helpers import video_request

pytestmark = pytest.mark.integration
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
        ("pollen_jobs_finished_total", {**rw, "status": "succeeded"}),
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
