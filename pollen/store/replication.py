"""A new job is on a replica before its submit returns.

Redis replicates asynchronously: a job the primary stored, and whose submit returned, is lost
if the primary dies before its replica received it and the replica is promoted. So every
create (:func:`pollen.store.lifecycle.create_many`) sends ``WAIT <replicas> <timeout>`` in the
same round trip as its writes, when the primary has replicas (``POLLEN_REPLICA_ACKS``: ``auto``
waits for one when ``INFO replication`` shows any connected, a number waits for that many, 0
never waits).

A ``WAIT`` that times out does not fail the submit: the job is stored on the primary and its
message is sent, so it will run unless the primary dies within the replication lag. Raising
instead would lie the other way, since a caller that did not choose the job id would submit
the job again under a new one. The shortfall is logged at WARNING and counted
(``pollen_replica_ack_timeouts_total`` on a worker), and an ``auto`` client asks again how
many replicas there are. A ``WAIT`` (or ``INFO``) the server refuses (an ACL without it, a
proxy) does not fail the submit either: it is logged once and the client stops waiting.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from pollen.store.effects import Batch, Op, tolerant

if TYPE_CHECKING:
    from pollen.settings import Settings

log = logging.getLogger(__name__)

#: how long an ``auto`` client trusts its count of connected replicas, seconds
RECHECK = 10.0


@dataclass
class Replicas:
    """How many replicas a create waits for, and for how long (one per client: it caches
    the replica count of ``auto``)."""

    acks: int | None  #: replicas to wait for; None: one if any is connected (``auto``)
    timeout_ms: int  #: longest wait, milliseconds
    #: called with (wanted, acknowledged) when a wait times out (a worker counts it)
    on_short: Callable[[int, int], None] | None = None
    clock: Callable[[], float] = time.monotonic
    _connected: int = field(default=0, init=False)
    _checked_at: float = field(default=-math.inf, init=False)
    _refused: bool = field(default=False, init=False)  #: the server refuses WAIT: never again

    def wanted(self) -> Op[int]:
        """Replicas to wait for: ``acks``, or (``auto``) one if the primary has any connected,
        read with ``INFO replication`` at most every :data:`RECHECK` seconds."""
        if self._refused:
            return 0
        if self.acks is not None:
            return self.acks
        now = self.clock()
        if now - self._checked_at >= RECHECK:
            [info] = yield [tolerant("info", "replication")]
            if isinstance(info, redis.ResponseError):  # a proxy that refuses INFO
                self._refuse(info)
                return 0
            self._connected = int(info.get("connected_slaves", 0))
            self._checked_at = now
        return min(self._connected, 1)

    def written(self, batch: Batch) -> Op[list[Any]]:
        """Run the writes of ``batch`` and, when replicas are wanted, ``WAIT`` for them in the
        same round trip (one connection: ``WAIT`` counts that connection's writes); the
        writes' replies."""
        wanted = yield from self.wanted()
        if not wanted or not batch:
            return (yield batch)
        *replies, acked = yield [*batch, tolerant("wait", wanted, self.timeout_ms)]
        if isinstance(acked, redis.ResponseError):  # an ACL or a proxy refuses WAIT
            self._refuse(acked)
        elif int(acked) < wanted:
            self._short(wanted, int(acked))
        return replies

    def _refuse(self, error: Exception) -> None:
        log.warning(
            "Redis refused a replica check (%s): creates no longer wait for replicas "
            "on this client (POLLEN_REPLICA_ACKS=0 says so without trying)",
            error,
        )
        self._refused = True

    def _short(self, wanted: int, acked: int) -> None:
        log.warning(
            "a create was acknowledged by %d of %d replicas within %d ms: the job is stored on "
            "the primary and will run, but a failover to a replica that has not acknowledged "
            "it would lose it",
            acked, wanted, self.timeout_ms,
        )  # fmt: skip
        self._checked_at = -math.inf  # auto: the replica may be gone, count them again
        if self.on_short is not None:
            self.on_short(wanted, acked)


def of(settings: Settings, on_short: Callable[[int, int], None] | None = None) -> Replicas:
    """The replica waits ``settings`` ask for (``replica_acks``, ``replica_timeout``), at most
    half the producer's ``redis_timeout`` (a longer WAIT would end in a socket timeout, and
    a stored job reported as a Redis failure)."""
    acks = None if settings.replica_acks == "auto" else int(settings.replica_acks)
    ceiling = max(1, int(settings.producer.redis_timeout * 500))
    return Replicas(acks, min(settings.replica_timeout, ceiling), on_short)


def off() -> Replicas:
    """Waits for no replica (a store built without settings)."""
    return Replicas(0, 1)
