"""Fault injection: random (config rates) and scripted (FIFO queue from ``/_sim/faults``)."""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass

from starlette.responses import JSONResponse, Response

from pollen.simulator.config import SimulatorConfig
from pollen.simulator.dialect import Dialect

TIMEOUT = "timeout"
MALFORMED = "malformed"
_MESSAGES = {
    429: "Too many requests. Slow down and retry later.",
    500: "Internal server error.",
    502: "Bad gateway.",
    503: "Service temporarily unavailable.",
    504: "Gateway timeout.",
}


def check_kind(kind: str) -> str:
    """Return ``kind`` if it names a fault: ``timeout``, ``malformed`` or a 4xx/5xx code."""
    if kind in (TIMEOUT, MALFORMED):
        return kind
    if kind.isdigit() and 400 <= int(kind) <= 599:
        return kind
    raise ValueError(
        f"unknown fault kind {kind!r}: use an HTTP code (4xx/5xx), malformed or timeout"
    )


@dataclass(frozen=True)
class Fault:
    """One fault to apply to one request."""

    kind: str
    retry_after: int

    @property
    def stalls(self) -> bool:
        """A timeout fault stalls, then the request is processed normally."""
        return self.kind == TIMEOUT


@dataclass(frozen=True)
class ScriptedFault:
    fault: Fault
    path_prefix: str = ""
    path: str | None = None

    def matches(self, path: str) -> bool:
        if self.path is not None:
            return path == self.path
        return path.startswith(self.path_prefix)

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.fault.kind,
            "retry_after": self.fault.retry_after,
            "path_prefix": self.path_prefix,
            "path": self.path,
        }


class FaultInjector:
    """Decides, per provider request, whether (and which) fault replaces normal processing."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._queue: deque[ScriptedFault] = deque()
        self._rng = random.Random(None if seed is None else f"faults-{seed}")

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._rng = random.Random(None if seed is None else f"faults-{seed}")

    def enqueue(self, items: list[ScriptedFault]) -> int:
        with self._lock:
            self._queue.extend(items)
            return len(self._queue)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def pending(self) -> list[dict[str, object]]:
        with self._lock:
            return [item.describe() for item in self._queue]

    def take(self, path: str, config: SimulatorConfig) -> Fault | None:
        """The first queued fault matching ``path`` (consumed), else a random one, else None."""
        with self._lock:
            for item in self._queue:
                if item.matches(path):
                    self._queue.remove(item)
                    return item.fault
            return self._roll(config)

    def _roll(self, config: SimulatorConfig) -> Fault | None:
        for rate, kind in (
            (config.rate_5xx, "503"),
            (config.rate_429, "429"),
            (config.rate_malformed, MALFORMED),
            (config.rate_timeout, TIMEOUT),
        ):
            if rate > 0 and self._rng.random() < rate:
                return Fault(kind, config.retry_after)
        return None


def fault_response(dialect: Dialect, fault: Fault) -> Response:
    """The answer that replaces a request hit by a non-stalling fault."""
    if fault.kind == MALFORMED:
        return Response(dialect.malformed, status_code=200, media_type="application/json")
    status = int(fault.kind)
    message = _MESSAGES.get(status, f"Simulated HTTP {status} error.")
    headers = {"Retry-After": str(fault.retry_after)} if status == 429 else None
    return JSONResponse(dialect.error_body(status, message), status_code=status, headers=headers)
