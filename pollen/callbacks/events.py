"""Callbacks: which events a job sends, their bodies, and delivering one of them.

Bodies follow the Standard Webhooks shape ``{"type", "timestamp", "data"}``; HTTP deliveries
are signed (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) and retried on a
schedule; Python callbacks are Celery tasks of the producer's own app, sent by name with the
job's final result. A delivery never changes the job's status.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pollen.callbacks import delivery as http_delivery
from pollen.callbacks import webhooks
from pollen.models import GenerationResult, Job
from pollen.store import keys
from pollen.store.outbox import Delivery, DeliveryState, delivery_id
from pollen.worker import logs, metrics

if TYPE_CHECKING:
    from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)

#: send_task(name, kwargs, queue) — how the Celery wrapper lets this module send a message
SendTask = Callable[[str, dict[str, Any], str | None], None]
BLOCKED_RECHECK = 0.3


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def envelope(kind: str, data: dict[str, Any], now: float) -> str:
    """A Standard Webhooks body: ``{"type": "job.<kind>", "timestamp": ..., "data": ...}``."""
    body = {"type": f"job.{kind}", "timestamp": _timestamp(now), "data": data}
    return json.dumps(body, separators=(",", ":"), default=str)


def completion_payload(job: Job) -> dict[str, Any]:
    """The final result: the ``data`` of ``job.completed`` and what Python callbacks receive."""
    return {
        **_summary(job),
        "results": [r.model_dump(exclude={"raw"}) for r in job.results],
        "errors": [e.model_dump(exclude={"raw"}) for e in job.errors],
        "error": job.error.model_dump() if job.error else None,
        "cost": job.cost,
        "timings": {
            "created_at": job.created_at,
            "submitted_at": job.submitted_at,
            "finished_at": job.finished_at,
            "polls": job.polls,
            "submit_attempts": job.submit_attempts,
        },
        # a cancelled job: what the cancel did at the provider
        **({"cancel_note": job.cancel_note} if job.cancel_note else {}),
    }


def _summary(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status.value,
        "provider": job.provider,
        "provider_task_id": job.provider_task_id,
        "metadata": job.metadata,
    }


def started_payload(job: Job) -> dict[str, Any]:
    return _summary(job)


def progress_payload(job: Job, progress: float) -> dict[str, Any]:
    return {**_summary(job), "progress": progress}


def partial_payload(job: Job, result: GenerationResult, index: int) -> dict[str, Any]:
    return {
        **_summary(job),
        "index": index,
        "expected_results": job.expected_results,
        "result": result.model_dump(exclude={"raw"}),
    }


def stored_payload(job: Job, result: GenerationResult) -> dict[str, Any]:
    """The ``data`` of ``job.result_stored``: the result with its copy (``result.stored``:
    ``stored`` with its URL and checksum, or ``failed`` with the error)."""
    index = next((n for n, r in enumerate(job.results, start=1) if r.id == result.id), 0)
    return {**_summary(job), "index": index, "result": result.model_dump(exclude={"raw"})}


def subscribed(job: Job, kind: str) -> bool:
    """Whether the job's callback URL receives ``kind``: the events it lists; ``result_stored``
    also where it lists ``completed`` (the copy is the completion's follow-up)."""
    return kind in job.events or (kind == "result_stored" and "completed" in job.events)


def wants(job: Job, kind: str) -> bool:
    """Whether the event ``kind`` of this job goes anywhere (saves building its body)."""
    return bool(job.callback_url and subscribed(job, kind)) or bool(
        job.python_callback and kind == "completed"
    )


def emit(deps: Deps, job: Job, kind: str, data: dict[str, Any], suffix: str = "") -> list[str]:
    """Record the deliveries one event causes; return the ids to send now.

    Nothing happens for events the job did not subscribe to. The ids are stable, so noticing
    the same event twice creates nothing new (and returns nothing).
    """
    now = deps.clock()
    body = envelope(kind, data, now)
    ttl = deps.settings.job_ttl + keys.EXTRA_TTL
    watch = deps.settings.reconcile_grace
    created: list[str] = []
    if job.callback_url and subscribed(job, kind):
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
    verdict, item, gone = deps.outbox.take(ident, now=now, lease=settings.timeout + 30)
    if item is None:  # finished, missing, or another copy is sending it right now
        return DeliveryOutcome(None, detail=f"not sent: the delivery is {verdict}")
    logs.bind(job_id=item.job_id)
    wait = _blocked(deps, item, now)
    if wait is not None:  # an earlier event to the same receiver is not finished yet
        deps.outbox.release(item, due_at=now + wait)
        retry_in = wait if wait <= settings.park_after else None
        return DeliveryOutcome(
            None, retry_in, f"not sent yet: waits {wait:.1f}s for an earlier event"
        )
    if item.kind == "celery":
        attempt = _send_celery(item, send_task, now)
    else:
        attempt = _post(deps, item, timeout or settings.timeout, gone=gone)
    return _settle(deps, item, attempt, now)


def _blocked(deps: Deps, item: Delivery, now: float) -> float | None:
    """Seconds to wait for earlier unfinished deliveries to the same target (ordering)."""
    if item.event in ("started",) or deps.outbox.count_for_job(item.job_id) < 2:
        return None  # nothing can come before it
    for earlier in deps.outbox.for_job(item.job_id):
        if earlier.id == item.id:
            return None
        if earlier.target == item.target and earlier.state in ("pending", "sending"):
            if earlier.state == "sending" or earlier.next_at is None:
                return BLOCKED_RECHECK
            return max(BLOCKED_RECHECK, earlier.next_at - now + BLOCKED_RECHECK)
    return None


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


def _post(deps: Deps, item: Delivery, timeout: float, *, gone: bool) -> dict[str, Any]:
    if gone:
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
    secrets = _secrets(deps, item.job_id)
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


def _secrets(deps: Deps, job_id: str) -> list[str]:
    own = deps.store.field(job_id, "callback_secret")
    if own:
        return [own]
    return [s.get_secret_value() for s in deps.settings.callbacks.secrets]


def _settle(deps: Deps, item: Delivery, attempt: dict[str, Any], now: float) -> DeliveryOutcome:
    settings = deps.settings.callbacks
    metrics.CALLBACKS.labels(attempt["outcome"]).inc()
    outcome = attempt["outcome"]
    if outcome in ("delivered", "gone"):
        state: DeliveryState = "delivered" if outcome == "delivered" else "gone"
        if outcome == "gone":
            deps.outbox.mark_gone(item.target)
        deps.outbox.record(item, attempt, state=state, now=now)
        if outcome == "delivered" and item.event == "completed":
            _observe_lag(deps, item.job_id, now)
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


def _observe_lag(deps: Deps, job_id: str, now: float) -> None:
    finished = deps.store.field(job_id, "finished_at")
    if finished:
        metrics.COMPLETION_TO_CALLBACK.observe(max(0.0, now - float(finished)))
