"""Submit messages a worker took from a Redis broker but died before claiming.

kombu's Redis transport moves a message it hands to a worker into its ``unacked`` hash (with
its delivery time in ``unacked_index``); the worker then claims it (:mod:`pollen.store.claims`)
a moment later, when Celery has turned it into a request. A worker killed in that moment leaves
a message only the visibility timeout would bring back. :class:`Orphans` finds such a
``pollen.submit`` message once it has waited ``age`` seconds with no claim anywhere, so the
reconciler can send it again (kombu's copy stays: should its worker be alive after all, or the
copy come back after the visibility timeout, it is the same job).

Each message is looked at once: the scan goes forward through the delivery times, from where
the last round stopped (kept in the store, so any worker's round continues it).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import redis

from pollen import contract
from pollen.store.claims import Held

#: kombu's Redis transport keys (its defaults; pollen sets no ``global_keyprefix``)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def decode(raw: str | bytes, delivery_tag: str, queue: str) -> Held | None:
    """The submit message of an ``unacked`` hash entry routed to ``queue``; None for any
    other (another task, another deployment's queue on the same broker) or an entry that
    cannot be read (left to kombu)."""
    try:
        message, _exchange, routing_key = json.loads(raw)
        headers = message.get("headers") or {}
        if headers.get("task") != contract.SUBMIT or routing_key != queue:
            return None
        body: Any = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return Held(
            str(headers["id"]), dict(kwargs), eta=_timestamp(headers.get("eta")),
            retries=int(headers.get("retries") or 0), delivery_tag=delivery_tag,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None


def _timestamp(eta: Any) -> float | None:
    if not eta:
        return None
    moment = datetime.fromisoformat(str(eta))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class Orphans:
    """Unclaimed messages of one submit queue in a Redis broker's unacked hash."""

    def __init__(self, broker: redis.Redis, queue: str) -> None:
        self.broker = broker
        self.queue = queue

    def scan(self, after: float, until: float, limit: int) -> tuple[list[Held], float]:
        """The submit messages handed to a worker after ``after`` and at or before
        ``until`` (at most ``limit`` entries looked at), and where the next scan goes on."""
        entries: Any = self.broker.zrangebyscore(
            UNACKED_INDEX, f"({after!r}", until, start=0, num=limit, withscores=True
        )
        if not entries:
            return [], until
        tags = [str(tag) for tag, _ in entries]
        upto = float(entries[-1][1]) if len(entries) == limit else until
        found = []
        for tag, raw in zip(tags, self.broker.hmget(UNACKED, tags), strict=True):
            held = decode(raw, tag, self.queue) if raw is not None else None
            if held is not None:
                found.append(held)
        return found, upto
