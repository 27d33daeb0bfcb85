"""The worker's side of callbacks: recording the deliveries an event causes, and one attempt
at a delivery.

An attempt costs two Redis round trips: the claim (one script: the delivery, the job's own
secret, whether an earlier event to the same receiver must go first, when the job finished)
and the record of what happened. HTTP deliveries are signed (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``) and retried on a schedule; Python callbacks are
Celery tasks of the producer's own app, sent by name with the job's final result. A delivery
never changes the job's status.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pollen.callbacks import delivery as http_delivery
from pollen.callbacks import events, webhooks
from pollen.models import Job
from pollen.store import keys
from pollen.store.outbox import Delivery, DeliveryClaim, DeliveryState, delivery_id
from pollen.worker import logs, metrics, traces
from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)

#: send_task(name, kwargs, queue) — how the Celery wrapper lets this module send a message
SendTask = Callable[[str, dict[str, Any], str | None], None]
#: seconds a delivery waits, at least, for an earlier event to the same receiver
BLOCKED_RECHECK = 0.3

#: a claimed delivery is one worker's for its HTTP timeout plus this (the lookup, the connect,
#: the body); a worker that dies sending it leaves it to the periodic round once that passes
LEASE_MARGIN = 30.0


def emit(deps: Deps, job: Job, kind: str, data: dict[str, Any], suffix: str = "") -> list[str]:
    """Record the deliveries one event causes; return the ids to send now.

    Nothing happens for events the job did not subscribe to. The ids are stable, so noticing
    the same event twice creates nothing new (and returns nothing).
    """
    now = deps.clock()
    body = events.envelope(kind, data, now)
    ttl = deps.settings.job_ttl + keys.EXTRA_TTL
    watch = deps.settings.reconcile_grace
    created: list[str] = []
    if job.callback_url and events.subscribed(job, kind):
        ident = delivery_id(job.id, kind, suffix)
        if deps.outbox.create(
            ident, job_id=job.id, event=kind, kind="http", target=job.callback_url,
            body=body, now=now, watch=watch, ttl=ttl,
        ):  # fmt: skip
            created.append(ident)
    if job.python_callback and kind == "completed":
        ident = delivery_id(job.id, kind, "celery")
        if deps.outbox.create(
            ident, job_id=job.id, event=kind, kind="celery",
            target=job.python_callback["task"], queue=job.python_callback.get("queue"),
            body=json.dumps(data, default=str), now=now, watch=watch, ttl=ttl,
        ):  # fmt: skip
            created.append(ident)
    return created


@dataclass(frozen=True)
class DeliveryOutcome:
    state: DeliveryState | None  #: None: nothing was attempted
    retry_in: float | None = None  #: try again by countdown after this many seconds
    detail: str = ""  #: what happened, in a few words (the task's result or failure in Flower)


def deliver(
    deps: Deps, ident: str, send_task: SendTask, *, timeout: float | None = None
) -> DeliveryOutcome:
    """Make one attempt at delivery ``ident`` and schedule what follows.

    ``timeout`` shortens the HTTP timeout (the finishing poll's own attempt); the retries
    use ``POLLEN_CALLBACKS__TIMEOUT``.
    """
    settings = deps.settings.callbacks
    now = deps.clock()
    lease = settings.timeout + LEASE_MARGIN
    claim = deps.outbox.claim(ident, now=now, lease=lease, recheck=BLOCKED_RECHECK)
    item = claim.delivery
    if item is None:  # finished, missing, or another copy is sending it right now
        return DeliveryOutcome(None, detail=f"not sent: the delivery is {claim.verdict}")
    logs.bind(job_id=item.job_id)
    if claim.wait is not None:  # an earlier event to the same receiver is not finished yet
        retry_in = claim.wait if claim.wait <= settings.park_after else None
        detail = f"not sent yet: waits {claim.wait:.1f}s for an earlier event"
        return DeliveryOutcome(None, retry_in, detail)
    with traces.job_span(deps, "pollen.callback", [item.job_id], _attributes(item)):
        if item.kind == "celery":
            attempt = _send_celery(item, send_task, now)
        else:
            attempt = _post(deps, claim, item, timeout or settings.timeout)
        return _settle(deps, claim, item, attempt, now)


def _attributes(item: Delivery) -> dict[str, str]:
    """A delivery span's own attributes (never its URL, which can be a secret)."""
    return {"pollen.delivery.id": item.id, "pollen.event": item.event, "pollen.kind": item.kind}


def _send_celery(item: Delivery, send_task: SendTask, now: float) -> dict[str, Any]:
    started = time.monotonic()
    outcome, error = "delivered", None
    try:
        send_task(item.target, {"result": json.loads(item.body)}, item.queue)
    except Exception as exc:  # the broker refused: retry on the schedule
        outcome, error = "retry", f"{type(exc).__name__}: {exc}"
    return {
        "at": now,
        "status_code": None,
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
        "error": error,
        "retry_after": None,
        "outcome": outcome,
    }


def _post(deps: Deps, claim: DeliveryClaim, item: Delivery, timeout: float) -> dict[str, Any]:
    if claim.gone:
        return {
            "at": deps.clock(),
            "status_code": None,
            "latency_ms": 0.0,
            "error": "the receiver answered 410 Gone earlier: not called again",
            "retry_after": None,
            "outcome": "gone",
        }
    body = item.body.encode()
    timestamp = int(deps.clock())
    secrets = _secrets(deps, claim.secret)
    if secrets:
        headers = webhooks.headers(secrets, item.id, timestamp, body)
    else:
        headers = {
            "webhook-id": item.id,
            "webhook-timestamp": str(timestamp),
            "content-type": "application/json",
        }
    attempt = http_delivery.post(
        deps.http,
        item.target,
        body,
        headers,
        timeout=timeout,
        policy=deps.policy,
        clock=deps.clock,
    )
    return attempt.to_dict()


def _secrets(deps: Deps, own: str) -> list[str]:
    """The job's own secret, else the worker's (several while they rotate)."""
    if own:
        return [own]
    return [s.get_secret_value() for s in deps.settings.callbacks.secrets]


def _settle(
    deps: Deps, claim: DeliveryClaim, item: Delivery, attempt: dict[str, Any], now: float
) -> DeliveryOutcome:
    settings = deps.settings.callbacks
    metrics.CALLBACKS.labels(attempt["outcome"]).inc()
    outcome = attempt["outcome"]
    if outcome in ("delivered", "gone"):
        state: DeliveryState = "delivered" if outcome == "delivered" else "gone"
        deps.outbox.record(item, attempt, state=state, now=now)  # gone: its URL is noted
        if outcome == "delivered" and item.event == "completed" and claim.finished_at is not None:
            lag = max(0.0, now - claim.finished_at)
            metrics.COMPLETION_TO_CALLBACK.observe(lag)
        return DeliveryOutcome(state, detail=f"{outcome} ({_answer(attempt)})")
    made = item.attempts + 1
    if outcome == "failed" or made >= len(settings.schedule):
        deps.outbox.record(item, attempt, state="dead", now=now)
        log.warning("callback %s is dead after %d attempt(s): %s", item.id, made, attempt["error"])
        return DeliveryOutcome("dead", detail=f"dead after {made} attempt(s): {_answer(attempt)}")
    delay = settings.schedule[made] * (1 + settings.jitter * (2 * deps.rng.random() - 1))
    delay = max(delay, attempt.get("retry_after") or 0.0, 0.0)
    short = delay <= settings.park_after
    # A short wait is a countdown message; a long one waits in Redis for the periodic round.
    due = now + delay + (deps.settings.reconcile_grace if short else 0.0)
    deps.outbox.record(item, attempt, state="pending", now=now, due_at=due)
    log.info("callback %s attempt %d failed (%s); next in %.1fs", item.id, made,
             attempt["error"], delay)  # fmt: skip
    where = "by countdown" if short else "from Redis (periodic round)"
    detail = f"attempt {made} failed: {_answer(attempt)}; next in {delay:.1f}s {where}"
    return DeliveryOutcome("pending", retry_in=delay if short else None, detail=detail)


def _answer(attempt: dict[str, Any]) -> str:
    """The receiver's answer to one attempt, ``HTTP 500`` or the error's kind: never a URL,
    which can be a secret (Flower and the task's log show this)."""
    if attempt.get("status_code") is not None:
        return f"HTTP {attempt['status_code']}"
    if attempt.get("error"):
        return str(attempt["error"]).split(":", 1)[0]
    return "sent as a Celery task"
