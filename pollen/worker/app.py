"""Builds pollen's worker Celery app from settings. Tasks live in :mod:`pollen.worker.tasks`.

Run a worker with ``pollen worker`` or ``celery -A pollen.worker worker``: either consumes all
of pollen's queues unless ``-Q`` picks some, and both run :data:`POOL` with :data:`CONCURRENCY`
unless ``-P``/``-c`` say otherwise. Nothing is built at import: ``pollen.worker``
builds :func:`default_app` when Celery first asks for its ``app``.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from celery import Celery

from pollen import contract
from pollen.errors import InvalidSettings
from pollen.settings import Settings, load

#: the pool both worker commands run by default: the work is I/O and polls batch
POOL = "threads"
#: threads (or processes) per worker by default
CONCURRENCY = 32


def worker_config(
    settings: Settings, pool: str = POOL, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    """The producer's contract (:func:`pollen.contract.celery_config`) plus what only a worker
    reads, chosen so a Redis broker is safe for long countdown-based polling:

    * late acks + reject on worker lost: a task killed mid-run is redelivered, not lost;
    * prefetch 1: a busy worker does not hoard messages other workers could run;
    * the pool and its size, so the plain ``celery worker`` command runs what ``pollen worker``
      runs (``-c`` and ``-P`` other than ``prefork`` override them: Celery reads ``-P prefork``
      as its default, so ``pollen worker -P prefork`` sets the pool here instead);
    * task events as ``task_events`` says (on by default, for Flower), results kept only for
      ``pollen.submit``.
    """
    return contract.celery_config(settings) | {
        "worker_pool": pool,
        "worker_concurrency": concurrency,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(1, settings.task_time_limit - 10),
        "worker_send_task_events": settings.task_events,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # With REMAP_SIGTERM=SIGQUIT (set in the image), SIGTERM waits this long for running
        # tasks, then requeues them and every reserved countdown poll (see deploy/README.md).
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": False,
    }


def build_worker_app(
    settings: Settings | None = None, pool: str = POOL, concurrency: int = CONCURRENCY
) -> Celery:
    """The worker's Celery app: pollen's tasks, the periodic round, the metrics exporter and
    the start-up checks (a worker whose webhooks would go unsigned refuses to start)."""
    settings = settings or _settings()
    app = contract.App("pollen", include=["pollen.worker.tasks", "pollen.worker.claims"])
    app.conf.update(worker_config(settings, pool, concurrency))
    from pollen.worker.periodic import MetricsExporter, Periodic

    app.steps["worker"].add(Periodic)
    app.steps["worker"].add(MetricsExporter)
    app.conf.pollen_wake_queue = settings.queues.submit
    app.steps["worker"].add("pollen.worker.resilience:KombuPatches")
    app.steps["worker"].add("pollen.worker.bindings:DropStaleBindings")
    app.steps["worker"].add("pollen.worker.signing:SigningCheck")
    return app


def _settings() -> Settings:
    """The environment's settings; a mistake in them ends the process with one line naming
    the variable and exit 1 (``celery -A pollen.worker worker`` as ``pollen worker``)."""
    try:
        return load()
    except InvalidSettings as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


@functools.cache
def default_app() -> Celery:
    """The worker app built from the environment's settings, once per process."""
    return build_worker_app()
