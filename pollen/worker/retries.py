"""Celery retries without a formatted traceback (a worker's largest per-poll cost, patched).

Every poll batch that goes on does so by ``raise self.retry(countdown=...)``, and Celery's
tracer turns the ``Retry`` it catches into a ``billiard.einfo.ExceptionInfo``: it copies every
frame of the traceback with each code object's full position table (``co_positions``, the
whole of Celery's tracer function among them) and formats the traceback with its source lines.
A profile of a worker in the ``fleet`` benchmark put about an eighth of its Python time there,
for a traceback that always says the same thing (the ``raise self.retry`` line) and that only
the ``task-retried`` event carries.

The patch: ``celery.app.trace.ExceptionInfo`` (the name the tracer calls) becomes a subclass
that, for a ``Retry`` only, keeps the exception and a one-line text (``Retry in 1.5s``) and no
frames; every other exception gets billiard's full treatment, unchanged. The retry itself (the
same task id, ``retries + 1``, the countdown), its ``RETRY`` state, the ``task-retried`` event,
the ``task_retry`` signal and the log line are Celery's own.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback  # type: ignore[import-untyped]
from celery.exceptions import Retry

log = logging.getLogger(__name__)


class RetryInfo(ExceptionInfo):  # type: ignore[misc]
    """billiard's ``ExceptionInfo``, without frames or formatting for a ``Retry``."""

    def __init__(self, exc_info: Any = None, internal: bool = False) -> None:
        kind, exception, _tb = exc_info or sys.exc_info()
        if not isinstance(exception, Retry):
            super().__init__(exc_info, internal)
            return
        self.type = kind
        self.tb = None
        self.traceback = f"{type(exception).__name__}: {exception}\n"
        self.internal = internal
        self.exception = ExceptionWithTraceback(exception, self.traceback)


def install() -> bool:
    """Make Celery's tracer build :class:`RetryInfo` (once); returns whether it does."""
    from celery.app import trace

    current = getattr(trace, "ExceptionInfo", None)
    if current is RetryInfo:
        return True
    if current is not ExceptionInfo:
        log.warning("celery.app.trace no longer uses billiard's ExceptionInfo: retries keep "
                    "their formatted tracebacks")  # fmt: skip
        return False
    trace.ExceptionInfo = RetryInfo
    return True
