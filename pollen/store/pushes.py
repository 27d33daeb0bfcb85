"""Provider pushes about a job: who may push (its token), keeping a verified push for the
audit, and which jobs were pushed about."""

from __future__ import annotations

from collections.abc import Sequence

from pollen.models import JobStatus
from pollen.store import keys
from pollen.store.effects import Lua, Op, cmd, single

#: the scripts of pushes, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = ("take_push", "push_target")


def push_target(job_id: str) -> Op[tuple[str | None, str | None]]:
    """The job's push token and provider (None, None when the job is absent)."""
    answer = yield from single(Lua("push_target", [keys.job(job_id)], []))
    token, provider = answer or (None, None)
    return token, provider


def record_push(
    job_id: str, entry: str, *, now: float, keep: int
) -> Op[tuple[JobStatus, int] | None]:
    """Keep a verified push in the job's audit list and count it (a finished job's is not
    kept); the job's status and poll attempt, or None when the job is gone."""
    answer = yield from single(
        Lua("take_push", [keys.job(job_id), keys.pushes(job_id)], [repr(now), entry, keep])
    )
    if not answer:
        return None
    return JobStatus(answer[0]), int(answer[1])


def pushed(job_ids: Sequence[str]) -> Op[set[str]]:
    """Which of ``job_ids`` a provider has pushed about (one round trip)."""
    if not job_ids:
        return set()
    found = yield [cmd("hexists", keys.job(job_id), "pushed_at") for job_id in job_ids]
    return {job_id for job_id, yes in zip(job_ids, found, strict=True) if yes}
