"""A global provider request limit (sliding one-second window) and per-bucket request counts.

``SimulatorConfig.rate_limit`` caps the provider requests the simulator *accepts* in any window
of ``WINDOW`` seconds, over every dialect and route; a request beyond it is answered 429 with
``Retry-After: <retry_after>`` and changes nothing. :class:`Timeline` counts every provider
request (and the limited ones) in ``BUCKET``-second buckets, so a client can check how many
requests it sent in any one-second window (``GET /_sim/rate``).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

WINDOW = 1.0
BUCKET = 0.1
_PER_WINDOW = round(WINDOW / BUCKET)


class SimulatedRateLimit:
    """At most ``limit`` accepted requests in any ``window`` seconds (a sliding log)."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._accepted: deque[float] = deque()

    def allow(self, now: float, limit: int | None) -> bool:
        """Accept (and remember) one request at ``now``, or refuse it; ``None``: no limit."""
        if limit is None:
            return True
        with self._lock:
            edge = now - self.window
            accepted = self._accepted
            while accepted and accepted[0] <= edge:
                accepted.popleft()
            if len(accepted) >= limit:
                return False
            accepted.append(now)
            return True

    def clear(self) -> None:
        with self._lock:
            self._accepted.clear()


def max_in_window(counts: dict[int, int], per_window: int = _PER_WINDOW) -> int:
    """The largest sum of ``counts`` over ``per_window`` consecutive bucket numbers."""
    best = 0
    window: deque[tuple[int, int]] = deque()
    total = 0
    for bucket in sorted(counts):
        window.append((bucket, counts[bucket]))
        total += counts[bucket]
        while window[0][0] <= bucket - per_window:
            total -= window.popleft()[1]
        best = max(best, total)
    return best


class Timeline:
    """Provider requests per ``BUCKET`` seconds: all of them, and those rate-limited (429)."""

    def __init__(self, bucket: float = BUCKET) -> None:
        self.bucket = bucket
        self._lock = threading.Lock()
        self._requests: Counter[int] = Counter()
        self._limited: Counter[int] = Counter()

    def add(self, now: float, limited: bool = False) -> None:
        slot = int(now / self.bucket)
        with self._lock:
            self._requests[slot] += 1
            if limited:
                self._limited[slot] += 1

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._limited.clear()

    def view(self, limit: int | None) -> dict[str, Any]:
        """What ``GET /_sim/rate`` serves: the sliding-window maxima and the raw series."""
        with self._lock:
            requests = dict(self._requests)
            limited = dict(self._limited)
        accepted = {slot: n - limited.get(slot, 0) for slot, n in requests.items()}
        per_window = round(WINDOW / self.bucket)
        return {
            "limit": limit,
            "window_seconds": WINDOW,
            "bucket_seconds": self.bucket,
            "requests": sum(requests.values()),
            "rate_limited": sum(limited.values()),
            "max_requests_in_window": max_in_window(requests, per_window),
            "max_accepted_in_window": max_in_window(accepted, per_window),
            # [bucket start (unix seconds), requests, of which rate-limited], non-empty buckets
            "series": [
                [round(slot * self.bucket, 3), requests[slot], limited.get(slot, 0)]
                for slot in sorted(requests)
            ],
        }
