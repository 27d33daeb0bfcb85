"""What the shared request path needs to know about each provider dialect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def by_method(method: str, body: bytes) -> str:
    """Request kind of REST dialects: a POST creates a task, a DELETE cancels one, anything
    else asks about one."""
    return {"POST": "submit", "DELETE": "cancel"}.get(method, "status")


@dataclass(frozen=True)
class Dialect:
    """Error wording of one provider API.

    ``error_body(status, message)`` builds that provider's JSON error body; ``unauthorized`` is
    the body of its 401; ``malformed`` is a truncated (invalid JSON) body for malformed faults.
    ``classify(method, body)`` names a request's kind for the stats (``submit``, ``status``,
    ``cancel`` or ``other``); the body is only read for it when ``classify_reads_body`` is set.
    """

    name: str
    error_body: Callable[[int, str], dict[str, Any]]
    unauthorized: dict[str, Any]
    malformed: str
    classify: Callable[[str, bytes], str] = by_method
    classify_reads_body: bool = False
