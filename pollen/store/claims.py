"""Claims on submit messages held by workers: who holds which message, and until when.

On a Redis broker, a message a worker has taken but not acknowledged sits in kombu's unacked
hash until the broker's visibility timeout, however soon its worker died. A ``pollen.submit``
message that a dead worker held is the one thing the reconciler cannot see by itself: with
the plain ``send_task`` contract, no job record exists until the submit runs. So a worker
records each submit message it receives (:func:`hold`) under its instance's name and drops
the record when the task is done (:func:`release`); each instance keeps a short lease on
all its claims (:func:`renew`), one command per renewal whatever it holds. An instance whose
lease lapsed is dead: the reconciler takes its claims (:func:`take_lapsed`) and sends each
message again, with its own task id, so a duplicate is the same job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pollen.store import keys
from pollen.store.effects import Batch, Lua, Op, Runner, cmd, single

#: the claims' scripts, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = ("take_held", "renew_holder", "lapsed_holders")


@dataclass(frozen=True)
class Held:
    """One submit message a worker held: enough to send it again."""

    task_id: str
    kwargs: dict[str, Any]
    eta: float | None = None  #: when a countdown retry was due (unix time), None for now
    retries: int = 0  #: the task's retry number (a retry is a new message, same task id)
    delivery_tag: str | None = None  #: the broker's tag of this copy (kombu's unacked hash)
    claimed_at: float | None = None  #: when its worker received it (that worker's clock)

    @property
    def tag(self) -> str:
        return message_tag(self.task_id, self.retries)

    def dump(self) -> str:
        return json.dumps(
            {"id": self.task_id, "kwargs": self.kwargs, "eta": self.eta,
             "retries": self.retries, "delivery_tag": self.delivery_tag,
             "claimed_at": self.claimed_at}
        )  # fmt: skip

    def job_ids(self) -> list[str]:
        """The stored jobs the message names (none for a job payload: not stored yet)."""
        one, many = self.kwargs.get("job_id"), self.kwargs.get("job_ids")
        if isinstance(one, str):
            return [one]
        if isinstance(many, list):
            return [job for job in many if isinstance(job, str)]
        return []

    @classmethod
    def load(cls, text: str) -> Held:
        data = json.loads(text)
        return cls(
            str(data["id"]), dict(data["kwargs"]), data.get("eta"),
            int(data.get("retries") or 0), data.get("delivery_tag"), data.get("claimed_at"),
        )  # fmt: skip

    def stale(self, now: float, time_limit: float) -> bool:
        """Whether the message's task must have ended long ago, whatever became of it (a
        claim whose release was lost: a hard time limit, a revoked or expired message)."""
        if self.claimed_at is None:
            return False
        started = max(self.claimed_at, self.eta or self.claimed_at)
        return now > started + time_limit + STALE_MARGIN


def message_tag(task_id: str, retries: int) -> str:
    """A message's key among its holder's claims: its task id and retry number (a retry is a
    new message with the same task id; a redelivered copy is the same message)."""
    return f"{task_id}:{retries}"


#: how long past its time limit a claim is still believed (clock skew between workers)
STALE_MARGIN = 300.0


# --- operations -------------------------------------------------------------------------


def hold(holder: str, tag: str, message: Held, *, expect_by: float | None = None) -> Op[None]:
    """Record that ``holder`` took the message ``tag`` (its lease is renewed apart).

    With ``expect_by``, the stored jobs the message names are not overdue before then: a
    live worker has their submit in hand (the reconciler leaves them alone; if the worker
    dies, the claim brings the message back sooner)."""
    batch: Batch = [cmd("hset", keys.held(holder), tag, message.dump())]
    jobs = message.job_ids()
    if expect_by is not None and jobs:
        batch.append(cmd("zadd", keys.INFLIGHT, dict.fromkeys(jobs, expect_by), xx=True, gt=True))
    yield batch


def restore(holder: str, messages: Sequence[Held]) -> Op[None]:
    """Put back claims taken from a lapsed ``holder`` that could not be sent again (the next
    round tries them again)."""
    if messages:
        yield [
            cmd("hset", keys.held(holder), mapping={m.tag: m.dump() for m in messages}),
            cmd("zadd", keys.HOLDERS, {holder: 0}),
        ]


def release(holder: str, tags: Sequence[str]) -> Op[None]:
    """Forget the messages ``tags`` of ``holder``: their tasks are done."""
    if tags:
        yield [cmd("hdel", keys.held(holder), *tags)]


def renew(holder: str, lease: float) -> Op[None]:
    """Extend ``holder``'s lease on every message it holds by ``lease`` seconds of the
    server's time."""
    yield [Lua("renew_holder", [keys.HOLDERS], [holder, repr(lease)])]


def drop(holder: str) -> Op[None]:
    """Forget every claim of ``holder`` (a worker that stopped cleanly requeued them)."""
    yield [cmd("delete", keys.held(holder)), cmd("zrem", keys.HOLDERS, holder)]


def claimed() -> Op[set[str]]:
    """The tags of every message any worker instance claims (live or not yet taken), and of
    those already sent again from a dead worker's claims."""
    holders = yield from single(cmd("zrange", keys.HOLDERS, 0, -1))
    tags = yield [
        cmd("hkeys", keys.RESENT),
        *[cmd("hkeys", keys.held(str(holder))) for holder in holders],
    ]
    return {str(tag) for each in tags for tag in each}


def scanned(upto: float | None = None) -> Op[float | None]:
    """Where the scan of the broker's unacked messages stopped (:mod:`pollen.store.orphans`);
    with ``upto``, move it there first."""
    if upto is not None:
        yield [cmd("set", keys.ORPHAN_SCAN, repr(upto))]
    value = yield from single(cmd("get", keys.ORPHAN_SCAN))
    return None if value is None else float(value)


def lapsed(limit: int) -> Op[list[str]]:
    """Instances whose lease lapsed (dead workers), in the server's time."""
    found = yield from single(Lua("lapsed_holders", [keys.HOLDERS], [limit]))
    return [str(holder) for holder in found]


def take(holder: str) -> Op[list[Held]]:
    """Take every message of a lapsed ``holder`` (nothing if it renewed meanwhile)."""
    taken = yield from single(
        Lua("take_held", [keys.HOLDERS, keys.held(holder), keys.RESENT], [holder, keys.RESENT_TTL])
    )
    return [Held.load(str(text)) for text in taken[1::2]]


def uptime() -> Op[int]:
    """Seconds since the Redis server started."""
    info = yield from single(cmd("info", "server"))
    return int(info.get("uptime_in_seconds", 0))


# --- on the synchronous client ----------------------------------------------------------


class Claims:
    """Claims on held submit messages, on one client: ``Store.claims``."""

    def __init__(self, run: Runner) -> None:
        self.run = run

    def hold(self, holder: str, tag: str, message: Held, *, expect_by: float | None = None) -> None:
        self.run(hold(holder, tag, message, expect_by=expect_by))

    def restore(self, holder: str, messages: Sequence[Held]) -> None:
        self.run(restore(holder, messages))

    def release(self, holder: str, tags: Sequence[str]) -> None:
        self.run(release(holder, tags))

    def renew(self, holder: str, lease: float) -> None:
        self.run(renew(holder, lease))

    def uptime(self) -> int:
        return self.run(uptime())

    def drop(self, holder: str) -> None:
        self.run(drop(holder))

    def claimed(self) -> set[str]:
        return self.run(claimed())

    def scanned(self, upto: float | None = None) -> float | None:
        return self.run(scanned(upto))

    def take_lapsed(self, limit: int = 100) -> list[tuple[str, list[Held]]]:
        """The messages of every instance whose lease lapsed, taken: (holder, messages)."""
        return [(holder, self.run(take(holder))) for holder in self.run(lapsed(limit))]
