"""OpenTelemetry traces, off unless ``POLLEN_TRACING=true``.

Off (the default), :data:`OFF` does nothing and nothing of OpenTelemetry is imported: no
package, no cost. On, :func:`of` loads :mod:`pollen.tracing.otel`, which needs the
``pollen-jobs[tracing]`` extra. Where the spans go is OpenTelemetry's business: the producer
uses whatever TracerProvider your application configured; the worker configures one from the
``OTEL_*`` variables (:func:`pollen.tracing.otel.start_worker`) unless one is already set.

A job's trace context travels with the job: its W3C ``traceparent`` is stored on the job
record at submit, and every step that acts for the job (the worker's submit, the callback
delivery) continues it. A poll batch, which serves many jobs, is a span of its own with a
link to each job's trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

from pollen.errors import InvalidSettings

if TYPE_CHECKING:
    from pollen.settings import Settings

#: span attribute names (pollen's own namespace)
JOB_ID = "pollen.job.id"
PROVIDER = "pollen.provider"
TENANT = "pollen.tenant"
JOBS = "pollen.jobs"
#: the job record's field that holds its trace context
FIELD = "traceparent"


class Span(Protocol):
    """What pollen's steps do with a span: add attributes, link another trace."""

    def set(self, attributes: Mapping[str, Any]) -> None: ...

    def link(self, traceparent: str | None, attributes: Mapping[str, Any]) -> None: ...


class _NoSpan:
    def set(self, attributes: Mapping[str, Any]) -> None:
        pass

    def link(self, traceparent: str | None, attributes: Mapping[str, Any]) -> None:
        pass


NO_SPAN = _NoSpan()


class Tracing:
    """Tracing off: every method does nothing (see :class:`pollen.tracing.otel.OtelTracing`)."""

    on = False

    def span(
        self,
        name: str,
        *,
        parent: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        producer: bool = False,
    ) -> AbstractContextManager[Span]:
        """A span around a step, current while it runs; with ``parent`` (a job's
        traceparent), in that job's trace. ``producer``: the span sends a message."""
        return nullcontext(NO_SPAN)

    def traceparent(self) -> str | None:
        """The current span's context as a W3C traceparent (None: none, or tracing is off)."""
        return None

    def headers(self) -> dict[str, str]:
        """The current context as message headers (the configured propagators')."""
        return {}

    def detached(self) -> AbstractContextManager[None]:
        """Messages sent inside carry no trace context (pollen's own follow-up messages: a
        step that serves a job joins the job's trace from its record)."""
        return nullcontext()

    def instrument(self, redis: Any = None, http: Any = None) -> None:
        """Trace this Redis client's commands and this httpx client's requests (only inside
        a span: they never start a trace of their own)."""


OFF = Tracing()


def of(settings: Settings) -> Tracing:
    """:data:`OFF`, or OpenTelemetry's tracing when ``POLLEN_TRACING`` is on."""
    if not settings.tracing:
        return OFF
    try:
        from pollen.tracing.otel import OtelTracing
    except ImportError as exc:
        raise InvalidSettings(
            f"POLLEN_TRACING: needs {exc.name or 'opentelemetry'}: "
            "pip install 'pollen-jobs[tracing]'"
        ) from None
    return OtelTracing()


def start_worker(settings: Settings) -> None:
    """At worker start (tracing on): a TracerProvider from the ``OTEL_*`` variables unless
    the process has one, and Celery's instrumentation. Off: nothing, nothing imported."""
    if of(settings).on:
        from pollen.tracing.otel import start_worker as start

        start()
