"""The job lifecycle: create, move forward, cancel, finish, and read a job.

Writes that must not interleave (create, status transitions, cancel) are Lua scripts
(``pollen/store/lua/*.lua``), so a step that runs twice, or two copies of one message, cannot
move a status backwards. Each write and read is an operation (:mod:`pollen.store.effects`):
:class:`Lifecycle` runs them on the synchronous client, the producer runs the same ones on
either client.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pollen.errors import IdempotencyConflict, JobNotFound
from pollen.models import Job, JobStatus
from pollen.store import keys
from pollen.store.decode import job_from_fields, optional_float
from pollen.store.effects import Batch, Lua, Op, Runner, cmd, dumps, flatten
from pollen.store.replication import Replicas

#: the lifecycle's scripts, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = (
    "create_job",
    "rollback_create",
    "transition",
    "cancel_job",
    "set_if_exists",
    "begin_submit",
)


@dataclass(frozen=True)
class Move:
    """One status transition of :meth:`Lifecycle.transition_many`."""

    job_id: str
    status: JobStatus
    expect_by: float | None = None  #: when the job's next step is due (watched until then)
    fields: dict[str, Any] = field(default_factory=dict)


# --- operations -------------------------------------------------------------------------


def create_keys(job_id: str, queue: str = "") -> list[str]:
    """What a create touches; ``queue``: the submit queue whose ready set it may join."""
    return [
        keys.job(job_id), keys.events(job_id), keys.INFLIGHT, keys.STATUS_COUNTS, keys.BY_AGE,
        keys.ready_submits(queue), keys.submit_wake(queue),
    ]  # fmt: skip


#: a job to store: job_id, fields, ttl, fingerprint
NewJob = tuple[str, dict[str, Any], int, str]


def create_many(
    jobs: Sequence[NewJob], *, now: float, submit_grace: float, replicas: Replicas
) -> Op[list[bool | IdempotencyConflict]]:
    """Store new queued jobs (job_id, fields, ttl, fingerprint): per job, created or not, or
    the :class:`IdempotencyConflict` of an id already used with a different request. Waits
    for ``replicas`` to hold them in the same round trip (:mod:`pollen.store.replication`)."""
    if not jobs:
        return []
    replies = yield from replicas.written(_creates(jobs, now, submit_grace, None))
    return _answers(jobs, replies)


def create_one(
    job: NewJob,
    *,
    now: float,
    submit_grace: float,
    replicas: Replicas,
    ready: str | None = None,
) -> Op[tuple[bool | IdempotencyConflict, bool]]:
    """:func:`create_many` of one job; ``ready``: the submit queue whose wake message submits
    it (group commit, see :func:`keys.ready_submits`). Its answer, and whether the caller must
    send that wake (none is on its way). Undo with :func:`rollback_many` (``unwake`` when the
    wake failed)."""
    replies = yield from replicas.written(_creates([job], now, submit_grace, ready))
    [answer] = _answers([job], replies)
    return answer, answer is True and bool(int(replies[0][2]))


def _creates(jobs: Sequence[NewJob], now: float, submit_grace: float, ready: str | None) -> Batch:
    watch = repr(now + submit_grace)
    wake_ms = "" if ready is None else str(keys.WAKE_MS)
    return [
        Lua(
            "create_job",
            create_keys(job_id, ready or ""),
            [job_id, repr(now), ttl, watch, fingerprint, wake_ms, *flatten(fields)],
        )
        for job_id, fields, ttl, fingerprint in jobs
    ]


def _answers(jobs: Sequence[NewJob], replies: Sequence[Any]) -> list[bool | IdempotencyConflict]:
    answers: list[bool | IdempotencyConflict] = []
    for (job_id, _, _, fingerprint), (created, existing, _) in zip(jobs, replies, strict=True):
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


def rollback_many(job_ids: Sequence[str], *, unwake: str | None = None) -> Op[int]:
    """Undo the creation of still-queued jobs whose messages could not be sent; how many.
    ``unwake``: the submit queue whose wake message was not sent (the jobs leave its ready
    set, and the next create sends a wake)."""
    if not job_ids:
        return 0
    flag = "" if unwake is None else "1"
    replies = yield [
        Lua("rollback_create", create_keys(j, unwake or ""), [j, flag]) for j in job_ids
    ]
    return sum(bool(undone) for undone in replies)


def _ending_keys(job_id: str) -> list[str]:
    """What a move to a terminal status touches, before the follow-up set and ``stored``."""
    return [
        keys.job(job_id), keys.events(job_id), keys.INFLIGHT, keys.results(job_id),
        keys.result_order(job_id), keys.responses(job_id), keys.STATUS_COUNTS, keys.BY_AGE,
    ]  # fmt: skip


def transition_many(
    moves: Sequence[Move], *, now: float, finished_ttl: int, grace: float
) -> Op[list[int]]:
    """Move jobs forward: 1 moved, 0 already there or beyond, -1 missing, per move."""
    if not moves:
        return []
    replies = yield _transitions(moves, now=now, finished_ttl=finished_ttl, grace=grace)
    return [int(moved) for moved in replies]


def _transitions(moves: Sequence[Move], *, now: float, finished_ttl: int, grace: float) -> Batch:
    return [
        Lua(
            "transition",
            [*_ending_keys(move.job_id), keys.stored(move.job_id)],
            [
                move.status.value,
                repr(now),
                finished_ttl,
                "" if move.expect_by is None else repr(move.expect_by + grace),
                *flatten(move.fields),
            ],
        )
        for move in moves
    ]


def cancel(
    job_id: str, reason: str, *, now: float, finished_ttl: int, grace: float
) -> Op[tuple[int, str]]:
    """Move the job to ``cancelled`` unless it ended: (1 cancelled now / 0 had ended / -1
    missing, the status after).

    A cancel and the poll that finishes the job race safely: whichever comes first ends it,
    the other changes nothing. A job cancelled here waits on
    :meth:`Schedule.cancels_due <pollen.store.schedule.Schedule.cancels_due>` until
    :meth:`Lifecycle.cancel_followed` says its follow-up is done.
    """
    [(moved, status)] = yield [
        Lua(
            "cancel_job",
            [*_ending_keys(job_id), keys.CANCELS, keys.stored(job_id)],
            [repr(now), finished_ttl, repr(now + grace), reason],
        )
    ]
    return int(moved), str(status)


def set_if_exists(job_id: str, fields: dict[str, str], follow_up: str = "") -> Op[bool]:
    """Set ``fields`` on the job if it is still stored (and stop watching it on the
    ``follow_up`` set, when given)."""
    [written] = yield [
        Lua("set_if_exists", [keys.job(job_id), follow_up], [job_id, *flatten(fields)])
    ]
    return bool(written)


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


def records(job_ids: Sequence[str]) -> Op[list[dict[str, str]]]:
    """The jobs' records as stored ({} where a job is absent)."""
    if not job_ids:
        return []
    return (yield [cmd("hgetall", keys.job(job_id)) for job_id in job_ids])


def fields(job_id: str, *names: str) -> Op[list[str | None]]:
    """Fields of the job's record, in the order asked (None where absent)."""
    [values] = yield [cmd("hmget", keys.job(job_id), list(names))]
    return [None if v is None else str(v) for v in values]


@dataclass(frozen=True)
class Begun:
    """What :func:`begin_submits` found and kept for each job, in order."""

    attempts: list[int]  #: each job's attempt number (0: its record is gone, left so)
    claimed: dict[str, dict[str, str]]  #: per claimed field, the value each claiming job has
    #: job -> the unanswered mark of an earlier attempt (``<attempt>@<sent at>``)
    unanswered: dict[str, str] = field(default_factory=dict)


def begin_submits(
    sent: Sequence[tuple[str, Any]], claims: Mapping[str, Mapping[str, str]], marks: bool = False
) -> Op[Begun]:
    """Count a submit attempt of each (job_id, request), keep the request and each claimed
    field (field -> job_id -> value) the job has none of. With ``marks``, take the
    unanswered mark an earlier attempt's create left (:func:`mark_sent`): that create was
    never answered."""
    begun = Begun([], {name: {} for name in claims})
    if not sent:
        return begun
    asked = [
        [(name, values[job_id]) for name, values in claims.items() if job_id in values]
        for job_id, _ in sent
    ]
    take = "1" if marks else ""
    replies = yield [
        Lua("begin_submit", [keys.job(job_id)], [dumps(request), take, *itertools.chain(*mine)])
        for (job_id, request), mine in zip(sent, asked, strict=True)
    ]
    for (job_id, _), mine, reply in zip(sent, asked, replies, strict=True):
        if len(reply) > 1 and reply[1]:
            begun.unanswered[job_id] = str(reply[1])
        for (name, _), value in zip(mine, reply[2:], strict=False):  # none for a job gone
            begun.claimed[name][job_id] = str(value)
    begun.attempts.extend(int(reply[0]) for reply in replies)
    return begun


def mark_sent(job_id: str, attempt: int, now: float) -> Op[bool]:
    """Mark the job's create as sent and unanswered (``<attempt>@<sent at>``), just before
    the request goes, if the job is still stored; its answer clears it (:func:`record_answers`)."""
    return (yield from set_if_exists(job_id, {"create_pending": f"{attempt}@{now!r}"}))


def record_answers(
    moves: Sequence[Move], answered: Sequence[str], *, now: float, finished_ttl: int, grace: float
) -> Op[list[int]]:
    """The answers of one create request, in one round trip: ``moves`` (the jobs the provider
    acknowledged) as :func:`transition_many`, and the unanswered mark of each ``answered`` job
    cleared. Returns each move's result."""
    clear = [cmd("hdel", keys.job(job_id), "create_pending") for job_id in answered]
    if not moves and not clear:
        return []
    replies = yield [*_transitions(moves, now=now, finished_ttl=finished_ttl, grace=grace), *clear]
    return [int(moved) for moved in replies[: len(moves)]]


def task_details(job_id: str) -> Op[dict[str, Any] | None]:
    """The job's audit record, shaped like Runware's ``getTaskDetails`` data item (None if
    the job is absent)."""
    found, last_kept = yield [
        cmd("hgetall", keys.job(job_id)),
        cmd("lindex", keys.responses(job_id), -1),
    ]
    if not found:
        return None
    # ``last_response``: a job recorded by a release that kept every answer in its hash
    last = found.get("last_response") or last_kept
    response = (
        json.loads(last)["envelope"] if last else json.loads(found.get("submit_response") or "{}")
    )
    return {
        "taskType": "getTaskDetails",
        "taskUUID": found.get("provider_task_id") or found.get("task_uuid"),
        "request": json.loads(found.get("sent_request") or "[]"),
        "response": response,
    }


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
    values, responses, pushes = yield [
        cmd("hmget", keys.job(job_id), *names),
        cmd("lrange", keys.responses(job_id), 0, -1),
        cmd("lrange", keys.pushes(job_id), 0, -1),
    ]
    found = dict(zip(names, values, strict=True))
    if not found["id"]:
        return None
    return Audit(
        sent_request=json.loads(found["sent_request"]) if found["sent_request"] else None,
        submit_response=json.loads(found["submit_response"]) if found["submit_response"] else None,
        responses=[json.loads(r) for r in responses],
        processing_at=optional_float(found["processing_at"]),
        last_error=found["last_error"] or "",
        pushes=[json.loads(p) for p in pushes],
    )


# --- on the synchronous client ----------------------------------------------------------


class Lifecycle:
    """Jobs' lifecycle on one client: ``Store.lifecycle``."""

    def __init__(self, run: Runner, *, finished_ttl: int, grace: float) -> None:
        self.run = run
        self.finished_ttl = finished_ttl
        #: how late a job's next sign of life may be before the reconciler steps in
        self.grace = grace

    def transition_many(self, moves: Sequence[Move], *, now: float) -> list[int]:
        """Move jobs forward (``expect_by``: when a job's next step is due; the reconciler
        resumes it if nothing happened by then plus the grace period), in one round trip:
        1 moved, 0 already there or beyond, -1 missing, per move."""
        return self.run(
            transition_many(moves, now=now, finished_ttl=self.finished_ttl, grace=self.grace)
        )

    def cancel_followed(self, job_id: str, note: str) -> None:
        """The follow-up of a cancelled job is done (or moot: the job expired): keep what it
        did at the provider, if the job is still stored, and stop watching it."""
        fields = {"cancel_state": "done", "cancel_note": note}
        self.run(set_if_exists(job_id, fields, keys.CANCELS))

    def cancel_retry_later(self, job_id: str, note: str, attempts: int) -> None:
        """The provider's cancel call failed and is worth another try: keep the note and the
        count; the job stays on the follow-up list (the reconciler re-sends it)."""
        self.run(set_if_exists(job_id, {"cancel_note": note, "cancel_attempts": str(attempts)}))

    def late_task(self, job_id: str, provider_task_id: str, note: str) -> None:
        """Keep the provider task of a job that was cancelled while its submit was in flight
        (its id, and what cancelling it did), if the job is still stored."""
        fields = {"provider_task_id": provider_task_id, "cancel_note": note}
        self.run(set_if_exists(job_id, fields))

    def begin_submits(
        self,
        sent: Sequence[tuple[str, Any]],
        push_tokens: Mapping[str, str] | None = None,
        accounts: Mapping[str, str] | None = None,
        *,
        marks: bool = False,
    ) -> Begun:
        """Count a submit attempt of each (job_id, request) and keep the request about to be
        sent (audit), in one round trip. ``push_tokens`` are new push tokens and
        ``accounts`` new provider accounts for jobs that have none: each is kept unless the
        job got one meanwhile (another copy of the submit); ``Begun.claimed`` holds the
        ``push_token`` and the ``account`` each job has. With ``marks`` (creates the
        provider cannot recognise when sent again) ``Begun.unanswered`` has the unanswered
        marks earlier attempts left (:meth:`mark_sent`), taken off the jobs."""
        claims = {"push_token": push_tokens or {}, "account": accounts or {}}
        return self.run(begin_submits(sent, claims, marks))

    def mark_sent(self, job_id: str, attempt: int, *, now: float) -> None:
        """Mark the job's create as sent and unanswered, just before its request goes
        (:meth:`record_answers` clears the mark with the answer)."""
        self.run(mark_sent(job_id, attempt, now))

    def record_answers(
        self, moves: Sequence[Move], answered: Sequence[str], *, now: float
    ) -> list[int]:
        """Record one create request's answers as they arrive, in one round trip: the
        acknowledged jobs move (``moves``, as :meth:`transition_many`), the ``answered`` jobs
        lose their unanswered mark. Returns each move's result."""
        return self.run(
            record_answers(
                moves, answered, now=now, finished_ttl=self.finished_ttl, grace=self.grace
            )
        )

    def get(self, job_id: str) -> Job:
        """The job with its results in the order they finished; JobNotFound if absent."""
        [job] = self.get_with_results([job_id])
        if job is None:
            raise JobNotFound(job_id)
        return job

    def get_with_results(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Jobs with their results in the order they finished, in one round trip; None where
        a job is absent."""
        return self.run(jobs_with_results(job_ids))

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Several jobs' records in one round trip (without results); None where missing."""
        return [job_from_fields(f, []) if f else None for f in self.run(records(job_ids))]

    def raw(self, job_id: str) -> dict[str, str]:
        """The job's record as stored; JobNotFound if absent."""
        [found] = self.run(records([job_id]))
        if not found:
            raise JobNotFound(job_id)
        return found

    def field(self, job_id: str, name: str) -> str | None:
        """One field of the job's record (None if the job or the field is absent)."""
        [value] = self.run(fields(job_id, name))
        return value

    def fields(self, job_id: str, *names: str) -> list[str | None]:
        """Several fields of the job's record, in the order asked (None where absent)."""
        return self.run(fields(job_id, *names))
