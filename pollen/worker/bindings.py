"""Drops the queue bindings an earlier pollen left in the broker.

Earlier workers declared every queue on the ``pollen.submit`` exchange with the routing key
``pollen.submit``. The broker keeps bindings (kombu on Redis: a set
``_kombu.binding.<exchange>``; RabbitMQ: durable bindings of durable queues), so after an
upgrade a message sent to ``pollen.submit`` would still be copied to every queue. Each queue
now has its own exchange (:func:`pollen.contract.declared`); a starting worker removes every
other binding of those exchanges (on Redis), or unbinds each queue from the other queues'
exchanges (on an AMQP broker, where bindings cannot be listed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import bootsteps
from kombu.exceptions import OperationalError

from pollen.errors import StoreUnavailable
from pollen.settings import is_redis_url
from pollen.store.connection import drop_stale_bindings, transport_master

log = logging.getLogger(__name__)


class DropStaleBindings(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: :func:`drop_stale_bindings` on a Redis broker as the worker starts."""

    def start(self, worker: Any) -> None:
        url = str(worker.app.conf.broker_url or "")
        queues = list(worker.app.conf.task_queues or ())
        if url.startswith(("amqp://", "amqps://", "pyamqp://")):
            with worker.app.connection_for_write() as connection:
                try:
                    unbind_others(connection, queues)
                except (
                    *connection.connection_errors,
                    *connection.channel_errors,
                    OperationalError,
                ) as exc:  # a broker that is down: Celery itself waits for it
                    log.warning("could not check the broker's queue bindings: %s", exc)
            return
        if not is_redis_url(url):
            return
        try:
            options = worker.app.conf.broker_transport_options or {}
            names = [queue.name for queue in queues]
            removed = drop_stale_bindings(url, names, transport_master(options))
        except StoreUnavailable as exc:  # the consumer reports the broker; this is a tidy-up
            log.warning("could not check the broker's queue bindings: %s", exc)
            return
        if removed:
            log.warning("removed %d queue bindings an earlier pollen left in the broker", removed)


def unbind_others(connection: Any, queues: Sequence[Any]) -> None:
    """On an AMQP broker (a kombu connection and queues): declare each queue with its
    exchange and binding, as the consumer will, and unbind it from every other queue's
    exchange and key, which is what an earlier pollen bound it to. RabbitMQ takes the
    unbinding of a binding that does not exist as done."""
    connection.ensure_connection(max_retries=1)
    channel = connection.default_channel
    for queue in queues:
        queue.bind(channel).declare()
    for queue in queues:
        for other in queues:
            if other.exchange.name != queue.exchange.name:
                channel.queue_unbind(queue.name, other.exchange.name, other.routing_key)
