"""A ``pollen.submit`` payload the worker refuses, sent by a producer that does not install
pollen (plain ``send_task``): logged, counted, kept where its producer can find it, and
called back where it names a callback URL pollen may call."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celery
import pytest

from pollen import InvalidJob, JobRejected, Pollen
from pollen.addresses import UnsafeCallbackURL
from pollen.callbacks import webhooks
from pollen.errors import IdempotencyConflict
from pollen.local.servers import CallbackReceiver, RedisServer, Worker
from pollen.worker.rejections import REASONS, reason_of
from tests.conftest import BROKER_DB, WEBHOOK_SECRET, eventually
from tests.helpers import video_request
from tests.test_cli import assert_user_error, pollen
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.integration
METRIC = "pollen_jobs_rejected_total"


@pytest.fixture
def producer(redis_server: RedisServer) -> Iterator[celery.Celery]:
    """Another app's Celery, which knows pollen only by its task name."""
    app = celery.Celery(broker=redis_server.url(BROKER_DB), backend=redis_server.url(BROKER_DB))
    yield app
    app.close()


@pytest.fixture
def rejected(worker_env: dict[str, str]) -> Callable[[str], float]:
    """The worker's ``pollen_jobs_rejected_total`` for one reason, scraped now."""
    port = worker_env["POLLEN_METRICS_PORT"]
    return lambda reason: value(scrape(port), METRIC, reason=reason)


def _counted_once(rejected: Callable[[str], float], reason: str, before: float) -> None:
    eventually(lambda: rejected(reason) == before + 1, what=f"the {reason} count")


def _refused(producer: celery.Celery, payload: dict[str, Any]) -> tuple[str, str]:
    """Send the payload; the message id and the refusal its result carries."""
    answer = producer.send_task("pollen.submit", kwargs={"job": payload}, queue="pollen.submit")
    with pytest.raises(Exception) as caught:
        answer.get(timeout=20)
    assert type(caught.value).__name__ == "InvalidJob"
    return str(answer.id), str(caught.value)


def _warnings(worker: Worker, says: str) -> list[dict[str, Any]]:
    assert worker.log_file is not None
    lines = Path(worker.log_file).read_text().splitlines()
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    return [line for line in parsed if line["level"] == "warning" and says in line["message"]]


def test_a_refused_payload_is_logged_counted_kept_and_called_back(
    worker: Worker,
    client: Pollen,
    producer: celery.Celery,
    worker_env: dict[str, str],
    receiver: CallbackReceiver,
    rejected: Callable[[str], float],
) -> None:
    before = rejected("unknown_field")
    payload = {
        "provider": "runware",
        "job_id": "refused-1",
        "tenent": "big",
        "request": video_request([0.2]),
        "callback_url": f"{receiver.url}/refused",
    }
    message_id, error = _refused(producer, payload)
    said = "tenent: unknown field; did you mean 'tenant'?"
    assert error == said

    # the warning names the job and the field, with no traceback
    line = "pollen.submit refused job refused-1 (unknown_field): " + said
    [warning] = eventually(lambda: _warnings(worker, line), what="the warning")
    assert warning["message"] == line and "exception" not in warning

    _counted_once(rejected, "unknown_field", before)

    # kept: the job id answers "rejected", and the latest refusals list it
    with pytest.raises(JobRejected) as info:
        client.get("refused-1")
    assert (info.value.reason, info.value.error) == ("unknown_field", said)
    [latest] = client.rejected(1)
    ident = f"msg_refused-1_rejected_{message_id}"
    assert (latest.job_id, latest.message_id, latest.reason) == (
        "refused-1",
        message_id,
        "unknown_field",
    )
    assert latest.callback == ident
    assert latest.errors[0]["loc"] == ["tenent"]
    assert not client.store.redis.exists("pollen:job:refused-1")  # no job record, in no count
    assert client.store.redis.hgetall("pollen:stats:status") == {}

    # called back, signed like every other event
    [post] = eventually(lambda: receiver.received("/refused"), what="the job.rejected callback")
    webhooks.verify(WEBHOOK_SECRET, post["body"], post["headers"])
    assert post["headers"]["webhook-id"] == ident
    assert post["json"]["type"] == "job.rejected"
    data = post["json"]["data"]
    assert (data["job_id"], data["status"], data["reason"]) == (
        "refused-1",
        "rejected",
        "unknown_field",
    )
    assert (data["message_id"], data["error"]) == (message_id, said)

    # what a user types
    status = pollen(worker_env, "status", "refused-1")
    assert_user_error(status, f"job refused-1 was rejected by a worker (unknown_field): {said}")
    listed = pollen(worker_env, "rejected", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("  ")[1:] == ["refused-1", "unknown_field", said + "\n"]
    deliveries = pollen(worker_env, "callbacks", "list", "refused-1")
    assert deliveries.returncode == 0, deliveries.stderr
    assert f"{ident}  rejected  delivered" in deliveries.stdout


def test_a_refused_payload_without_a_job_id_or_a_callable_url_is_kept_by_its_message(
    worker: Worker,
    client: Pollen,
    producer: celery.Celery,
    rejected: Callable[[str], float],
) -> None:
    before = rejected("invalid_field")
    payload = {
        "provider": "runware",
        "request": video_request([0.2]),
        "priority": "high",
        "callback_url": "http://169.254.169.254/latest",  # the address policy refuses it
    }
    message_id, error = _refused(producer, payload)
    assert error.startswith("priority: ")
    line = f"pollen.submit refused message {message_id} (invalid_field): priority: "
    eventually(lambda: _warnings(worker, line), what="the warning")
    _counted_once(rejected, "invalid_field", before)
    [latest] = client.rejected(1)
    assert (latest.job_id, latest.message_id, latest.callback) == (None, message_id, None)
    assert client.store.redis.zcard("pollen:callbacks:due") == 0  # nothing to deliver


def test_a_malformed_message_is_counted_and_kept(
    worker: Worker, client: Pollen, producer: celery.Celery, rejected: Callable[[str], float]
) -> None:
    before = rejected("malformed")
    answer = producer.send_task("pollen.submit", kwargs={"job": [1, 2]}, queue="pollen.submit")
    with pytest.raises(Exception, match="must be a JSON object"):
        answer.get(timeout=20)
    _counted_once(rejected, "malformed", before)
    assert client.rejected(1)[0].message_id == answer.id


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (IdempotencyConflict("job_id: 'a' was used with a different request"), "conflict"),
        (UnsafeCallbackURL("callback_url: a private address"), "unsafe_callback"),
        (InvalidJob("x: nope", [{"type": "extra_forbidden", "loc": ("x",)}]), "unknown_field"),
        (InvalidJob("deadline: too long", [{"type": "less_than", "loc": ("deadline",)}]),
         "invalid_field"),
        # two problems: the reason is the one the message names
        (InvalidJob("deadline: too long (and 1 more)", [
            {"type": "less_than", "loc": ("deadline",)},
            {"type": "extra_forbidden", "loc": ("x",)},
        ]), "invalid_field"),
        (InvalidJob("x: unknown field (and 1 more)", [
            {"type": "extra_forbidden", "loc": ("x",)},
            {"type": "less_than", "loc": ("deadline",)},
        ]), "unknown_field"),
        (InvalidJob("provider: unknown provider 'x'"), "invalid_field"),
        (InvalidJob("request: nested deeper than 8 levels"), "invalid_field"),
        (InvalidJob("job payload is not valid JSON: ..."), "malformed"),
        (InvalidJob("pollen.submit needs job= (a job payload), job_id= or job_ids="), "malformed"),
    ],
)  # fmt: skip
def test_each_refusal_has_one_of_the_documented_reasons(error: InvalidJob, reason: str) -> None:
    assert reason_of(error) == reason
    assert reason in REASONS


def test_the_latest_refusals_take_a_limit_within_bounds(client: Pollen) -> None:
    assert client.rejected(1000) == []
    for limit in (0, 1001):
        with pytest.raises(InvalidJob, match="limit: give 1 to 1000"):
            client.rejected(limit)
