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
from typing import Literal

import redis

from pollen.models import GenerationResult, StoredCopy
from pollen.store import keys, ops, scripts

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


class Copies:
    """Copy state in Redis, keyed by job id and generation id."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        texts = scripts.texts(
            SCRIPTS, prelude=True, INDEX_PREFIX=keys.INDEX_PREFIX, INDEX_EXPIRY=keys.INDEX_EXPIRY
        )
        self.scripts = {name: client.register_script(text) for name, text in texts.items()}

    def take_due(self, *, now: float, limit: int, watch: float) -> list[tuple[str, str]]:
        """(job id, generation id) of the copies due now, each pushed ``watch`` seconds later
        in case its message is lost."""
        with ops.guard():
            taken = self.scripts["take_due"](keys=[keys.COPIES_DUE], args=[repr(now), limit, watch])
        return [tuple(str(m).split("|", 1)) for m in taken]  # type: ignore[misc]

    def claim(self, job_id: str, generation: str, *, now: float, lease: float) -> CopyClaim:
        """Take the copy for ``lease`` seconds if it is pending and nobody holds it."""
        with ops.guard():
            verdict, copy, result = self.scripts["claim_copy"](
                keys=[
                    keys.stored(job_id), keys.results(job_id), keys.job(job_id),
                    keys.COPIES_DUE, keys.COPIES_RUNNING,
                ],
                args=[member(job_id, generation), generation, repr(now), lease],
            )  # fmt: skip
        if verdict != "ok":
            return CopyClaim(verdict)
        return CopyClaim(
            "ok", StoredCopy.model_validate_json(copy), GenerationResult.model_validate_json(result)
        )

    def record(
        self, job_id: str, generation: str, copy: StoredCopy, *, now: float, due_at: float = 0.0
    ) -> str | None:
        """Keep ``copy`` as the generation's copy and end the lease (pending: due again at
        ``due_at``). The job's status, or None when nothing was written (the job expired, or
        the copy was already finished)."""
        with ops.guard():
            written, status = self.scripts["record_copy"](
                keys=[
                    keys.stored(job_id), keys.job(job_id), keys.COPIES_DUE,
                    keys.COPIES_RUNNING, keys.events(job_id),
                ],
                args=[
                    member(job_id, generation), generation, copy.model_dump_json(),
                    copy.status, repr(due_at), repr(now),
                ],
            )  # fmt: skip
        return str(status) if written else None

    def due_count(self) -> int:
        """Copies not finished yet (pending ones, waiting or being made)."""
        return int(self.redis.zcard(keys.COPIES_DUE))
