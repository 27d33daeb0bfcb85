"""Batching concurrent calls into one: the first caller waits a moment for company.

Used for Runware, whose endpoint takes an array of tasks: polls that fire at about the same
time in one worker process (a thread pool runs many) travel as one HTTP request.

Leader/follower, no background thread: the first caller of a new batch becomes its leader,
waits until the batch is full or ``max_wait`` has passed, sends it, and hands every caller
its own answer — or its own exception, so one bad item never fails the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


@dataclass
class _Batch(Generic[Item, Answer]):
    items: list[Item] = field(default_factory=list)
    answers: list[Answer | BaseException] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class Batcher(Generic[Item, Answer]):
    """Collects items from concurrent callers and sends them with one ``flush`` call.

    ``flush(items)`` returns one answer or exception per item, in order; if it raises, every
    caller of that batch gets the exception.
    """

    def __init__(
        self,
        flush: Callable[[Sequence[Item]], Sequence[Answer | BaseException]],
        *,
        max_size: int,
        max_wait: float,
    ) -> None:
        if max_size < 1 or max_wait < 0:
            raise ValueError("max_size must be >= 1 and max_wait >= 0")
        self._flush = flush
        self.max_size = max_size
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._open: _Batch[Item, Answer] | None = None
        self.batches = 0  #: flushes so far (for metrics and tests)
        self.items = 0  #: items sent so far

    def call(self, item: Item) -> Answer:
        """Send ``item`` with whatever else arrives within ``max_wait``; return its answer."""
        with self._lock:
            batch = self._open
            leader = batch is None
            if batch is None:
                batch = self._open = _Batch()
            index = len(batch.items)
            batch.items.append(item)
            if len(batch.items) >= self.max_size:
                self._open = None  # later callers start a new batch
                batch.full.set()
        if leader:
            batch.full.wait(self.max_wait)
            with self._lock:
                if self._open is batch:
                    self._open = None
            self._send(batch)
        else:
            batch.done.wait()
        answer = batch.answers[index]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _send(self, batch: _Batch[Item, Answer]) -> None:
        try:
            answers = list(self._flush(batch.items))
            if len(answers) != len(batch.items):
                raise RuntimeError(f"flush answered {len(answers)} of {len(batch.items)} items")
        except BaseException as exc:
            answers = [exc] * len(batch.items)
        batch.answers = answers
        with self._lock:
            self.batches += 1
            self.items += len(batch.items)
        batch.done.set()
