"""The job store: every read and write of job state in Redis.

Writes that must not interleave (create, status transitions, applying a poll) are Lua scripts
(``pollen/store/lua/*.lua``, loaded by :mod:`pollen.store.scripts`), so a step that runs
twice, or two copies of one message, cannot duplicate a generation or move a status backwards.
Key names come from :mod:`pollen.store.keys`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import redis

from pollen.backoff import PollPolicy
from pollen.errors import IdempotencyConflict, JobNotFound, StoreUnavailable
from pollen.models import (
    ErrorInfo,
    GenerationError,
    GenerationResult,
    Job,
    JobStatus,
)
from pollen.store import keys, scripts

MAX_EVENTS = 1000
MAX_RESPONSES = 500

#: the scripts of :class:`Store`, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = (
    "create_job",
    "rollback_create",
    "transition",
    "claim_poll",
    "apply_poll",
    "take_parked",
    "forget_job",
    "take_rate_tokens",
)

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
        lua = scripts.register(
            client, SCRIPTS, prelude=True, MAX_EVENTS=MAX_EVENTS, MAX_RESPONSES=MAX_RESPONSES
        )
        self._create = lua["create_job"]
        self._rollback_create = lua["rollback_create"]
        self._transition = lua["transition"]
        self._claim = lua["claim_poll"]
        self._apply_poll = lua["apply_poll"]
        self._take_parked = lua["take_parked"]
        self._forget = lua["forget_job"]
        self._take_rate_tokens = lua["take_rate_tokens"]

    def close(self) -> None:
        """Close the Redis connections (the outbox shares them)."""
        self.redis.close()

    # --- writes -------------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        now: float,
        ttl: int,
        fingerprint: str = "",
    ) -> bool:
        """Store a new queued job; False (and nothing written) if the id already exists.

        ``fingerprint`` identifies the request: an existing job with a different one raises
        :class:`IdempotencyConflict` (compared in the same script that would create it).
        """
        with _guard():
            watch = repr(now + self.grace)
            created, existing = self._create(
                keys=self._create_keys(job_id),
                args=[job_id, repr(now), ttl, watch, fingerprint, *_flatten(fields)],
            )
        if not created and existing and fingerprint and existing != fingerprint:
            raise IdempotencyConflict(
                f"job_id {job_id!r} was already used with a different request; "
                "use a new job_id for a new request"
            )
        return bool(created)

    def rollback_create(self, job_id: str) -> bool:
        """Undo :meth:`create` of a still-queued job (its submit message could not be sent)."""
        with _guard():
            return bool(self._rollback_create(keys=self._create_keys(job_id), args=[job_id]))

    @staticmethod
    def _create_keys(job_id: str) -> list[str]:
        return [
            keys.job(job_id),
            keys.events(job_id),
            keys.INFLIGHT,
            keys.STATUS_COUNTS,
            keys.BY_AGE,
        ]

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

    def field(self, job_id: str, name: str) -> str | None:
        """One field of the job's record (None if the job or the field is absent)."""
        value = self.redis.hget(keys.job(job_id), name)
        return None if value is None else str(value)

    def fields(self, job_id: str, *names: str) -> list[str | None]:
        """Several fields of the job's record, in the order asked (None where absent)."""
        values = self.redis.hmget(keys.job(job_id), list(names))
        return [None if v is None else str(v) for v in values]

    def forget_inflight(self, job_id: str) -> None:
        """Stop watching a job (it expired, or finished and its index removal was lost)."""
        with _guard():
            self._forget(keys=[keys.INFLIGHT, keys.BY_AGE], args=[job_id])

    def try_lock(self, key: str, ttl: float) -> bool:
        """One holder per ``ttl`` seconds across all workers (no unlock: it simply expires)."""
        with _guard():
            return bool(self.redis.set(key, "1", nx=True, px=max(1, int(ttl * 1000))))

    def take_rate_tokens(
        self, provider: str, *, limit: int, window_ms: int, member: str
    ) -> tuple[int, int]:
        """Take one slot of ``provider``'s sliding window of ``window_ms`` (``limit`` slots).

        Returns ``(0, now_ms)`` when taken at Redis time ``now_ms``, else ``(wait_ms, now_ms)``.
        """
        wait_ms, now_ms = self._take_rate_tokens(
            keys=[keys.rate_window(provider)], args=[limit, window_ms, member]
        )
        return int(wait_ms), int(now_ms)

    def gauges(self) -> dict[str, Any]:
        """What the metrics scrape reads: in-flight jobs, jobs by status, dead letters, loss."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.INFLIGHT)
        pipe.hgetall(keys.STATUS_COUNTS)
        pipe.zcard(keys.DEAD)
        pipe.hgetall(keys.DATA_LOSS)
        inflight, by_status, dead, loss = pipe.execute()
        return {"inflight": inflight, "by_status": by_status, "dead": dead, "data_loss": loss}


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
