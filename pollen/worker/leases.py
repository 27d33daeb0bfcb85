"""Keeping the poll leases of running batches alive: short leases, renewed while a poll runs.

A poll takes a lease on each job it polls (``POLLEN_POLL_LEASE``, 10 s). While the batch runs,
one renewer thread per worker process extends the leases of every running batch every third
of the lease, in one Redis call. A slow provider answer keeps its leases; a dead worker stops
renewing, and its jobs are free for another worker one lease after the death (the reconciler
re-sends their polls; a claim that finds the expired lease counts the worker loss).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from pollen.store.sync import Store

log = logging.getLogger(__name__)

Item = tuple[str, int]


class LeaseRenewer:
    """Renews the leases of the batches running in this process (a daemon thread)."""

    def __init__(self, store: Store, lease: float, clock: Callable[[], float]) -> None:
        self.store = store
        self.lease = lease
        self.clock = clock
        self._active: dict[int, Sequence[Item]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0  #: renewal calls made (tests, metrics)

    @contextmanager
    def held(self, items: Sequence[Item]) -> Iterator[None]:
        """Keep renewing these (job, attempt) leases until the block ends."""
        if not items:
            yield
            return
        token = next(self._ids)
        with self._lock:
            self._active[token] = items
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pollen-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                del self._active[token]

    def _run(self) -> None:
        while True:
            self._wake.wait(self.lease / 3)
            with self._lock:
                items = [item for batch in self._active.values() for item in batch]
            if not items:
                continue
            try:
                self.store.polls.renew(items, until=self.clock() + self.lease)
                self.renewals += 1
            except Exception:  # Redis away for a moment: the next round tries again
                log.warning("could not renew %d poll leases", len(items), exc_info=True)
