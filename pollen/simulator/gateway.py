"""The path every provider request takes: stats, fault injection, bearer auth, then handler."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pollen.simulator.core import Simulator
from pollen.simulator.dialect import Dialect
from pollen.simulator.faults import Fault, fault_response

Handler = Callable[[Simulator, Request], Awaitable[Response]]


def bearer_ok(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token.strip() == api_key


async def json_body(request: Request) -> Any:
    """The parsed body, or ``None`` when it is not valid JSON."""
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


async def stall(sim: Simulator, seconds: float) -> None:
    """Sleep ``seconds``, cut short when the server is stopping (so shutdown stays quick)."""
    deadline = time.monotonic() + seconds
    while not sim.stopping.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, 0.05))


async def _serve(sim: Simulator, dialect: Dialect, handler: Handler, request: Request) -> Response:
    """Fault injection, auth, then the dialect's handler."""
    fault = sim.faults.take(request.url.path, sim.config)
    if fault is not None:
        sim.stats.fault(fault.kind)
    if fault is not None and not fault.stalls:
        return fault_response(dialect, fault)
    if bearer_ok(request, sim.config.api_key):
        response = await handler(sim, request)
    else:
        response = JSONResponse(dialect.unauthorized, status_code=401)
    if fault is not None:
        await stall(sim, sim.config.timeout_seconds)
    return response


def provider_route(
    sim: Simulator, dialect: Dialect, path: str, handler: Handler, methods: list[str]
) -> Route:
    """A route whose requests are counted, rate-limited, may be faulted, and need the key.

    Over ``rate_limit`` (config), a request is answered 429 before anything else (no fault,
    no auth check, no task change). Every request is counted by kind and time bucket.

    A faulted request (5xx, 429, malformed) is answered without running ``handler``, so it
    changes no task. A ``timeout`` fault runs ``handler`` first, then stalls
    ``timeout_seconds`` before sending its (normal) answer: the request took effect even if
    the client gave up, like a real lost response.
    """

    async def endpoint(request: Request) -> Response:
        sim.stats.request()
        body = await request.body() if dialect.classify_reads_body else b""
        config, now = sim.config, sim.clock()
        limited = not sim.limiter.allow(now, config.rate_limit)
        sim.stats.classified(dialect.classify(request.method, body), now, limited)
        if limited:
            response = fault_response(dialect, Fault("429", config.retry_after))
        else:
            response = await _serve(sim, dialect, handler, request)
        sim.stats.status(response.status_code)
        return response

    return Route(path, endpoint, methods=methods)
