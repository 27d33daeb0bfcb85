"""Work every worker does on a timer, in its main process: due callbacks, the reconciler.

A Celery bootstep, so it needs no beat process and is safe on every pod: a short Redis lock
lets one worker do each round.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from celery import bootsteps

from pollen import contract
from pollen.store import durability, keys
from pollen.store.claims import Held
from pollen.store.connection import Master, master
from pollen.store.orphans import Orphans
from pollen.store.strays import DEFAULT_QUEUE, Strays
from pollen.worker import admission, grouping, metrics, planner, runtime
from pollen.worker.reconciler import reconcile

log = logging.getLogger(__name__)
DUE_PER_ROUND = 20_000
#: the slots of vanished jobs are looked for every this many reconciler rounds
SWEEP_ROUNDS = 5


class MetricsExporter(bootsteps.StartStopStep):  # type: ignore[misc]
    """Serves Prometheus metrics from the worker's main process if POLLEN_METRICS_PORT is set."""

    def start(self, worker: Any) -> None:
        deps = runtime.deps()
        port = deps.settings.metrics_port
        if not port:
            return
        from pollen.store.connection import queue_depths

        queues = deps.settings.queues
        names = [queues.submit, queues.poll, queues.callbacks]
        metrics.serve(
            port,
            store=deps.store,
            queue_depths=queue_depths(deps.settings.broker, names, master=master(deps.settings)),
            queues=names,
            capacity=deps.capacity,
        )
        log.info("metrics on :%d/metrics", port)


class Periodic(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs :func:`tick` every ``POLLEN_TICK_INTERVAL`` seconds."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        settings = runtime.deps().settings
        interval = min(settings.tick_interval, settings.reconcile_interval)
        self.tref = worker.timer.call_repeatedly(interval, tick, (worker.app,), priority=10)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


def tick(app: Any) -> None:
    """One round: release parked polls and due callback deliveries; every
    ``POLLEN_RECONCILE_INTERVAL``, resume jobs whose message chain was lost.

    One worker does each round (a short lock); never raises into the timer.
    """
    deps = runtime.deps()
    settings = deps.settings
    try:
        check_store(deps)
        now = deps.clock()
        if deps.store.locks.acquire(keys.TICK_LOCK, ttl=settings.tick_interval * 0.9):
            release_due(app, deps, now)
        if deps.store.locks.acquire(keys.RECONCILE_LOCK, ttl=settings.reconcile_interval * 0.9):
            reconcile(
                deps.store,
                lambda name, kwargs: app.send_task(name, kwargs=kwargs, ignore_result=True),
                now=now,
                batch_size=settings.batch_size,
                resend=partial(resend_submit, app) if settings.redis_broker else None,
                backlog=partial(submit_backlog, deps),
                orphans=(
                    _orphans(settings.broker, settings.queues.submit, master(settings))
                    if settings.redis_broker
                    else None
                ),
                # a live worker claims a message in the same loop turn it takes it; one lease
                # is ample, and keeps a just-taken message's recovery with the claimed ones'
                orphan_age=settings.worker_lease,
                time_limit=settings.task_time_limit,
                min_uptime=2 * settings.worker_lease,  # after a Redis restart, renewals first
            )
            if settings.redis_broker:
                move_strays(deps)
            deps.store.schedule.trim_indexes(now)
            sweep_every = SWEEP_ROUNDS * settings.reconcile_interval
            if deps.capacity.capped_providers and deps.store.locks.acquire(
                keys.SWEEP_LOCK, ttl=sweep_every * 0.9
            ):  # it reads every slot holder: not every round
                admission.sweep(deps)
    except Exception:
        log.exception("periodic round failed; the next one will try again")


def check_store(deps: Any) -> bool:
    """Compare the store's epoch marker with the one this worker saw; True if data was lost.

    The marker is remembered in a file named after the store (``settings.epoch_file``), so a
    restarted worker still knows it and a worker started against another store does not
    mistake that store's marker for a loss.
    """
    epoch_file = deps.settings.epoch_file
    known = deps.epoch or durability.remembered(epoch_file)
    deps.epoch, lost = durability.check(deps.store, known)
    if deps.epoch != known:  # first round after a start, or a new store: keep it on disk
        durability.remember(epoch_file, deps.epoch)
    if lost:
        metrics.STORE_DATA_LOSS.inc()
    return bool(lost)


def release_due(app: Any, deps: Any, now: float) -> None:
    """Admit waiting jobs into free provider-account slots; send the polls, deliveries and
    copies that waited in Redis and are due before the next round.

    Parked polls go out as batches grouped by due time (each poll may wait up to
    ``batch_window_max`` for its batch), one message per batch.
    """
    admission.pump(deps, deps.providers, partial(send_submits, app), now=now, drain=True)
    horizon = now + deps.settings.tick_interval
    submits = deps.store.schedule.take_parked_submits(horizon=horizon, limit=DUE_PER_ROUND)
    # ready jobs no wake took (it failed or was lost): a wake takes the rest within moments
    stale = now - 2 * keys.WAKE_MS / 1000
    submits += deps.store.schedule.take_stale_ready(
        deps.settings.queues.submit, before=stale, limit=DUE_PER_ROUND
    )
    for start in range(0, len(submits), contract.SUBMIT_BATCH_JOBS):
        send_submits(app, submits[start : start + contract.SUBMIT_BATCH_JOBS])
    parked = deps.store.schedule.take_parked(horizon=horizon, limit=DUE_PER_ROUND)
    plan = planner.release(
        parked, slack=deps.settings.batch_window_max, batch_size=deps.settings.batch_size
    )
    for batch in plan.send:
        send_batch(app, batch.items, countdown=batch.countdown(now))
    for delivery in deps.outbox.take_due(
        now=now, limit=DUE_PER_ROUND, watch=deps.settings.reconcile_grace
    ):
        app.send_task(contract.DELIVER_CALLBACK, args=(delivery,), ignore_result=True)
    if deps.storage is None:
        return  # a worker without re-hosting leaves copies to the workers that have it
    for job_id, generation in deps.copies.take_due(
        now=now, limit=DUE_PER_ROUND, watch=deps.settings.reconcile_grace
    ):
        app.send_task(contract.COPY_RESULT, args=(job_id, generation), ignore_result=True)


def resend_submit(app: Any, message: Held) -> None:
    """A submit message a dead worker held, sent again as it was: its task id (the job id
    of a payload without one derives from it), its arguments, its countdown's due time."""
    eta = None if message.eta is None else datetime.fromtimestamp(message.eta, UTC)
    app.send_task(
        contract.SUBMIT, kwargs=message.kwargs, task_id=message.task_id, eta=eta,
        retries=message.retries,
    )  # fmt: skip


@functools.cache
def _broker(broker: str, master: Master | None) -> Any:
    """One client of a Redis broker per worker process, for the orphan scan and the stray
    move (Celery's own connections are kombu's)."""
    from pollen.store.connection import redis_client

    return redis_client(broker, master)


@functools.cache
def _orphans(broker: str, queue: str, master: Master | None) -> Orphans:
    return Orphans(_broker(broker, master), queue)


@functools.cache
def _strays(broker: str, queue: str, master: Master | None) -> Strays:
    return Strays(_broker(broker, master), queue)


def move_strays(deps: Any) -> int:
    """Move ``pollen.submit`` messages sent without ``queue=`` (in Celery's default queue, which
    no pollen worker reads) to the submit queue, with a WARNING naming the fix."""
    settings = deps.settings
    moved = _strays(settings.broker, settings.queues.submit, master(settings)).move()
    if moved:
        metrics.RECONCILER.labels("stray_submit_moved").inc(moved)
        log.warning(
            "moved %d pollen.submit message(s) from Celery's default queue %r, which pollen "
            "workers do not read, to %r: send them with queue=%r",
            moved, DEFAULT_QUEUE, settings.queues.submit, settings.queues.submit,
        )  # fmt: skip
    return moved


@functools.cache
def _depth_reader(broker: str, queue: str, master: Master | None) -> Callable[[], list[int]]:
    from pollen.store.connection import queue_depths

    return queue_depths(broker, [queue], master=master)


def submit_backlog(deps: Any) -> bool:
    """Whether the submit queue holds messages or jobs wait in the ready set for a wake, or
    either did within the last two worker leases (a message taken from it just now may not be
    claimed yet): a job's submit may still be waiting. True when the broker cannot say, so
    nothing is sent twice on a guess."""
    settings = deps.settings
    try:
        depth = _depth_reader(settings.broker, settings.queues.submit, master(settings))()[0]
        waiting = depth > 0 or deps.store.schedule.ready(settings.queues.submit) > 0
    except Exception:
        log.warning("could not read the submit queue's depth", exc_info=True)
        return True
    return bool(deps.store.schedule.backlog(waiting, keep=2 * settings.worker_lease))


def send_submits(app: Any, job_ids: list[str]) -> None:
    """One ``pollen.submit`` message for stored jobs: admitted into provider-account slots,
    parked retries now due, ready ones (``Pollen.submit``'s group commit)."""
    app.send_task(
        contract.SUBMIT,
        kwargs={"job_ids": job_ids},
        kwargsrepr=contract.describe_batch([(job_id, 0) for job_id in job_ids]),
        ignore_result=True,
    )


def send_batch(app: Any, items: Sequence[grouping.Item], countdown: float = 0.0) -> None:
    """One ``pollen.poll`` message for a batch of (job id, attempt) pairs."""
    app.send_task(
        contract.POLL,
        kwargs={"items": [list(item) for item in items]},
        countdown=countdown,
        kwargsrepr=contract.describe_batch(items),
        ignore_result=True,
    )
