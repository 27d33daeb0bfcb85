"""The job store: every read and write of job state in Redis.

Writes that must not interleave (create, status transitions, applying a poll) are Lua scripts
(``pollen/store/lua/*.lua``, loaded by :mod:`pollen.store.scripts`), so a step that runs
twice, or two copies of one message, cannot duplicate a generation or move a status backwards.
Key names come from :mod:`pollen.store.keys`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import redis

from pollen.errors import IdempotencyConflict, JobNotFound
from pollen.models import (
    GenerationError,
    GenerationResult,
    Job,
    JobStatus,
    StoredCopy,
)
from pollen.store import keys, ops, scripts
from pollen.store.ops import flatten, job_from_fields

MAX_RESPONSES = 500
T = TypeVar("T")

#: the scripts of :class:`Store`, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = (
    "create_job",
    "rollback_create",
    "transition",
    "claim_polls",
    "record_polls",
    "renew_leases",
    "take_parked",
    "forget_job",
    "take_rate_tokens",
    "cancel_job",
    "set_if_exists",
    "take_push",
    "push_target",
)

ClaimVerdict = Literal["ok", "busy", "alone", "stale", "done", "missing"]


@dataclass(frozen=True)
class Claim:
    verdict: ClaimVerdict
    wait: float = 0.0
    worker_losses: int = 0  #: times a worker died holding one of this job's poll leases
    fields: dict[str, str] = field(default_factory=dict)  #: the job's record (``ok`` only)

    def job(self) -> Job:
        """The job as it was when the lease was taken (``ok`` only; results not included)."""
        return job_from_fields(self.fields, [])


@dataclass(frozen=True)
class PollRecord:
    """What one poll of a batch found, for :meth:`Store.record_polls`.

    ``apply``: record a provider answer (envelope, results, progress...) and hand the chain to
    ``attempt + 1``; without it only ``finish`` and ``fields`` are written (a job that ends
    without asking the provider: its deadline passed, or it took too many workers down).
    """

    job_id: str
    attempt: int
    apply: bool = True
    envelope: dict[str, Any] = field(default_factory=dict)
    keep: bool = False  #: add the envelope to the audit list (it says something new)
    results: Sequence[GenerationResult] = ()
    errors: Sequence[GenerationError] = ()
    progress: float | None = None
    cost: float | None = None
    next_poll_at: float = 0.0
    finish: JobStatus | None = None  #: end the job in this status
    fields: dict[str, Any] = field(default_factory=dict)  #: set on the job's record
    final: bool = False  #: return the finished job (to build its completion event)


@dataclass(frozen=True)
class Move:
    """One status transition of :meth:`Store.transition_many`."""

    job_id: str
    status: JobStatus
    expect_by: float | None = None  #: when the job's next step is due (watched until then)
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """What :meth:`Store.record_polls` did with one :class:`PollRecord`."""

    verdict: Literal["ok", "stale", "missing"]
    added: list[str] = field(default_factory=list)  #: generations seen for the first time
    finished: bool = False  #: this record moved the job to its terminal status
    job: Job | None = None  #: the finished job, when ``final`` was asked and it finished
    result_count: int = 0  #: the job's results after this record (when it added some)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


_guard = ops.guard


def script_texts() -> dict[str, str]:
    """The store's scripts, by name, as sent to Redis (for any client, sync or asyncio)."""
    return scripts.texts(
        SCRIPTS,
        prelude=True,
        MAX_RESPONSES=MAX_RESPONSES,
        INDEX_PREFIX=keys.INDEX_PREFIX,
        INDEX_EXPIRY=keys.INDEX_EXPIRY,
        FINISHED_PREFIX=keys.FINISHED_PREFIX,
        FINISHED_TTL=keys.FINISHED_TTL,
    )


class Store:
    """Job state in Redis, keyed by job id."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        finished_ttl: int,
        grace: float = 60.0,
        submit_grace: float = 60.0,
        rehost: bool = False,
    ) -> None:
        self.redis = client
        #: re-hosting is on: each new generation's copy is marked pending and due at once
        self.rehost = rehost
        self.finished_ttl = finished_ttl
        #: how late a job's next sign of life may be before the reconciler steps in
        self.grace = grace
        #: how long a queued job may wait for its submit before the reconciler steps in
        self.submit_grace = submit_grace
        lua = {name: client.register_script(text) for name, text in script_texts().items()}
        self._transition = lua["transition"]
        self._claim_polls = lua["claim_polls"]
        self._record_polls = lua["record_polls"]
        self._renew_leases = lua["renew_leases"]
        self._take_parked = lua["take_parked"]
        self._forget = lua["forget_job"]
        self._take_rate_tokens = lua["take_rate_tokens"]
        #: every script by name, for :mod:`pollen.store.ops` operations run on this client
        self.scripts = lua

    def run(self, op: ops.Op[T]) -> T:
        """Run a store operation (:mod:`pollen.store.ops`) on this client."""
        with _guard():
            return ops.run(self.redis, self.scripts, op)

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
        [answer] = self.create_many([(job_id, fields, ttl, fingerprint)], now=now)
        if isinstance(answer, IdempotencyConflict):
            raise answer
        return answer

    def create_many(
        self, jobs: Sequence[tuple[str, dict[str, Any], int, str]], *, now: float
    ) -> list[bool | IdempotencyConflict]:
        """:meth:`create` for many (job_id, fields, ttl, fingerprint) in one round trip.

        One answer per job: created or not, or the :class:`IdempotencyConflict` of an id
        already used with a different request (that job only).
        """
        return self.run(ops.create_many(jobs, now=now, submit_grace=self.submit_grace))

    def rollback_create(self, job_id: str) -> bool:
        """Undo :meth:`create` of a still-queued job (its submit message could not be sent)."""
        return self.rollback_many([job_id]) == 1

    def rollback_many(self, job_ids: Sequence[str]) -> int:
        """:meth:`rollback_create` for many jobs in one round trip; how many were undone."""
        return self.run(ops.rollback_many(job_ids))

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
        with _guard():
            moved = self._transition_call(Move(job_id, status, expect_by, fields), now, self.redis)
        if moved == -1:
            raise JobNotFound(job_id)
        return bool(moved)

    def transition_many(self, moves: Sequence[Move], *, now: float) -> list[int]:
        """:meth:`transition` for many jobs in one round trip: 1 moved, 0 already there or
        beyond, -1 missing, per move."""
        if not moves:
            return []
        with _guard():
            pipe = self.redis.pipeline(transaction=False)
            for move in moves:
                self._transition_call(move, now, pipe)
            return [int(moved) for moved in pipe.execute()]

    def _transition_call(self, move: Move, now: float, client: Any) -> Any:
        watch = "" if move.expect_by is None else repr(move.expect_by + self.grace)
        job_id = move.job_id
        return self._transition(
            keys=[
                keys.job(job_id),
                keys.events(job_id),
                keys.INFLIGHT,
                keys.results(job_id),
                keys.result_order(job_id),
                keys.responses(job_id),
                keys.STATUS_COUNTS,
                keys.BY_AGE,
                keys.stored(job_id),
            ],
            args=[move.status.value, repr(now), self.finished_ttl, watch,
                  *flatten(move.fields)],
            client=client,
        )  # fmt: skip

    def cancel(self, job_id: str, reason: str, *, now: float) -> tuple[bool, JobStatus]:
        """Move the job to ``cancelled`` unless it already ended: (cancelled now, the status
        it is in after).

        A cancel and the poll that finishes the job race safely: whichever comes first ends
        it, the other changes nothing. A job cancelled here waits on :meth:`cancels_due` until
        :meth:`cancel_followed` says its follow-up is done. JobNotFound if absent.
        """
        moved, status = self.run(
            ops.cancel(job_id, reason, now=now, finished_ttl=self.finished_ttl, grace=self.grace)
        )
        if moved == -1:
            raise JobNotFound(job_id)
        return moved == 1, JobStatus(status)

    def cancels_due(self, now: float, limit: int) -> list[str]:
        """Cancelled jobs whose follow-up is overdue; each is watched one more grace period."""
        with _guard():
            ids = [str(i) for i in self.redis.zrangebyscore(keys.CANCELS, "-inf", now, 0, limit)]
            if ids:
                self.redis.zadd(keys.CANCELS, dict.fromkeys(ids, now + self.grace), xx=True)
        return ids

    def cancel_followed(self, job_id: str, note: str) -> None:
        """The follow-up of a cancelled job is done (or moot: the job expired): keep what it
        did at the provider, if the job is still stored, and stop watching it."""
        self._set_if_exists(job_id, {"cancel_state": "done", "cancel_note": note}, keys.CANCELS)

    def cancel_retry_later(self, job_id: str, note: str, attempts: int) -> None:
        """The provider's cancel call failed and is worth another try: keep the note and the
        count; the job stays on the follow-up list (the reconciler re-sends it)."""
        self._set_if_exists(job_id, {"cancel_note": note, "cancel_attempts": str(attempts)})

    def trim_indexes(self, now: float, limit: int = 5000) -> int:
        """Remove finished jobs whose records expired from the listing indexes
        (:mod:`pollen.store.listing`); how many (the periodic round calls this)."""
        with _guard():
            expired = self.redis.zrangebyscore(keys.INDEX_EXPIRY, "-inf", now, start=0, num=limit)
            if not expired:
                return 0
            pipe = self.redis.pipeline(transaction=False)
            for member in expired:
                provider, status, job_id = str(member).split("|", 2)
                pipe.zrem(keys.index(provider, status), job_id)
            pipe.zrem(keys.INDEX_EXPIRY, *expired)
            pipe.execute()
        return len(expired)

    def late_task(self, job_id: str, provider_task_id: str, note: str) -> None:
        """Keep the provider task of a job that was cancelled while its submit was in flight
        (its id, and what cancelling it did), if the job is still stored."""
        self._set_if_exists(job_id, {"provider_task_id": provider_task_id, "cancel_note": note})

    def _set_if_exists(self, job_id: str, fields: dict[str, str], follow_up: str = "") -> bool:
        with _guard():
            written = self.scripts["set_if_exists"](
                keys=[keys.job(job_id), follow_up], args=[job_id, *flatten(fields)]
            )
        return bool(written)

    def claim_poll(self, job_id: str, attempt: int, *, now: float, lease: float) -> Claim:
        """Take the lease for poll number ``attempt``; see ``Claim.verdict``."""
        return self.claim_polls([(job_id, attempt)], now=now, lease=lease)[0]

    def claim_polls(
        self, items: Sequence[tuple[str, int]], *, now: float, lease: float
    ) -> list[Claim]:
        """Take the lease of each (job, attempt) in one round trip; one :class:`Claim` each.

        Each job is fenced on its own: a stale, busy or finished job does not stop the others.
        """
        if not items:
            return []
        with _guard():
            answers = self._claim_polls(
                keys=[keys.job(job_id) for job_id, _ in items],
                args=[repr(now), lease, *(attempt for _, attempt in items)],
            )
        claims = []
        for verdict, number, flat in answers:
            if verdict == "ok":
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                claims.append(Claim(verdict, worker_losses=int(number), fields=fields))
            else:
                claims.append(Claim(verdict, float(number)))
        return claims

    def renew_leases(self, items: Sequence[tuple[str, int]], *, until: float) -> int:
        """Extend the poll leases of (job, attempt) pairs this worker holds to ``until``;
        returns how many were still held (one round trip)."""
        if not items:
            return 0
        with _guard():
            return int(
                self._renew_leases(
                    keys=[keys.job(job_id) for job_id, _ in items],
                    args=[repr(until), *(attempt for _, attempt in items)],
                )
            )

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
        record = PollRecord(
            job_id, attempt, envelope=envelope, keep=True, results=results, errors=errors,
            progress=progress, cost=cost, next_poll_at=next_poll_at,
        )  # fmt: skip
        done = self.record_polls([record], now=now)[0]
        if done.verdict == "missing":
            raise JobNotFound(job_id)
        return None if done.verdict == "stale" else done.added

    def record_polls(self, records: Sequence[PollRecord], *, now: float) -> list[Recorded]:
        """Record a batch of poll answers in one round trip; one :class:`Recorded` each."""
        if not records:
            return []
        shared = [keys.INFLIGHT, keys.STATUS_COUNTS, keys.BY_AGE, keys.COPIES_DUE]
        per_job = [
            key
            for r in records
            for key in (
                keys.job(r.job_id),
                keys.events(r.job_id),
                keys.results(r.job_id),
                keys.result_order(r.job_id),
                keys.responses(r.job_id),
                keys.stored(r.job_id),
            )
        ]
        with _guard():
            answers = self._record_polls(
                keys=shared + per_job,
                args=[repr(now), self.finished_ttl, *(self._record_arg(r, now) for r in records)],
            )
        done = []
        for verdict, added, finished, flat, results, count, copies in answers:
            job = None
            if flat:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                stored = dict(zip(copies[::2], copies[1::2], strict=True))
                job = job_from_fields(fields, [r for r in results if r], stored)
            ids = [str(i) for i in added]
            done.append(Recorded(verdict, ids, bool(finished), job, int(count)))
        return done

    def _record_arg(self, record: PollRecord, now: float) -> str:
        error_fields = flatten(record.fields)
        return _dumps(
            {
                "attempt": str(record.attempt),
                "apply": int(record.apply),
                "envelope": _dumps({"at": now, "envelope": record.envelope}),
                "keep": int(record.keep),
                "progress": "" if record.progress is None else repr(record.progress),
                "cost": "" if record.cost is None else repr(record.cost),
                "errors": _dumps([e.model_dump() for e in record.errors]),
                "next_at": repr(record.next_poll_at),
                "watch_at": repr(record.next_poll_at + self.grace),
                "results": [[r.id, r.model_dump_json()] for r in record.results],
                "finish": record.finish.value if record.finish else "",
                "fields": error_fields,
                "final": int(record.final),
                "copy": self._pending_copy(now),
            }
        )

    def _pending_copy(self, now: float) -> str:
        """What a new generation's ``stored`` starts as: pending with re-hosting on, else
        nothing ('')."""
        if not self.rehost:
            return ""
        return StoredCopy(status="pending", updated_at=now).model_dump_json()

    def update(self, job_id: str, **fields: Any) -> None:
        """Set plain fields (no status change) on an existing job."""
        with _guard():
            self.redis.hset(
                keys.job(job_id), mapping=dict(zip(*[iter(flatten(fields))] * 2, strict=True))
            )

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Several jobs' records in one round trip (without results); None where missing."""
        with _guard():
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(keys.job(job_id))
            return [job_from_fields(f, []) if f else None for f in pipe.execute()]

    def begin_submits(
        self, sent: Sequence[tuple[str, Any]], push_tokens: Mapping[str, str] | None = None
    ) -> tuple[list[int], dict[str, str]]:
        """Count a submit attempt of each (job_id, request) and keep the request about to be
        sent (audit), in one round trip. ``push_tokens`` are new push tokens for jobs that
        have none: each is kept unless the job got one meanwhile (another copy of the submit).
        Returns the attempt numbers, in order, and the push token each of those jobs has."""
        if not sent:
            return [], {}
        push_tokens = push_tokens or {}
        with _guard():
            pipe = self.redis.pipeline(transaction=False)
            for job_id, request in sent:
                pipe.hincrby(keys.job(job_id), "submit_attempts", 1)
                pipe.hset(keys.job(job_id), "sent_request", _dumps(request))
                if job_id in push_tokens:
                    pipe.hsetnx(keys.job(job_id), "push_token", push_tokens[job_id])
                    pipe.hget(keys.job(job_id), "push_token")
            answers = iter(pipe.execute())
        attempts: list[int] = []
        stored: dict[str, str] = {}
        for job_id, _ in sent:
            attempts.append(int(next(answers)))
            next(answers)
            if job_id in push_tokens:
                next(answers)
                stored[job_id] = next(answers)
        return attempts, stored

    def pushed(self, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` a provider has pushed about (one round trip)."""
        if not job_ids:
            return set()
        with _guard():
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hexists(keys.job(job_id), "pushed_at")
            return {job_id for job_id, yes in zip(job_ids, pipe.execute(), strict=True) if yes}

    def retry_later(self, retries: Sequence[tuple[str, str, float]]) -> None:
        """For each (job_id, last_error, expect_by): keep the error and watch the job until
        its next step is due (plus grace). One round trip."""
        if not retries:
            return
        with _guard():
            pipe = self.redis.pipeline(transaction=False)
            for job_id, error, expect_by in retries:
                pipe.hset(keys.job(job_id), "last_error", error)
                pipe.zadd(keys.INFLIGHT, {job_id: expect_by + self.grace}, xx=True)
            pipe.execute()

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(keys.job(job_id)))

    def raw(self, job_id: str) -> dict[str, str]:
        fields: dict[str, str] = self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        if not fields:
            raise JobNotFound(job_id)
        return fields

    def get(self, job_id: str) -> Job:
        """The job with its results in the order they finished; JobNotFound if absent."""
        [job] = self.get_with_results([job_id])
        if job is None:
            raise JobNotFound(job_id)
        return job

    def get_with_results(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Jobs with their results in the order they finished, in one round trip; None where
        a job is absent."""
        return self.run(ops.jobs_with_results(job_ids))

    def responses(self, job_id: str) -> list[dict[str, Any]]:
        """The provider envelopes kept for the job's audit, oldest first: each one that said
        something new (a status word, a result, an error), not every poll's."""
        return [json.loads(r) for r in self.redis.lrange(keys.responses(job_id), 0, -1)]

    @contextmanager
    def listen(self, job_id: str) -> Iterator[Callable[[float], bool]]:
        """Listen to the job's lifecycle events (Pub/Sub) inside the block: yields
        ``wait(seconds) -> bool``, True when an event came within that time.

        Subscribe before reading the job: an event published after the subscription is never
        missed, and one published before it shows in the job that is read next.
        """
        pubsub = self.redis.pubsub()
        try:
            with _guard():
                pubsub.subscribe(keys.events(job_id))
                # wait for Redis to confirm: from then on no event of the job is missed
                confirm_by = time.monotonic() + 2.0
                while time.monotonic() < confirm_by:
                    message = pubsub.get_message(timeout=0.1)
                    if message is not None and message["type"] == "subscribe":
                        break

            def wait(seconds: float) -> bool:
                end = time.monotonic() + seconds
                while (left := end - time.monotonic()) > 0:
                    with _guard():
                        message = pubsub.get_message(timeout=left)
                    if message is not None and message["type"] == "message":
                        return True
                return False

            yield wait
        finally:
            pubsub.close()

    def park_polls(self, polls: Sequence[tuple[str, int, float]]) -> None:
        """Keep long waits in Redis: the periodic round sends each (job, attempt, due) poll
        when it is due. One round trip for all of them."""
        if not polls:
            return
        with _guard():
            self.redis.zadd(
                keys.PARKED_POLLS, {f"{job}|{attempt}": due for job, attempt, due in polls}
            )

    def take_parked_polls(self, *, horizon: float, limit: int) -> list[tuple[str, int, float]]:
        """Remove and return the parked polls due before ``horizon``: (job, attempt, due)."""
        taken = self._take_parked(keys=[keys.PARKED_POLLS], args=[repr(horizon), limit])
        polls = []
        for member, due in zip(taken[::2], taken[1::2], strict=True):
            job_id, _, attempt = str(member).rpartition("|")
            polls.append((job_id, int(attempt), float(due)))
        return polls

    def watch(self, job_id: str, expect_by: float, *, queued: bool = False) -> None:
        """Expect the job's next step by ``expect_by`` plus the grace (the submit grace for a
        queued job); only for in-flight jobs."""
        grace = self.submit_grace if queued else self.grace
        with _guard():
            self.redis.zadd(keys.INFLIGHT, {job_id: expect_by + grace}, xx=True)

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

    def forget_inflight(self, job_id: str, providers: Sequence[str] = ()) -> None:
        """Stop watching a job (it expired, or finished and its index removal was lost); for
        an expired one, also drop it from the listing indexes of in-flight statuses of
        ``providers`` (its record, which said which one, is gone)."""
        with _guard():
            self._forget(keys=[keys.INFLIGHT, keys.BY_AGE], args=[job_id])
            listed = [
                keys.index(provider, status.value)
                for provider in providers
                for status in JobStatus
                if not status.terminal
            ]
            if listed:
                pipe = self.redis.pipeline(transaction=False)
                for key in listed:
                    pipe.zrem(key, job_id)
                pipe.execute()

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
