"""Builds pollen's Celery app from settings. Tasks live in :mod:`pollen.worker.tasks`.

Run a worker with ``pollen worker`` (or ``celery -A pollen.worker worker``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from pollen.settings import Settings, get_settings

TASK_NAMES = ("pollen.submit", "pollen.poll", "pollen.deliver_callback")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that make a Redis broker safe for long countdown-based polling.

    * late acks + reject on worker lost: a task killed mid-run is redelivered, not lost;
    * prefetch 1: a busy worker does not hoard messages other workers could run;
    * the visibility timeout is set everywhere Celery reads it and is larger than the longest
      countdown plus the task time limit (``Settings`` refuses to build otherwise), so Redis
      does not redeliver a countdown message that is still waiting in a worker;
    * JSON only, task events on (Flower), results kept only for ``pollen.submit``.
    """
    queues = settings.queues
    transport = {"visibility_timeout": settings.visibility_timeout}
    return {
        "broker_url": settings.broker,
        "result_backend": settings.backend,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": settings.visibility_timeout,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_expires": 86400,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(1, settings.task_time_limit - 10),
        "worker_send_task_events": True,
        # Flower needs the worker's events; "task-sent" events from every publish would add a
        # Redis PUBLISH per message for little gain.
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "task_default_queue": queues.submit,
        "task_routes": {
            "pollen.submit": {"queue": queues.submit},
            "pollen.poll": {"queue": queues.poll},
            "pollen.deliver_callback": {"queue": queues.callbacks},
        },
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # With REMAP_SIGTERM=SIGQUIT (set in the image), SIGTERM waits this long for running
        # tasks, then requeues them and every reserved countdown poll (see deploy/README.md).
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": False,
    }


def create_app(settings: Settings | None = None, *, include_tasks: bool = True) -> Celery:
    """A configured Celery app; producers pass ``include_tasks=False`` (they only send)."""
    settings = settings or get_settings()
    app = Celery("pollen", include=["pollen.worker.tasks"] if include_tasks else [])
    app.conf.update(celery_config(settings))
    if include_tasks:
        from pollen.worker.periodic import MetricsExporter, Periodic

        app.steps["worker"].add(Periodic)
        app.steps["worker"].add(MetricsExporter)
        app.steps["worker"].add("pollen.worker.resilience:BrokerRestartGuard")
    return app


app = create_app()
