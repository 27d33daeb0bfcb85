"""The reconciler: resumes jobs whose chain of messages was lost.

Every in-flight job sits in ``pollen:inflight`` scored by when its next step is overdue
(next poll time plus a grace period). A job still there after that time lost its message —
a worker died between recording a poll and publishing the next one, Redis lost the last
second of writes, a message expired — so the reconciler sends the step again. Duplicates are
harmless: submit is idempotent and polls are fenced by attempt number, so it is safe to run
on every worker at once; a short lock just keeps them from doing the same round twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pollen import contract
from pollen.models import JobStatus
from pollen.providers import REGISTRY
from pollen.store.sync import Store
from pollen.worker.metrics import RECONCILER

log = logging.getLogger(__name__)

#: send(task_name, kwargs) — publishes one Celery message
Send = Callable[[str, dict[str, object]], None]


@dataclass
class Report:
    resubmitted: list[str] = field(default_factory=list)
    repolled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)  #: cancel follow-ups sent again

    @property
    def actions(self) -> int:
        return len(self.resubmitted) + len(self.repolled) + len(self.dropped) + len(self.cancels)


def reconcile(
    store: Store, send: Send, *, now: float, limit: int = 500, batch_size: int = 50
) -> Report:
    """Resume up to ``limit`` overdue jobs; return what was done.

    Re-polls and re-submits go out as batches of up to ``batch_size`` jobs (one
    ``pollen.poll`` or ``pollen.submit`` message each).
    """
    report = Report()
    polls: list[list[object]] = []
    for job_id in store.schedule.overdue(now, limit):
        status, poll_seq = store.lifecycle.fields(job_id, "status", "poll_seq")
        if status is None or JobStatus(status).terminal:
            # Expired or finished (a terminal write that lost its ZREM): stop watching; an
            # expired job leaves the listing indexes too.
            store.schedule.forget_inflight(
                job_id, providers=list(REGISTRY) if status is None else ()
            )
            report.dropped.append(job_id)
            continue
        queued = status == JobStatus.QUEUED
        # look again after one more grace period, not every round
        store.schedule.watch(job_id, now, queued=queued)
        if queued:
            report.resubmitted.append(job_id)
        else:
            polls.append([job_id, int(poll_seq or 1)])
            report.repolled.append(job_id)
    for start in range(0, len(polls), batch_size):
        send(contract.POLL, {"items": polls[start : start + batch_size]})
    for start in range(0, len(report.resubmitted), batch_size):
        send(contract.SUBMIT, {"job_ids": report.resubmitted[start : start + batch_size]})
    for job_id in store.schedule.cancels_due(now, limit):  # cancelled, but the follow-up never ran
        send(contract.CANCEL, {"job_id": job_id})
        report.cancels.append(job_id)
    for action, ids in (
        ("cancel", report.cancels),
        ("resubmit", report.resubmitted),
        ("repoll", report.repolled),
        ("drop", report.dropped),
    ):
        if ids:
            RECONCILER.labels(action).inc(len(ids))
    if report.actions:
        log.warning(
            "reconciler resumed %d jobs (resubmitted %s, re-polled %s, dropped %d, cancel "
            "follow-ups re-sent %d)",
            report.actions,
            report.resubmitted[:10],
            report.repolled[:10],
            len(report.dropped),
            len(report.cancels),
        )
    return report
