"""OpenTelemetry traces: off imports nothing; on, one job's spans form one trace from the
producer's submit to the callback, through a real worker exporting over OTLP/HTTP to a
collector this file runs."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pollen import AsyncPollen, JobStatus, Pollen
from pollen.errors import InvalidSettings
from pollen.local.servers import CallbackReceiver, RedisServer, Worker
from pollen.settings import Settings
from pollen.store import keys
from pollen.tracing import of
from pollen.tracing.otel import parse, worker_provider
from tests.conftest import OWN_BROKER_DB, eventually, settings_from
from tests.helpers import video_request
from tests.test_producer_import import python

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The test process's TracerProvider (set once: OpenTelemetry allows one per process),
    exporting to memory: what a producer app that configured the SDK has."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


def named(exported: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exported.get_finished_spans() if s.name == name]


def ids(traceparent: str) -> tuple[int, int]:
    """(trace id, span id) of a traceparent."""
    found = parse(traceparent)
    assert found is not None, traceparent
    return found.trace_id, found.span_id


def ids_of(span: ReadableSpan | trace.Span) -> tuple[int, int]:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


# --- off: nothing imported --------------------------------------------------------------------

OFF_PROBE = """
import sys
{block}
from pollen import Pollen
from pollen.settings import Settings
from pollen.worker import tasks
from pollen.worker.runtime import build_deps
settings = Settings(redis_url="redis://127.0.0.1:9/0")
Pollen(settings)
build_deps(settings)
print(sorted(m for m in sys.modules if m.startswith(("pollen.tracing.", "opentelemetry.inst"))))
"""
#: as if the tracing extra were not installed
BLOCK = "sys.modules['opentelemetry'] = None"


@pytest.mark.parametrize("block", ["", BLOCK])
def test_tracing_off_imports_nothing_of_opentelemetry(block: str) -> None:
    """Neither the producer nor the worker loads pollen's tracing or an instrumentation, and
    both run without the packages. (redis-py 8 itself imports the OpenTelemetry API when it
    is installed, for its own optional metrics: not pollen's doing.)"""
    done = python(OFF_PROBE.format(block=block))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tracing_on_without_the_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None  # as if not installed\n"
        "from pollen import Pollen\n"
        "from pollen.settings import Settings\n"
        "Pollen(Settings(redis_url='redis://127.0.0.1:9/0', tracing=True))\n"
    )
    done = python(code)
    assert done.returncode == 1
    assert (
        "POLLEN_TRACING: needs opentelemetry: pip install 'pollen-jobs[tracing]'"
        in done.stderr.splitlines()[-1]
    )


def test_the_setting_comes_from_pollen_tracing() -> None:
    assert settings_from({"POLLEN_TRACING": "true"}).tracing is True
    assert settings_from({"POLLEN_TRACING": "false"}).tracing is False
    assert of(Settings()).on is False


@pytest.mark.parametrize("exporters", ["none", "console", "otlp", "otlp,console"])
def test_the_worker_exporters_are_opentelemetrys_names(exporters: str) -> None:
    provider = worker_provider({"OTEL_TRACES_EXPORTER": exporters})
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "pollen-worker"
    provider.shutdown()


@pytest.mark.parametrize(
    ("environ", "named_variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL: "),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ],
)
def test_a_bad_otel_variable_is_refused_by_name(
    environ: dict[str, str], named_variable: str
) -> None:
    with pytest.raises(InvalidSettings, match=named_variable):
        worker_provider(environ)


def test_a_worker_with_a_bad_otel_variable_stops_with_one_line(
    own_env: dict[str, str], tmp_path: Path
) -> None:
    env = own_env | {"POLLEN_TRACING": "true", "OTEL_TRACES_EXPORTER": "zipkin"}
    log = tmp_path / "worker.log"
    with Worker(env, name="bad-otel", concurrency=1, log_file=str(log)) as proc:
        assert proc.proc is not None
        assert proc.proc.wait(timeout=60) == 1
    assert "error: OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'" in log.read_text()


# --- the producer, in-process -----------------------------------------------------------------


@pytest.fixture
def traced_settings(own_env: dict[str, str]) -> Settings:
    """Settings on databases no worker consumes, tracing on: messages stay readable."""
    return settings_from(own_env | {"POLLEN_TRACING": "true"})


def queued_headers(settings: Settings) -> list[dict[str, Any]]:
    broker = redis.Redis.from_url(settings.broker)
    try:
        queued = broker.lrange(settings.queues.submit, 0, -1)[::-1]  # oldest first
        return [json.loads(m)["headers"] for m in queued]
    finally:
        broker.close()


def stored_traceparent(client: Pollen, job_id: str) -> str:
    value = client.store.redis.hget(keys.job(job_id), "traceparent")
    assert isinstance(value, str), value
    return value


def test_submit_continues_the_callers_trace_on_the_record_and_the_message(
    spans: InMemorySpanExporter, traced_settings: Settings
) -> None:
    tracer = trace.get_tracer("the producer app")
    with Pollen(traced_settings) as client, tracer.start_as_current_span("request") as outer:
        job_id = client.submit("runware", video_request([0.2]), tenant="acme")
    with Pollen(traced_settings) as client:
        stored = stored_traceparent(client, job_id)
        other = client.submit("runware", video_request([0.2]))  # no caller span: a new trace
        assert stored_traceparent(client, other) != stored
    [submit, _] = named(spans, "pollen.submit")
    assert submit.parent is not None and submit.parent.span_id == outer.get_span_context().span_id
    assert submit.kind is trace.SpanKind.PRODUCER
    assert dict(submit.attributes or {}) == {
        "pollen.job.id": job_id, "pollen.provider": "runware", "pollen.tenant": "acme",
    }  # fmt: skip
    assert ids(stored) == ids_of(submit)  # the job's steps continue this span
    inside = [
        s for s in spans.get_finished_spans() if s.parent and s.parent.span_id == ids(stored)[1]
    ]
    assert inside and all(
        s.kind is trace.SpanKind.CLIENT for s in inside
    )  # the store's round trips
    # One message: the first job's wake carries its trace; the second job, stored while that
    # wake was on its way, rides on it, its trace kept on its record alone.
    [wake] = queued_headers(traced_settings)
    assert ids(wake["traceparent"]) == ids_of(submit)
    assert job_id in wake["kwargsrepr"]


def test_submit_many_is_one_span_whose_trace_every_job_carries(
    spans: InMemorySpanExporter, traced_settings: Settings
) -> None:
    payloads = [{"provider": "runware", "request": video_request([0.2])} for _ in range(3)]
    with Pollen(traced_settings) as client:
        submitted = client.submit_many([*payloads, {"provider": "nope"}])
        stored = {stored_traceparent(client, j) for j in submitted.accepted}
    [span] = named(spans, "pollen.submit_many")
    assert dict(span.attributes or {}) == {"pollen.jobs": 4}
    assert len(submitted.accepted) == 3
    assert {ids(s) for s in stored} == {ids_of(span)}


@pytest.mark.anyio
async def test_the_async_client_traces_its_submit(
    spans: InMemorySpanExporter, traced_settings: Settings
) -> None:
    async with AsyncPollen(traced_settings) as client:
        job_id = await client.submit("runware", video_request([0.2]))
    [span] = named(spans, "pollen.submit")
    assert (span.attributes or {})["pollen.job.id"] == job_id
    assert any(s.parent and s.parent.span_id == ids_of(span)[1] for s in spans.get_finished_spans())
    [headers] = queued_headers(traced_settings)
    assert ids(headers["traceparent"]) == ids_of(span)


def test_tracing_off_stores_no_context(
    own_env: dict[str, str], spans: InMemorySpanExporter
) -> None:
    settings = settings_from(own_env)
    tracer = trace.get_tracer("the producer app")
    with Pollen(settings) as client, tracer.start_as_current_span("request"):
        job_id = client.submit("runware", video_request([0.2]))
        assert client.store.redis.hget(keys.job(job_id), "traceparent") is None
    assert [s.name for s in spans.get_finished_spans()] == ["request"]
    assert "traceparent" not in queued_headers(settings)[0]


def test_instrumented_clients_trace_only_inside_a_span_and_hide_queries(
    spans: InMemorySpanExporter, redis_server: RedisServer, receiver: CallbackReceiver
) -> None:
    tracing = of(Settings(tracing=True))
    store = redis.Redis.from_url(redis_server.url(OWN_BROKER_DB))
    with httpx.Client() as http:
        tracing.instrument(redis=store, http=http)
        store.ping()  # no span around it: no trace of its own
        http.post(f"{receiver.url}/hook?token=secret")
        assert spans.get_finished_spans() == ()
        with tracing.span("step") as step:
            store.ping()
            http.post(f"{receiver.url}/hook?token=secret")
            step.set({"pollen.job.id": "j1"})
    store.close()
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"PING", "POST", "step"}
    parent = ids_of(finished["step"])[1]
    assert all(s.parent and s.parent.span_id == parent for n, s in finished.items() if n != "step")
    url = (finished["POST"].attributes or {}).get("http.url")
    assert url == f"{receiver.url}/hook", url


# --- one job through a real worker ------------------------------------------------------------


class Collector:
    """An OTLP/HTTP endpoint (``POST /v1/traces``, protobuf) keeping every span it gets."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.add(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    found = {
                        "name": span.name,
                        "service": service.get("service.name"),
                        "trace_id": int.from_bytes(span.trace_id, "big"),
                        "span_id": int.from_bytes(span.span_id, "big"),
                        "parent": int.from_bytes(span.parent_span_id, "big") or None,
                        "attributes": {a.key: a.value.string_value for a in span.attributes},
                        "links": [
                            (int.from_bytes(link.trace_id, "big"),
                             {a.key: a.value.string_value for a in link.attributes})
                            for link in span.links
                        ],
                    }  # fmt: skip
                    with self.lock:
                        self.spans.append(found)

    def find(self, **where: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if all(s[k] == v for k, v in where.items())]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    yield found
    found.close()


@pytest.mark.integration
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_one_jobs_spans_form_one_trace_from_submit_to_callback(
    pool: str,
    spans: InMemorySpanExporter,
    own_env: dict[str, str],
    collector: Collector,
    receiver: CallbackReceiver,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    env = own_env | {
        "POLLEN_TRACING": "true",
        "OTEL_SERVICE_NAME": "pollen-test-worker",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    log = tmp_path / "worker.log"
    with Worker(env, name="traced", concurrency=4, pool=pool, log_file=str(log)) as proc:
        try:
            proc.wait_ready(redis_server.url(OWN_BROKER_DB), timeout=60)
            with Pollen(settings_from(env)) as client:
                job_id = client.submit(
                    "runware", video_request([0.3]), callback_url=f"{receiver.url}/traced"
                )
                assert client.wait(job_id, timeout=30).status is JobStatus.SUCCEEDED
                # after the first job's wake: the payload's job is taken by a wake of its own
                with trace.get_tracer("sender").start_as_current_span("send_task") as sender:
                    send_task_job(client, receiver)
                eventually(lambda: client.store.redis.exists(keys.job(SENT_JOB)), what="its job")
                assert client.wait(SENT_JOB, timeout=30).status is JobStatus.SUCCEEDED
            eventually(lambda: len(collector.find(name="pollen.callback")) == 2, what="callbacks")
        except BaseException:
            print(log.read_text())
            raise
    [submit] = named(spans, "pollen.submit")
    trace_id = ids_of(submit)[0]
    mine = collector.find(trace_id=trace_id)
    names = {s["name"] for s in mine}
    # Celery's span of the submit message, pollen's submit step with the provider's create
    # request, and the callback delivery with its POST: all in the producer's trace
    assert {"run/pollen.submit", "pollen.submit", "pollen.callback", "POST"} <= names, names
    assert all(s["service"] == "pollen-test-worker" for s in mine)
    [step] = [s for s in mine if s["name"] == "pollen.submit"]
    assert step["attributes"] == {
        "pollen.job.id": job_id, "pollen.provider": "runware", "pollen.tenant": "default",
    }  # fmt: skip
    [callback] = [s for s in mine if s["name"] == "pollen.callback"]
    assert callback["attributes"]["pollen.job.id"] == job_id
    posts = [s for s in mine if s["name"] == "POST" and s["parent"] == callback["span_id"]]
    assert [p["attributes"]["http.url"] for p in posts] == [f"{receiver.url}/traced"]
    creates = [s for s in mine if s["name"] == "POST" and s["parent"] != callback["span_id"]]
    assert creates, "the provider's create request is in the job's trace"
    # each poll batch is its own trace, linked to the job's
    polls = collector.find(name="pollen.poll")
    linked = [p for p in polls if (trace_id, {"pollen.job.id": job_id, "pollen.provider":
              "runware", "pollen.tenant": "default"}) in p["links"]]  # fmt: skip
    assert linked and all(p["trace_id"] != trace_id for p in linked)
    # a payload sent by name continues the trace its message carried
    sent = collector.find(trace_id=ids_of(sender)[0])
    # the payload's message, and the wake it sent (which submits the job it stored)
    message, wake = sorted(
        (s for s in sent if s["name"] == "run/pollen.submit"),
        key=lambda s: s["parent"] != ids_of(sender)[1],
    )
    assert message["parent"] == ids_of(sender)[1]
    assert wake["parent"] != ids_of(sender)[1]
    steps = [s["attributes"].get("pollen.job.id") for s in sent if s["name"].startswith("pollen.")]
    assert sorted(steps) == [SENT_JOB, SENT_JOB], sent


SENT_JOB = "sent-by-name"


def send_task_job(client: Pollen, receiver: CallbackReceiver) -> None:
    """What a Celery app whose sends are instrumented does: the context in the headers."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    payload = {"provider": "runware", "request": video_request([0.3]), "job_id": SENT_JOB,
               "callback_url": f"{receiver.url}/sent"}  # fmt: skip
    client.celery.send_task("pollen.submit", kwargs={"job": payload}, headers=headers)


# --- the worker's steps, in-process -----------------------------------------------------------


def test_a_step_joins_the_jobs_trace_from_its_record(
    spans: InMemorySpanExporter, deps: Any, settings: Settings
) -> None:
    """A message that carried no context, or another trace's (a resend, a batch): the
    step's span goes in the job's trace; one that carried the job's: under the current span."""
    from pollen import payloads
    from pollen.worker import traces

    deps.tracing = of(Settings(tracing=True))
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("producer") as producer:
        traceparent = deps.tracing.traceparent()
    job_id, _ = payloads.accept(
        settings, deps.store, {"provider": "runware", "request": video_request([0.2])},
        now=0.0, traceparent=traceparent,
    )  # fmt: skip
    with tracer.start_as_current_span("another trace"):
        with traces.job_span(deps, "resent", [job_id]):
            pass
        with traces.job_span(deps, "pollen.submit", [job_id, "missing"]) as many:
            many.set({"extra": 1})
    carrying = trace.set_span_in_context(producer)
    with (
        tracer.start_as_current_span("carried", context=carrying),
        traces.job_span(deps, "carried step", [job_id]),
    ):
        pass
    [resent] = named(spans, "resent")
    assert ids_of(resent)[0] == ids_of(producer)[0]
    assert resent.parent is not None and resent.parent.span_id == ids_of(producer)[1]
    assert dict(resent.attributes or {}) == {
        "pollen.job.id": job_id, "pollen.provider": "runware", "pollen.tenant": "default",
    }  # fmt: skip
    [submit] = named(spans, "pollen.submit")
    assert dict(submit.attributes or {}) == {"pollen.jobs": 2, "pollen.provider": "runware",
                                             "extra": 1}  # fmt: skip
    [carried] = named(spans, "carried")
    [step] = named(spans, "carried step")
    assert step.parent is not None and step.parent.span_id == ids_of(carried)[1]


def test_tracing_off_a_step_reads_nothing(deps: Any) -> None:
    from pollen.worker import traces

    off = copy.copy(deps)
    off.store = None  # any read would fail
    with traces.job_span(off, "pollen.submit", ["any"]) as span:
        span.link("not a traceparent", {})
        span.set({"pollen.jobs": 1})
