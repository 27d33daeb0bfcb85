"""pollen's spans with OpenTelemetry: imported only when ``POLLEN_TRACING`` is on.

pollen writes its own spans only where a span means something of pollen's (a submit, a poll
batch, a callback delivery); everything else comes from the maintained instrumentations:
Celery's (a span per task run and per message sent, the context carried in the message's
headers), httpx's (each provider request and callback POST) and redis-py's (each round trip
to the store). The store's and the HTTP client's are instrumented per client, and only inside
a span: the periodic round's Redis traffic starts no trace of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from pollen.errors import InvalidSettings
from pollen.tracing import Tracing

#: the instrumentation scope of pollen's own spans
SCOPE = "pollen"
#: the service name of a worker when OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names none
WORKER_SERVICE = "pollen-worker"
EXPORTERS = ("otlp", "console", "none")

_W3C = TraceContextTextMapPropagator()


def parse(traceparent: str | None) -> trace.SpanContext | None:
    """The span context of a W3C traceparent (None if it is missing or not valid)."""
    if not traceparent:
        return None
    found = trace.get_current_span(_W3C.extract({"traceparent": traceparent}))
    span_context = found.get_span_context()
    return span_context if span_context.is_valid else None


def traceparent_of(span_context: trace.SpanContext) -> str | None:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
    return carrier.get("traceparent")


def _parent(traceparent: str | None) -> Context | None:
    """Where a step's span goes: under the current span when that is in the job's trace
    already (its message carried the context), else under the job's own context (a resend,
    a message of pollen's own); None: the current context."""
    job = parse(traceparent)
    if job is None:
        return None
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == job.trace_id:
        return None
    return trace.set_span_in_context(trace.NonRecordingSpan(job))


class _Span:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, attributes: Mapping[str, Any]) -> None:
        self._span.set_attributes(dict(attributes))

    def link(self, traceparent: str | None, attributes: Mapping[str, Any]) -> None:
        linked = parse(traceparent)
        if linked is not None:
            self._span.add_link(linked, dict(attributes))


class OtelTracing(Tracing):
    """Tracing on: spans from the global TracerProvider (yours, or the worker's own)."""

    on = True

    def __init__(self) -> None:
        self._tracer = trace.get_tracer(SCOPE)

    @contextmanager
    def span(
        self,
        name: str,
        *,
        parent: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        producer: bool = False,
    ) -> Iterator[_Span]:
        kind = trace.SpanKind.PRODUCER if producer else trace.SpanKind.INTERNAL
        given: Attributes = dict(attributes or {})
        with self._tracer.start_as_current_span(
            name, context=_parent(parent), kind=kind, attributes=given
        ) as span:
            yield _Span(span)

    def traceparent(self) -> str | None:
        span_context = trace.get_current_span().get_span_context()
        return traceparent_of(span_context) if span_context.is_valid else None

    def headers(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    @contextmanager
    def detached(self) -> Iterator[None]:
        token = context.attach(Context())
        try:
            yield
        finally:
            context.detach(token)

    def instrument(self, redis: Any = None, http: Any = None) -> None:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        inside = _ChildrenOnly()
        if redis is not None:
            RedisInstrumentor.instrument_client(client=redis, tracer_provider=inside)
        if http is not None:
            HTTPXClientInstrumentor.instrument_client(
                http, tracer_provider=inside, request_hook=_without_query
            )


#: the span attributes that hold a request's URL (older and current conventions)
URL_ATTRIBUTES = ("http.url", "url.full")


def _without_query(span: trace.Span, request: Any) -> None:
    """A request's span shows its URL without the query (a callback URL's query, say, can
    hold a token): scheme, host, port and path."""
    recorded = getattr(span, "attributes", None) or {}
    url = request.url
    if isinstance(url, tuple):  # (scheme, host, port, target) from httpcore
        scheme, host, port, target = url
        url = httpx.URL(scheme=scheme.decode(), host=host.decode(), port=port,
                        path=target.decode().split("?", 1)[0])  # fmt: skip
    shown = f"{url.scheme}://{url.netloc.decode()}{url.path}"
    for key in URL_ATTRIBUTES:
        if key in recorded:
            span.set_attribute(key, shown)


class _ChildrenOnly(trace.TracerProvider):
    """The global provider's tracers, whose spans exist only under a current span."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _ChildTracer(trace.get_tracer_provider().get_tracer(*args, **kwargs))


class _ChildTracer(trace.Tracer):
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self, name: str, context: Context | None = None, *args: Any, **kwargs: Any
    ) -> trace.Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(name, context, *args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: Context | None = None, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        end_on_exit = kwargs.pop("end_on_exit", True)
        span = self.start_span(name, context, *args, **kwargs)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


def start_worker() -> None:
    """In the worker's main process, before its pool starts: a TracerProvider configured by
    the ``OTEL_*`` variables unless the process has one already (``opentelemetry-instrument``,
    your own code), and Celery's instrumentation."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(worker_provider(os.environ))
    CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]


def worker_provider(environ: Mapping[str, str]) -> trace.TracerProvider:
    """An SDK TracerProvider as OpenTelemetry's variables describe it: ``OTEL_SERVICE_NAME``
    (default ``pollen-worker``), ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, over
    HTTP/protobuf to ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``console``; ``none``), and the SDK's
    own (``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``...)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = _exporters(environ)
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: WORKER_SERVICE}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporters(environ: Mapping[str, str]) -> Sequence[Any]:
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise InvalidSettings(
            f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r} (one of {', '.join(EXPORTERS)})"
        )
    exporters: list[Any] = []
    if "otlp" in names:
        exporters.append(_otlp(environ))
    if "console" in names:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporters.append(ConsoleSpanExporter())
    return exporters


def _otlp(environ: Mapping[str, str]) -> Any:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable)
        if protocol is not None and protocol != "http/protobuf":
            raise InvalidSettings(
                f"{variable}: pollen's worker exports over http/protobuf, got {protocol!r}"
            )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, headers, timeout
