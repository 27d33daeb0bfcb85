"""The path every provider request takes: stats, fault injection, bearer auth, then handler."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pollen.simulator.core import Simulator
from pollen.simulator.dialect import Dialect
from pollen.simulator.faults import Fault, fault_response
from pollen.simulator.state import SimTask

Handler = Callable[[Simulator, Request], Awaitable[Response]]


def owned_task(sim: Simulator, request: Request, task_id: str, dialect: str) -> SimTask | None:
    """The task ``task_id`` names if the request's key created it: another account's task is
    not found (as at the providers), and the lookup is counted as ``foreign`` for that key."""
    key = api_key(request)
    task = sim.store.get(task_id, dialect)
    if task is not None and task.api_key != key:
        sim.concurrency.foreign(key)
        return None
    return task


def over_cap(sim: Simulator, dialect: Dialect) -> Response:
    """The 429 of a create past its key's cap.

    The providers' pages do not show this body; by default it is the dialect's own 429 body
    (the same as its rate-limit answer), which is what a client can rely on (the status and
    ``Retry-After``). ``cap_bodies[dialect]`` in the config replaces it.
    """
    config = sim.config
    body = config.cap_bodies.get(dialect.name)
    if body is None:
        message = "Too many concurrent tasks for this API key. Retry when one has finished."
        body = dialect.error_body(429, message)
    headers = {"Retry-After": str(config.retry_after)}
    return JSONResponse(body, status_code=429, headers=headers)


def bearer_key(request: Request) -> str | None:
    """The bearer token of ``request``, if it sends one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def api_key(request: Request) -> str:
    """The (valid) key a provider handler's request was made with."""
    key: str = request.state.api_key
    return key


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


async def _serve(
    sim: Simulator, dialect: Dialect, handler: Handler, request: Request, kind: str
) -> Response:
    """Fault injection, auth (counted per key), then the dialect's handler."""
    fault = sim.faults.take(request.url.path, sim.config)
    if fault is not None:
        sim.stats.fault(fault.kind)
    if fault is not None and not fault.stalls:
        return fault_response(dialect, fault)
    key = bearer_key(request)
    if key is not None and sim.config.key_valid(key):
        request.state.api_key = key
        sim.concurrency.request(key, kind)
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

    With ``create_gap`` set, creates (``submit`` requests) are answered one at a time
    (:mod:`pollen.simulator.pacing`).

    The handler finds the request's key in ``api_key(request)``.
    """

    async def endpoint(request: Request) -> Response:
        sim.stats.request()
        body = await request.body() if dialect.classify_reads_body else b""
        config, now = sim.config, sim.clock()
        limited = not sim.limiter.allow(now, config.rate_limit)
        kind = dialect.classify(request.method, body)
        sim.stats.classified(kind, now, limited)
        if limited:
            response = fault_response(dialect, Fault("429", config.retry_after))
        elif kind == "submit" and config.create_gap > 0:
            serve = partial(_serve, sim, dialect, handler, request, kind)
            response = await sim.pacer.paced(request, config.create_gap, serve)
        else:
            response = await _serve(sim, dialect, handler, request, kind)
        sim.stats.status(response.status_code)
        return response

    return Route(path, endpoint, methods=methods)
