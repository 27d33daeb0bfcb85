"""In-memory, thread-safe task store and request statistics."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pollen.simulator.ratelimit import Timeline

GenerationStatus = Literal["processing", "success", "error"]


@dataclass(slots=True)
class Generation:
    """One result of a task: it ends at ``finished_at``, in error when ``error`` is set."""

    index: int
    duration: float
    finished_at: float
    error: str | None = None
    output_id: str = ""

    def status(self, now: float) -> GenerationStatus:
        if now < self.finished_at:
            return "processing"
        return "error" if self.error is not None else "success"


@dataclass(slots=True)
class SimTask:
    """A provider task of any dialect as the simulator sees it; ``api_key`` created it."""

    id: str
    dialect: str
    task_type: str
    created_at: float
    request: Any
    generations: list[Generation]
    params: dict[str, Any] = field(default_factory=dict)
    api_key: str = ""

    @property
    def finished_at(self) -> float:
        return max((gen.finished_at for gen in self.generations), default=self.created_at)


class TaskStore:
    """Tasks by id, plus aliases (e.g. useapi.net's long ``taskId``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tasks: dict[str, SimTask] = {}
        self._aliases: dict[str, str] = {}

    def add(self, task: SimTask, aliases: Iterable[str] = ()) -> bool:
        """Store ``task``; ``False`` (and nothing stored) if its id is taken."""
        with self._lock:
            if task.id in self._tasks or task.id in self._aliases:
                return False
            self._tasks[task.id] = task
            for alias in aliases:
                self._aliases[alias] = task.id
            return True

    def get(self, key: str, dialect: str | None = None) -> SimTask | None:
        with self._lock:
            task = self._tasks.get(self._aliases.get(key, key))
        if task is None or (dialect is not None and task.dialect != dialect):
            return None
        return task

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._tasks or key in self._aliases

    def clear(self) -> None:
        with self._lock:
            self._tasks.clear()
            self._aliases.clear()

    def all(self, dialect: str | None = None) -> list[SimTask]:
        """Every task (of ``dialect``, if given), in creation order."""
        with self._lock:
            tasks = list(self._tasks.values())
        return [t for t in tasks if dialect is None or t.dialect == dialect]

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)


class SimulatorStats:
    """Counters of provider traffic, served by ``GET /_sim/stats`` (and ``/_sim/rate``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.timeline = Timeline()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.timeline.clear()
            self._by_kind: Counter[str] = Counter()
            self._limited_by_kind: Counter[str] = Counter()
            self._requests = 0
            self._by_status: Counter[str] = Counter()
            self._tasks: Counter[str] = Counter()
            self._submits: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._created = 0

    def request(self) -> None:
        with self._lock:
            self._requests += 1

    def classified(self, kind: str, now: float, limited: bool) -> None:
        """One provider request of ``kind`` (submit/status/other) at ``now``; ``limited``
        when the global rate limit answered it 429."""
        with self._lock:
            self._by_kind[kind] += 1
            if limited:
                self._limited_by_kind[kind] += 1
            self.timeline.add(now, limited)

    def status(self, code: int) -> None:
        with self._lock:
            self._by_status[str(code)] += 1

    def task(self, task_type: str) -> None:
        with self._lock:
            self._tasks[task_type] += 1

    def submit(self, task_id: str) -> None:
        with self._lock:
            self._submits[task_id] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def created(self) -> None:
        with self._lock:
            self._created += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "tasks": dict(self._tasks),
                "submits_by_task": dict(self._submits),
                "created": self._created,
                "faults": dict(self._faults),
                "requests_by_kind": dict(self._by_kind),
                "rate_limited": sum(self._limited_by_kind.values()),
                "rate_limited_by_kind": dict(self._limited_by_kind),
            }
