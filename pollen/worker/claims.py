"""A worker's claims on the submit messages it holds (Redis broker): recorded when a message
is received, dropped when its task is done, kept alive by one lease per worker instance.

kombu's Redis transport keeps a message a worker took in its unacked hash until the
visibility timeout, however soon the worker died; with the plain ``send_task`` contract the
job has no record until its submit runs, so nothing else would notice. Here each
``pollen.submit`` message is written down as it arrives (:mod:`pollen.store.claims`) under
this worker instance's name, and a daemon thread renews the instance's lease every third
of ``POLLEN_WORKER_LEASE``. When the lease lapses the reconciler sends the messages again
(:func:`pollen.worker.reconciler.resume_held`); the broker's own copy, if it ever comes back,
is a duplicate the submit step recognises (same task id, same job).

On other brokers (RabbitMQ) a dead consumer's messages come back at once: nothing is kept.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from celery.signals import (
    task_postrun,
    task_received,
    task_revoked,
    worker_init,
    worker_shutdown,
)

from pollen import contract
from pollen.store.claims import Held, message_tag
from pollen.worker import runtime

log = logging.getLogger(__name__)


class Holder:
    """This worker instance's name and lease (one per worker; prefork children inherit the
    name, the main process renews the lease)."""

    def __init__(self, name: str, lease: float) -> None:
        self.name = name
        self.lease = lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._renew()  # registered before the first message arrives
        self._thread = threading.Thread(target=self._run, name="pollen-claims", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            self._renew()

    def _renew(self) -> None:
        try:  # the lease runs in the server's time, from when the call lands
            runtime.deps().store.claims.renew(self.name, self.lease)
        except Exception as exc:  # Redis away for a moment: the next round tries again
            log.warning("could not renew this worker's claims: %s", exc)


class _This:
    """This process's worker instance, once it started with a Redis broker (None elsewhere)."""

    holder: Holder | None = None


def holder_name(hostname: str) -> str:
    """A name no other worker instance has, even one restarted with the same node name."""
    return f"{hostname}|{os.getpid()}|{uuid.uuid4().hex[:8]}"


def _held(task_id: Any, kwargs: Any, eta: Any, retries: Any, tag: Any, now: float) -> Held:
    """A claimed message as :class:`Held`: ``eta`` (a datetime, its ISO form or None) as a
    timestamp, naive datetimes read as UTC."""
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    if isinstance(eta, datetime):
        eta = (eta if eta.tzinfo else eta.replace(tzinfo=UTC)).timestamp()
    return Held(
        str(task_id), dict(kwargs or {}), eta if eta else None, retries=int(retries or 0),
        delivery_tag=None if tag is None else str(tag), claimed_at=now,
    )  # fmt: skip


def message_of(request: Any, now: float) -> Held:
    """What sending a received ``pollen.submit`` message again needs (the worker's
    ``Request``)."""
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    retries = request.request_dict.get("retries")
    return _held(request.id, request.kwargs, request.eta, retries, tag, now)


def current(request: Any, now: float) -> tuple[str, Held] | None:
    """This worker's claim on the ``pollen.submit`` message its task runs (``self.request``):
    the holder's name and the message; None where no claims are kept (another broker)."""
    holder = _This.holder
    if holder is None:
        return None
    tag = (request.delivery_info or {}).get("delivery_tag")
    return holder.name, _held(request.id, request.kwargs, request.eta, request.retries, tag, now)


@worker_init.connect
def _start(sender: Any = None, **_: Any) -> None:
    settings = runtime.deps().settings
    if not settings.redis_broker:
        return
    _This.holder = Holder(
        holder_name(str(getattr(sender, "hostname", "worker"))), settings.worker_lease
    )
    _This.holder.start()


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    """A clean stop requeued what it held: its claims go (nothing to send again)."""
    holder = _This.holder
    if holder is None:
        return
    holder.stop()
    try:
        runtime.deps().store.claims.drop(holder.name)
    except Exception as exc:  # sent again after the lease: duplicates, harmless
        log.warning("could not drop this worker's claims at shutdown: %s", exc)


@task_received.connect
def _hold(request: Any = None, **_: Any) -> None:
    holder = _This.holder
    if holder is None or request is None or request.name != contract.SUBMIT:
        return
    deps = runtime.deps()
    now = deps.clock()
    message = message_of(request, now)
    tag = message.tag
    # its jobs are in a live worker's hands until the submit could have run (the time limit)
    expect_by = max(now, message.eta or now) + deps.settings.task_time_limit
    try:
        deps.store.claims.hold(
            holder.name, tag, message, expect_by=expect_by + deps.settings.submit_grace
        )
    except Exception as exc:  # unclaimed: the reconciler's scan of the deliveries finds it
        log.warning("could not record the claim on submit message %s: %s", request.id, exc)


@task_postrun.connect
def _release(task: Any = None, **_: Any) -> None:
    if task is not None and task.name == contract.SUBMIT:
        _forget(str(task.request.id), int(task.request.retries or 0))


@task_revoked.connect
def _revoked(request: Any = None, **_: Any) -> None:
    """A revoked or expired submit message never runs: its claim goes too."""
    if request is not None and getattr(request, "name", None) == contract.SUBMIT:
        _forget(str(request.id), int(request.request_dict.get("retries") or 0))


def _forget(task_id: str, retries: int) -> None:
    holder = _This.holder
    if holder is None:
        return
    tag = message_tag(task_id, retries)
    try:
        runtime.deps().store.claims.release(holder.name, [tag])
    except Exception as exc:  # left behind: dropped as stale or sent again, harmless
        log.warning("could not drop the claim on submit message %s: %s", task_id, exc)
