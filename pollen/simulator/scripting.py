"""Parsing of the optional ``simulate`` objects of useapi.net and CometAPI create requests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        raise ValueError(f"simulate.{name} must be a number of seconds >= 0")
    return float(value)


def _text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"simulate.{name} must be a string or null")


@dataclass(frozen=True)
class Script:
    """Scripted behaviour of one task; ``None`` fields fall back to config/defaults."""

    duration: float | None = None
    throttled_seconds: float = 0.0
    not_exist_seconds: float | None = None
    status_sequence: tuple[str, ...] | None = None
    fail: dict[str, Any] | None = None
    fail_reason: str | None = None
    failure_code: str | None = None


def parse_script(raw: Any) -> Script:
    """Validate a ``simulate`` object (raises ``ValueError`` with a readable message)."""
    if raw is None:
        return Script()
    if not isinstance(raw, dict):
        raise ValueError("simulate must be an object")
    sequence = raw.get("status_sequence")
    if sequence is not None and not (
        isinstance(sequence, list) and sequence and all(isinstance(s, str) for s in sequence)
    ):
        raise ValueError("simulate.status_sequence must be a non-empty list of strings or null")
    fail = raw.get("fail")
    if fail is not None and not isinstance(fail, dict):
        raise ValueError("simulate.fail must be an object or null")
    return Script(
        duration=_seconds(raw.get("duration"), "duration"),
        throttled_seconds=_seconds(raw.get("throttled_seconds"), "throttled_seconds") or 0.0,
        not_exist_seconds=_seconds(raw.get("not_exist_seconds"), "not_exist_seconds"),
        status_sequence=tuple(sequence) if sequence else None,
        fail=fail,
        fail_reason=_text(raw.get("fail_reason"), "fail_reason"),
        failure_code=_text(raw.get("failure_code"), "failure_code"),
    )
