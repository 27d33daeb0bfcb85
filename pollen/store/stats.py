"""``pollen stats`` and the dashboard's overview: what the fleet holds right now, read from Redis.

Both are store operations (:mod:`pollen.store.effects`): :func:`snapshot` (jobs by state,
in-flight and overdue jobs, the oldest in-flight job, dead letters) and
:func:`finished_per_minute` (jobs that reached each terminal status, per minute, from the
counters the terminal transition keeps, ``keys.finished``); :func:`collect` runs the first on
a synchronous store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pollen.store import keys
from pollen.store.effects import Op, cmd

if TYPE_CHECKING:
    from pollen.store.sync import Store


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


@dataclass(frozen=True)
class Minute:
    """Jobs that reached each terminal status during one minute."""

    start: int  #: unix time of the minute's first second
    by_status: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def snapshot(now: float) -> Op[Stats]:
    """The fleet's state at ``now`` (two round trips: the counts, then the oldest job's status)."""
    counts, inflight, oldest, dead, overdue = yield [
        cmd("hgetall", keys.STATUS_COUNTS),
        cmd("zcard", keys.INFLIGHT),
        cmd("zrange", keys.BY_AGE, 0, 0, withscores=True),
        cmd("zcard", keys.DEAD),
        cmd("zcount", keys.INFLIGHT, "-inf", now),
    ]
    oldest_id, created = (oldest[0][0], float(oldest[0][1])) if oldest else (None, None)
    status = (yield [cmd("hget", keys.job(oldest_id), "status")])[0] if oldest_id else None
    return Stats(
        by_status={k: int(v) for k, v in sorted(counts.items())},
        inflight=int(inflight),
        oldest_job=oldest_id,
        oldest_age=None if created is None else now - created,
        oldest_status=str(status) if status else None,
        dead_letters=int(dead),
        overdue=int(overdue),
    )


def finished_per_minute(now: float, minutes: int) -> Op[list[Minute]]:
    """The last ``minutes`` minutes up to ``now``, oldest first (one round trip)."""
    last = int(now // 60)
    starts = range(last - minutes + 1, last + 1)
    replies = yield [cmd("hgetall", keys.finished(minute)) for minute in starts]
    return [
        Minute(minute * 60, {status: int(n) for status, n in sorted(counts.items())})
        for minute, counts in zip(starts, replies, strict=True)
    ]


def gauges() -> Op[dict[str, Any]]:
    """What the metrics scrape reads: in-flight jobs, jobs by status, dead letters, loss."""
    inflight, by_status, dead, loss = yield [
        cmd("zcard", keys.INFLIGHT),
        cmd("hgetall", keys.STATUS_COUNTS),
        cmd("zcard", keys.DEAD),
        cmd("hgetall", keys.DATA_LOSS),
    ]
    return {"inflight": inflight, "by_status": by_status, "dead": dead, "data_loss": loss}


def collect(store: Store, now: float | None = None) -> Stats:
    return store.run(snapshot(time.time() if now is None else now))
