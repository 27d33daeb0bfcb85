"""Keeps a worker alive when its Redis broker restarts (kombu's Redis channel close, patched).

The bug (kombu <= 5.7.0 with Celery >= 5.7.0; ``kombu/transport/redis.py``, ``Channel.close``):
when the broker connection drops, Celery's consumer calls ``Connection.collect()`` and then
``Connection.close()``. In ``collect()`` the Redis channel that consumes the task queues is
closed first; it is waiting in BRPOP, so ``close()`` reads that reply, the read raises
``ConnectionError`` and ``close()`` stops before it marks the channel closed (only ``Empty`` is
caught there). ``collect()`` then detaches the transport (``transport.client = None``). The
second ``close()`` finds the channel still open, drops its pools and asks the QoS to put the
unacknowledged messages back (``restore_unacked``); building a new pool reads
``transport.client.hostname`` and raises ``AttributeError``, which no one catches: "Unrecoverable
error", the worker exits (status 0).

The same detached transport also ends the worker when a task finishes in that window: the
consumer acknowledges (or rejects) its message on the old channel, and the QoS builds a new pool
from ``transport.client`` (``AttributeError: 'NoneType' object has no attribute 'client'``).

The patch: ``close()`` on a Redis channel whose transport is already detached tears the channel
down without the restore, which could not reach Redis anyway; an acknowledgement or rejection on
such a channel only forgets the message locally. Nothing is lost: the messages are still in the
broker's unacked hash (``restore_unacked`` only pushes copies back, it does not own them), and
kombu's visibility-timeout restore, or pollen's reconciler, redelivers them once Redis is back;
a finished task delivered again is harmless (every pollen task is idempotent: submits by job id,
polls fenced by attempt, deliveries by claim). Everything else runs kombu's code unchanged.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)

#: The newest kombu release checked to have the bug (and the patch to fix it). A newer kombu is
#: left alone, with a warning; tests/test_resilience.py then fails if the bug is still there.
CHECKED_UP_TO = (5, 7, 0)
_MARK = "_pollen_detached_close"


def release(text: str) -> tuple[int, ...]:
    """``"5.7.0rc1"`` -> ``(5, 7, 0)``: the leading number of each of the first three parts."""
    parts = []
    for part in text.split(".")[:3]:
        number = re.match(r"\d+", part)
        parts.append(int(number.group()) if number else 0)
    return tuple(parts)


def needs_patch(kombu_version: str) -> bool:
    """Whether this kombu release is one the patch was checked against."""
    return release(kombu_version) <= CHECKED_UP_TO


def detached(channel: Any) -> bool:
    """True when the channel's transport no longer belongs to a kombu ``Connection``."""
    transport = getattr(channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def _guarded(close: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(close)
    def guarded_close(channel: Any) -> None:
        if not channel.closed and detached(channel):
            held = len(channel._qos._delivered) if channel._qos is not None else 0
            if held:
                log.warning(
                    "broker connection gone: %d unacknowledged message(s) stay in Redis: "
                    "pollen's reconciler resumes their jobs (or kombu redelivers them after the "
                    "visibility timeout)",
                    held,
                )
            channel.do_restore = False
        close(channel)

    setattr(guarded_close, _MARK, True)
    return guarded_close


def _settled_locally(settle: Callable[..., None]) -> Callable[..., None]:
    """Wraps the Redis QoS's ``ack`` / ``reject``: on a detached channel, forget the message
    here only (it stays unacknowledged in Redis and is delivered again)."""

    @functools.wraps(settle)
    def guarded_settle(qos: Any, delivery_tag: Any, *args: Any, **kwargs: Any) -> None:
        if detached(qos.channel):
            log.warning(
                "broker connection gone: a finished message stays unacknowledged in Redis and "
                "may run again after the visibility timeout (harmless: tasks are idempotent)"
            )
            qos._quick_ack(delivery_tag)  # kombu's own local part of an ack
            return
        settle(qos, delivery_tag, *args, **kwargs)

    setattr(guarded_settle, _MARK, True)
    return guarded_settle


def install() -> bool:
    """Patch kombu's Redis ``Channel.close`` and ``QoS.ack`` / ``QoS.reject`` (once, kombu <=
    :data:`CHECKED_UP_TO` only); returns whether they are patched."""
    from kombu.transport import redis as kombu_redis

    channel_class, qos_class = kombu_redis.Channel, kombu_redis.QoS
    if getattr(channel_class.close, _MARK, False):
        return True
    kombu_version = version("kombu")
    if not needs_patch(kombu_version):
        log.warning(
            "kombu %s is newer than %s: its Redis channel close is not patched (check whether "
            "a worker still survives a Redis restart)",
            kombu_version,
            ".".join(map(str, CHECKED_UP_TO)),
        )
        return False
    channel_class.close = _guarded(channel_class.close)  # type: ignore[method-assign]
    qos_class.ack = _settled_locally(qos_class.ack)  # type: ignore[method-assign]
    qos_class.reject = _settled_locally(qos_class.reject)  # type: ignore[method-assign]
    return True


class KombuPatches(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: installs, before the consumer connects, this module's patch (a worker
    rides out a broker restart), reliable fetch on a Redis broker (:mod:`pollen.store.fetch`,
    idle channels waking on the app's submit queue, ``pollen_wake_queue`` in its configuration)
    and retries without formatted tracebacks (:mod:`pollen.worker.retries`)."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        from pollen.store import fetch
        from pollen.worker import retries

        install()
        fetch.install()
        retries.install()
        queue = worker.app.conf.get("pollen_wake_queue")
        if queue:
            fetch.wake_on(str(queue))
