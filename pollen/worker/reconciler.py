"""The reconciler: resumes jobs whose chain of messages was lost.

Every in-flight job sits in ``pollen:inflight`` scored by when its next step is overdue
(next poll time plus a grace period). A job still there after that time lost its message —
a worker died between recording a poll and publishing the next one, Redis lost the last
second of writes, a message expired — so the reconciler sends the step again. Duplicates are
harmless: submit is idempotent and polls are fenced by attempt number, so it is safe to run
on every worker at once; a short lock just keeps them from doing the same round twice.

A submit message a dead worker held is found by its claim (:mod:`pollen.store.claims`): once
the worker's lease lapsed, :func:`resume_held` sends each such message again, the same task
id with the same arguments, whether or not its job has a record yet. A queued job whose
submit is overdue otherwise is sent again only while the submit queue holds no backlog: its
message may still be waiting there, and a resubmit would only double it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pollen import contract
from pollen.models import JobStatus
from pollen.providers import REGISTRY
from pollen.store.claims import Held
from pollen.store.orphans import Orphans
from pollen.store.sync import Store
from pollen.worker.metrics import RECONCILER

log = logging.getLogger(__name__)

#: send(task_name, kwargs) — publishes one Celery message
Send = Callable[[str, dict[str, object]], None]
#: resend(message) — publishes a held submit message again (its task id, arguments, eta)
Resend = Callable[[Held], None]
#: most broker deliveries one round looks at for unclaimed submit messages
ORPHAN_SCAN_LIMIT = 2000


@dataclass
class Report:
    resubmitted: list[str] = field(default_factory=list)
    repolled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)  #: cancel follow-ups sent again
    held: list[str] = field(default_factory=list)  #: task ids of dead workers' submits resent
    orphans: list[str] = field(default_factory=list)  #: task ids of unclaimed submits resent
    waiting: int = 0  #: overdue queued jobs left alone: the submit queue has a backlog

    @property
    def actions(self) -> int:
        return (
            len(self.resubmitted) + len(self.repolled) + len(self.dropped) + len(self.cancels)
            + len(self.held) + len(self.orphans)
        )  # fmt: skip


def resume_held(
    store: Store, resend: Resend, *, now: float, report: Report, time_limit: float,
    min_uptime: float,
) -> None:  # fmt: skip
    """Send again every submit message held by a worker whose lease lapsed (it died).

    Not while the store's Redis has been up for less than ``min_uptime``: after a restart,
    live workers' renewals and this round race to reconnect. A claim whose task must have
    ended long ago (``time_limit`` past its start) is dropped, not sent. The broker's own copy
    stays where it is: if the worker was alive after all, the copy it runs is the same job."""
    lapsed = store.claims.take_lapsed() if store.claims.uptime() >= min_uptime else []
    for holder, messages in lapsed:
        live = [m for m in messages if not m.stale(now, time_limit)]
        for sent, message in enumerate(live):
            try:
                resend(message)
            except Exception:
                store.claims.restore(holder, live[sent:])  # the next round tries them again
                raise
            report.held.append(message.task_id)
        if live:
            log.warning(
                "worker %s died holding %d submit message(s); sent again", holder, len(live)
            )


def resume_orphans(
    store: Store, orphans: Orphans, resend: Resend, *, now: float, age: float, report: Report
) -> None:
    """Send again the submit messages the broker handed to a worker more than ``age`` seconds
    ago that no worker claims (it died before it could), each looked at once."""
    after = store.claims.scanned()
    if after is None:  # the first scan of this store: the last minute
        after = now - age - 60
    found, upto = orphans.scan(after, now - age, limit=ORPHAN_SCAN_LIMIT)
    claimed = store.claims.claimed() if found else set()
    store.claims.scanned(upto)  # before sending: a round that overlaps this one goes on from here
    for held in found:
        if held.tag not in claimed:
            resend(held)  # the broker's copy stays: should its worker live, it is the same job
            report.orphans.append(held.task_id)


def reconcile(
    store: Store,
    send: Send,
    *,
    now: float,
    limit: int = 500,
    batch_size: int = 50,
    resend: Resend | None = None,
    backlog: Callable[[], bool] = lambda: False,
    orphans: Orphans | None = None,
    orphan_age: float = 10.0,
    time_limit: float = 120.0,
    min_uptime: float = 0.0,
) -> Report:
    """Resume up to ``limit`` overdue jobs; return what was done.

    Re-polls and re-submits go out as batches of up to ``batch_size`` jobs (one
    ``pollen.poll`` or ``pollen.submit`` message each). With ``resend``, the submit messages
    of dead workers go out again first (:func:`resume_held`), and with ``orphans`` (the
    broker's unacked messages) those no worker claimed ``orphan_age`` seconds after the broker
    handed them over (:func:`resume_orphans`). ``backlog()`` says whether the submit queue
    holds messages: then an overdue queued job waits another grace period.
    """
    report = Report()
    if resend is not None:
        resume_held(
            store, resend, now=now, report=report, time_limit=time_limit, min_uptime=min_uptime
        )
        if orphans is not None:
            resume_orphans(store, orphans, resend, now=now, age=orphan_age, report=report)
    polls = _overdue(store, report, now=now, limit=limit, backlog=backlog)
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
        ("resend_held", report.held),
        ("resend_unclaimed", report.orphans),
    ):
        if ids:
            RECONCILER.labels(action).inc(len(ids))
    if report.actions:
        log.warning(
            "reconciler: resubmitted %d, re-polled %d, dropped %d, cancel follow-ups re-sent "
            "%d, dead workers' submit messages re-sent %d, unclaimed ones %d (jobs %s)",
            len(report.resubmitted),
            len(report.repolled),
            len(report.dropped),
            len(report.cancels),
            len(report.held),
            len(report.orphans),
            (report.resubmitted + report.repolled)[:10],
        )
    return report


def _overdue(
    store: Store, report: Report, *, now: float, limit: int, backlog: Callable[[], bool]
) -> list[list[object]]:
    """Sort the overdue jobs into the report: dropped, to resubmit, waiting; the polls to
    send again as (job id, attempt) pairs."""
    polls: list[list[object]] = []
    busy: bool | None = None  # the submit queue's backlog, asked once and only if needed
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
        if queued and (busy := backlog() if busy is None else busy):
            report.waiting += 1
        elif queued:
            report.resubmitted.append(job_id)
        else:
            polls.append([job_id, int(poll_seq or 1)])
            report.repolled.append(job_id)
    return polls
