"""Poll fencing and leases: claiming a job's next poll, renewing the lease, recording answers.

A job's polls form a chain numbered by ``poll_seq``: only the holder of poll ``attempt``'s
lease may record its answer, and recording hands the chain to ``attempt + 1``, so a copy of a
poll message that arrives late (stale) or twice (busy) changes nothing. Each step is one
script call for a whole batch of jobs (``claim_polls.lua``, ``record_polls.lua``,
``renew_leases.lua``), each job fenced on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pollen.models import GenerationError, GenerationResult, Job, JobStatus, StoredCopy
from pollen.store import keys
from pollen.store.decode import job_from_fields
from pollen.store.effects import Lua, Op, Runner, dumps, flatten, pairs

#: the scripts of poll fencing, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = ("claim_polls", "record_polls", "renew_leases")

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
    """What one poll of a batch found, for :meth:`Polls.record`.

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
class Recorded:
    """What :meth:`Polls.record` did with one :class:`PollRecord`."""

    verdict: Literal["ok", "stale", "missing"]
    added: list[str] = field(default_factory=list)  #: generations seen for the first time
    finished: bool = False  #: this record moved the job to its terminal status
    job: Job | None = None  #: the finished job, when ``final`` was asked and it finished
    result_count: int = 0  #: the job's results after this record (when it added some)


# --- operations -------------------------------------------------------------------------


def claim_polls(items: Sequence[tuple[str, int]], *, now: float, lease: float) -> Op[list[Claim]]:
    """Take the lease of each (job, attempt); one :class:`Claim` each."""
    if not items:
        return []
    [answers] = yield [
        Lua(
            "claim_polls",
            [keys.job(job_id) for job_id, _ in items],
            [repr(now), lease, *(attempt for _, attempt in items)],
        )
    ]
    claims = []
    for verdict, number, flat in answers:
        if verdict == "ok":
            claims.append(Claim(verdict, worker_losses=int(number), fields=pairs(flat)))
        else:
            claims.append(Claim(verdict, float(number)))
    return claims


def renew_leases(items: Sequence[tuple[str, int]], *, until: float) -> Op[int]:
    """Extend the poll leases of (job, attempt) pairs to ``until``; how many were held."""
    if not items:
        return 0
    [held] = yield [
        Lua(
            "renew_leases",
            [keys.job(job_id) for job_id, _ in items],
            [repr(until), *(attempt for _, attempt in items)],
        )
    ]
    return int(held)


def record_polls(
    records: Sequence[PollRecord], *, now: float, finished_ttl: int, grace: float, copy: str
) -> Op[list[Recorded]]:
    """Record a batch of poll answers; one :class:`Recorded` each. ``copy``: what a new
    generation's ``stored`` starts as ('' for nothing)."""
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
    args = [_record_arg(r, now, grace, copy) for r in records]
    [answers] = yield [Lua("record_polls", shared + per_job, [repr(now), finished_ttl, *args])]
    done = []
    for verdict, added, finished, flat, results, count, copies in answers:
        job = (
            job_from_fields(pairs(flat), [r for r in results if r], pairs(copies)) if flat else None
        )
        ids = [str(i) for i in added]
        done.append(Recorded(verdict, ids, bool(finished), job, int(count)))
    return done


def _record_arg(record: PollRecord, now: float, grace: float, copy: str) -> str:
    return dumps(
        {
            "attempt": str(record.attempt),
            "apply": int(record.apply),
            # the audit list takes it only when it says something new (or brings results)
            "envelope": dumps({"at": now, "envelope": record.envelope})
            if record.keep or record.results
            else "",
            "keep": int(record.keep),
            "progress": "" if record.progress is None else repr(record.progress),
            "cost": "" if record.cost is None else repr(record.cost),
            "errors": dumps([e.model_dump() for e in record.errors]),
            "next_at": repr(record.next_poll_at),
            "watch_at": repr(record.next_poll_at + grace),
            "results": [[r.id, r.model_dump_json()] for r in record.results],
            "finish": record.finish.value if record.finish else "",
            "fields": flatten(record.fields),
            "final": int(record.final),
            "copy": copy,
        }
    )


# --- on the synchronous client ----------------------------------------------------------


class Polls:
    """Poll fencing on one client: ``Store.polls``."""

    def __init__(self, run: Runner, *, finished_ttl: int, grace: float, rehost: bool) -> None:
        self.run = run
        self.finished_ttl = finished_ttl
        #: how late a job's next poll may be before the reconciler steps in
        self.grace = grace
        #: re-hosting is on: each new generation's copy is marked pending and due at once
        self.rehost = rehost

    def claim(self, items: Sequence[tuple[str, int]], *, now: float, lease: float) -> list[Claim]:
        """Take the lease of each (job, attempt) in one round trip; one :class:`Claim` each.

        Each job is fenced on its own: a stale, busy or finished job does not stop the others.
        """
        return self.run(claim_polls(items, now=now, lease=lease))

    def renew(self, items: Sequence[tuple[str, int]], *, until: float) -> int:
        """Extend the poll leases of (job, attempt) pairs this worker holds to ``until``;
        returns how many were still held (one round trip)."""
        return self.run(renew_leases(items, until=until))

    def record(self, records: Sequence[PollRecord], *, now: float) -> list[Recorded]:
        """Record a batch of poll answers in one round trip; one :class:`Recorded` each."""
        return self.run(
            record_polls(
                records, now=now, finished_ttl=self.finished_ttl, grace=self.grace,
                copy=self._pending_copy(now),
            )
        )  # fmt: skip

    def _pending_copy(self, now: float) -> str:
        """What a new generation's ``stored`` starts as: pending with re-hosting on, else
        nothing ('')."""
        if not self.rehost:
            return ""
        return StoredCopy(status="pending", updated_at=now).model_dump_json()
