"""Store operations as plain generators, run by a synchronous or an asyncio Redis client.

The producer's reads and writes (store jobs, read them, cancel, list) are written once, here,
with no I/O: an operation is a generator that yields a batch of Redis commands, receives
their replies (one pipeline round trip per batch), and returns its answer. :func:`run` drives
it on ``redis.Redis`` (:class:`pollen.store.jobs.Store`, :class:`pollen.Pollen`),
:func:`arun` on ``redis.asyncio.Redis`` (:class:`pollen.AsyncPollen`): two thin I/O faces,
one implementation of what is read, written and concluded (the approach of sans-I/O
libraries such as h11, and of httpx's shared sync/async models).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from pollen.backoff import PollPolicy
from pollen.errors import IdempotencyConflict, StoreUnavailable
from pollen.models import (
    ErrorInfo,
    GenerationError,
    GenerationResult,
    Job,
    JobStatus,
    StoredCopy,
)
from pollen.store import keys

T = TypeVar("T")


@dataclass(frozen=True)
class Cmd:
    """One Redis command: a method of redis-py's pipeline (so replies get redis-py's types)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lua:
    """One call of a store script (``pollen/store/lua/<name>.lua``)."""

    name: str
    keys: list[str]
    args: list[Any]


Batch = list[Cmd | Lua]
#: an operation: yields batches, receives each batch's replies, returns its answer
Op = Generator[Batch, list[Any], T]


def cmd(method: str, *args: Any, **kwargs: Any) -> Cmd:
    return Cmd(method, args, kwargs)


def _queue(pipe: Any, scripts: Mapping[str, Any], batch: Batch) -> None:
    for item in batch:
        if isinstance(item, Lua):
            # what redis-py's Script does with a pipeline, for sync and asyncio alike: the
            # pipeline loads the script on first use, then calls it by its sha
            script = scripts[item.name]
            pipe.scripts.add(script)
            pipe.evalsha(script.sha, len(item.keys), *item.keys, *item.args)
        else:
            getattr(pipe, item.method)(*item.args, **item.kwargs)


def execute(client: Any, scripts: Mapping[str, Any], batch: Batch) -> list[Any]:
    """One batch in one pipeline round trip on a ``redis.Redis`` client; the replies."""
    if not batch:
        return []
    pipe = client.pipeline(transaction=False)
    _queue(pipe, scripts, batch)
    return list(pipe.execute())


async def aexecute(client: Any, scripts: Mapping[str, Any], batch: Batch) -> list[Any]:
    """:func:`execute` on a ``redis.asyncio.Redis`` client."""
    if not batch:
        return []
    async with client.pipeline(transaction=False) as pipe:
        _queue(pipe, scripts, batch)
        return list(await pipe.execute())


@contextmanager
def guard() -> Iterator[None]:
    """Map Redis failures onto pollen's error tree (a full Redis is a clear error)."""
    try:
        yield
    except redis.ResponseError as exc:
        if "OOM" in str(exc) or "READONLY" in str(exc):
            raise StoreUnavailable(f"Redis refused the write: {exc}") from exc
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc


def run(client: Any, scripts: Mapping[str, Any], op: Op[T]) -> T:
    """Drive ``op`` on a ``redis.Redis`` client (``scripts``: its registered store scripts)."""
    try:
        batch = next(op)
        while True:
            batch = op.send(execute(client, scripts, batch))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(client: Any, scripts: Mapping[str, Any], op: Op[T]) -> T:
    """Drive ``op`` on a ``redis.asyncio.Redis`` client (``scripts``: its async scripts)."""
    try:
        batch = next(op)
        while True:
            batch = op.send(await aexecute(client, scripts, batch))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


# --- jobs -------------------------------------------------------------------------------


def flatten(fields: dict[str, Any]) -> list[str]:
    """A hash's fields as the flat list Redis takes; non-strings as canonical JSON."""
    flat: list[str] = []
    for name, value in fields.items():
        text = (
            value
            if isinstance(value, str)
            else json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
        )
        flat += [name, text]
    return flat


def create_keys(job_id: str) -> list[str]:
    return [keys.job(job_id), keys.events(job_id), keys.INFLIGHT, keys.STATUS_COUNTS, keys.BY_AGE]


def create_many(
    jobs: Sequence[tuple[str, dict[str, Any], int, str]], *, now: float, submit_grace: float
) -> Op[list[bool | IdempotencyConflict]]:
    """Store new queued jobs (job_id, fields, ttl, fingerprint): per job, created or not, or
    the :class:`IdempotencyConflict` of an id already used with a different request."""
    if not jobs:
        return []
    watch = repr(now + submit_grace)
    replies = yield [
        Lua(
            "create_job",
            create_keys(job_id),
            [job_id, repr(now), ttl, watch, fingerprint, *flatten(fields)],
        )
        for job_id, fields, ttl, fingerprint in jobs
    ]
    answers: list[bool | IdempotencyConflict] = []
    for (job_id, _, _, fingerprint), (created, existing) in zip(jobs, replies, strict=True):
        if not created and existing and fingerprint and existing != fingerprint:
            answers.append(
                IdempotencyConflict(
                    f"job_id {job_id!r} was already used with a different request; "
                    "use a new job_id for a new request"
                )
            )
        else:
            answers.append(bool(created))
    return answers


def rollback_many(job_ids: Sequence[str]) -> Op[int]:
    """Undo the creation of still-queued jobs whose messages could not be sent; how many."""
    if not job_ids:
        return 0
    replies = yield [Lua("rollback_create", create_keys(j), [j]) for j in job_ids]
    return sum(bool(undone) for undone in replies)


def jobs_with_results(job_ids: Sequence[str]) -> Op[list[Job | None]]:
    """Jobs with their results in the order they finished; None where a job is absent."""
    if not job_ids:
        return []
    batch: Batch = []
    for job_id in job_ids:
        batch += [
            cmd("hgetall", keys.job(job_id)),
            cmd("hgetall", keys.results(job_id)),
            cmd("lrange", keys.result_order(job_id), 0, -1),
            cmd("hgetall", keys.stored(job_id)),
        ]
    replies = yield batch
    jobs: list[Job | None] = []
    for start in range(0, len(replies), 4):
        fields, results, order, stored = replies[start : start + 4]
        found = [results[i] for i in order if i in results]
        jobs.append(job_from_fields(fields, found, stored) if fields else None)
    return jobs


def cancel(
    job_id: str, reason: str, *, now: float, finished_ttl: int, grace: float
) -> Op[tuple[int, str]]:
    """Move the job to ``cancelled`` unless it ended: (1 cancelled now / 0 had ended / -1
    missing, the status after)."""
    [(moved, status)] = yield [
        Lua(
            "cancel_job",
            [
                keys.job(job_id), keys.events(job_id), keys.INFLIGHT, keys.results(job_id),
                keys.result_order(job_id), keys.responses(job_id), keys.STATUS_COUNTS,
                keys.BY_AGE, keys.CANCELS, keys.stored(job_id),
            ],
            [repr(now), finished_ttl, repr(now + grace), reason],
        )
    ]  # fmt: skip
    return int(moved), str(status)


def epoch(marker: str) -> Op[str]:
    """The store's epoch marker, ``marker`` written first if the store has none."""
    _, current = yield [cmd("set", keys.EPOCH, marker, nx=True), cmd("get", keys.EPOCH)]
    return str(current)


def check_epoch(known: str | None, marker: str, now: float) -> Op[tuple[str, bool]]:
    """Compare the store's epoch marker with ``known`` (the one this process saw before):
    (the current marker, whether ``known`` is gone). A loss is recorded in the store."""
    current = yield from epoch(marker)
    if known is None or current == known:
        return current, False
    yield [
        cmd(
            "hset",
            keys.DATA_LOSS,
            mapping={"detected_at": repr(now), "lost_epoch": known, "new_epoch": current},
        )
    ]
    return current, True


def store_status() -> Op[dict[str, Any]]:
    """The store's epoch and the last detected data loss, if any."""
    current, loss = yield [cmd("get", keys.EPOCH), cmd("hgetall", keys.DATA_LOSS)]
    return {"epoch": current, "data_loss": dict(loss) if loss else None}


def task_details(job_id: str) -> Op[dict[str, Any] | None]:
    """The job's audit record, shaped like Runware's ``getTaskDetails`` data item (None if
    the job is absent)."""
    fields, last_kept = yield [
        cmd("hgetall", keys.job(job_id)),
        cmd("lindex", keys.responses(job_id), -1),
    ]
    if not fields:
        return None
    last = fields.get("last_response") or last_kept
    response = (
        json.loads(last)["envelope"] if last else json.loads(fields.get("submit_response") or "{}")
    )
    return {
        "taskType": "getTaskDetails",
        "taskUUID": fields.get("provider_task_id") or fields.get("task_uuid"),
        "request": json.loads(fields.get("sent_request") or "[]"),
        "response": response,
    }


# --- provider pushes --------------------------------------------------------------------


def push_target(job_id: str) -> Op[tuple[str | None, str | None]]:
    """The job's push token and provider (None, None when the job is absent)."""
    [answer] = yield [Lua("push_target", [keys.job(job_id)], [])]
    token, provider = answer or (None, None)
    return token, provider


def record_push(
    job_id: str, entry: str, *, now: float, keep: int
) -> Op[tuple[JobStatus, int] | None]:
    """Keep a verified push in the job's audit list and count it (a finished job's is not
    kept); the job's status and poll attempt, or None when the job is gone."""
    [answer] = yield [Lua("take_push", [keys.job(job_id), keys.pushes(job_id)],
                          [repr(now), entry, keep])]  # fmt: skip
    if not answer:
        return None
    return JobStatus(answer[0]), int(answer[1])


# --- callbacks --------------------------------------------------------------------------


def deliveries(
    job_id: str, *, attempts: bool = True
) -> Op[tuple[list[dict[str, str]], list[dict[str, Any]]]]:
    """A job's callback deliveries (their stored fields, in event order) and, with
    ``attempts``, every attempt made."""
    batch: Batch = [cmd("lrange", keys.job_deliveries(job_id), 0, -1)]
    if attempts:
        batch.append(cmd("lrange", keys.delivery_attempts(job_id), 0, -1))
    ids, *raw_attempts = yield batch
    records = (yield [cmd("hgetall", keys.delivery(str(i))) for i in ids]) if ids else []
    made = [json.loads(a) for a in raw_attempts[0]] if raw_attempts else []
    return [r for r in records if r], made


def replay(delivery: str, url: str | None, *, now: float) -> Op[bool]:
    """Make a delivery pending again with a fresh schedule (its webhook-id stays); ``url``: a
    receiver that answered 410 Gone, to call again."""
    batch: Batch = [Lua("replay_delivery", [keys.delivery(delivery), keys.DUE, keys.DEAD],
                        [delivery, now])]  # fmt: skip
    if url is not None:
        batch.append(cmd("srem", keys.GONE, url))
    replies = yield batch
    return bool(replies[0])


def _optional_float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _with_copy(result: str, stored: Mapping[str, str]) -> GenerationResult:
    """One result with pollen's copy of its file (``stored``: generation id -> its JSON)."""
    parsed = GenerationResult.model_validate_json(result)
    copy = stored.get(parsed.id)
    if copy is not None:
        parsed.stored = StoredCopy.model_validate_json(copy)
    return parsed


def job_from_fields(
    fields: dict[str, str], results: Sequence[str], stored: Mapping[str, str] | None = None
) -> Job:
    """Build the public Job view from the stored hash and result JSON documents; ``stored``
    (generation id -> ``StoredCopy`` JSON) fills in each result's re-hosted copy."""
    error = (
        ErrorInfo(code=fields["error_code"], message=fields.get("error_message", ""))
        if fields.get("error_code")
        else None
    )
    return Job(
        id=fields["id"],
        provider=fields["provider"],
        status=JobStatus(fields["status"]),
        provider_task_id=fields.get("provider_task_id") or None,
        created_at=float(fields["created_at"]),
        submitted_at=_optional_float(fields.get("submitted_at")),
        finished_at=_optional_float(fields.get("finished_at")),
        updated_at=float(fields.get("updated_at") or fields["created_at"]),
        deadline_at=_optional_float(fields.get("deadline_at")),
        submit_attempts=int(fields.get("submit_attempts") or 0),
        polls=int(fields.get("polls") or 0),
        progress=_optional_float(fields.get("progress")),
        cost=_optional_float(fields.get("cost")),
        expected_results=int(fields.get("expected_results") or 1),
        error=error,
        results=[_with_copy(r, stored or {}) for r in results],
        errors=[
            GenerationError.model_validate(e) for e in json.loads(fields.get("errors") or "[]")
        ],
        callback_url=fields.get("callback_url") or None,
        events=json.loads(fields.get("events") or '["completed"]'),
        python_callback=json.loads(fields["python_callback"])
        if fields.get("python_callback")
        else None,
        metadata=json.loads(fields.get("metadata") or "{}"),
        request=json.loads(fields.get("request") or "{}"),
        policy=PollPolicy.model_validate_json(fields["policy"]),
        task_uuid=fields.get("task_uuid", ""),
        poll_seq=int(fields.get("poll_seq") or 0),
        next_poll_at=_optional_float(fields.get("next_poll_at")),
        cancel_note=fields.get("cancel_note") or None,
        push_token=fields.get("push_token") or None,
    )


# --- audit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """What pollen kept of a job's exchanges with its provider, and when it began processing."""

    sent_request: Any  #: the last request body sent to create the task (None before any)
    submit_response: Any  #: the provider's answer to it
    responses: list[dict[str, Any]]  #: the poll answers that said something new, oldest first
    processing_at: float | None  #: when a poll first saw the task running (None before)
    last_error: str  #: the last retryable error, while the job retries
    #: the provider's pushes the ingress took (``at``, ``bytes``, ``body``), oldest first
    pushes: list[dict[str, Any]] = field(default_factory=list)


def audit(job_id: str) -> Op[Audit | None]:
    """The job's audit record (None if the job is absent), in one round trip."""
    names = ("id", "sent_request", "submit_response", "processing_at", "last_error")
    fields, responses, pushes = yield [
        cmd("hmget", keys.job(job_id), *names),
        cmd("lrange", keys.responses(job_id), 0, -1),
        cmd("lrange", keys.pushes(job_id), 0, -1),
    ]
    found = dict(zip(names, fields, strict=True))
    if not found["id"]:
        return None
    return Audit(
        sent_request=json.loads(found["sent_request"]) if found["sent_request"] else None,
        submit_response=json.loads(found["submit_response"]) if found["submit_response"] else None,
        responses=[json.loads(r) for r in responses],
        processing_at=_optional_float(found["processing_at"]),
        last_error=found["last_error"] or "",
        pushes=[json.loads(p) for p in pushes],
    )
