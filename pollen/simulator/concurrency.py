"""Per-key concurrency: how many tasks each API key has running, and the cap on it.

A task runs from its create until it finishes at the simulator (its generations' end); a task
the provider throttles waits first and runs later, started in creation order as slots free.
Each key keeps the intervals of its tasks that have not ended, so the running count at any
moment, and the **peak** (the most that ever ran at once), are read from the simulator itself.

Scheduling is first come, first served: a new task never starts before a task of the same key
created earlier, so at its start every other live task has started and the count only falls
afterwards; the peak is therefore checked at each task's start. A cancelled task frees its slot
at once, but throttled tasks already scheduled keep their start (a simulator simplification).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Any


def _end(entry: tuple[float, str]) -> float:
    return entry[0]


@dataclass(slots=True)
class _Key:
    """One key's live tasks and its counters. Every step is logarithmic in the live tasks (a
    key can hold 100,000 of them: the ``scale`` benchmark):

    - ``tasks``: id -> [start, end], the live tasks;
    - ``ends``: (end, id) of the live tasks, sorted: the ended ones are its head, and the
      ``cap``-th latest end is when a slot frees;
    - ``starts``: every start ever given, in creation order, which first come first served
      keeps sorted: the tasks still waiting (start > now) are its tail.
    """

    tasks: dict[str, list[float]] = field(default_factory=dict)
    ends: list[tuple[float, str]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    peak: int = 0
    created: int = 0
    refused: int = 0
    throttled: int = 0
    foreign: int = 0
    requests: dict[str, int] = field(default_factory=dict)

    def prune(self, now: float) -> None:
        ended = bisect.bisect_right(self.ends, now, key=_end)
        for _, task_id in self.ends[:ended]:
            del self.tasks[task_id]
        del self.ends[:ended]

    def waiting(self, now: float) -> int:
        """Tasks created but not started at ``now`` (a task that ended ran, so it started)."""
        return len(self.starts) - bisect.bisect_right(self.starts, now)

    def running(self, now: float) -> int:
        self.prune(now)
        return len(self.tasks) - self.waiting(now)

    def earliest_start(self, now: float, cap: int | None) -> float:
        """When a task created at ``now`` may start: after every earlier task has started,
        and once fewer than ``cap`` tasks are still running."""
        self.prune(now)
        start = max(now, self.starts[-1]) if self.starts else now
        if cap is None or len(self.ends) < cap:
            return start
        return max(start, self.ends[len(self.ends) - cap][0])

    def add(self, task_id: str, start: float, end: float) -> int:
        """Add a task; how many others still run at its start."""
        others = len(self.ends) - bisect.bisect_right(self.ends, start, key=_end)
        self.tasks[task_id] = [start, end]
        bisect.insort(self.ends, (end, task_id))
        self.starts.append(start)
        return others

    def shorten(self, task_id: str, end: float) -> None:
        """The task ends at ``end`` instead (cancelled)."""
        interval = self.tasks.get(task_id)
        if interval is None or end >= interval[1]:
            return
        at = bisect.bisect_left(self.ends, (interval[1], task_id))
        if at < len(self.ends) and self.ends[at] == (interval[1], task_id):
            del self.ends[at]
        interval[1] = end
        bisect.insort(self.ends, (end, task_id))


class Concurrency:
    """Running tasks per API key, thread-safe; served under ``keys`` by ``GET /_sim/stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()

    def _key(self, key: str) -> _Key:
        return self._keys.setdefault(key, _Key())

    def request(self, key: str, kind: str) -> None:
        """Count one authenticated provider request of ``kind`` made with ``key``."""
        with self._lock:
            requests = self._key(key).requests
            requests[kind] = requests.get(kind, 0) + 1

    def foreign(self, key: str) -> None:
        """Count a lookup, made with ``key``, of a task another key created."""
        with self._lock:
            self._key(key).foreign += 1

    def room(self, key: str, now: float, cap: int | None, count: int) -> bool:
        """Whether ``count`` more tasks could start at ``now`` under ``cap``; when not, the
        refusal is counted (the caller answers 429 and creates nothing)."""
        with self._lock:
            entry = self._key(key)
            if cap is None or entry.running(now) + count <= cap:
                return True
            entry.refused += 1
            return False

    def schedule(
        self, key: str, task_id: str, now: float, length: float, cap: int | None, wait: bool
    ) -> float | None:
        """Add a task of ``length`` seconds created at ``now``; its start time, or ``None``
        when it would have to wait and ``wait`` is false (refused, counted, nothing added)."""
        with self._lock:
            entry = self._key(key)
            start = entry.earliest_start(now, cap)
            if start > now and not wait:
                entry.refused += 1
                return None
            if start > now:
                entry.throttled += 1
            running = entry.add(task_id, start, start + length)
            entry.created += 1
            entry.peak = max(entry.peak, running + 1 if length > 0 else running)
            return start

    def finish(self, key: str, task_id: str, now: float) -> None:
        """The task ended early (cancelled): its slot is free from ``now``."""
        with self._lock:
            entry = self._key(key)
            interval = entry.tasks.get(task_id)
            if interval is not None:
                entry.shorten(task_id, max(now, interval[0]))

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                key: {
                    "running": entry.running(now),
                    "waiting": entry.waiting(now),
                    "peak_running": entry.peak,
                    "created": entry.created,
                    "refused_for_capacity": entry.refused,
                    "throttled": entry.throttled,
                    "foreign_lookups": entry.foreign,
                    "requests_by_kind": dict(entry.requests),
                }
                for key, entry in self._keys.items()
            }
