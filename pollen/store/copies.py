"""Copies of results' files (re-hosting) in Redis: their state, due times and leases.

Each generation's copy is a ``StoredCopy`` JSON in the job's ``stored`` hash, beside (not
inside) its result, so copy writes never race the poll's writes of the results. A copy that
is not finished sits in ``pollen:copies:due`` scored by when it must be tried: the poll that
first records the generation puts it there (``record_polls.lua``, in the same call), the
periodic round sends the due ones, and a worker that claims one pushes it to the end of its
lease, so a worker dying mid-copy leaves the copy due again. States: pending → stored | failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import redis

from pollen.models import GenerationResult, StoredCopy
from pollen.store import keys, scripts
from pollen.store.effects import Lua, Op, perform, single

T = TypeVar("T")

#: the scripts of :class:`Copies`, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = ("claim_copy", "record_copy", "take_due")

ClaimVerdict = Literal["ok", "busy", "done", "missing"]


def member(job_id: str, generation: str) -> str:
    """The due-set member of one copy (a job id never contains ``|``)."""
    return f"{job_id}|{generation}"


@dataclass(frozen=True)
class CopyClaim:
    """What :meth:`Copies.claim` found: with ``ok``, the copy so far and the result to copy."""

    verdict: ClaimVerdict
    copy: StoredCopy | None = None
    result: GenerationResult | None = None


def take_due(*, now: float, limit: int, watch: float) -> Op[list[tuple[str, str]]]:
    """(job id, generation id) of the copies due now, each pushed ``watch`` seconds later in
    case its message is lost."""
    taken = yield from single(Lua("take_due", [keys.COPIES_DUE], [repr(now), limit, watch]))
    return [tuple(str(m).split("|", 1)) for m in taken]  # type: ignore[misc]


def claim(job_id: str, generation: str, *, now: float, lease: float) -> Op[CopyClaim]:
    """Take the copy for ``lease`` seconds if it is pending and nobody holds it."""
    verdict, copy, result = yield from single(
        Lua(
            "claim_copy",
            [
                keys.stored(job_id), keys.results(job_id), keys.job(job_id),
                keys.COPIES_DUE, keys.COPIES_RUNNING,
            ],
            [member(job_id, generation), generation, repr(now), lease],
        )
    )  # fmt: skip
    if verdict != "ok":
        return CopyClaim(verdict)
    return CopyClaim(
        "ok", StoredCopy.model_validate_json(copy), GenerationResult.model_validate_json(result)
    )


def record(
    job_id: str, generation: str, copy: StoredCopy, *, now: float, due_at: float
) -> Op[str | None]:
    """Keep ``copy`` as the generation's copy and end the lease: the job's status, or None
    when nothing was written."""
    written, status = yield from single(
        Lua(
            "record_copy",
            [
                keys.stored(job_id), keys.job(job_id), keys.COPIES_DUE,
                keys.COPIES_RUNNING, keys.events(job_id),
            ],
            [
                member(job_id, generation), generation, copy.model_dump_json(),
                copy.status, repr(due_at), repr(now),
            ],
        )
    )  # fmt: skip
    return str(status) if written else None


class Copies:
    """Copy state in Redis, keyed by job id and generation id."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        texts = scripts.texts(SCRIPTS, prelude=True)
        self.scripts = {name: client.register_script(text) for name, text in texts.items()}

    def run(self, op: Op[T]) -> T:
        """Run a copy operation on this client (the copies' own scripts)."""
        return perform(self.redis, self.scripts, op)

    def take_due(self, *, now: float, limit: int, watch: float) -> list[tuple[str, str]]:
        """(job id, generation id) of the copies due now, each pushed ``watch`` seconds later
        in case its message is lost."""
        return self.run(take_due(now=now, limit=limit, watch=watch))

    def claim(self, job_id: str, generation: str, *, now: float, lease: float) -> CopyClaim:
        """Take the copy for ``lease`` seconds if it is pending and nobody holds it."""
        return self.run(claim(job_id, generation, now=now, lease=lease))

    def record(
        self, job_id: str, generation: str, copy: StoredCopy, *, now: float, due_at: float = 0.0
    ) -> str | None:
        """Keep ``copy`` as the generation's copy and end the lease (pending: due again at
        ``due_at``). The job's status, or None when nothing was written (the job expired, or
        the copy was already finished)."""
        return self.run(record(job_id, generation, copy, now=now, due_at=due_at))
