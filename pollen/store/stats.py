"""``pollen stats`` and the dashboard's overview: what the fleet holds right now, read from Redis.

All are store operations (:mod:`pollen.store.effects`): :func:`snapshot` (jobs by state,
in-flight and overdue jobs, the oldest in-flight job, dead letters),
:func:`finished_per_minute` (jobs that reached each terminal status, per minute, from the
counters the terminal transition keeps, ``keys.finished``), :func:`tenants` (each tenant's
jobs by state, the ones waiting for a capped provider's slot, its cost) and :func:`accounts`
(the slots of capped provider accounts); :func:`collect` runs the first on a synchronous store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pollen.models import JobStatus
from pollen.store import admission, keys
from pollen.store.admission import ProviderQueue
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


RUNNING = (JobStatus.SUBMITTED.value, JobStatus.PROCESSING.value)
FINISHED = tuple(s.value for s in JobStatus if s.terminal)


@dataclass(frozen=True)
class TenantStats:
    """One tenant's jobs (terminal counts: since the counters began) and its provider cost."""

    tenant: str
    by_status: dict[str, int]
    waiting: int  #: of its queued jobs, those waiting for a capped provider account's slot
    cost: float  #: summed provider cost of its finished jobs

    @property
    def queued(self) -> int:
        return self.by_status.get(JobStatus.QUEUED.value, 0)

    @property
    def running(self) -> int:
        return sum(self.by_status.get(s, 0) for s in RUNNING)

    @property
    def finished(self) -> int:
        return sum(self.by_status.get(s, 0) for s in FINISHED)

    def as_dict(self) -> dict[str, Any]:
        totals = {"queued": self.queued, "running": self.running, "finished": self.finished}
        return asdict(self) | totals


def tenants(providers: Sequence[str]) -> Op[list[TenantStats]]:
    """Every tenant that has had a job, by name, with the jobs each waits with in the
    admission queues of ``providers`` (one round trip)."""
    counts, *queues = yield [
        cmd("hgetall", keys.TENANT_STATS),
        *[cmd("hgetall", keys.admit(provider, "waiting")) for provider in providers],
    ]
    by_tenant: dict[str, dict[str, str]] = {}
    for name, count in counts.items():
        tenant, _, what = str(name).rpartition("|")
        by_tenant.setdefault(tenant, {})[what] = count
    waiting: dict[str, int] = {}
    for queue in queues:
        for tenant, n in queue.items():
            waiting[str(tenant)] = waiting.get(str(tenant), 0) + int(n)
    return [
        TenantStats(
            tenant=tenant,
            by_status={k: int(v) for k, v in sorted(fields.items()) if k != "cost"},
            waiting=waiting.get(tenant, 0),
            cost=float(fields.get("cost", 0)),
        )
        for tenant, fields in sorted(by_tenant.items())
    ]


def accounts(caps: Mapping[str, Sequence[tuple[str, int]]], now: float) -> Op[list[ProviderQueue]]:
    """The slots each account of the capped providers holds and the jobs waiting for them;
    ``caps`` is provider -> (account, slots) (one round trip per provider)."""
    found: list[ProviderQueue] = []
    for provider, provider_caps in caps.items():
        found.append((yield from admission.queue_state(provider, provider_caps, now=now)))
    return found


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
