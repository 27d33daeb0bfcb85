"""What a producer and a worker must agree on to exchange Celery messages: task names, queue
routing, serialisation and the broker's transport options.

Producers build their app from here (:func:`producer_app`) without importing the worker;
:func:`pollen.worker.app.build_worker_app` adds the worker-only settings on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.entity import Exchange, Queue

from pollen.settings import REDIS_SCHEMES, QueueSettings, Settings

SUBMIT = "pollen.submit"
POLL = "pollen.poll"
DELIVER_CALLBACK = "pollen.deliver_callback"
#: the follow-up of a cancel (provider cancel call, completion callback): kwargs job_id
CANCEL = "pollen.cancel"
#: copy one result's file to pollen's storage (re-hosting): args job_id, generation id
COPY_RESULT = "pollen.copy_result"
#: most jobs one ``pollen.submit(job_ids=[...])`` message carries (submit_many, retries)
SUBMIT_BATCH_JOBS = 500


def describe(job_id: str, provider: str = "", attempt: int | None = None) -> str:
    """What Flower and the logs show as a task's arguments: ids, never prompts or secrets."""
    parts = [f"job_id={job_id!r}"]
    if provider:
        parts.append(f"provider={provider!r}")
    if attempt is not None:
        parts.append(f"attempt={attempt}")
    return "{" + ", ".join(parts) + "}"


def describe_batch(items: Sequence[Sequence[object]], provider: str = "") -> str:
    """The Flower/log repr of a poll batch: one job as :func:`describe`, else how many jobs
    and the first few ids."""
    if len(items) == 1:
        job_id, attempt = items[0]
        return describe(str(job_id), provider, int(str(attempt)) or None)
    ids = [str(item[0]) for item in items[:3]]
    more = f", +{len(items) - 3}" if len(items) > 3 else ""
    parts = [f"jobs={len(items)}", f"job_ids={ids}{more}"]
    if provider:
        parts.append(f"provider={provider!r}")
    return "{" + ", ".join(parts) + "}"


def routes(queues: QueueSettings) -> dict[str, dict[str, str]]:
    """Each task's queue."""
    return {
        SUBMIT: {"queue": queues.submit},
        POLL: {"queue": queues.poll},
        DELIVER_CALLBACK: {"queue": queues.callbacks},
        CANCEL: {"queue": queues.callbacks},
        COPY_RESULT: {"queue": queues.callbacks},
    }


def declared(queues: QueueSettings) -> list[Queue]:
    """Each queue with its own direct exchange and routing key, as a plain Celery app declares
    a queue it sends to: a message published to one queue lands in that queue only."""
    names = (queues.submit, queues.poll, queues.callbacks)
    # kombu's constructors are untyped
    return [Queue(name, Exchange(name), routing_key=name) for name in names]  # type: ignore[no-untyped-call]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings both sides need: where messages go and how they are encoded.

    The visibility timeout is set everywhere Celery reads it and is larger than the longest
    countdown plus the task time limit (``Settings`` refuses to build otherwise), so Redis
    does not redeliver a countdown message that is still waiting in a worker.
    """
    transport = {"visibility_timeout": settings.visibility_timeout}
    return {
        "broker_url": settings.broker,
        "result_backend": settings.backend,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": settings.visibility_timeout,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_expires": 86400,
        # "task-sent" events from every publish would add a Redis PUBLISH per message for
        # little gain (Flower reads the worker's events).
        "task_send_sent_event": False,
        "task_default_queue": settings.queues.submit,
        "task_queues": declared(settings.queues),
        "task_routes": routes(settings.queues),
    }


def producer_app(settings: Settings, *, timeout: float | None = None) -> Celery:
    """A Celery app that sends pollen's tasks by name; it registers none of them.

    ``timeout``: a publish gives up after about that long (for a process that answers
    requests): each connect and reply on a Redis broker is waited for at most ``timeout``
    seconds and a publish is tried twice, not four times. None: kombu's defaults, under which
    a broker that accepts connections and never answers holds a publish for good.
    """
    config = celery_config(settings)
    if timeout is not None:
        config |= bounded_publish(config, timeout)
    app = Celery("pollen")
    app.conf.update(config)
    return app


def bounded_publish(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The Celery settings of :func:`producer_app` that bound a publish by ``timeout``."""
    transport = dict(config["broker_transport_options"])
    if urlsplit(str(config["broker_url"])).scheme.lower() in REDIS_SCHEMES:
        transport |= {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return {
        "broker_transport_options": transport,
        "broker_connection_timeout": timeout,
        # one more try at once: a connection Redis dropped since (a restart) is replaced
        "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0},
    }
