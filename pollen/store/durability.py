"""Noticing that Redis lost its data, and saying so.

pollen writes an epoch marker into an empty store. Each worker remembers the marker it saw (in
memory and in a file beside its heartbeat file named after the store it describes,
:attr:`pollen.settings.Settings.epoch_file`, so a restarted worker still knows it and a worker
pointed at another store does not take that store's marker for a loss), and each producer
client the marker of the store it submitted to; if the marker later vanishes or
changes, the store was emptied under them (Redis restarted
without persistence, a flush, a failover to an empty replica). The worker records the loss in
Redis (``pollen:store:data_loss``), counts it in metrics and logs an error; producers see it
in :meth:`pollen.Pollen.store_status` and in the message of :class:`pollen.JobNotFound`, and
``pollen health`` reports it. Jobs accepted before the loss cannot be recovered from Redis.

After a failover the marker tells the two cases apart: a promoted replica holds it (it is
replicated with the jobs), so it is no loss; a replica that never synced is empty, and is
one. (A replica not yet promoted refuses the marker's write: the check fails as Redis being
unavailable, never as a loss.)
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from pollen.errors import StoreUnavailable
from pollen.store import keys
from pollen.store.connection import Master, probe_client, reason
from pollen.store.effects import Op, cmd
from pollen.store.sync import Store

log = logging.getLogger(__name__)


def marker(now: float | None = None) -> str:
    """A new epoch marker: a random id and the time it was made."""
    return f"{uuid.uuid4().hex} {now if now is not None else time.time():.3f}"


def check(store: Store, known: str | None, now: float | None = None) -> tuple[str, bool]:
    """Compare the store's marker with the one this process saw before.

    Returns ``(current marker, lost)``; ``lost`` is True (and the loss is recorded) when the
    marker this process knew is gone.
    """
    now = time.time() if now is None else now
    current, lost = store.run(check_epoch(known, marker(now), now))
    if lost:
        log_loss(known, current)
    return current, lost


def epoch(marker: str) -> Op[str]:
    """The store's epoch marker, ``marker`` written first if the store has none."""
    _, current = yield [cmd("set", keys.EPOCH, marker, nx=True), cmd("get", keys.EPOCH)]
    return str(current)


def check_epoch(known: str | None, marker: str, now: float) -> Op[tuple[str, bool]]:
    """Compare the store's epoch marker with ``known`` (the one this process saw before):
    (the current marker, whether ``known`` is gone). A loss is recorded in the store."""
    current = yield from epoch(marker)
    if known is None or current == known:
        return current, False
    yield [
        cmd(
            "hset",
            keys.DATA_LOSS,
            mapping={"detected_at": repr(now), "lost_epoch": known, "new_epoch": current},
        )
    ]
    return current, True


def store_status() -> Op[dict[str, Any]]:
    """The store's epoch and the last detected data loss, if any."""
    current, loss = yield [cmd("get", keys.EPOCH), cmd("hgetall", keys.DATA_LOSS)]
    return {"epoch": current, "data_loss": dict(loss) if loss else None}


def log_loss(known: str | None, current: str) -> None:
    log.error(
        "the job store lost its data (epoch %s is gone, now %s): Redis restarted without "
        "persistence or was flushed; jobs accepted before this are lost",
        known,
        current,
    )


def remembered(path: Path) -> str | None:
    """The epoch this worker saw before it (re)started, kept beside its heartbeat file."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def remember(path: Path, epoch: str) -> None:
    try:
        path.write_text(epoch)
    except OSError as exc:  # a read-only filesystem only costs the restart case
        log.debug("cannot keep the epoch in %s: %s", path, exc)


def last_loss(
    url: str, timeout: float = 2.0, master: Master | None = None
) -> dict[str, str] | None:
    """The data-loss record of the store at ``url`` (a probe: short timeouts, own client).

    Raises :class:`StoreUnavailable` when it cannot be read.
    """
    client = probe_client(url, master, timeout)
    try:
        loss: dict[str, str] = client.hgetall(keys.DATA_LOSS)  # type: ignore[assignment]
    except redis.RedisError as exc:
        raise StoreUnavailable(reason(exc, url)) from exc
    finally:
        client.close()
    return loss or None
