"""Drops the queue bindings an earlier pollen left in a Redis broker.

Earlier workers declared every queue on the ``pollen.submit`` exchange with the routing key
``pollen.submit``. kombu keeps bindings in Redis (a set ``_kombu.binding.<exchange>``), so
after an upgrade a message sent to ``pollen.submit`` would still be copied to every queue.
Each queue now has its own exchange (:func:`pollen.contract.declared`); a starting worker
removes every other binding of those exchanges.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from pollen.errors import StoreUnavailable
from pollen.store.connection import drop_stale_bindings

log = logging.getLogger(__name__)


class DropStaleBindings(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: :func:`drop_stale_bindings` on a Redis broker as the worker starts."""

    def start(self, worker: Any) -> None:
        url = str(worker.app.conf.broker_url or "")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return
        names = [queue.name for queue in worker.app.conf.task_queues or ()]
        try:
            removed = drop_stale_bindings(url, names)
        except StoreUnavailable as exc:  # the consumer reports the broker; this is a tidy-up
            log.warning("could not check the broker's queue bindings: %s", exc)
            return
        if removed:
            log.warning("removed %d queue bindings an earlier pollen left in the broker", removed)
