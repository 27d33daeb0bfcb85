"""What the ingress does with one provider push, written once with no I/O (a producer flow:
it yields Redis batches and a Celery message, :mod:`pollen.producer`).

A push is a wake-up, never a result: the token in its URL must be the one stored with the
job, the job must be in flight, and then the job is polled at once through the normal fenced
poll (``pollen.poll`` with the job's current attempt number), which asks the provider and
records what *it* says. The body is kept, truncated, for the audit trail.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Literal

from pollen import contract
from pollen.models import JobStatus
from pollen.producer import Flow, Send
from pollen.providers import REGISTRY
from pollen.providers import push as tokens
from pollen.settings import Settings
from pollen.store import pushes

#: how many pushes a job's audit list keeps, and how much of each body
KEEP_PUSHES = 10
KEEP_BODY_CHARS = 4096

Verdict = Literal["polled", "noted", "finished", "unknown", "forged", "malformed"]


@dataclass(frozen=True)
class PushOutcome:
    """What came of one push: ``polled`` (a poll of the job was sent), ``noted`` (the job's
    submit answer is not stored yet; the submit step polls it at once), ``finished`` (nothing
    to do), ``unknown`` (no such job), ``forged`` (the token or provider is not the job's),
    ``malformed`` (not a JSON body)."""

    verdict: Verdict
    job_id: str | None = None
    attempt: int | None = None

    @property
    def acted(self) -> bool:
        return self.verdict in ("polled", "noted")


def audit_entry(body: bytes, now: float) -> str:
    """The JSON kept in the job's push list for one push."""
    text = body.decode("utf-8", errors="replace")
    entry = {"at": now, "bytes": len(body), "body": text[:KEEP_BODY_CHARS]}
    if len(text) > KEEP_BODY_CHARS:
        entry["truncated"] = True
    return json.dumps(entry, separators=(",", ":"))


def take_push(
    settings: Settings, provider: str, token: str, body: bytes, *, now: float
) -> Flow[PushOutcome]:
    """Check one push and wake its job up (see the module docstring)."""
    job_id = tokens.job_of(token)
    if job_id is None or provider not in REGISTRY:
        return PushOutcome("unknown")
    stored, owner = yield from pushes.push_target(job_id)
    if stored is None or owner is None:
        return PushOutcome("unknown", job_id)
    if not hmac.compare_digest(stored.encode(), token.encode()) or owner != provider:
        return PushOutcome("forged", job_id)
    try:
        json.loads(body)
    except ValueError:
        return PushOutcome("malformed", job_id)
    answer = yield from pushes.record_push(
        job_id, audit_entry(body, now), now=now, keep=KEEP_PUSHES
    )
    if answer is None:
        return PushOutcome("unknown", job_id)
    status, seq = answer
    if status.terminal:
        return PushOutcome("finished", job_id)
    if status is JobStatus.QUEUED:
        return PushOutcome("noted", job_id)
    items = [[job_id, seq]]
    yield Send(
        contract.POLL,
        settings.queues.poll,
        kwargs={"items": items},
        kwargsrepr=contract.describe_batch(items, provider),
    )
    return PushOutcome("polled", job_id, seq)
