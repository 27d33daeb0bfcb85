"""The callback receiver: a tiny ASGI app (uvicorn, its own process) recording receipt times.

``POST /cb/<job_id>`` records ``(time.time() on arrival, job status)`` of a completion callback
(other event types are counted only) and answers 204. ``GET /_recv/count`` answers
``{"received": n, "jobs": jobs with a completion callback}``; ``GET /_recv/dump`` every record;
``POST /_recv/reset`` forgets them. It runs in its own process so the benchmark's
own work (enqueueing, sampling) never delays a receipt.

    python -m bench.receiver --port 8766
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/cb/"
#: where an OTLP/HTTP exporter posts its spans (the receiver as a trace sink)
TRACES = "/v1/traces"


COMPLETED = "job.completed"


def describe(body: bytes) -> tuple[str, str | None]:
    """(event type, job status) of a callback body.

    Both shapes are understood: Standard Webhooks ``{"type": "job.completed", "data": {...}}``
    and a flat ``{"event": "job.completed", "status": ...}`` (the baseline's).
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        return "<not json>", None
    if not isinstance(parsed, dict):
        return "<not an object>", None
    kind = parsed.get("type") or parsed.get("event") or COMPLETED
    data = parsed.get("data")
    status = (data if isinstance(data, dict) else parsed).get("status")
    return str(kind), None if status is None else str(status)


class Recorder:
    """Completion callbacks by job id, ``[[received_at, status], ...]`` in arrival order;
    other events (progress, partial results) are only counted, by type."""

    def __init__(self) -> None:
        self.hits: dict[str, list[list[Any]]] = {}
        self.other: dict[str, int] = {}
        self.received = 0
        self.trace_exports = 0  #: OTLP/HTTP trace exports taken (as a collector: pollen-traced)
        self.trace_bytes = 0

    def record(self, job_id: str, at: float, body: bytes) -> None:
        kind, status = describe(body)
        self.received += 1
        if kind == COMPLETED:
            self.hits.setdefault(job_id, []).append([at, status])
        else:
            self.other[kind] = self.other.get(kind, 0) + 1

    def reset(self) -> None:
        self.hits = {}
        self.other = {}
        self.received = 0


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: int, payload: Any = None) -> None:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    if payload is not None:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(recorder: Recorder) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        arrived = time.time()
        path, method = scope["path"], scope["method"]
        body = await _read_body(receive)
        if method == "POST" and path.startswith(PREFIX):
            recorder.record(path[len(PREFIX) :], arrived, body)
            await _answer(send, 204)
        elif method == "POST" and path == TRACES:
            recorder.trace_exports += 1
            recorder.trace_bytes += len(body)
            await _answer(send, 200)  # an empty ExportTraceServiceResponse
        elif path == "/_recv/count":
            counts = {"received": recorder.received, "jobs": len(recorder.hits)}
            traces = {"trace_exports": recorder.trace_exports, "trace_bytes": recorder.trace_bytes}
            await _answer(send, 200, counts | traces)
        elif path == "/_recv/dump":
            await _answer(send, 200, {"completed": recorder.hits, "other": recorder.other})
        elif path == "/_recv/reset" and method == "POST":
            recorder.reset()
            await _answer(send, 200, {"ok": True})
        elif path == "/healthz":
            await _answer(send, 200, {"ok": True})
        else:
            await _answer(send, 404, {"error": "not found"})

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(Recorder()),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="h11",
        ws="none",
        backlog=4096,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
