"""``pollen stats``: what the fleet holds right now, read from Redis."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pollen.store import keys
from pollen.store.jobs import Store


@dataclass(frozen=True)
class Stats:
    by_status: dict[str, int]
    inflight: int
    oldest_job: str | None
    oldest_age: float | None
    oldest_status: str | None
    dead_letters: int
    overdue: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def collect(store: Store, now: float | None = None) -> Stats:
    now = time.time() if now is None else now
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(keys.STATUS_COUNTS)
    pipe.zcard(keys.INFLIGHT)
    pipe.zrange(keys.BY_AGE, 0, 0, withscores=True)
    pipe.zcard(keys.DEAD)
    pipe.zcount(keys.INFLIGHT, "-inf", now)
    counts, inflight, oldest, dead, overdue = pipe.execute()
    oldest_id, created = (oldest[0][0], float(oldest[0][1])) if oldest else (None, None)
    status = store.redis.hget(keys.job(oldest_id), "status") if oldest_id else None
    return Stats(
        by_status={k: int(v) for k, v in sorted(counts.items())},
        inflight=int(inflight),
        oldest_job=oldest_id,
        oldest_age=None if created is None else now - created,
        oldest_status=str(status) if status else None,
        dead_letters=int(dead),
        overdue=int(overdue),
    )
