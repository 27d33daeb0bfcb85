"""A job's callback deliveries as the producer reads and replays them (store operations; the
worker's side is :mod:`pollen.store.outbox`)."""

from __future__ import annotations

import json
from typing import Any

from pollen.store import keys
from pollen.store.effects import Batch, Lua, Op, cmd


def deliveries(
    job_id: str, *, attempts: bool = True
) -> Op[tuple[list[dict[str, str]], list[dict[str, Any]]]]:
    """A job's callback deliveries (their stored fields, in event order) and, with
    ``attempts``, every attempt made."""
    batch: Batch = [cmd("lrange", keys.job_deliveries(job_id), 0, -1)]
    if attempts:
        batch.append(cmd("lrange", keys.delivery_attempts(job_id), 0, -1))
    ids, *raw_attempts = yield batch
    records = (yield [cmd("hgetall", keys.delivery(str(i))) for i in ids]) if ids else []
    made = [json.loads(a) for a in raw_attempts[0]] if raw_attempts else []
    return [r for r in records if r], made


def replay(delivery: str, url: str | None, *, now: float) -> Op[bool]:
    """Make a delivery pending again with a fresh schedule (its webhook-id stays); ``url``: a
    receiver that answered 410 Gone, to call again."""
    batch: Batch = [Lua("replay_delivery", [keys.delivery(delivery), keys.DUE, keys.DEAD],
                        [delivery, now])]  # fmt: skip
    if url is not None:
        batch.append(cmd("srem", keys.GONE, url))
    replies = yield batch
    return bool(replies[0])
