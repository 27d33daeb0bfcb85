"""The job store: every read and write of job state in Redis.

Writes that must not interleave (create, status transitions, applying a poll) are Lua scripts,
so a step that runs twice, or two copies of one message, cannot duplicate a generation or move
a status backwards. Key names come from :mod:`pollen.store.keys`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import redis

from pollen.backoff import PollPolicy
from pollen.errors import JobNotFound, StoreUnavailable
from pollen.models import (
    ErrorInfo,
    GenerationError,
    GenerationResult,
    Job,
    JobStatus,
)
from pollen.store import keys

MAX_EVENTS = 1000
MAX_RESPONSES = 500

# Shared Lua prelude: status ranks (statuses only move forward) and the event stream.
_PRELUDE = """
local RANK = {queued=0, submitted=1, processing=2, succeeded=3, failed=3, timed_out=3,
  cancelled=3}
local function event(stream, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', MAX_EVENTS, '*', ...)
end
""".replace("MAX_EVENTS", str(MAX_EVENTS))

# KEYS: job, events, inflight, status_counts, by_age
# ARGV: id, now, ttl_seconds, watch_at, field, value, ...
_CREATE = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'queued', 1)
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
event(KEYS[2], 'type', 'status', 'status', 'queued', 'at', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""
)

# KEYS: job, events, inflight, results, order, responses, status_counts, by_age
# ARGV: status, now, finished_ttl_seconds, watch_at, field, value, ...
# Moves the job forward to ARGV[1] (never back, never out of a terminal state).
_TRANSITION = (
    _PRELUDE
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return -1 end
if RANK[ARGV[1]] <= RANK[current] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[7], current, -1)
redis.call('HINCRBY', KEYS[7], ARGV[1], 1)
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
if RANK[ARGV[1]] == 3 then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
  redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
  redis.call('ZREM', KEYS[8], redis.call('HGET', KEYS[1], 'id'))
  event(KEYS[2], 'type', 'completed', 'status', ARGV[1], 'at', ARGV[2])
  local ttl = tonumber(ARGV[3]) * 1000
  for _, i in ipairs({1, 2, 4, 5, 6}) do  -- the job's own keys, not the shared ones
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
else
  event(KEYS[2], 'type', 'status', 'status', ARGV[1], 'at', ARGV[2])
  if ARGV[4] ~= '' then
    redis.call('ZADD', KEYS[3], 'XX', ARGV[4], redis.call('HGET', KEYS[1], 'id'))
  end
end
return 1
"""
)

# KEYS: job   ARGV: attempt, now, lease_seconds
# Fencing: only the copy of poll message number `attempt` that holds the lease may act.
# Answers {verdict, wait seconds (busy) or worker losses so far (ok)}.
_CLAIM = (
    _PRELUDE
    + """
local job = redis.call('HMGET', KEYS[1], 'status', 'poll_seq', 'lease_until')
if not job[1] then return {'missing', '0'} end
if RANK[job[1]] == 3 then return {'done', '0'} end
if job[2] ~= ARGV[1] then return {'stale', '0'} end
local now = tonumber(ARGV[2])
local lease = tonumber(job[3] or '0')
if lease > now then return {'busy', string.format('%.6f', lease - now)} end
local lost = 0
if lease > 0 then
  -- The last holder of this attempt's lease never recorded its answer: its worker died.
  lost = redis.call('HINCRBY', KEYS[1], 'worker_losses', 1)
end
redis.call('HSET', KEYS[1], 'lease_until', string.format('%.6f', now + tonumber(ARGV[3])))
return {'ok', tostring(lost)}
"""
)

# KEYS: job, events, results, order, responses, inflight, status_counts
# ARGV: attempt, now, envelope, progress, cost, errors_json, next_poll_at, watch_at, n,
#       id1, json1, ...
# Records one poll's answer. New generations are appended once (HSETNX), in the order first
# seen; a copy of the same poll (stale attempt) changes nothing.
_APPLY_POLL = (
    _PRELUDE
    + """
local job = redis.call('HMGET', KEYS[1], 'status', 'poll_seq')
if not job[1] then return {'missing', {}} end
if job[2] ~= ARGV[1] or RANK[job[1]] == 3 then return {'stale', {}} end
local added = {}
local n = tonumber(ARGV[9])
for i = 0, n - 1 do
  local id, body = ARGV[10 + 2 * i], ARGV[11 + 2 * i]
  if redis.call('HSETNX', KEYS[3], id, body) == 1 then
    redis.call('RPUSH', KEYS[4], id)
    event(KEYS[2], 'type', 'partial', 'generation', id, 'at', ARGV[2])
    added[#added + 1] = id
  end
end
redis.call('ZADD', KEYS[6], 'XX', ARGV[8], redis.call('HGET', KEYS[1], 'id'))
redis.call('RPUSH', KEYS[5], ARGV[3])
redis.call('LTRIM', KEYS[5], -MAX_RESPONSES, -1)
redis.call('HINCRBY', KEYS[1], 'polls', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'errors', ARGV[6], 'lease_until', '0',
  'poll_seq', tostring(tonumber(ARGV[1]) + 1), 'next_poll_at', ARGV[7])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'cost', ARGV[5]) end
if job[1] == 'submitted' then
  redis.call('HSET', KEYS[1], 'status', 'processing')
  redis.call('HINCRBY', KEYS[7], 'submitted', -1)
  redis.call('HINCRBY', KEYS[7], 'processing', 1)
  event(KEYS[2], 'type', 'status', 'status', 'processing', 'at', ARGV[2])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  for i = 2, 5 do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return {'ok', added}
""".replace("MAX_RESPONSES", str(MAX_RESPONSES))
)

# KEYS: parked   ARGV: horizon, limit   -> member, score, member, score, ...
_TAKE_PARKED = """
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #taken, 2 do redis.call('ZREM', KEYS[1], taken[i]) end
return taken
"""

ClaimVerdict = Literal["ok", "busy", "stale", "done", "missing"]


@dataclass(frozen=True)
class Claim:
    verdict: ClaimVerdict
    wait: float = 0.0
    worker_losses: int = 0  #: times a worker died holding one of this job's poll leases


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _flatten(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in fields.items():
        flat += [name, value if isinstance(value, str) else _dumps(value)]
    return flat


def _optional_float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


@contextmanager
def _guard() -> Iterator[None]:
    """Map Redis failures onto pollen's error tree (a full Redis is a clear error)."""
    try:
        yield
    except redis.ResponseError as exc:
        if "OOM" in str(exc) or "READONLY" in str(exc):
            raise StoreUnavailable(f"Redis refused the write: {exc}") from exc
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc


class Store:
    """Job state in Redis, keyed by job id."""

    def __init__(self, client: redis.Redis, *, finished_ttl: int, grace: float = 60.0) -> None:
        self.redis = client
        self.finished_ttl = finished_ttl
        #: how late a job's next sign of life may be before the reconciler steps in
        self.grace = grace
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._claim = client.register_script(_CLAIM)
        self._apply_poll = client.register_script(_APPLY_POLL)
        self._take_parked = client.register_script(_TAKE_PARKED)

    # --- writes -------------------------------------------------------------------------

    def create(self, job_id: str, fields: dict[str, Any], *, now: float, ttl: int) -> bool:
        """Store a new queued job; False (and nothing written) if the id already exists."""
        with _guard():
            created = self._create(
                keys=[
                    keys.job(job_id),
                    keys.events(job_id),
                    keys.INFLIGHT,
                    keys.STATUS_COUNTS,
                    keys.BY_AGE,
                ],
                args=[job_id, repr(now), ttl, repr(now + self.grace), *_flatten(fields)],
            )
        return bool(created)

    def transition(
        self,
        job_id: str,
        status: JobStatus,
        *,
        now: float,
        expect_by: float | None = None,
        **fields: Any,
    ) -> bool:
        """Move a job forward to ``status``; False if it already was there or beyond.

        ``expect_by`` is when the job's next step is due (the reconciler resumes it if
        nothing happened by then plus the grace period).
        """
        watch = "" if expect_by is None else repr(expect_by + self.grace)
        with _guard():
            moved = self._transition(
                keys=[
                    keys.job(job_id),
                    keys.events(job_id),
                    keys.INFLIGHT,
                    keys.results(job_id),
                    keys.result_order(job_id),
                    keys.responses(job_id),
                    keys.STATUS_COUNTS,
                    keys.BY_AGE,
                ],
                args=[status.value, repr(now), self.finished_ttl, watch, *_flatten(fields)],
            )
        if moved == -1:
            raise JobNotFound(job_id)
        return bool(moved)

    def claim_poll(self, job_id: str, attempt: int, *, now: float, lease: float) -> Claim:
        """Take the lease for poll number ``attempt``; see ``Claim.verdict``."""
        verdict, number = self._claim(keys=[keys.job(job_id)], args=[attempt, repr(now), lease])
        if verdict == "ok":
            return Claim(verdict, worker_losses=int(number))
        return Claim(verdict, float(number))

    def apply_poll(
        self,
        job_id: str,
        attempt: int,
        *,
        now: float,
        envelope: dict[str, Any],
        results: Sequence[GenerationResult],
        errors: Sequence[GenerationError],
        progress: float | None,
        cost: float | None,
        next_poll_at: float,
    ) -> list[str] | None:
        """Record poll ``attempt``'s answer and hand the chain to ``attempt + 1``.

        Returns the ids of generations seen for the first time, or None if this copy of the
        poll was stale (another copy already recorded it).
        """
        pairs: list[str] = []
        for result in results:
            pairs += [result.id, result.model_dump_json()]
        with _guard():
            answer = self._apply_poll(
                keys=[
                    keys.job(job_id),
                    keys.events(job_id),
                    keys.results(job_id),
                    keys.result_order(job_id),
                    keys.responses(job_id),
                    keys.INFLIGHT,
                    keys.STATUS_COUNTS,
                ],
                args=[
                    attempt,
                    repr(now),
                    _dumps({"at": now, "envelope": envelope}),
                    "" if progress is None else repr(progress),
                    "" if cost is None else repr(cost),
                    _dumps([e.model_dump() for e in errors]),
                    repr(next_poll_at),
                    repr(next_poll_at + self.grace),
                    len(results),
                    *pairs,
                ],
            )
        verdict, added = answer
        if verdict == "missing":
            raise JobNotFound(job_id)
        return None if verdict == "stale" else [str(i) for i in added]

    def update(self, job_id: str, **fields: Any) -> None:
        """Set plain fields (no status change) on an existing job."""
        with _guard():
            self.redis.hset(
                keys.job(job_id), mapping=dict(zip(*[iter(_flatten(fields))] * 2, strict=True))
            )

    def begin_submit(self, job_id: str, sent_request: Any) -> int:
        """Count a submit attempt and keep the request about to be sent (audit); one round trip.

        Returns the attempt number.
        """
        with _guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hincrby(keys.job(job_id), "submit_attempts", 1)
            pipe.hset(keys.job(job_id), "sent_request", _dumps(sent_request))
            attempts, _ = pipe.execute()
        return int(attempts)

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(keys.job(job_id)))

    def raw(self, job_id: str) -> dict[str, str]:
        fields: dict[str, str] = self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        if not fields:
            raise JobNotFound(job_id)
        return fields

    def get(self, job_id: str) -> Job:
        """The job with its results in the order they finished; JobNotFound if absent."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.hgetall(keys.results(job_id))
        pipe.lrange(keys.result_order(job_id), 0, -1)
        fields, results, order = pipe.execute()
        if not fields:
            raise JobNotFound(job_id)
        return job_from_fields(fields, [results[i] for i in order if i in results])

    def responses(self, job_id: str) -> list[dict[str, Any]]:
        """Every provider envelope recorded for the job, oldest first."""
        return [json.loads(r) for r in self.redis.lrange(keys.responses(job_id), 0, -1)]

    def task_details(self, job_id: str) -> dict[str, Any]:
        """The job's audit record, shaped like Runware's ``getTaskDetails`` data item."""
        fields = self.raw(job_id)
        last = self.redis.lindex(keys.responses(job_id), -1)
        response = (
            json.loads(last)["envelope"]
            if last
            else json.loads(fields.get("submit_response") or "{}")
        )
        return {
            "taskType": "getTaskDetails",
            "taskUUID": fields.get("provider_task_id") or fields.get("task_uuid"),
            "request": json.loads(fields.get("sent_request") or "[]"),
            "response": response,
        }

    def events(
        self, job_id: str, *, after: str = "0-0", block_ms: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        """Lifecycle events after stream id ``after``; blocks up to ``block_ms`` for new ones."""
        answer = self.redis.xread({keys.events(job_id): after}, block=block_ms, count=100)
        if not answer:
            return []
        entries: list[tuple[str, dict[str, str]]] = answer[0][1]  # type: ignore[index,assignment]
        return entries

    def park_poll(self, job_id: str, attempt: int, due: float) -> None:
        """Keep a long wait in Redis: the periodic round sends poll ``attempt`` when due."""
        with _guard():
            self.redis.zadd(keys.PARKED_POLLS, {f"{job_id}|{attempt}": due})

    def take_parked_polls(self, *, horizon: float, limit: int) -> list[tuple[str, int, float]]:
        """Remove and return the parked polls due before ``horizon``: (job, attempt, due)."""
        taken = self._take_parked(keys=[keys.PARKED_POLLS], args=[repr(horizon), limit])
        polls = []
        for member, due in zip(taken[::2], taken[1::2], strict=True):
            job_id, _, attempt = str(member).rpartition("|")
            polls.append((job_id, int(attempt), float(due)))
        return polls

    def watch(self, job_id: str, expect_by: float) -> None:
        """Expect the job's next step by ``expect_by`` (plus grace) (only for in-flight jobs)."""
        with _guard():
            self.redis.zadd(keys.INFLIGHT, {job_id: expect_by + self.grace}, xx=True)

    def overdue(self, now: float, limit: int) -> list[str]:
        """In-flight jobs whose next step is overdue (their chain may be lost)."""
        ids = self.redis.zrangebyscore(keys.INFLIGHT, "-inf", now, start=0, num=limit)
        return [str(i) for i in ids]


def job_from_fields(fields: dict[str, str], results: Sequence[str]) -> Job:
    """Build the public Job view from the stored hash and result JSON documents."""
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
        results=[GenerationResult.model_validate_json(r) for r in results],
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
    )
