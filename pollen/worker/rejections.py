"""A ``pollen.submit`` payload the worker refuses is never silent.

Each refusal is logged at WARNING (the job id or the message id, and the refusal naming the
field), counted (``pollen_jobs_rejected_total{reason}``), kept in the store
(:mod:`pollen.store.rejections`: ``pollen status <id>``, ``pollen rejected``) and, where the
payload names a callback URL the address policy allows, announced to it as a signed
``job.rejected`` callback (whatever its ``events`` say: the payload was refused, so its
choices are not known to be what its producer meant).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

from pydantic import AnyHttpUrl, TypeAdapter

from pollen.addresses import UnsafeCallbackURL
from pollen.callbacks import events
from pollen.errors import IdempotencyConflict, InvalidJob
from pollen.models import JOB_ID_PATTERN, JobRequest
from pollen.store import keys, rejections
from pollen.store.outbox import delivery_id
from pollen.worker import metrics
from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)

#: the ``reason`` label of ``pollen_jobs_rejected_total`` (and of each kept refusal)
REASONS = ("unknown_field", "invalid_field", "unsafe_callback", "conflict", "malformed")
_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def reason_of(error: InvalidJob) -> str:
    """The class of a refusal, one of :data:`REASONS`: of the problem its message names (the
    first, where a payload has several)."""
    if isinstance(error, IdempotencyConflict):
        return "conflict"
    if isinstance(error, UnsafeCallbackURL):
        return "unsafe_callback"
    if error.errors and error.errors[0].get("type") in ("unknown_field", "extra_forbidden"):
        return "unknown_field"
    field = re.split(r"[.:\s]", str(error), maxsplit=1)[0]
    return "invalid_field" if error.errors or field in JobRequest.model_fields else "malformed"


def reject(deps: Deps, payload: Any, error: InvalidJob, message_id: str) -> list[str]:
    """Log, count, keep and announce one refused message; returns the callback deliveries to
    send now (none, or the ``job.rejected`` one)."""
    fields = _fields(payload)
    job_id = _job_id(fields)
    reason = reason_of(error)
    metrics.JOBS_REJECTED.labels(reason).inc()
    what = f"job {job_id}" if job_id else f"message {message_id}"
    log.warning("pollen.submit refused %s (%s): %s", what, reason, error)
    now = deps.clock()
    details: list[dict[str, Any]] = json.loads(json.dumps(error.errors, default=str))
    rejection = rejections.Rejection(job_id, message_id, reason, str(error), now, details)
    url = _callback_url(deps, fields)
    ident, created = _announce(deps, rejection, url) if url is not None else (None, False)
    kept = dataclasses.replace(rejection, callback=ident)
    deps.store.run(rejections.record(kept, ttl=deps.settings.job_ttl))
    return [ident] if ident is not None and created else []


def _announce(deps: Deps, rejection: rejections.Rejection, url: str) -> tuple[str, bool]:
    """Record the ``job.rejected`` delivery to ``url``: its id, and False if it existed
    already (the same message refused twice is one delivery)."""
    job_id, message_id = rejection.job_id, rejection.message_id
    owner = job_id or message_id
    ident = delivery_id(owner, "rejected", message_id if job_id else "")
    data = {
        "job_id": job_id,
        "status": "rejected",
        "message_id": message_id,
        "reason": rejection.reason,
        "error": rejection.error,
        "errors": rejection.errors,
    }
    created = deps.outbox.create(
        ident, job_id=owner, event="rejected", kind="http", target=url,
        body=events.envelope("rejected", data, rejection.at), now=rejection.at,
        watch=deps.settings.reconcile_grace, ttl=deps.settings.job_ttl + keys.EXTRA_TTL,
    )  # fmt: skip
    return ident, created


def _fields(payload: Any) -> dict[str, Any]:
    """The payload as a dict, as far as it is one (a JSON string is read)."""
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError):
            return {}
    return payload if isinstance(payload, dict) else {}


def _job_id(fields: dict[str, Any]) -> str | None:
    job_id = fields.get("job_id")
    if isinstance(job_id, str) and re.fullmatch(JOB_ID_PATTERN, job_id):
        return job_id
    return None


def _callback_url(deps: Deps, fields: dict[str, Any]) -> str | None:
    """The payload's callback URL where it is one pollen may call, else None."""
    url = fields.get("callback_url")
    if not isinstance(url, str) or len(url) > 2048:
        return None
    try:
        _URL.validate_python(url)
        return deps.policy.check_url(url)
    except ValueError:  # not a URL, or one the address policy refuses
        return None
