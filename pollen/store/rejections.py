"""Refused ``pollen.submit`` payloads, kept so their producer can find out.

A producer that sends a job by name (``send_task("pollen.submit", kwargs={"job": ...})``)
hears nothing back when a worker refuses the payload unless it reads the task's result. So a
worker keeps each refusal: under the payload's job id, where it names a usable one (``pollen
status <id>`` and ``Pollen.get`` answer "rejected"), and in a list of the latest refusals
(``pollen rejected``). Both expire with the finished-job TTL; no job record is written, so a
refused job is in no count, listing or index.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pollen.store import keys
from pollen.store.effects import Batch, Op, cmd


@dataclass(frozen=True)
class Rejection:
    """One refused payload."""

    job_id: str | None  #: the payload's job id, where it named a usable one
    message_id: str  #: the Celery message's id (``send_task(...).id``)
    reason: str  #: a short class of refusal (the ``reason`` label of the metric)
    error: str  #: the refusal, naming the field: ``tenent: unknown field; did you mean ...``
    at: float  #: when the worker refused it (unix seconds)
    errors: list[dict[str, Any]] = field(default_factory=list)  #: every bad field
    callback: str | None = None  #: the ``job.rejected`` delivery's id, where one was sent

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Rejection:
        return cls(**json.loads(raw))


def record(rejection: Rejection, *, ttl: int) -> Op[None]:
    """Keep a refusal: first in the latest-refusals list, and under its job id."""
    body = rejection.to_json()
    batch: Batch = [
        cmd("lpush", keys.REJECTED, body),
        cmd("ltrim", keys.REJECTED, 0, keys.REJECTED_KEEP - 1),
        cmd("expire", keys.REJECTED, ttl),
    ]
    if rejection.job_id:
        batch.append(cmd("set", keys.rejected(rejection.job_id), body, ex=ttl))
    yield batch


def find(job_id: str) -> Op[Rejection | None]:
    """The latest refusal of a payload that named ``job_id``, if one is kept."""
    [raw] = yield [cmd("get", keys.rejected(job_id))]
    return Rejection.from_json(raw) if raw else None


def latest(limit: int) -> Op[list[Rejection]]:
    """The latest refusals, newest first."""
    [raws] = yield [cmd("lrange", keys.REJECTED, 0, max(limit, 1) - 1)]
    return [Rejection.from_json(raw) for raw in raws]
