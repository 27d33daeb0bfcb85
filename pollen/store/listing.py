"""Listing jobs: by status, provider, creation time and metadata, a page at a time.

The store's scripts keep one sorted set per provider and status (``keys.index``), scored by
creation time, in step with every status change. A listing reads only the sets of the
statuses and providers asked for (newest first, merged), so its cost does not depend on how
many jobs are in other states; no ``SCAN``, no ``KEYS``. Finished jobs leave the indexes when
their records expire (:meth:`pollen.store.schedule.Schedule.trim_indexes`, from the periodic
round); an entry whose record is gone anyway is dropped when a listing meets it.

Newest first by default, oldest first when asked. Pages are cursor-based, like Replicate's
``predictions.list``: a cursor is the position
(creation time, job id) of the last job returned, so a page never repeats or skips a job
because others were created or changed state meanwhile. With a ``metadata`` or ``tenant``
filter a page may hold fewer than ``limit`` jobs (at most :data:`EXAMINE_FACTOR` x ``limit``
entries are read per call); follow ``next_cursor`` until it is None.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pollen.errors import InvalidJob
from pollen.models import TENANT_PATTERN, Job
from pollen.store import keys
from pollen.store.effects import Batch, Op, cmd
from pollen.store.lifecycle import jobs_with_results

#: most index entries one listing reads, as a multiple of ``limit`` (metadata filters)
EXAMINE_FACTOR = 10
MAX_LIMIT = 1000
Position = tuple[float, str]  #: (creation time, job id): newest first, then id descending


@dataclass(frozen=True)
class JobPage:
    """One page of :meth:`pollen.Pollen.jobs`."""

    jobs: list[Job]
    next_cursor: str | None  #: pass as ``cursor=`` for the next page; None: nothing more


def encode(position: Position) -> str:
    raw = f"{position[0]!r}|{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split("|", 1)
        return float(score), job_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJob(f"not a cursor from a previous page: {cursor!r}") from exc


def query(
    *,
    statuses: Sequence[str],
    providers: Sequence[str],
    since: float | None = None,
    until: float | None = None,
    metadata: dict[str, str] | None = None,
    tenant: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
    oldest_first: bool = False,
) -> Op[JobPage]:
    """The newest (or, with ``oldest_first``, the oldest) jobs matching every filter given,
    after ``cursor`` (a store operation: run it with ``Store.run`` or
    :func:`pollen.store.effects.arun`); see the module doc. A cursor continues the order of the
    page it came from."""
    _check(limit, tenant)
    index_keys = [keys.index(p, s) for p in providers for s in statuses]
    position = decode(cursor) if cursor else None
    window = [-math.inf if since is None else since, math.inf if until is None else until]
    edge = 0 if oldest_first else 1  # the end of the window that moves as pages are read
    if position:
        window[edge] = position[0]
    found: list[Job] = []
    budget = limit * EXAMINE_FACTOR
    while len(found) < limit and budget > 0:
        want = min(limit - len(found), budget)
        entries = yield from _merged(index_keys, position, window, want + 1, oldest_first)
        taken = entries[:want]
        budget -= len(taken)
        jobs = yield from jobs_with_results([job_id for _, job_id, _ in taken])
        stale: Batch = []
        for (score, job_id, key), job in zip(taken, jobs, strict=True):
            position = (score, job_id)
            if job is None:
                stale.append(cmd("zrem", key, job_id))  # expired: drop the stale entry
            elif _matches(job, statuses, providers, metadata, tenant):
                found.append(job)
        if stale:
            yield stale
        if len(entries) <= want:
            return JobPage(found, None)
        if position:
            window[edge] = position[0]
    return JobPage(found, encode(position) if position else None)


def _check(limit: int, tenant: str | None) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidJob(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if tenant is not None and not re.match(TENANT_PATTERN, tenant):
        raise InvalidJob(f"tenant {tenant!r} is not a tenant's name ({TENANT_PATTERN})")


def _matches(
    job: Job,
    statuses: Sequence[str],
    providers: Sequence[str],
    metadata: dict[str, str] | None,
    tenant: str | None,
) -> bool:
    """The job as read now still matches (it may have changed state since its index entry
    was read: then it is left out rather than listed under a status it no longer has)."""
    if job.status.value not in statuses or job.provider not in providers:
        return False
    if tenant is not None and job.tenant != tenant:
        return False
    return not metadata or all(job.metadata.get(k) == v for k, v in metadata.items())


def _after(entry: Position, position: Position | None, ascending: bool) -> bool:
    """Whether ``entry`` comes after ``position`` in the listing's order (newest first, then
    id descending; or the reverse)."""
    if position is None:
        return True
    return entry > position if ascending else entry < position


def _merged(
    index_keys: Sequence[str],
    position: Position | None,
    window: Sequence[float],
    want: int,
    ascending: bool,
) -> Op[list[tuple[float, str, str]]]:
    """Up to ``want`` entries after ``position`` across the indexes, scored within ``window``
    (low, high), in the listing's order, each job once (one round trip, plus one per further
    chunk of an index whose window held only entries at or before ``position``; creation
    times are unique per ``submit_many`` call, so such ties are rare)."""
    low, high = ("-inf" if v == -math.inf else "+inf" if v == math.inf else repr(v) for v in window)
    start, stop = (low, high) if ascending else (high, low)
    chunk = want + 8
    offsets = dict.fromkeys(index_keys, 0)
    entries: dict[str, list[Position]] = {key: [] for key in index_keys}
    while offsets:
        replies = yield [
            cmd("zrange", key, start, stop, desc=not ascending, byscore=True, offset=offset,
                num=chunk, withscores=True)
            for key, offset in offsets.items()
        ]  # fmt: skip
        more: dict[str, int] = {}
        for (key, offset), raw in zip(offsets.items(), replies, strict=True):
            entries[key] += [
                (float(score), str(member))
                for member, score in raw
                if _after((float(score), str(member)), position, ascending)
            ]
            if len(raw) == chunk and len(entries[key]) < want:
                more[key] = offset + chunk
        offsets = more
    merged = [(s, j, key) for key, found in entries.items() for s, j in found[:want]]
    merged.sort(key=lambda e: (e[0], e[1]), reverse=not ascending)
    unique: dict[str, tuple[float, str, str]] = {}  # a job that moved between two indexes
    for entry in merged:  # while they were read is listed once
        unique.setdefault(entry[1], entry)
    return list(unique.values())[:want]
