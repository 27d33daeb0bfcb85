"""The simulator's pushes: what a provider POSTs to a URL it was given when a task has news
(Runware's ``webhookURL``: each finished generation's item; useapi.net's ``replyUrl``: the
task when it ends), with configurable delay, loss, duplication and reordering.

A background thread keeps the pushes due (a heap by send time) and POSTs each one; a push
the receiver does not take (a connection error, a 5xx) is tried again a few times, as real
providers do. Counts go to ``GET /_sim/stats`` under ``pushes``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

#: a push's body is built when it is sent (what the task looks like then)
BodyFn = Callable[[float], Any]
#: delays before a push's later tries, seconds
RETRIES = (0.5, 1.0, 2.0)
TIMEOUT = 5.0


class Pusher:
    """Sends pushes at their due times from one daemon thread (started on first use)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, str, BodyFn, int]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._counts: Counter[str] = Counter()
        self._rng = random.Random()

    def reseed(self, seed: int | None) -> None:
        with self._wake:
            self._rng = random.Random(None if seed is None else f"pushes-{seed}")

    def plan(
        self,
        url: str,
        at: float,
        body: BodyFn,
        *,
        delay: float,
        loss: float,
        duplicate: float,
        reorder: float,
    ) -> None:
        """Push ``body`` to ``url`` ``delay`` seconds after ``at``: lost with probability
        ``loss``, sent twice with ``duplicate``; ``reorder`` adds up to that many seconds at
        random, so pushes of one task can arrive out of order."""
        with self._wake:
            if self._rng.random() < loss:
                self._counts["lost"] += 1
                return
            copies = 2 if self._rng.random() < duplicate else 1
            if copies == 2:
                self._counts["duplicated"] += 1
            for _ in range(copies):
                when = at + delay + self._rng.uniform(0, reorder)
                heapq.heappush(self._heap, (when, next(self._order), url, body, 0))
            self._counts["planned"] += copies
            self._start()
            self._wake.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sim-pusher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
            while True:
                with self._wake:
                    while not self._closed and (not self._heap or self._heap[0][0] > self.clock()):
                        wait = self._heap[0][0] - self.clock() if self._heap else None
                        self._wake.wait(timeout=wait)
                    if self._closed:
                        return
                    _, _, url, body, tries = heapq.heappop(self._heap)
                self._send(client, url, body, tries)

    def _send(self, client: httpx.Client, url: str, body: BodyFn, tries: int) -> None:
        content = json.dumps(body(self.clock())).encode()
        try:
            response = client.post(url, content=content,
                                   headers={"Content-Type": "application/json"})  # fmt: skip
            taken = response.status_code < 500
        except httpx.HTTPError:
            taken = False
        with self._wake:
            if taken:
                self._counts["sent"] += 1
            elif tries < len(RETRIES):
                self._counts["retried"] += 1
                when = self.clock() + RETRIES[tries]
                heapq.heappush(self._heap, (when, next(self._order), url, body, tries + 1))
            else:
                self._counts["failed"] += 1

    def pending(self) -> int:
        with self._wake:
            return len(self._heap)

    def counts(self) -> dict[str, int]:
        with self._wake:
            return {**self._counts, "pending": len(self._heap)}

    def clear(self) -> None:
        with self._wake:
            self._heap.clear()
            self._counts.clear()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
