"""Malformed ``pollen.submit`` messages from producers that do not use pollen's client.

The payload catalogue of ``tests/test_validation.py`` (which sends it through the client) goes
through ``send_task`` here, with hostile callback URLs, wrong message shapes and messages that
are not JSON at all. Each must be refused — its result a failure naming the field, when the
message could be read — with nothing stored, and the worker must go on serving.
"""

from __future__ import annotations

import base64
import json
import pickle
import time
import uuid
from dataclasses import dataclass
from typing import Any

import celery
import pytest
import redis

from pollen import JobStatus
from pollen.simulator import SimulatorServer
from pollen.store import lifecycle
from tests.conftest import eventually
from tests.faults.audit import tally
from tests.faults.conftest import MakeFleet, sim_stats, start_pods
from tests.faults.gate import ProviderGate
from tests.faults.report import CaseRecord
from tests.helpers import video_request
from tests.test_validation import BAD_PAYLOADS, good_payload

pytestmark = [pytest.mark.faults, pytest.mark.integration]

HOSTILE_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/x",
    "http://192.168.1.1/hook",
    "http://[::1]:80/x",
    "http://0xa9fea9fe/",
    "http://2852039166/",
    "http://[::ffff:10.0.0.1]/",
    "http://100.64.0.1/",
    "file:///etc/passwd",
]


@dataclass(frozen=True)
class Bad:
    name: str
    kwargs: dict[str, Any] | None = None
    args: list[Any] | None = None
    expect: str = ""  #: text the failure must contain (the field, or the argument)


def catalogue() -> list[Bad]:
    bad = [Bad(p.id or "?", {"job": p.values[0]}, expect=str(p.values[1])) for p in BAD_PAYLOADS]
    quick = {"interval": 1, "max_delay": 5}  # within these fleets' visibility timeout
    bad += [
        Bad(
            f"callback-{i}",
            {"job": good_payload(callback_url=url, poll=quick)},
            expect="callback_url",
        )
        for i, url in enumerate(HOSTILE_URLS)
    ]
    bad += [
        Bad("no-arguments", {}, expect="job="),
        Bad("unknown-argument", {"job": good_payload(), "priority": 9}, expect="priority"),
        Bad("too-many-arguments", args=[good_payload(), "x", "y"], expect="positional"),
        Bad("job-and-garbage-id", {"job_id": ["not", "an", "id"]}, expect="job"),
    ]
    return bad


def raw_message(queue: str, body: bytes, content_type: str, task_id: str) -> str:
    """A kombu envelope as the Redis transport stores it, around an arbitrary body."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8" if content_type == "application/json" else "binary",
            "content-type": content_type,
            "headers": {"lang": "py", "task": "pollen.submit", "id": task_id, "argsrepr": "()"},
            "properties": {
                "correlation_id": task_id,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "delivery_mode": 2,
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def test_malformed_submit_messages_are_refused_and_the_worker_keeps_serving(
    case: CaseRecord, make_fleet: MakeFleet, gate: ProviderGate, fault_sim: SimulatorServer
) -> None:
    bad = catalogue()
    case.case, case.fault = "11", f"{len(bad)} malformed payloads + 3 unreadable messages"
    case.proves = "each is refused naming the field, nothing is stored, the worker keeps serving"
    fleet = make_fleet()
    start_pods(fleet, ["pod"])
    client = fleet.client()
    queue = fleet.settings().queues.submit
    url = fleet.env["POLLEN_BROKER_URL"]
    producer = celery.Celery(broker=url, backend=url)
    fault_at = time.time()
    answers = [
        (item, producer.send_task("pollen.submit", args=item.args, kwargs=item.kwargs, queue=queue))
        for item in bad
    ]
    # Messages that are not JSON at all: pickle, and garbage under a JSON content type; plus a
    # list entry that is not even a kombu envelope.
    pickled = producer.send_task(
        "pollen.submit", kwargs={"job": good_payload(job_id="pickled")}, queue=queue,
        serializer="pickle",
    )  # fmt: skip
    broker = redis.Redis.from_url(url)
    garbage_id = str(uuid.uuid4())
    broker.lpush(queue, raw_message(queue, b"\x00{not json", "application/json", garbage_id))
    broker.lpush(queue, raw_message(queue, pickle.dumps(object), "application/x-python-serialize",
                                    str(uuid.uuid4())))  # fmt: skip
    good = producer.send_task(
        "pollen.submit",
        kwargs={"job": {"provider": "runware", "request": video_request([0.2])}},
        queue=queue,
    )
    # a well-formed id of no job (its producer rolled it back, or it expired): an expected
    # outcome, one WARNING line in the worker, not a failure
    ghost = producer.send_task("pollen.submit", kwargs={"job_id": "no-such-job"}, queue=queue)
    created = good.get(timeout=30)
    assert ghost.get(timeout=20) == {"job_id": "no-such-job", "missing": True}
    assert created["created"] is True
    job = client.wait(created["job_id"], timeout=20)
    assert job.status is JobStatus.SUCCEEDED

    wrong = []
    for item, answer in answers:
        answer.get(timeout=20, propagate=False)
        if answer.state != "FAILURE" or item.expect not in str(answer.result):
            wrong.append(f"{item.name}: {answer.state} {answer.result!r}")
    assert not wrong, "\n".join(wrong)
    for unreadable in (pickled.id, garbage_id):  # never run, so no result either
        assert producer.AsyncResult(unreadable).state == "PENDING"
    # no job record but the good job's (a refused payload that names a callback URL has its
    # job.rejected delivery kept under its message: pollen:job:<message id>:deliveries)
    records = {str(k) for k in client.store.redis.keys("pollen:job:*") if str(k).count(":") == 2}
    assert records == {f"pollen:job:{created['job_id']}"}
    assert client.store.run(lifecycle.records(["pickled"])) == [{}]  # no such job
    assert fleet.alive("pod")
    eventually(lambda: broker.llen(queue) == 0, what="the queue drained")
    result = tally(client, [job.id], sim_stats=sim_stats(fault_sim))
    result.fill(case, fault_at)
    refused_with = {type(answer.result).__name__ for _, answer in answers}
    case.how = (
        "Sent with a plain `Celery().send_task('pollen.submit', ...)`: the catalogue of "
        f"tests/test_validation.py ({len(BAD_PAYLOADS)} payloads), {len(HOSTILE_URLS)} hostile "
        "callback URLs, wrong argument shapes; then a pickle-serialised message, a JSON-typed "
        "message whose body is garbage and a pickle body pushed straight onto the queue. The "
        f"answers were {', '.join(sorted(refused_with))}; the unreadable messages were dropped "
        "by the worker without a result. A good job sent afterwards succeeded."
    )
    producer.close()
    broker.close()
    client.close()
