"""Time helpers shared by the dialects: timestamps, status slots, progress strings."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_ms(ts: float) -> str:
    """``2024-08-01T01:02:03.456Z`` (useapi.net style)."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_offset(ts: float) -> str:
    """``2026-03-13T09:52:46+00:00`` (Runway official style, second precision)."""
    return datetime.fromtimestamp(int(ts), tz=UTC).isoformat()


def slot_index(count: int, elapsed: float, total: float) -> int:
    """Which of ``count`` equal slots of ``total`` seconds ``elapsed`` falls in.

    The last slot holds forever once ``total`` has passed (or at once when ``total`` is 0).
    """
    if total <= 0:
        return count - 1
    return max(0, min(int(elapsed / (total / count)), count - 1))


def slot_start(count: int, index: int, total: float) -> float:
    """Seconds after the start at which slot ``index`` begins."""
    return 0.0 if total <= 0 else index * total / count


def fraction(elapsed: float, start: float, end: float) -> float:
    """How far ``elapsed`` is between ``start`` and ``end``, clamped to 0..1."""
    if end <= start:
        return 1.0
    return max(0.0, min(1.0, (elapsed - start) / (end - start)))


def ratio_string(value: float) -> str:
    """``0.25`` -> ``"0.25"``, ``0.9`` -> ``"0.9"``, ``1.0`` -> ``"1"``."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"
