"""Enqueue outcomes: a job is rolled back only when its message was not sent; a message for a
job that does not exist is one warning in the worker, not a traceback."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pollen import JobStatus, Pollen, contract
from pollen.local.servers import Worker
from pollen.settings import Settings
from pollen.store import keys
from tests.conftest import eventually
from tests.helpers import video_request

pytestmark = pytest.mark.integration


def test_a_producer_with_a_broken_result_backend_enqueues_and_the_job_runs(
    worker: Worker, settings: Settings, client: Pollen, caplog: pytest.LogCaptureFixture
) -> None:
    # A producer never reads results: its backend setting is not loaded to send a message.
    broken = settings.model_copy(update={"result_backend": "nosuch://nowhere"})
    with pytest.raises(Exception, match="nosuch"):  # what a plain Celery publish trips on
        contract.producer_app(broken).AsyncResult("x")
    with Pollen(broken) as producer, caplog.at_level(logging.WARNING, "pollen.producer"):
        job_id = producer.submit("runware", video_request([0.3]), job_id="backend-broken")
    assert job_id == "backend-broken"
    assert caplog.records == []
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED


class FailsAfterPublish(Celery):  # type: ignore[misc]
    """A Celery app whose publish goes out and then fails: what a broken step after the
    publish (a result backend, a signal, a later Celery release) does to its caller."""

    def send_task(self, *args: Any, **kwargs: Any) -> Any:
        super().send_task(*args, **kwargs)
        raise RuntimeError("broken after the publish")


class FailsBeforePublish(Celery):  # type: ignore[misc]
    def send_task(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broker refused")


class LosesThePublish(Celery):  # type: ignore[misc]
    """A Celery app whose message is taken and then lost (a broker that dropped it)."""

    def send_task(self, *args: Any, result_cls: Any, **kwargs: Any) -> Any:
        return result_cls("lost")


def _producer(settings: Settings, app_class: type[Celery]) -> Pollen:
    producer = Pollen(settings)
    app = app_class("pollen")
    app.conf.update(contract.celery_config(settings))
    producer._celery = app
    return producer


def test_an_error_after_the_publish_keeps_the_job_and_the_worker_runs_it(
    worker: Worker, settings: Settings, client: Pollen, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        _producer(settings, FailsAfterPublish) as producer,
        caplog.at_level(logging.WARNING, "pollen.producer"),
    ):
        job_id = producer.submit("runware", video_request([0.3]), job_id="sent-then-failed")
    [record] = caplog.records
    assert "was sent" in record.getMessage()
    assert "broken after the publish" in record.getMessage()
    assert "sent-then-failed" in record.getMessage()
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED


def test_an_error_before_the_publish_still_rolls_the_job_back(
    settings: Settings, client: Pollen
) -> None:
    with (
        _producer(settings, FailsBeforePublish) as producer,
        pytest.raises(Exception, match="could not enqueue job unsent: broker refused"),
    ):
        producer.submit("runware", video_request([0.3]), job_id="unsent")
    assert client.store.redis.keys("pollen:job:*") == []


def test_a_job_whose_wake_was_lost_is_sent_by_the_periodic_round(
    worker: Worker, settings: Settings, client: Pollen
) -> None:
    """Jobs wait for a wake in the ready set; one whose wake never arrives (lost, or sent by a
    producer whose publish failed after the job rode on it) is sent by the workers' periodic
    round once it has waited twice the wake mark's life."""
    client.store.redis.delete(keys.submit_wake(settings.queues.submit))
    with _producer(settings, LosesThePublish) as producer:
        started = time.monotonic()
        job_id = producer.submit("runware", video_request([0.2]), job_id="wake-lost")
        rider = producer.submit("runware", video_request([0.2]), job_id="wake-lost-rider")
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED
    assert client.wait(rider, timeout=20).status is JobStatus.SUCCEEDED
    assert client.get(job_id).submit_attempts == 1  # sent once, not by the reconciler too
    assert time.monotonic() - started >= 2 * keys.WAKE_MS / 1000


def _worker_lines(worker: Worker) -> list[dict[str, Any]]:
    assert worker.log_file is not None
    text = Path(worker.log_file).read_text()
    return [json.loads(raw) for raw in text.splitlines() if raw.startswith("{")]


def test_a_message_for_a_missing_job_is_one_warning_without_a_traceback(
    worker: Worker, client: Pollen
) -> None:
    answer = client.celery.send_task(
        contract.SUBMIT, kwargs={"job_id": "never-stored"}, queue=client.settings.queues.submit
    )
    assert answer.get(timeout=20) == {"job_id": "never-stored", "missing": True}

    def about_it() -> list[dict[str, Any]]:
        return [line for line in _worker_lines(worker) if "never-stored" in json.dumps(line)]

    eventually(lambda: any(line["level"] == "warning" for line in about_it()), what="the warning")
    [warning] = [line for line in about_it() if line["level"] == "warning"]
    assert warning["message"] == "pollen.submit: job never-stored not found; its message is dropped"
    assert not [line for line in about_it() if "exception" in line or line["level"] == "error"]
    assert "JobNotFound" not in json.dumps(about_it())
