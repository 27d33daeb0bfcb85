"""The job store on a synchronous ``redis.Redis`` client: one client, its scripts, and the
store's ideas built on them (``store.lifecycle``, ``store.polls``, ``store.schedule``,
``store.admission``, ``store.claims``, ``store.rates``, ``store.locks``).

Every call, script or command, is an operation (:mod:`pollen.store.effects`) run by
:meth:`Store.run`; :class:`pollen.store.aio.AsyncStore` runs the same operations on asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import redis

from pollen.store import (
    admission,
    claims,
    effects,
    keys,
    lifecycle,
    polls,
    pushes,
    rates,
    replication,
    schedule,
    scripts,
)
from pollen.store.locks import Locks

T = TypeVar("T")

#: most provider envelopes kept for a job's audit
MAX_RESPONSES = 500

#: the job scripts, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = (
    *lifecycle.SCRIPTS,
    *admission.SCRIPTS,
    *claims.SCRIPTS,
    *polls.SCRIPTS,
    *schedule.SCRIPTS,
    *pushes.SCRIPTS,
    *rates.SCRIPTS,
)


def script_texts() -> dict[str, str]:
    """The job scripts, by name, as sent to Redis (for any client, sync or asyncio)."""
    return scripts.texts(
        SCRIPTS,
        prelude=True,
        MAX_RESPONSES=MAX_RESPONSES,
    )


class Store:
    """Job state in Redis, keyed by job id: one client and the store's ideas built on it."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        finished_ttl: int,
        grace: float = 60.0,
        submit_grace: float = 60.0,
        rehost: bool = False,
    ) -> None:
        self.redis = client
        #: the replicas a create waits for (``open_store`` sets ``POLLEN_REPLICA_ACKS``'s)
        self.replicas = replication.off()
        #: every script by name, registered on this client
        self.scripts = {name: client.register_script(text) for name, text in script_texts().items()}
        self.lifecycle = lifecycle.Lifecycle(self.run, finished_ttl=finished_ttl, grace=grace)
        self.polls = polls.Polls(self.run, finished_ttl=finished_ttl, grace=grace, rehost=rehost)
        self.schedule = schedule.Schedule(self.run, grace=grace, submit_grace=submit_grace)
        self.rates = rates.RateTokens(client, self.scripts)
        self.locks = Locks(self.run)
        self.claims = claims.Claims(self.run)
        self.admission = admission.Admission(self.run, grace=grace, submit_grace=submit_grace)

    def run(self, op: effects.Op[T]) -> T:
        """Run a store operation (:mod:`pollen.store.effects`) on this client."""
        return effects.perform(self.redis, self.scripts, op)

    @contextmanager
    def listen(self, job_id: str) -> Iterator[Callable[[float], bool]]:
        """Listen to the job's lifecycle events (Pub/Sub) inside the block: yields
        ``wait(seconds) -> bool``, True when an event came within that time.

        Subscribe before reading the job: an event published after the subscription is never
        missed, and one published before it shows in the job that is read next.
        """
        pubsub = self.redis.pubsub()
        try:
            with effects.guard():
                pubsub.subscribe(keys.events(job_id))
                # wait for Redis to confirm: from then on no event of the job is missed
                confirm_by = time.monotonic() + 2.0
                while time.monotonic() < confirm_by:
                    message = pubsub.get_message(timeout=0.1)
                    if message is not None and message["type"] == "subscribe":
                        break

            def wait(seconds: float) -> bool:
                end = time.monotonic() + seconds
                while (left := end - time.monotonic()) > 0:
                    with effects.guard():
                        message = pubsub.get_message(timeout=left)
                    if message is not None and message["type"] == "message":
                        return True
                return False

            yield wait
        finally:
            pubsub.close()

    def close(self) -> None:
        """Close the Redis connections (the outbox shares them)."""
        self.redis.close()
