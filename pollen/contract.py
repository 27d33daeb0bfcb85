"""What a producer and a worker must agree on to exchange Celery messages: task names, queue
routing, serialisation and the broker's transport options.

Producers build their app from here (:func:`producer_app`) without importing the worker;
:func:`pollen.worker.app.build_worker_app` adds the worker-only settings on top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.entity import Exchange, Queue

from pollen.settings import AMQP_SCHEMES, QueueSettings, Settings, is_redis_url, is_sentinel_url

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


#: what RabbitMQ's quorum queues are declared with
QUORUM = {"x-queue-type": "quorum"}


def declared(queues: QueueSettings, *, quorum: bool = False) -> list[Queue]:
    """Each queue with its own exchange and routing key, as a plain Celery app declares a
    queue it sends to: a message published to one queue lands in that queue only.

    The exchange is direct; with ``quorum`` the queue is a quorum queue on a topic exchange
    (with a key without wildcards, it routes as a direct one), as Celery's native delayed
    delivery needs: it skips direct exchanges, and a countdown would then wait in the worker.
    """
    names = (queues.submit, queues.poll, queues.callbacks)
    if not quorum:  # kombu's constructors are untyped
        return [Queue(name, Exchange(name), routing_key=name) for name in names]  # type: ignore[no-untyped-call]
    return [
        Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments=QUORUM)  # type: ignore[no-untyped-call]
        for name in names
    ]


def whole_seconds(countdown: float | None, eta: datetime | str | None, now: datetime) -> int | None:
    """The countdown a message due in ``countdown`` seconds (or at ``eta``) is sent with to
    quorum queues: whole seconds, rounded up, at least 1; None when it is due at ``now``.

    Celery's native delayed delivery routes a message by the whole seconds of its countdown
    and refuses a fractional one below 1 (pollen's shortest waits are 0.2 s); rounded up, the
    message is never early and its eta has passed when it reaches the worker, so no worker
    holds it.
    """
    if eta is not None:
        due = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
        due = due if due.tzinfo else due.replace(tzinfo=UTC)
        countdown = (due - now).total_seconds()
    if not countdown or countdown <= 0:
        return None
    return max(1, math.ceil(countdown))


class App(Celery):  # type: ignore[misc]
    """pollen's Celery app (producers' and workers'). Every message it sends, however it is
    sent (``send_task``, ``apply_async``, a task's ``retry``), goes through :meth:`send_task`,
    where a countdown or eta becomes :func:`whole_seconds` when the queues are quorum queues.
    """

    def send_task(
        self,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        countdown: float | None = None,
        eta: datetime | str | None = None,
        **options: Any,
    ) -> Any:
        if quorum_queues(self) and (countdown or eta):
            countdown, eta = whole_seconds(countdown, eta, datetime.now(UTC)), None
        return super().send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)


def quorum_queues(app: Celery) -> bool:
    """Whether ``app`` declares its queues as quorum queues."""
    queues = app.conf.task_queues or ()
    return any((q.queue_arguments or {}).get("x-queue-type") == "quorum" for q in queues)


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings both sides need: where messages go and how they are encoded.

    On RabbitMQ, publishes wait for the broker's confirm (classic queues too: a persistent
    message is confirmed once it is on disk): a message RabbitMQ did not take, or lost with a
    node that died before writing it, raises at the sender instead of vanishing.

    The visibility timeout is set everywhere Celery reads it and is larger than the longest
    countdown plus the task time limit (``Settings`` refuses to build otherwise), so Redis
    does not redeliver a countdown message that is still waiting in a worker.
    """
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    quorum = settings.quorum_queues
    amqp = urlsplit(settings.broker).scheme.lower() in AMQP_SCHEMES
    broker = transport | ({"confirm_publish": True} if amqp else {})
    return {
        "broker_url": settings.broker,
        "result_backend": settings.backend,
        "broker_transport_options": broker | sentinel_options(settings, settings.broker),
        "result_backend_transport_options": transport
        | sentinel_options(settings, settings.backend),
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
        "task_queues": declared(settings.queues, quorum=quorum),
        # Celery's own switch for the queues it declares by default; with quorum queues its
        # workers turn on native delayed delivery and per-consumer prefetch themselves
        # (worker_detect_quorum_queues, on by default)
        "task_default_queue_type": "quorum" if quorum else "classic",
        "task_routes": routes(settings.queues),
    }


#: seconds a Sentinel is waited for (connect, reply) before the next one is asked
SENTINEL_TIMEOUT = 5.0


def sentinel_options(settings: Settings, url: str) -> dict[str, Any]:
    """The transport options of a ``sentinel://`` URL, as kombu's Sentinel transport and
    Celery's Sentinel backend read them: the master's name, and how to reach the Sentinels
    (their password if they have one); none for another URL."""
    if not is_sentinel_url(url):
        return {}
    own: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "socket_timeout": SENTINEL_TIMEOUT,
    }
    if settings.sentinel_password is not None:
        own["password"] = settings.sentinel_password.get_secret_value()
    return {"master_name": settings.sentinel_master, "sentinel_kwargs": own}


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
    app = App("pollen")
    app.conf.update(config)
    return app


def bounded_publish(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The Celery settings of :func:`producer_app` that bound a publish by ``timeout``."""
    transport = dict(config["broker_transport_options"])
    bounded = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if is_redis_url(str(config["broker_url"])):
        transport |= bounded
    if "sentinel_kwargs" in transport:  # asking the Sentinels for the master is bounded too
        transport["sentinel_kwargs"] = transport["sentinel_kwargs"] | bounded
    return {
        "broker_transport_options": transport,
        "broker_connection_timeout": timeout,
        # one more try at once: a connection Redis dropped since (a restart) is replaced
        "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0},
    }
