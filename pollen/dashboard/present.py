"""What the templates show, computed from jobs: times, durations, the status timeline, the
filters of the jobs table, and JSON with secrets masked. Plain functions, no I/O."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pollen.models import Job, JobStatus
from pollen.store.lifecycle import Audit

#: the ages the jobs table filters by (created within), as shown and in seconds
AGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
PAGE_SIZES = (25, 50, 100)
#: keys whose values never reach a page (an API key in an audit record, a signing secret)
SECRET_KEY = re.compile(r"key|secret|token|password|authorization|signature", re.IGNORECASE)
#: the request fields that hold a prompt, per dialect
PROMPT_FIELDS = ("positivePrompt", "text_prompt", "promptText")
TERMINAL = [s.value for s in JobStatus if s.terminal]
OUTCOME_COLOURS = {
    "succeeded": "#2f9e44",
    "failed": "#e03131",
    "timed_out": "#f08c00",
    "cancelled": "#868e96",
}


def iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def span(seconds: float | None) -> str:
    """A duration as people read it: ``850 ms``, ``4.2 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def prompt(job: Job) -> str:
    return next((str(job.request[f]) for f in PROMPT_FIELDS if job.request.get(f)), "")


@dataclass(frozen=True)
class Step:
    """One status of the timeline: when the job reached it (None: not yet, or skipped)."""

    status: str
    at: float | None
    after: float | None  #: seconds since the previous step that happened


def timeline(job: Job, audit: Audit | None) -> list[Step]:
    """queued → submitted → processing → the terminal status (or the terminal statuses still
    possible, while the job runs)."""
    processing = audit.processing_at if audit else None
    reached = [
        ("queued", job.created_at),
        ("submitted", job.submitted_at),
        ("processing", processing),
    ]
    end = job.status.value if job.terminal else "finished"
    reached.append((end, job.finished_at))
    steps: list[Step] = []
    previous: float | None = None
    for status, at in reached:
        after = None if at is None or previous is None else max(0.0, at - previous)
        steps.append(Step(status, at, after))
        previous = at if at is not None else previous
    return steps


def masked(value: Any) -> Any:
    """``value`` with the values of secret-looking keys replaced by ``********``."""
    if isinstance(value, dict):
        return {k: "********" if _secret(k, v) else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def _secret(key: Any, value: Any) -> bool:
    return bool(value) and isinstance(value, str) and SECRET_KEY.search(str(key)) is not None


def pretty(value: Any) -> str:
    return json.dumps(masked(value), indent=2, sort_keys=True, default=str)


@dataclass
class Filters:
    """The jobs table's filters, read from the query string; ``problems`` lists what was
    given wrong (shown above the table, the rest of the filters still apply)."""

    statuses: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    age: str = ""
    metadata: str = ""
    tenant: str = ""
    oldest_first: bool = False
    limit: int = PAGE_SIZES[0]
    cursor: str | None = None
    problems: list[str] = field(default_factory=list)

    def pairs(self) -> dict[str, str]:
        """``metadata`` (``key=value``, several separated by commas) as a dict."""
        found: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in self.metadata.split(","))):
            key, sep, value = item.partition("=")
            if sep and key.strip():
                found[key.strip()] = value.strip()
            else:
                self.problems.append(f"metadata {item!r}: give key=value")
        return found

    def query(self, **changes: Any) -> str:
        """The query string of these filters (with ``changes``), for links."""
        from urllib.parse import urlencode

        values: dict[str, Any] = {
            "status": self.statuses,
            "provider": self.providers,
            "age": self.age,
            "metadata": self.metadata,
            "tenant": self.tenant,
            "order": "oldest" if self.oldest_first else "",
            "limit": self.limit if self.limit != PAGE_SIZES[0] else "",
            "cursor": self.cursor or "",
        } | changes
        return urlencode({k: v for k, v in values.items() if v}, doseq=True)


def filters(params: Any, providers: list[str]) -> Filters:
    """:class:`Filters` from a request's query parameters (a multi-dict)."""
    statuses = [s.value for s in JobStatus]
    chosen = Filters(
        statuses=[s for s in params.getlist("status") if s in statuses],
        providers=[p for p in params.getlist("provider") if p in providers],
        age=params.get("age", "") if params.get("age", "") in AGES else "",
        metadata=params.get("metadata", "").strip(),
        tenant=params.get("tenant", "").strip(),
        oldest_first=params.get("order") == "oldest",
        cursor=params.get("cursor") or None,
    )
    unknown = [s for s in params.getlist("status") if s not in statuses]
    unknown += [p for p in params.getlist("provider") if p not in providers]
    if unknown:
        chosen.problems.append(f"unknown filter values ignored: {', '.join(unknown)}")
    limit = params.get("limit", "")
    chosen.limit = int(limit) if limit.isdigit() and int(limit) in PAGE_SIZES else PAGE_SIZES[0]
    return chosen
