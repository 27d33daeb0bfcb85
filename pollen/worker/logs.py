"""Logging: JSON lines in production, readable text locally, job context on every line.

Steps bind the job they work on (``bind(job_id=..., provider=..., provider_task_id=...,
attempt=...)``); a filter copies the bound values onto every record, so a line logged anywhere
while a job is being handled — by pollen, httpx or Celery — carries them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

CONTEXT_FIELDS = ("job_id", "provider", "provider_task_id", "attempt", "batch")
_context: ContextVar[dict[str, Any] | None] = ContextVar("pollen_log_context", default=None)


def bind(**fields: Any) -> None:
    """Add job fields to the current context (a Celery task run, a thread)."""
    current = dict(_context.get() or {})
    current.update({k: v for k, v in fields.items() if v not in (None, "")})
    _context.set(current)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind job fields for the lines logged inside the block only (one job of a batch)."""
    token = _context.set(dict(_context.get() or {}))
    bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def clear() -> None:
    _context.set(None)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """Readable locally: ``time LEVEL logger [job=… attempt=…] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(context)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        pairs = [
            f"{name.replace('provider_task_id', 'task')}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        record.context = f" [{' '.join(pairs)}]" if pairs else ""
        return super().format(record)


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Install one stream handler on the root logger with the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
