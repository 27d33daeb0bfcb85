"""The copy step of re-hosting: one result's file, from the provider's URL to pollen's storage.

A copy never holds up its job: the poll that records a finished generation only marks its
copy pending (:mod:`pollen.store.copies`), the job completes as usual, and this step runs
from the callbacks queue. It claims the copy (one worker at a time, for a lease), streams the
file through the address policy into a temporary file (size limit, sha256, content type),
puts it in storage under a key made of the job and generation ids (a repeated copy rewrites
the same object), and records the outcome. A failure worth retrying is due again after the
next delay of ``POLLEN_STORAGE__SCHEDULE``; the last one, or one that can never work (404,
too large, a refused address), ends the copy ``failed`` with the error. A finished copy sends
the ``job.result_stored`` event. No Celery here.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field

from pollen.callbacks import events
from pollen.errors import CopyError, CopyRefused, CopyUnavailable
from pollen.models import GenerationResult, StoredCopy
from pollen.storage import Storage, media_type, object_key
from pollen.storage.fetch import fetch
from pollen.worker import logs
from pollen.worker.deliveries import emit
from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)
#: files up to this size are copied through memory, larger ones through a temporary file
SPOOL_BYTES = 8 * 1024 * 1024


@dataclass
class CopyOutcome:
    """What one run of the step did: the copy's state after it (None: nothing was tried)."""

    state: str | None
    detail: str = ""
    deliveries: list[str] = field(default_factory=list)  #: ``result_stored`` callbacks to send


def lease(deps: Deps) -> float:
    """How long a worker holds a copy: past the task's own time limit, so a running copy is
    never taken twice; a dead worker's copy is due again after it."""
    return deps.settings.task_time_limit + deps.settings.reconcile_grace


def copy_result(deps: Deps, job_id: str, generation: str) -> CopyOutcome:
    """Make one attempt at copying ``generation`` of ``job_id``; see the module docstring."""
    storage = deps.storage
    if storage is None:
        return CopyOutcome(None, "not copied: re-hosting is off on this worker")
    now = deps.clock()
    claim = deps.copies.claim(job_id, generation, now=now, lease=lease(deps))
    if claim.copy is None or claim.result is None:
        return CopyOutcome(None, f"not copied: the copy is {claim.verdict}")
    logs.bind(job_id=job_id)
    attempts = claim.copy.attempts  # this one included: the claim counts it
    due_at = 0.0
    try:
        if attempts > len(deps.settings.storage.schedule):  # earlier claims never recorded
            raise CopyUnavailable("the workers copying it stopped before they were done")
        copy = _copy(deps, storage, job_id, claim.result, attempts)
    except CopyError as exc:
        copy, due_at = _failed(deps, exc, attempts, now)
    except Exception as exc:  # a soft time limit, a full disk, a bug: retried like a failure
        log.exception("copy of %s interrupted", generation)
        copy, due_at = _failed(deps, CopyUnavailable(f"copy interrupted: {exc!r}"), attempts, now)
    if deps.copies.record(job_id, generation, copy, now=deps.clock(), due_at=due_at) is None:
        return CopyOutcome(None, "not recorded: the job expired or the copy was finished")
    if copy.status == "pending":
        log.info("copy of %s attempt %d failed (%s); next in %.1fs", generation, attempts,
                 copy.error, due_at - now)  # fmt: skip
        return CopyOutcome("pending", f"attempt {attempts} failed: {copy.error}")
    level = logging.INFO if copy.status == "stored" else logging.WARNING
    log.log(level, "copy of %s %s after %d attempt(s)%s", generation, copy.status, attempts,
            f": {copy.error}" if copy.error else "")  # fmt: skip
    return CopyOutcome(copy.status, copy.error or copy.url or "", _event(deps, job_id, generation))


def _copy(
    deps: Deps, storage: Storage, job_id: str, result: GenerationResult, attempts: int
) -> StoredCopy:
    settings = deps.settings.storage
    if not result.url:
        raise CopyRefused("the result has no URL to copy")
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        got = fetch(
            deps.http, result.url, spool, policy=deps.fetch_policy,
            max_bytes=settings.max_bytes, timeout=settings.timeout,
        )  # fmt: skip
        spool.seek(0)
        content_type = media_type(got.content_type)
        key = object_key(job_id, result.id, content_type)
        url = storage.put(key, spool, size=got.size, content_type=content_type)
    return StoredCopy(
        status="stored", url=url, sha256=got.sha256, size=got.size,
        content_type=content_type, attempts=attempts, updated_at=deps.clock(),
    )  # fmt: skip


def _failed(deps: Deps, exc: CopyError, attempts: int, now: float) -> tuple[StoredCopy, float]:
    """The copy after a failed attempt, and when it is due again (0.0: never, it failed)."""
    schedule = deps.settings.storage.schedule
    error = str(exc)
    if isinstance(exc, CopyRefused) or attempts >= len(schedule):
        if not isinstance(exc, CopyRefused):
            error = f"{error} (gave up after {attempts} attempts)"
        return StoredCopy(status="failed", attempts=attempts, error=error, updated_at=now), 0.0
    pending = StoredCopy(status="pending", attempts=attempts, error=error, updated_at=now)
    return pending, now + schedule[attempts]


def _event(deps: Deps, job_id: str, generation: str) -> list[str]:
    """The ``job.result_stored`` deliveries of a finished copy (to send now)."""
    [job] = deps.store.lifecycle.get_with_results([job_id])
    if job is None:  # expired since the copy was recorded
        return []
    result = next((r for r in job.results if r.id == generation), None)
    if result is None or not events.wants(job, "result_stored"):
        return []
    data = events.stored_payload(job, result)
    return emit(deps, job, "result_stored", data, suffix=generation)
