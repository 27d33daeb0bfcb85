"""Admission: the queue of jobs waiting for a capped provider account's slot, and the slots.

A capped provider's job takes a slot of one of its accounts before its create request goes
out, and holds it until the job ends: every terminal transition gives it back in the same
script that ends the job (``move()`` in ``lua/prelude.lua``), and a job that ends while it
waits leaves the queue there too. :func:`admit` (``lua/admit.lua``) queues jobs, gives back
slots the provider refused for capacity, and admits waiting jobs by priority, then tenants in
turn (weighted), then FIFO; all in one call. :func:`sweep` is the safety net for a slot whose
job vanished without a transition (its record expired or was lost).

Keys: ``keys.admit(provider, ...)``; ``lua/admit.lua`` describes each. The scripts build key
names from a job's record (its provider, tenant, account), beyond the keys they declare: fine
on one Redis (or a primary with replicas), not on Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pollen.models import DEFAULT_TENANT, JobStatus
from pollen.store import keys
from pollen.store.effects import Batch, Lua, Op, Runner, cmd, single

#: the admission's scripts, in ``pollen/store/lua/``
SCRIPTS = ("admit",)


@dataclass(frozen=True)
class Entry:
    """A job asking for a slot."""

    job_id: str
    tenant: str
    priority: int
    created_at: float
    deadline_at: float  #: while it waits, the reconciler leaves it alone until then


@dataclass
class Admitted:
    """What one :func:`admit` call did."""

    #: job id -> account: jobs admitted by this call, in admission order
    admitted: dict[str, str] = field(default_factory=dict)
    #: job id -> account: jobs of the entries that held a slot already (send them)
    held: dict[str, str] = field(default_factory=dict)
    #: job id -> why it waits: entries (and refused jobs) queued by this call that still wait
    waiting: dict[str, str] = field(default_factory=dict)
    requeued: int = 0  #: refused jobs put back in the queue
    #: jobs whose deadline passed while they waited: out of the queue, never admitted
    expired: list[str] = field(default_factory=list)

    def account(self, job_id: str) -> str | None:
        """The account an entry's job may be sent to now (None: it waits)."""
        return self.admitted.get(job_id) or self.held.get(job_id)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


def admit(
    provider: str,
    *,
    now: float,
    limit: int,
    caps: Sequence[tuple[str, int]],
    shares: Mapping[str, tuple[float, int]],
    submit_watch: float,
    grace: float,
    enqueue: Sequence[Entry] = (),
    requeue: Sequence[tuple[str, str, str]] = (),
    cooldown_until: float = 0.0,
    capped: bool = True,
) -> Op[Admitted]:
    """Give back ``requeue`` (job, account) slots the provider refused (the account's cap is
    lowered to what it still holds until ``cooldown_until``), queue ``enqueue``, then admit
    up to ``limit`` waiting jobs into the free slots of ``caps`` (account, slots).
    ``shares`` is tenant -> (weight, cap; 0 for none). One round trip."""
    entries = [
        [e.job_id, e.tenant, str(e.priority), repr(e.created_at), repr(e.deadline_at)]
        for e in enqueue
    ]
    admitted, held, waiting, requeued, expired = yield from single(
        Lua(
            "admit",
            [keys.INFLIGHT],
            [
                provider, repr(now), limit, json.dumps(caps), json.dumps(shares),
                repr(submit_watch), repr(grace), repr(cooldown_until),
                json.dumps([list(r) for r in requeue]), json.dumps(entries),
                "1" if capped else "",
            ],
        )
    )  # fmt: skip
    return Admitted(
        _pairs(admitted), _pairs(held), _pairs(waiting), int(requeued), [str(i) for i in expired]
    )


@dataclass(frozen=True)
class AccountUse:
    """One account's slots."""

    account: str
    cap: int
    in_use: int
    lowered_to: int | None  #: the cap while lowered after a capacity refusal

    @property
    def effective_cap(self) -> int:
        """The cap admission uses now."""
        return self.cap if self.lowered_to is None else min(self.cap, self.lowered_to)


@dataclass(frozen=True)
class ProviderQueue:
    """A capped provider's admission state, for stats, metrics and the dashboard."""

    provider: str
    accounts: list[AccountUse]
    waiting: dict[str, int]  #: tenant -> jobs waiting

    @property
    def in_use(self) -> int:
        return sum(a.in_use for a in self.accounts)

    @property
    def total_waiting(self) -> int:
        return sum(self.waiting.values())


def queue_state(provider: str, caps: Sequence[tuple[str, int]], *, now: float) -> Op[ProviderQueue]:
    """How many slots each account holds, and who waits (one round trip)."""
    replies = yield [
        cmd("hgetall", keys.admit(provider, "waiting")),
        cmd("hgetall", keys.admit(provider, "lowered")),
        *[cmd("zcard", keys.slots(provider, account)) for account, _ in caps],
    ]
    waiting, lowered, *used = replies
    accounts = []
    for (account, cap), in_use in zip(caps, used, strict=True):
        low = lowered.get(account)
        lowered_to = None
        if low:
            held, _, until = str(low).partition("|")
            lowered_to = int(held) if float(until) > now else None
        accounts.append(AccountUse(account, cap, int(in_use), lowered_to))
    return ProviderQueue(provider, accounts, {str(t): int(n) for t, n in waiting.items()})


def sweep(provider: str, accounts: Sequence[str]) -> Op[list[str]]:
    """Give back the slots of jobs that ended or vanished without giving theirs back (a
    record that expired or was lost); the ids freed. Safe against a running admission: a
    job that holds a slot is queued or in flight, never terminal, so only a slot whose job
    is over or gone is taken back."""
    members = yield [cmd("zrange", keys.slots(provider, a), 0, -1) for a in accounts]
    owners = [(a, str(job_id)) for a, ids in zip(accounts, members, strict=True) for job_id in ids]
    if not owners:
        return []
    tenants_key = keys.admit(provider, "owners")
    *states, tenants = yield [
        *[cmd("hget", keys.job(j), "status") for _, j in owners],
        cmd("hmget", tenants_key, *[j for _, j in owners]),
    ]
    freed: list[str] = []
    batch: Batch = []
    for (account, job_id), status, tenant in zip(owners, states, tenants, strict=True):
        if status is not None and not JobStatus(status).terminal:
            continue
        freed.append(job_id)
        # the tenant admission noted: a vanished record no longer says whose share it held
        held = keys.admit(provider, f"held:{tenant or DEFAULT_TENANT}")
        batch += [
            cmd("zrem", keys.slots(provider, account), job_id),
            cmd("zrem", held, job_id),
            cmd("hdel", tenants_key, job_id),
        ]
    if batch:
        yield batch
    return freed


def stranded(provider: str) -> Op[bool]:
    """Whether jobs wait in the provider's admission queue that no worker knowing its cap
    has tended lately (``keys.CAPPED_MARK_SECONDS``): the cap was removed, the jobs can all
    go. While any worker still has the cap (a rolling deploy), the queue is not stranded."""
    count, tended = yield [
        cmd("hlen", keys.admit(provider, "waiting")),
        cmd("exists", keys.admit(provider, "capped")),
    ]
    return bool(count) and not tended


def prune(provider: str) -> Op[int]:
    """Drop turn bookkeeping that no longer decides anything (so it does not grow with every
    tenant ever seen): a stopped tenant's kept pass once the priority's turn has passed it
    (it would join at the turn anyway), and when a tenant that is not waiting was last
    served, once it has no kept pass; how many entries went."""
    left_key, served_key = keys.admit(provider, "left"), keys.admit(provider, "served")
    left, turn, served, waiting = yield [
        cmd("hgetall", left_key),
        cmd("hgetall", keys.admit(provider, "vt")),
        cmd("hkeys", served_key),
        cmd("hkeys", keys.admit(provider, "waiting")),
    ]
    moot = [
        field for field, passed in left.items()
        if float(passed) <= float(turn.get(str(field).partition("|")[0], 0.0))
    ]  # fmt: skip
    kept = {str(field).partition("|")[2] for field in left if field not in moot}
    idle = [  # served fields are "<prio>|<tenant>"
        field for field in served
        if field != "#" and (tenant := str(field).partition("|")[2]) not in waiting
        and tenant not in kept
    ]  # fmt: skip
    batch: Batch = []
    if moot:
        batch.append(cmd("hdel", left_key, *moot))
    if idle:
        batch.append(cmd("hdel", served_key, *idle))
    if batch:
        yield batch
    return len(moot) + len(idle)


class Admission:
    """Admission on one client: ``Store.admission``."""

    def __init__(self, run: Runner, *, grace: float, submit_grace: float) -> None:
        self.run = run
        self.grace = grace
        self.submit_grace = submit_grace

    def admit(
        self,
        provider: str,
        *,
        now: float,
        limit: int,
        caps: Sequence[tuple[str, int]],
        shares: Mapping[str, tuple[float, int]],
        enqueue: Sequence[Entry] = (),
        requeue: Sequence[tuple[str, str, str]] = (),
        cooldown_until: float = 0.0,
        capped: bool = True,
    ) -> Admitted:
        """:func:`admit`: an admitted job's create is expected within the submit grace."""
        return self.run(
            admit(
                provider, now=now, limit=limit, caps=caps, shares=shares,
                submit_watch=now + self.submit_grace, grace=self.grace, enqueue=enqueue,
                requeue=requeue, cooldown_until=cooldown_until, capped=capped,
            )
        )  # fmt: skip

    def queue_state(
        self, provider: str, caps: Sequence[tuple[str, int]], *, now: float
    ) -> ProviderQueue:
        return self.run(queue_state(provider, caps, now=now))

    def sweep(self, provider: str, accounts: Sequence[str]) -> list[str]:
        return self.run(sweep(provider, accounts))

    def stranded(self, provider: str) -> bool:
        return self.run(stranded(provider))

    def prune(self, provider: str) -> int:
        return self.run(prune(provider))
