"""The schedule: what is due when. Parked polls, the reconciler's watch list, cancel
follow-ups, and trimming the listing indexes of expired jobs.

Long poll and submit waits are parked in Redis (``keys.PARKED_POLLS``,
``keys.PARKED_SUBMITS``) instead of held as countdown
messages; every in-flight job is watched (``keys.INFLIGHT``) until its next step is due plus
a grace period, after which the reconciler resumes it; a cancelled job waits on
``keys.CANCELS`` until its follow-up is done. The periodic round reads all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from pollen.models import JobStatus
from pollen.store import keys
from pollen.store.claims import Held
from pollen.store.effects import Batch, Lua, Op, Runner, cmd, single

#: the schedule's scripts, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = ("take_parked", "take_ready", "forget_job")


# --- operations -------------------------------------------------------------------------


def take_parked(*, horizon: float, limit: int) -> Op[list[tuple[str, int, float]]]:
    """Remove and return the parked polls due before ``horizon``: (job, attempt, due)."""
    taken = yield from single(Lua("take_parked", [keys.PARKED_POLLS], [repr(horizon), limit]))
    polls = []
    for member, due in zip(taken[::2], taken[1::2], strict=True):
        job_id, _, attempt = str(member).rpartition("|")
        polls.append((job_id, int(attempt), float(due)))
    return polls


def take_parked_submits(*, horizon: float, limit: int) -> Op[list[str]]:
    """Remove and return the jobs whose parked submit retry is due before ``horizon``."""
    taken = yield from single(Lua("take_parked", [keys.PARKED_SUBMITS], [repr(horizon), limit]))
    return [str(member) for member in taken[::2]]


def take_ready(
    queue: str, limit: int, expect_by: float, claim: tuple[str, Held] | None = None
) -> Op[tuple[list[str], int]]:
    """Remove and return up to ``limit`` of the submit queue ``queue``'s ready jobs
    (:func:`keys.ready_submits`), oldest first, and how many are left; its wake mark goes when
    none is. Each job taken is watched until ``expect_by``. ``claim``: the wake message's
    holder and claim, rewritten in the same step to name the jobs taken."""
    held, tag, text = ("", "", "")
    if claim is not None:
        held, tag, text = keys.held(claim[0]), claim[1].tag, claim[1].dump()
    ids, left = yield from single(
        Lua(
            "take_ready",
            [keys.ready_submits(queue), keys.submit_wake(queue), keys.INFLIGHT, held],
            [limit, repr(expect_by), tag, text],
        )
    )
    return [str(job_id) for job_id in ids], int(left)


def ready(queue: str) -> Op[int]:
    """How many jobs wait in the submit queue ``queue``'s ready set for a wake."""
    return int((yield from single(cmd("zcard", keys.ready_submits(queue)))))


def take_stale_ready(queue: str, *, before: float, limit: int) -> Op[list[str]]:
    """Remove and return ``queue``'s ready jobs stored before ``before`` that no wake took
    (their wake message failed or was lost; the periodic round sends them)."""
    key = keys.ready_submits(queue)
    taken = yield from single(Lua("take_parked", [key], [repr(before), limit]))
    return [str(member) for member in taken[::2]]


def due_ids(key: str, now: float, limit: int) -> Op[list[str]]:
    """The first ``limit`` members of the sorted set ``key`` scored at or before ``now``."""
    ids = yield from single(cmd("zrangebyscore", key, "-inf", now, start=0, num=limit))
    return [str(i) for i in ids]


def cancels_due(now: float, limit: int, grace: float) -> Op[list[str]]:
    """Cancelled jobs whose follow-up is overdue; each is watched one more grace period."""
    ids = yield from due_ids(keys.CANCELS, now, limit)
    if ids:
        yield [cmd("zadd", keys.CANCELS, dict.fromkeys(ids, now + grace), xx=True)]
    return ids


def forget(job_id: str, listed: Sequence[str]) -> Op[None]:
    """Stop watching a job, and drop it from the listing indexes ``listed``."""
    yield [Lua("forget_job", [keys.INFLIGHT, keys.BY_AGE], [job_id])]
    if listed:
        yield [cmd("zrem", key, job_id) for key in listed]


def retry_later(retries: Sequence[tuple[str, str, float]], grace: float) -> Op[None]:
    """For each (job_id, last_error, expect_by): keep the error (on a record that still
    exists: ``set_if_exists``) and watch the job until its next step is due (plus grace)."""
    batch: Batch = []
    for job_id, error, expect_by in retries:
        batch += [
            Lua("set_if_exists", [keys.job(job_id), ""], [job_id, "last_error", error]),
            cmd("zadd", keys.INFLIGHT, {job_id: expect_by + grace}, xx=True),
        ]
    if batch:
        yield batch


def trim_indexes(now: float, limit: int) -> Op[int]:
    """Remove finished jobs whose records expired from the listing indexes; how many."""
    expired = yield from single(
        cmd("zrangebyscore", keys.INDEX_EXPIRY, "-inf", now, start=0, num=limit)
    )
    if not expired:
        return 0
    batch: Batch = []
    for member in expired:
        provider, status, job_id = str(member).split("|", 2)
        batch.append(cmd("zrem", keys.index(provider, status), job_id))
    yield [*batch, cmd("zrem", keys.INDEX_EXPIRY, *expired)]
    return len(expired)


# --- on the synchronous client ----------------------------------------------------------


class Schedule:
    """What is due when, on one client: ``Store.schedule``."""

    def __init__(self, run: Runner, *, grace: float, submit_grace: float) -> None:
        self.run = run
        #: how late a job's next sign of life may be before the reconciler steps in
        self.grace = grace
        #: how long a queued job may wait for its submit before the reconciler steps in
        self.submit_grace = submit_grace

    def park(self, polls: Sequence[tuple[str, int, float]]) -> None:
        """Keep long waits in Redis: the periodic round sends each (job, attempt, due) poll
        when it is due. One round trip for all of them."""
        if polls:
            due = {f"{job}|{attempt}": at for job, attempt, at in polls}
            self.run(single(cmd("zadd", keys.PARKED_POLLS, due)))

    def park_submits(self, retries: Sequence[tuple[str, float]]) -> None:
        """Keep long submit waits in Redis: the periodic round sends each (job, due) submit
        when it is due."""
        if retries:
            self.run(single(cmd("zadd", keys.PARKED_SUBMITS, dict(retries))))

    def take_parked_submits(self, *, horizon: float, limit: int) -> list[str]:
        """Remove and return the jobs whose parked submit retry is due before ``horizon``."""
        return self.run(take_parked_submits(horizon=horizon, limit=limit))

    def take_ready(
        self, queue: str, limit: int, expect_by: float, claim: tuple[str, Held] | None = None
    ) -> tuple[list[str], int]:
        """Remove and return up to ``limit`` ready jobs, and how many are left (the wake mark
        goes when none is); each is watched until ``expect_by``, and ``claim`` is rewritten
        to name them."""
        return self.run(take_ready(queue, limit, expect_by, claim))

    def ready(self, queue: str) -> int:
        """How many jobs wait in ``queue``'s ready set for a wake."""
        return self.run(ready(queue))

    def take_stale_ready(self, queue: str, *, before: float, limit: int) -> list[str]:
        """Remove and return ``queue``'s ready jobs stored before ``before`` that no wake
        took."""
        return self.run(take_stale_ready(queue, before=before, limit=limit))

    def backlog(self, seen: bool, *, keep: float) -> bool:
        """Whether the submit queue held messages within the last ``keep`` seconds; ``seen``:
        it holds some now (remembered for ``keep`` seconds)."""
        if seen:
            self.run(single(cmd("set", keys.SUBMIT_BACKLOG, "1", px=max(1, int(keep * 1000)))))
            return True
        return bool(self.run(single(cmd("exists", keys.SUBMIT_BACKLOG))))

    def take_parked(self, *, horizon: float, limit: int) -> list[tuple[str, int, float]]:
        """Remove and return the parked polls due before ``horizon``: (job, attempt, due)."""
        return self.run(take_parked(horizon=horizon, limit=limit))

    def watch(self, job_id: str, expect_by: float, *, queued: bool = False) -> None:
        """Expect the job's next step by ``expect_by`` plus the grace (the submit grace for a
        queued job); only for in-flight jobs."""
        grace = self.submit_grace if queued else self.grace
        self.run(single(cmd("zadd", keys.INFLIGHT, {job_id: expect_by + grace}, xx=True)))

    def retry_later(self, retries: Sequence[tuple[str, str, float]]) -> None:
        """For each (job_id, last_error, expect_by): keep the error and watch the job until
        its next step is due (plus grace). One round trip."""
        self.run(retry_later(retries, self.grace))

    def overdue(self, now: float, limit: int) -> list[str]:
        """In-flight jobs whose next step is overdue (their chain may be lost)."""
        return self.run(due_ids(keys.INFLIGHT, now, limit))

    def cancels_due(self, now: float, limit: int) -> list[str]:
        """Cancelled jobs whose follow-up is overdue; each is watched one more grace period."""
        return self.run(cancels_due(now, limit, self.grace))

    def forget_inflight(self, job_id: str, providers: Sequence[str] = ()) -> None:
        """Stop watching a job (it expired, or finished and its index removal was lost); for
        an expired one, also drop it from the listing indexes of in-flight statuses of
        ``providers`` (its record, which said which one, is gone)."""
        listed = [
            keys.index(provider, status.value)
            for provider in providers
            for status in JobStatus
            if not status.terminal
        ]
        self.run(forget(job_id, listed))

    def trim_indexes(self, now: float, limit: int = 5000) -> int:
        """Remove finished jobs whose records expired from the listing indexes
        (:mod:`pollen.store.listing`); how many (the periodic round calls this)."""
        return self.run(trim_indexes(now, limit))
