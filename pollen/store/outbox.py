"""Callback deliveries in Redis: one record per event, with its attempts, schedule and state.

A delivery's id is the ``webhook-id`` the receiver sees and never changes (retries and
replays reuse it). It is derived from the job and the event (``msg_<job>_completed``,
``msg_<job>_partial_<generation>``), so an event noticed twice is still one delivery.

Every delivery that is not finished sits in ``pollen:callbacks:due`` scored by when it must
be tried (again): the periodic round sends the due ones, so a wait of hours is a number in a
sorted set, not a countdown message held in a worker's memory, and a delivery whose message
was lost is simply tried again.

States: pending → sending → delivered | gone (410) | dead (schedule exhausted or refused).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import redis

from pollen.store import keys

DeliveryState = Literal["pending", "sending", "delivered", "gone", "dead"]

# KEYS: delivery, job_deliveries, due   ARGV: id, due_at, ttl, field, value, ...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

# KEYS: delivery   ARGV: now, lease_seconds
# Only one copy of a delivery message sends at a time; finished deliveries are left alone.
_CLAIM = """
local d = redis.call('HMGET', KEYS[1], 'state', 'lease_until')
if not d[1] then return 'missing' end
if d[1] == 'delivered' or d[1] == 'gone' or d[1] == 'dead' then return d[1] end
if d[1] == 'sending' and tonumber(d[2] or '0') > tonumber(ARGV[1]) then return 'busy' end
redis.call('HSET', KEYS[1], 'state', 'sending',
  'lease_until', tostring(tonumber(ARGV[1]) + tonumber(ARGV[2])))
return 'ok'
"""

# KEYS: delivery, attempts_log, due, dead   ARGV: id, state, attempt_json, due_at, now, error
_RECORD = """
redis.call('RPUSH', KEYS[2], ARGV[3])
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'lease_until', '0', 'last_error', ARGV[6],
  'updated_at', ARGV[5])
if ARGV[2] == 'pending' then
  redis.call('HSET', KEYS[1], 'next_at', ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if ARGV[2] == 'dead' then redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return n
"""

# KEYS: due   ARGV: now, limit, watch_seconds
# Take up to `limit` due deliveries and push each one's due time forward by `watch_seconds`
# (if its message is lost again, it comes back then).
_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local later = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], later, id) end
return ids
"""

# KEYS: delivery, due, dead   ARGV: id, now
_REPLAY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'attempts', '0', 'lease_until', '0',
  'next_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


def delivery_id(job_id: str, event: str, suffix: str = "") -> str:
    """The stable ``webhook-id`` of one event of one job."""
    return f"msg_{job_id}_{event}" + (f"_{suffix}" if suffix else "")


@dataclass(frozen=True)
class Delivery:
    id: str
    job_id: str
    event: str
    kind: Literal["http", "celery"]
    target: str  #: callback URL, or the producer's Celery task name
    queue: str | None
    body: str
    state: DeliveryState
    attempts: int
    replays: int
    next_at: float | None
    last_error: str

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Delivery:
        return cls(
            id=fields["id"],
            job_id=fields["job_id"],
            event=fields["event"],
            kind=fields.get("kind", "http"),  # type: ignore[arg-type]
            target=fields["target"],
            queue=fields.get("queue") or None,
            body=fields["body"],
            state=fields["state"],  # type: ignore[arg-type]
            attempts=int(fields.get("attempts") or 0),
            replays=int(fields.get("replays") or 0),
            next_at=float(fields["next_at"]) if fields.get("next_at") else None,
            last_error=fields.get("last_error", ""),
        )


class Outbox:
    """Delivery records in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._record = client.register_script(_RECORD)
        self._take_due = client.register_script(_TAKE_DUE)
        self._replay = client.register_script(_REPLAY)

    def create(
        self,
        delivery: str,
        *,
        job_id: str,
        event: str,
        kind: str,
        target: str,
        body: str,
        now: float,
        watch: float,
        ttl: int,
        queue: str | None = None,
    ) -> bool:
        """Store a pending delivery (due again after ``watch`` seconds unless it is sent first).

        False if it already existed: the same event noticed twice is one delivery.
        """
        fields = {
            "id": delivery,
            "job_id": job_id,
            "event": event,
            "kind": kind,
            "target": target,
            "queue": queue or "",
            "body": body,
            "state": "pending",
            "attempts": "0",
            "created_at": repr(now),
            "next_at": repr(now),
        }
        flat = [item for pair in fields.items() for item in pair]
        created = self._create(
            keys=[keys.delivery(delivery), keys.job_deliveries(job_id), keys.DUE],
            args=[delivery, repr(now + watch), ttl, *flat],
        )
        return bool(created)

    def claim(self, delivery: str, *, now: float, lease: float) -> str:
        """'ok' to send; 'busy' (another copy sends); 'missing' or a final state: nothing to do."""
        return str(self._claim(keys=[keys.delivery(delivery)], args=[repr(now), lease]))

    def get(self, delivery: str) -> Delivery | None:
        fields = self.redis.hgetall(keys.delivery(delivery))
        return Delivery.from_fields(fields) if fields else None  # type: ignore[arg-type]

    def record(
        self,
        delivery: Delivery,
        attempt: dict[str, Any],
        *,
        state: DeliveryState,
        now: float,
        due_at: float | None = None,
    ) -> int:
        """Log one attempt and move the delivery to ``state`` (pending: due again at ``due_at``).

        Returns the number of attempts made so far.
        """
        entry = json.dumps({"delivery": delivery.id, "event": delivery.event, **attempt})
        return int(
            self._record(
                keys=[
                    keys.delivery(delivery.id),
                    keys.delivery_attempts(delivery.job_id),
                    keys.DUE,
                    keys.DEAD,
                ],
                args=[
                    delivery.id,
                    state,
                    entry,
                    repr(due_at if due_at is not None else now),
                    repr(now),
                    attempt.get("error") or "",
                ],
            )
        )

    def release(self, delivery: Delivery, *, due_at: float) -> None:
        """Give back a claim without an attempt (the delivery must wait for an earlier one)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.delivery(delivery.id), mapping={"state": "pending", "lease_until": "0"})
        pipe.zadd(keys.DUE, {delivery.id: due_at})
        pipe.execute()

    def take_due(self, *, now: float, limit: int, watch: float) -> list[str]:
        """Deliveries due now (each pushed ``watch`` seconds later in case its message is lost)."""
        ids = self._take_due(keys=[keys.DUE], args=[repr(now), limit, watch])
        return [str(i) for i in ids]

    def replay(self, delivery: str, *, now: float) -> bool:
        """Make a delivery pending again with a fresh schedule; its webhook-id stays the same."""
        return bool(
            self._replay(keys=[keys.delivery(delivery), keys.DUE, keys.DEAD], args=[delivery, now])
        )

    def count_for_job(self, job_id: str) -> int:
        return int(self.redis.llen(keys.job_deliveries(job_id)))

    def for_job(self, job_id: str) -> list[Delivery]:
        ids = self.redis.lrange(keys.job_deliveries(job_id), 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for ident in ids:
            pipe.hgetall(keys.delivery(str(ident)))
        return [Delivery.from_fields(fields) for fields in pipe.execute() if fields]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        raw = self.redis.lrange(keys.delivery_attempts(job_id), 0, -1)
        return [json.loads(r) for r in raw]

    def dead(self, limit: int = 1000) -> list[str]:
        return [str(i) for i in self.redis.zrange(keys.DEAD, 0, limit - 1)]

    def mark_gone(self, url: str) -> None:
        self.redis.sadd(keys.GONE, url)

    def is_gone(self, url: str) -> bool:
        return bool(self.redis.sismember(keys.GONE, url))
