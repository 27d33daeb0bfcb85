"""Celery messages where kombu keeps them in Redis, and redelivering copies of them.

kombu's Redis transport keeps each queue as a list of JSON envelopes and every message a
worker has taken but not acknowledged in the ``unacked`` hash (delivery tag -> ``[envelope,
exchange, routing_key]``). When an acknowledgement never comes, kombu's visibility-timeout
sweep pushes the envelope back onto its queue; :func:`redeliver` does the same thing at once.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import redis

UNACKED = "unacked"


@dataclass(frozen=True)
class Message:
    envelope: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.envelope["headers"]["task"])

    @property
    def id(self) -> str:
        return str(self.envelope["headers"]["id"])

    @property
    def queue(self) -> str:
        return str(self.envelope["properties"]["delivery_info"]["routing_key"])

    @property
    def kwargs(self) -> dict[str, Any]:
        body = self.envelope["body"]
        if self.envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return dict(kwargs)


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def unacked(broker: redis.Redis) -> list[Message]:
    """Every message taken by a worker and not acknowledged yet (running or waiting)."""
    found = []
    for raw in broker.hvals(UNACKED):
        envelope, _exchange, _routing_key = json.loads(raw)
        found.append(Message(envelope))
    return found


def queued(broker: redis.Redis, queue: str) -> list[Message]:
    return [Message(json.loads(raw)) for raw in broker.lrange(queue, 0, -1)]


def job_ids(message: Message) -> list[str]:
    """The jobs a ``pollen.poll`` message carries (a batch, or the one-job form)."""
    kwargs = message.kwargs
    items = kwargs.get("items") or [[kwargs.get("job_id"), kwargs.get("attempt")]]
    return [str(item[0]) for item in items]


def poll_message(broker: redis.Redis, job_id: str, attempt: int) -> Message | None:
    """The unacknowledged ``pollen.poll`` message (a batch, or the one-job form) that carries
    one job's poll number ``attempt``."""
    for message in unacked(broker):
        kwargs = message.kwargs
        items = kwargs.get("items") or [[kwargs.get("job_id"), kwargs.get("attempt")]]
        if message.task == "pollen.poll" and [job_id, attempt] in items:
            return message
    return None


def redeliver(broker: redis.Redis, message: Message) -> None:
    """Put a copy of ``message`` back on its queue, first in line, marked redelivered —
    what kombu does when a message's acknowledgement never came."""
    envelope = json.loads(json.dumps(message.envelope))
    envelope["headers"]["redelivered"] = True
    envelope["properties"]["delivery_info"]["redelivered"] = True
    broker.rpush(message.queue, json.dumps(envelope))
