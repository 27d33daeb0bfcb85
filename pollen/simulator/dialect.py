"""What the shared request path needs to know about each provider dialect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    """Error wording of one provider API.

    ``error_body(status, message)`` builds that provider's JSON error body; ``unauthorized`` is
    the body of its 401; ``malformed`` is a truncated (invalid JSON) body for malformed faults.
    """

    name: str
    error_body: Callable[[int, str], dict[str, Any]]
    unauthorized: dict[str, Any]
    malformed: str
