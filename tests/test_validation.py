"""The bad producer input catalogue, against the real Redis started by the session.

Every refused payload must raise :class:`InvalidJob` naming the offending field, and leave
nothing behind: no job record in the store (db 1) and no ``pollen.submit`` message on the
broker (db 0). No Celery worker is used here.

The producer in these tests sends to a submit queue of its own (a unique name per test), so
the message count is exact even if another test module started a worker that consumes
``pollen.submit`` in the same session.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest
import redis
from pydantic import ValidationError

from pollen import Pollen
from pollen.errors import IdempotencyConflict, InvalidJob
from pollen.local.servers import RedisServer
from pollen.models import JobStatus
from pollen.payloads import HINT_CUTOFF, TYPO_CUTOFF, parse_job_request
from pollen.settings import QueueSettings, Settings
from pollen.store import keys

STORE_DB, BROKER_DB = 1, 0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def submit_queue() -> str:
    return f"pollen.submit.test-validation.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def empty_store(redis_server: RedisServer) -> None:
    """An empty job store (like conftest's ``clean``, without resetting the simulator, which
    these tests never call: that reset costs ~0.1 s per test)."""
    client = redis.Redis.from_url(redis_server.url(STORE_DB))
    epoch = client.get("pollen:store:epoch")  # keep it, or the workers see a data loss
    client.flushdb()
    if epoch is not None:
        client.set("pollen:store:epoch", epoch)
    client.close()


@pytest.fixture
def producer(settings: Settings, empty_store: None, submit_queue: str) -> Iterator[Pollen]:
    """A producer like the ``client`` fixture, sending to a submit queue of its own."""
    queues = QueueSettings(submit=submit_queue)
    with Pollen(settings.model_copy(update={"queues": queues})) as pollen:
        yield pollen


@pytest.fixture
def store_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(STORE_DB))
    yield client
    client.close()


@pytest.fixture
def broker_redis(redis_server: RedisServer, submit_queue: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(BROKER_DB))
    yield client
    client.delete(submit_queue, f"_kombu.binding.{submit_queue}")
    client.close()


def submit_messages(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The kwargs of every message waiting in ``queue`` (kombu envelope, base64 JSON body)."""
    found = []
    for raw in broker.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        assert envelope["properties"]["body_encoding"] == "base64"
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        assert envelope["headers"]["task"] == "pollen.submit"
        found.append(kwargs)
    return found


# Keys a worker's periodic tasks may write into the store db at any time (a worker started by
# another test module in the same session runs the reconciler). Nothing else may appear.
# Not job data: workers' locks and the store's own markers (epoch, data-loss record).
WORKER_KEY_PREFIXES = (b"pollen:lock:", b"pollen:store:", b"pollen:claims:")


def ready_jobs(store: redis.Redis, broker: redis.Redis, queue: str) -> list[str]:
    """The jobs ``Pollen.submit`` left ready for ``queue``'s wake (group commit), once the one
    message in the queue is that wake."""
    assert submit_messages(broker, queue) == [{"wake": True}]
    return [
        j.decode() if isinstance(j, bytes) else str(j)
        for j in store.zrange(keys.ready_submits(queue), 0, -1)
    ]


def store_keys(store: redis.Redis) -> set[bytes]:
    found = set()
    for key in store.keys("*"):
        assert isinstance(key, bytes)
        if not key.startswith(WORKER_KEY_PREFIXES):
            found.add(key)
    return found


def assert_nothing_left(store: redis.Redis, broker: redis.Redis, queue: str) -> None:
    """Store db empty (but for worker-owned lock keys) and no message in ``queue``."""
    left = store_keys(store)
    assert not left, f"refused input left keys behind: {sorted(left)!r}"
    assert broker.llen(queue) == 0, "refused input was enqueued"


# --------------------------------------------------------------------------- payloads


def good_request() -> dict[str, Any]:
    return {
        "taskType": "videoInference",
        "model": "klingai:5@3",
        "positivePrompt": "a fox running through snow, cinematic",
        "numberResults": 2,
        "duration": 5,
    }


def good_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "provider": "runware",
        "request": good_request(),
        "job_id": "job-42",
        "callback_url": "https://example.test/hooks/pollen",
        "poll": {"interval": 2, "max_delay": 60},
        "deadline": 1800,
        "metadata": {"user": "42"},
    }
    return payload | changes


def without(key: str) -> dict[str, Any]:
    payload = good_payload()
    del payload[key]
    return payload


def with_request(**changes: Any) -> dict[str, Any]:
    return good_payload(request=good_request() | changes)


def request_without(key: str) -> dict[str, Any]:
    request = good_request()
    del request[key]
    return good_payload(request=request)


def nested(levels: int) -> dict[str, Any]:
    """A payload whose request has ``levels`` levels of objects (the request included)."""
    value: Any = "bottom"
    for _ in range(levels - 1):
        value = {"inner": value}
    return good_payload(request=good_request() | {"settings": value})


BAD_PAYLOADS: list[Any] = [
    # provider
    pytest.param(good_payload(provider="midjourney"), "provider", id="unknown-provider"),
    pytest.param(good_payload(provider="RUNWARE"), "provider", id="provider-wrong-case"),
    pytest.param(good_payload(provider=None), "provider", id="provider-null"),
    pytest.param(without("provider"), "provider", id="missing-provider"),
    pytest.param(good_payload(provider=["runware"]), "provider", id="provider-list"),
    # a Runware task sent to another provider: its request model refuses it
    pytest.param(good_payload(provider="useapi_runway"), "text_prompt", id="runware-to-useapi"),
    pytest.param(good_payload(provider="comet_runway"), "request", id="runware-to-comet"),
    # the provider request
    pytest.param(without("request"), "request", id="missing-request"),
    pytest.param(good_payload(request="make a video"), "request", id="request-is-a-string"),
    pytest.param(good_payload(request=[good_request()]), "request", id="request-is-an-array"),
    pytest.param(request_without("taskType"), "taskType", id="missing-taskType"),
    pytest.param(with_request(taskType="VideoInference"), "taskType", id="taskType-case"),
    pytest.param(with_request(taskType="getResponse"), "taskType", id="taskType-not-inference"),
    pytest.param(with_request(taskType="video inference"), "taskType", id="taskType-space"),
    pytest.param(request_without("model"), "model", id="missing-model"),
    pytest.param(with_request(model=""), "model", id="model-empty"),
    pytest.param(with_request(model="m" * 10_000), "model", id="model-10k"),
    pytest.param(with_request(numberResults=0), "numberResults", id="numberResults-0"),
    pytest.param(with_request(numberResults=21), "numberResults", id="numberResults-21"),
    pytest.param(with_request(numberResults="three"), "numberResults", id="numberResults-str"),
    pytest.param(with_request(numberResults=2.5), "numberResults", id="numberResults-2.5"),
    pytest.param(with_request(positivePrompt=""), "positivePrompt", id="prompt-empty"),
    pytest.param(with_request(positivePrompt="p" * 20_000), "positivePrompt", id="prompt-20k"),
    pytest.param(with_request(taskUUID=str(uuid.uuid4())), "taskUUID", id="taskUUID-given"),
    pytest.param(with_request(deliveryMethod="sync"), "deliveryMethod", id="deliveryMethod"),
    pytest.param(nested(12), "nested", id="request-nested-12"),
    pytest.param(nested(9), "nested", id="request-nested-9"),
    pytest.param(with_request(blob="x" * 100_000), "request", id="request-100KB"),
    pytest.param(with_request(strength=math.nan), "request", id="request-NaN"),
    # top level
    pytest.param(good_payload(priority="high"), "priority", id="unknown-top-level-field"),
    pytest.param(good_payload(taskUUID="x"), "taskUUID", id="top-level-taskUUID"),
    # callback_url
    pytest.param(good_payload(callback_url="ftp://x"), "callback_url", id="callback-ftp"),
    pytest.param(good_payload(callback_url="not a url"), "callback_url", id="callback-not-url"),
    pytest.param(
        good_payload(callback_url="javascript:alert(1)"), "callback_url", id="callback-javascript"
    ),
    pytest.param(good_payload(callback_url="http://"), "callback_url", id="callback-no-host"),
    pytest.param(
        good_payload(callback_url="https://x.test/" + "a" * 3000), "callback_url", id="callback-3k"
    ),
    # job_id
    pytest.param(good_payload(job_id="my job"), "job_id", id="job_id-space"),
    pytest.param(good_payload(job_id="j" * 200), "job_id", id="job_id-200"),
    pytest.param(good_payload(job_id="-job"), "job_id", id="job_id-leading-dash"),
    pytest.param(good_payload(job_id="jöb-ünïcode"), "job_id", id="job_id-unicode"),
    pytest.param(good_payload(job_id="job\n"), "job_id", id="job_id-newline"),
    pytest.param(good_payload(job_id=""), "job_id", id="job_id-empty"),
    pytest.param(good_payload(job_id="a/b"), "job_id", id="job_id-slash"),
    pytest.param(good_payload(job_id=42), "job_id", id="job_id-int"),
    # deadline
    pytest.param(good_payload(deadline=0), "deadline", id="deadline-0"),
    pytest.param(good_payload(deadline=-5), "deadline", id="deadline-negative"),
    pytest.param(good_payload(deadline=math.nan), "deadline", id="deadline-NaN"),
    pytest.param(good_payload(deadline=math.inf), "deadline", id="deadline-inf"),
    pytest.param(good_payload(deadline=10**9), "deadline", id="deadline-1e9"),
    pytest.param(good_payload(deadline="soon"), "deadline", id="deadline-str"),
    # poll overrides
    pytest.param(good_payload(poll={"speed": 2}), "poll.speed", id="poll-unknown-key"),
    pytest.param(good_payload(poll={"deadline": 60}), "poll.deadline", id="poll-deadline"),
    pytest.param(good_payload(poll={"interval": -1}), "poll.interval", id="poll-interval-neg"),
    pytest.param(good_payload(poll={"factor": 0.5}), "poll.factor", id="poll-factor-0.5"),
    pytest.param(good_payload(poll={"jitter": 2}), "poll.jitter", id="poll-jitter-2"),
    pytest.param(good_payload(poll={"interval": math.nan}), "poll.interval", id="poll-NaN"),
    pytest.param(good_payload(poll="fast"), "poll", id="poll-not-object"),
    # metadata
    pytest.param(good_payload(metadata={"user": 42}), "metadata", id="metadata-int-value"),
    pytest.param(good_payload(metadata={"tags": ["a"]}), "metadata", id="metadata-list-value"),
    pytest.param(
        good_payload(metadata={f"k{i}": "v" for i in range(33)}), "metadata", id="metadata-33"
    ),
    pytest.param(good_payload(metadata={"k": "v" * 600}), "metadata", id="metadata-long-value"),
    pytest.param(good_payload(metadata={"k" * 65: "v"}), "metadata", id="metadata-long-key"),
    pytest.param(good_payload(metadata=["user"]), "metadata", id="metadata-list"),
    # not a payload at all
    pytest.param([good_payload()], "payload", id="payload-list"),
    pytest.param("{'provider': 'runware',", "payload", id="payload-garbage-json-string"),
    pytest.param('["runware"]', "payload", id="payload-json-array-string"),
    pytest.param(None, "payload", id="payload-none"),
    pytest.param(42, "payload", id="payload-int"),
]


@pytest.mark.parametrize(("payload", "field"), BAD_PAYLOADS)
def test_bad_payload_is_refused_naming_the_field(
    producer: Pollen,
    store_redis: redis.Redis,
    broker_redis: redis.Redis,
    submit_queue: str,
    payload: Any,
    field: str,
) -> None:
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload(payload)
    assert field in str(info.value)
    assert_nothing_left(store_redis, broker_redis, submit_queue)


def test_the_catalogue_is_large_enough() -> None:
    assert len(BAD_PAYLOADS) >= 25


def test_invalid_job_carries_every_pydantic_error(producer: Pollen) -> None:
    payload = good_payload(deadline=-1, job_id="bad id", request=good_request() | {"model": ""})
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload(payload)
    assert "(and 2 more)" in str(info.value)
    assert len(info.value.errors) == 3
    # Each error's location ends with the field path (the first part may be the union's tag).
    locations = []
    for error in info.value.errors:
        loc = error["loc"]
        assert isinstance(loc, tuple)
        locations.append(".".join(str(part) for part in loc))
    for field in ("request.model", "job_id", "deadline"):
        assert sum(loc.endswith(field) for loc in locations) == 1, locations


@pytest.mark.parametrize(
    ("call", "field"),
    [
        pytest.param({"provider": "comet"}, "provider", id="unknown-provider"),
        pytest.param({"callback_url": "ftp://x"}, "callback_url", id="callback-ftp"),
        pytest.param({"job_id": "has space"}, "job_id", id="job_id-space"),
        pytest.param({"deadline": 0}, "deadline", id="deadline-0"),
        pytest.param({"poll": {"factor": 0.5}}, "poll.factor", id="poll-factor"),
        pytest.param({"metadata": {"n": 1}}, "metadata", id="metadata-int"),
        pytest.param({"request": good_request() | {"taskUUID": "mine"}}, "taskUUID", id="taskUUID"),
    ],
)
def test_bad_submit_call_is_refused_naming_the_field(
    producer: Pollen,
    store_redis: redis.Redis,
    broker_redis: redis.Redis,
    submit_queue: str,
    call: dict[str, Any],
    field: str,
) -> None:
    arguments: dict[str, Any] = {"provider": "runware", "request": good_request()} | call
    with pytest.raises(InvalidJob) as info:
        producer.submit(**arguments)
    assert field in str(info.value)
    assert_nothing_left(store_redis, broker_redis, submit_queue)


# --------------------------------------------------------------------------- pollen bugs


def test_poll_overrides_with_min_above_max_are_invalid_job(producer: Pollen) -> None:
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload(good_payload(poll={"min_delay": 5, "max_delay": 1}))
    assert "poll" in str(info.value)


def test_request_nested_thousands_of_levels_is_invalid_job(producer: Pollen) -> None:
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload(nested(5000))
    assert "request" in str(info.value)


def test_deeply_nested_json_string_payload_is_invalid_job(producer: Pollen) -> None:
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload("[" * 100_000 + "]" * 100_000)  # type: ignore[arg-type]
    assert "payload" in str(info.value)


# --------------------------------------------------------------------------- accepted input


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(with_request(numberResults=20), id="numberResults-20"),
        pytest.param(with_request(numberResults=1), id="numberResults-1"),
        pytest.param(with_request(model="m" * 200), id="model-200"),
        pytest.param(with_request(positivePrompt="p" * 10_000), id="prompt-10k"),
        pytest.param(good_payload(job_id="J" * 128), id="job_id-128"),
        pytest.param(good_payload(job_id="a.b:c_d-e"), id="job_id-punctuation"),
        pytest.param(nested(8), id="request-nested-8"),
        pytest.param(good_payload(deadline=7 * 86400), id="deadline-7d"),
        pytest.param(good_payload(callback_url="http://example.com:8080/cb"), id="callback-http"),
        pytest.param(good_payload(metadata={f"k{i}": "v" * 512 for i in range(32)}), id="meta-32"),
    ],
)
def test_boundary_payloads_are_accepted(
    producer: Pollen,
    broker_redis: redis.Redis,
    submit_queue: str,
    payload: Any,
) -> None:
    job_id = producer.submit_payload(payload)
    assert producer.status(job_id) is JobStatus.QUEUED
    assert ready_jobs(producer.store.redis, broker_redis, submit_queue) == [job_id]


def test_payload_as_a_json_string_is_accepted(
    producer: Pollen, broker_redis: redis.Redis, submit_queue: str
) -> None:
    job_id = producer.submit_payload(json.dumps(good_payload()))  # type: ignore[arg-type]
    assert job_id == "job-42"
    assert producer.status(job_id) is JobStatus.QUEUED
    assert ready_jobs(producer.store.redis, broker_redis, submit_queue) == [job_id]


def test_the_same_job_id_twice_is_one_job_and_one_message(
    producer: Pollen,
    store_redis: redis.Redis,
    broker_redis: redis.Redis,
    submit_queue: str,
) -> None:
    payload = good_payload(job_id="idem-1")
    first = producer.submit_payload(payload)
    second = producer.submit_payload(payload)
    assert first == second == "idem-1"
    # A different payload under the same id is refused, and changes nothing.
    with pytest.raises(IdempotencyConflict, match="'idem-1' was already used with a different"):
        producer.submit_payload(good_payload(job_id="idem-1", metadata={"user": "other"}))
    assert store_redis.keys("pollen:job:idem-1") == [b"pollen:job:idem-1"]
    assert store_redis.hget("pollen:stats:status", "queued") == b"1"
    assert store_redis.zrange("pollen:inflight", 0, -1) == [b"idem-1"]
    assert ready_jobs(store_redis, broker_redis, submit_queue) == ["idem-1"]
    assert broker_redis.llen(submit_queue) == 1
    job = producer.get("idem-1")
    assert job.status is JobStatus.QUEUED
    assert job.metadata == {"user": "42"}


def test_submit_twice_through_the_keyword_api(
    producer: Pollen, store_redis: redis.Redis, broker_redis: redis.Redis, submit_queue: str
) -> None:
    ids = {producer.submit("runware", good_request(), job_id="idem-2") for _ in range(3)}
    assert ids == {"idem-2"}
    # One job: its record, the in-flight indexes, the listing index and the status counters
    # (all jobs', and its tenant's).
    assert store_keys(store_redis) == {
        b"pollen:job:idem-2",
        b"pollen:inflight",
        b"pollen:inflight:created",
        b"pollen:index:runware:queued",
        b"pollen:stats:status",
        b"pollen:stats:tenant",
        # ready for the one wake message of this submit queue (group commit)
        keys.ready_submits(submit_queue).encode(),
        keys.submit_wake(submit_queue).encode(),
    }
    assert store_redis.hget("pollen:stats:status", "queued") == b"1"  # counted once
    assert store_redis.hget("pollen:stats:tenant", "default|queued") == b"1"
    assert ready_jobs(store_redis, broker_redis, submit_queue) == ["idem-2"]


def test_accepted_job_is_stored_as_sent(producer: Pollen) -> None:
    job_id = producer.submit_payload(good_payload(job_id=None))
    assert len(job_id) == 32 and int(job_id, 16) >= 0  # a fresh uuid4 hex
    job = producer.get(job_id)
    assert job.status is JobStatus.QUEUED
    assert job.provider == "runware"
    assert job.expected_results == 2
    assert job.request == good_request()  # unknown Runware parameters pass through
    assert "taskUUID" not in job.request
    assert job.task_uuid and job.task_uuid != job_id
    assert job.callback_url == "https://example.test/hooks/pollen"
    assert job.metadata == {"user": "42"}
    assert job.policy.interval == 2 and job.policy.max_delay == 60
    assert job.policy.deadline == 1800
    assert job.deadline_at == pytest.approx(job.created_at + 1800)


def test_the_shared_client_fixture_refuses_too(
    client: Pollen, store_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """The conftest ``client`` (default queue ``pollen.submit``) refuses before any I/O."""
    broker = redis.Redis.from_url(redis_server.url(BROKER_DB))
    try:
        before = broker.llen("pollen.submit")
        with pytest.raises(InvalidJob, match="provider"):
            client.submit_payload(good_payload(provider="nope"))
        assert not store_keys(store_redis)
        assert client._celery is None  # the broker was never even connected to
        assert broker.llen("pollen.submit") <= before
    finally:
        broker.close()


# --------------------------------------------------------------------------- misspelt fields

RUNWARE_IMAGE = {"taskType": "imageInference", "model": "runware:100@1", "positivePrompt": "a fox"}
RUNWARE_AUDIO = {"taskType": "audioInference", "model": "m", "positivePrompt": "rain"}
USEAPI = {"text_prompt": "a cat chasing a dog"}
COMET = {"model": "gen4_turbo", "promptText": "the cat jumps"}


class Misspelling(NamedTuple):
    """A dialect's request, an unknown field close to a typed one, the field it was meant as,
    and an unknown field the provider may well take: far enough from every typed one."""

    provider: str
    request: dict[str, Any]
    typo: str
    meant: str
    other: str


DIALECTS = [
    pytest.param(Misspelling("runware", good_request(), "positivPrompt", "positivePrompt",
                             "outputFormat"), id="runware-video"),
    pytest.param(Misspelling("runware", RUNWARE_IMAGE, "negativeprompt", "negativePrompt",
                             "CFGScale"), id="runware-image"),
    pytest.param(Misspelling("runware", RUNWARE_AUDIO, "numberResult", "numberResults",
                             "outputType"), id="runware-other-task"),
    pytest.param(Misspelling("useapi_runway", USEAPI, "textPrompt", "text_prompt",
                             "image_last"), id="useapi"),
    pytest.param(Misspelling("comet_runway", COMET, "promptImages", "promptImage",
                             "contentModeration"), id="comet"),
]  # fmt: skip


def likeness(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


def typed_fields(provider: str, request: dict[str, Any]) -> list[str]:
    job = parse_job_request({"provider": provider, "request": request}, max_request_bytes=9999)
    return list(type(job.request).model_fields)


@pytest.mark.parametrize("case", DIALECTS)
def test_a_field_close_to_a_typed_one_is_refused_with_a_suggestion(
    producer: Pollen,
    store_redis: redis.Redis,
    broker_redis: redis.Redis,
    submit_queue: str,
    case: Misspelling,
) -> None:
    assert likeness(case.typo, case.meant) >= TYPO_CUTOFF
    with pytest.raises(InvalidJob) as info:
        producer.submit(case.provider, case.request | {case.typo: "x"})
    said = f"unknown field; did you mean {case.meant!r}?"
    assert str(info.value) == f"request.{case.typo}: {said}"
    assert info.value.errors == [
        {"type": "unknown_field", "loc": ("request", case.typo), "msg": said}
    ]
    assert_nothing_left(store_redis, broker_redis, submit_queue)


@pytest.mark.parametrize("case", DIALECTS)
def test_a_field_far_from_every_typed_one_passes_through(
    producer: Pollen, case: Misspelling
) -> None:
    fields = typed_fields(case.provider, case.request)
    assert max(likeness(case.other, field) for field in fields) < TYPO_CUTOFF
    job_id = producer.submit(case.provider, case.request | {case.other: "x"})
    assert producer.get(job_id).request[case.other] == "x"


def test_the_cutoff_lies_between_a_typo_and_a_real_parameter(producer: Pollen) -> None:
    """Runware's inputs.referenceVideos is a parameter of its own, 0.80 like referenceImages;
    inputs.referenceImage (0.97) is a typo."""
    assert likeness("referenceVideos", "referenceImages") < TYPO_CUTOFF
    assert likeness("referenceImage", "referenceImages") >= TYPO_CUTOFF
    videos = with_request(inputs={"referenceVideos": ["https://example.test/a.mp4"]})
    job_id = producer.submit_payload(videos | {"job_id": None})
    assert producer.get(job_id).request["inputs"] == videos["request"]["inputs"]
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload(with_request(inputs={"referenceImage": ["https://x.test/a"]}))
    assert str(info.value) == (
        "request.inputs.referenceImage: unknown field; did you mean 'referenceImages'?"
    )


def test_every_misspelt_field_is_named(producer: Pollen) -> None:
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload(with_request(positivPrompt="a", durration=5))
    assert str(info.value).endswith("(and 1 more)")
    assert [error["loc"] for error in info.value.errors] == [
        ("request", "positivPrompt"),
        ("request", "durration"),
    ]


def test_a_typed_request_with_a_misspelt_field_is_refused_at_submit(producer: Pollen) -> None:
    from pollen.requests import RunwareVideoRequest

    request = RunwareVideoRequest(model="klingai:5@3", positivPrompt="a fox")
    with pytest.raises(InvalidJob, match=r"^request\.positivPrompt: unknown field; did you "):
        producer.submit("runware", request)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("callbak_url", "callback_url"), ("tenent", "tenant"), ("prority", "priority")],
)
def test_a_misspelt_job_field_is_refused_with_a_suggestion(
    producer: Pollen,
    store_redis: redis.Redis,
    broker_redis: redis.Redis,
    submit_queue: str,
    typo: str,
    meant: str,
) -> None:
    assert likeness(typo, meant) >= HINT_CUTOFF
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload(good_payload(**{typo: "x"}))
    said = f"unknown field; did you mean {meant!r}?"
    assert str(info.value) == f"{typo}: {said}"
    assert info.value.errors == [{"type": "unknown_field", "loc": (typo,), "msg": said}]
    assert_nothing_left(store_redis, broker_redis, submit_queue)


def test_a_job_field_far_from_every_one_is_refused_without_a_suggestion(producer: Pollen) -> None:
    fields = type(parse_job_request(good_payload(), max_request_bytes=99999)).model_fields
    assert max(likeness("colour", field) for field in fields) < HINT_CUTOFF
    with pytest.raises(InvalidJob) as info:
        producer.submit_payload(good_payload(colour="x"))
    assert str(info.value) == "colour: Extra inputs are not permitted"


# --------------------------------------------------------------------------- settings


def test_visibility_timeout_must_cover_countdowns_and_time_limit() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(visibility_timeout=100, task_time_limit=120)
    assert "visibility_timeout" in str(info.value)


def test_visibility_timeout_just_above_the_floor_is_accepted() -> None:
    settings = Settings(visibility_timeout=151, task_time_limit=120)  # default max_delay 30
    assert settings.visibility_timeout == 151
    with pytest.raises(ValidationError, match="visibility_timeout"):
        Settings(visibility_timeout=150, task_time_limit=120)


AMQP = "amqp://guest:guest@rabbit.example:5672//"
STORE = "redis://store.example:6379/1"


def test_the_result_backend_defaults_to_the_broker_on_redis_and_to_the_store_otherwise() -> None:
    redis_broker = Settings(redis_url=STORE, broker_url="redis://broker.example:6379/0")
    assert redis_broker.backend == "redis://broker.example:6379/0"  # as it always was
    assert Settings(redis_url=STORE).backend == STORE  # the broker is the store
    rabbit = Settings(redis_url=STORE, broker_url=AMQP)
    assert (rabbit.broker, rabbit.backend, rabbit.backend_default) == (
        AMQP, STORE, "POLLEN_REDIS_URL"
    )  # fmt: skip
    chosen = Settings(redis_url=STORE, broker_url=AMQP, result_backend="redis://r.example/2")
    assert chosen.backend == "redis://r.example/2"


def test_the_visibility_timeout_floor_is_a_redis_broker_rule() -> None:
    assert Settings(broker_url=AMQP, visibility_timeout=100).visibility_timeout == 100
    with pytest.raises(ValidationError, match="visibility_timeout"):
        Settings(broker_url="redis://broker.example:6379/0", visibility_timeout=100)


def test_quorum_queues_need_an_amqp_broker() -> None:
    assert Settings(broker_url=AMQP, quorum_queues=True).quorum_queues
    assert Settings(broker_url="pyamqp://rabbit.example//", quorum_queues=True).quorum_queues
    with pytest.raises(ValidationError, match="POLLEN_QUORUM_QUEUES: quorum queues are a Rabbit"):
        Settings(redis_url=STORE, quorum_queues=True)


def test_rabbitmq_publishes_are_confirmed_and_quorum_queues_use_topic_exchanges() -> None:
    from pollen import contract

    classic = contract.celery_config(Settings(broker_url=AMQP))
    assert [q.exchange.type for q in classic["task_queues"]] == ["direct"] * 3
    assert not any(q.queue_arguments for q in classic["task_queues"])
    assert classic["broker_transport_options"]["confirm_publish"] is True
    on_redis = contract.celery_config(Settings(redis_url=STORE))
    assert "confirm_publish" not in on_redis["broker_transport_options"]
    assert classic["task_default_queue_type"] == "classic"

    quorum = contract.celery_config(Settings(broker_url=AMQP, quorum_queues=True))
    queues = quorum["task_queues"]
    assert [(q.name, q.routing_key) for q in queues] == [(q.name, q.name) for q in queues]
    assert [q.exchange.type for q in queues] == ["topic"] * 3
    assert all(q.queue_arguments == {"x-queue-type": "quorum"} for q in queues)
    assert quorum["broker_transport_options"]["confirm_publish"] is True
    assert quorum["task_default_queue_type"] == "quorum"
    app = contract.producer_app(Settings(broker_url=AMQP, quorum_queues=True), timeout=1)
    try:  # a bounded publish keeps the confirms
        assert app.conf.broker_transport_options["confirm_publish"] is True
        assert contract.quorum_queues(app)
    finally:
        app.close()


@pytest.mark.parametrize(
    ("countdown", "sent"),
    [(None, None), (0, None), (-0.5, None), (0.2, 1), (0.999, 1), (1.0, 1), (1.001, 2), (30, 30)],
)
def test_quorum_countdowns_are_whole_seconds_rounded_up(
    countdown: float | None, sent: int | None
) -> None:
    from pollen.contract import whole_seconds

    assert whole_seconds(countdown, None, datetime.now(UTC)) == sent


def test_a_quorum_eta_becomes_a_whole_second_countdown() -> None:
    from pollen.contract import whole_seconds

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert whole_seconds(None, now + timedelta(seconds=0.3), now) == 1
    assert whole_seconds(None, now + timedelta(seconds=2.5), now) == 3
    assert whole_seconds(None, (now + timedelta(seconds=4)).isoformat(), now) == 4
    assert whole_seconds(None, now - timedelta(seconds=1), now) is None  # overdue: now
    assert whole_seconds(None, now.replace(tzinfo=None) + timedelta(seconds=1), now) == 1


# --- typed requests -----------------------------------------------------------------------


def test_a_typed_request_is_the_same_job_as_its_dict() -> None:
    from pollen import RunwareVideoRequest
    from pollen.payloads import fingerprint, parse_job_request
    from pollen.producer import payload_of

    typed = RunwareVideoRequest(model="klingai:5@3", positivePrompt="a fox", duration=5)
    as_dict = {"taskType": "videoInference", "model": "klingai:5@3", "positivePrompt": "a fox",
               "duration": 5, "numberResults": 1}  # fmt: skip
    parsed = [parse_job_request(payload_of("runware", r), max_request_bytes=65536)
              for r in (typed, as_dict)]  # fmt: skip
    assert fingerprint(parsed[0]) == fingerprint(parsed[1])  # one idempotency key
    assert type(parsed[0].request).__name__ == "RunwareVideoRequest"


def test_typed_request_fields_are_checked_where_the_request_is_built() -> None:
    from pollen import CometRunwayRequest, RunwareImageRequest, UseapiRunwayRequest

    with pytest.raises(ValidationError, match="width"):
        RunwareImageRequest(model="runware:101@1", width=10)
    with pytest.raises(ValidationError, match="resolution"):
        UseapiRunwayRequest(text_prompt="a storm", resolution="4k")
    with pytest.raises(ValidationError, match="promptText or promptImage"):
        CometRunwayRequest(model="gen4_turbo")
    other = RunwareImageRequest(model="runware:101@1", outputFormat="WEBP")  # passes through
    assert other.model_dump()["outputFormat"] == "WEBP"


@pytest.mark.parametrize(
    ("request_body", "path"),
    [
        ({"taskType": "imageInference", "model": "m", "width": 10}, "request.width"),
        ({"taskType": "videoInference", "model": "m", "duration": 0}, "request.duration"),
        ({"taskType": "audioInference", "model": ""}, "request.model"),  # any other task type
        ({"model": "m"}, "request.taskType"),
    ],
)
def test_a_dict_request_names_the_bad_field_without_union_tags(
    request_body: dict[str, Any], path: str
) -> None:
    from pollen.payloads import parse_job_request

    with pytest.raises(InvalidJob) as info:
        parse_job_request({"provider": "runware", "request": request_body}, max_request_bytes=9999)
    assert str(info.value).startswith(f"{path}: ")
    assert info.value.errors[0]["loc"] == tuple(path.split("."))


@pytest.mark.parametrize(
    ("payload", "first_release"),
    [
        (
            {"provider": "runware", "request": {"taskType": "videoInference",
             "model": "klingai:5@3", "positivePrompt": "a fox", "numberResults": 2,
             "duration": 5}, "job_id": "j1", "metadata": {"a": "b"}},
            "b824d4250669b08f3b73d7e2b125b7901237e1830bd6d3d924063939e128680e",
        ),
        (
            {"provider": "runware", "request": {"taskType": "imageInference",
             "model": "runware:101@1", "width": 512, "height": 512}},
            "c9d6d41dd23b2c7e3f2d127d98c8baf72f608f8935cf493ebffb2b9b46927d98",
        ),
        (
            {"provider": "useapi_runway", "request": {"text_prompt": "a storm", "seconds": 10}},
            "a96eed68eaa6331ad3b15ef0081029e24743020b23e7e0454d17951ebae28ecf",
        ),
        (
            {"provider": "comet_runway", "request": {"model": "gen4_turbo",
             "promptText": "a cat"}, "callback_url": "https://example.com/cb"},
            "612beef8400603c1e0ef859332adccfb4fb0b36f216fa8a0b0f16ed5ee2128b1",
        ),
    ],
)  # fmt: skip
def test_typed_requests_keep_the_idempotency_keys_of_earlier_releases(
    payload: dict[str, Any], first_release: str
) -> None:
    """A job_id submitted before the request models were typed is still the same job after:
    the fingerprints below were computed by the release before (commit 4c22116)."""
    from pollen.payloads import fingerprint, parse_job_request

    assert fingerprint(parse_job_request(payload, max_request_bytes=65536)) == first_release
