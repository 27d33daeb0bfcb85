"""``pollen ingress``: the ASGI app providers push to (Starlette, served by uvicorn).

``POST /push/<provider>/<token>`` answers fast and never trusts the body: a verified push for
a job in flight sends one fenced poll of that job (:mod:`pollen.ingress.pushes`). Bad tokens,
unknown or finished jobs, oversized and malformed bodies are answered and counted
(``pollen_pushes_total{provider,outcome}`` on ``GET /metrics``), never acted on.
``GET /healthz`` says the process is up; ``GET /readyz`` that Redis answers. Redis and the
broker are waited for at most ``POLLEN_INGRESS__REDIS_TIMEOUT`` (then 503), so a SIGTERM ends
the process within :func:`pollen.settings.shutdown_grace` even while they are away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pollen import contract, producer
from pollen.async_client import AsyncPollen
from pollen.errors import StoreUnavailable
from pollen.ingress.pushes import PushOutcome, take_push
from pollen.ingress.wakes import WakeBatcher
from pollen.producer import Send
from pollen.providers import REGISTRY
from pollen.providers.push import MAX_TOKEN_LENGTH, redact
from pollen.settings import Settings, get_settings
from pollen.store import effects

log = logging.getLogger("pollen.ingress")

#: HTTP status of each outcome: the provider retries a push answered 5xx, so only a push
#: that could not be handled (Redis or the broker away) gets one
STATUS = {
    "polled": 202,
    "noted": 202,
    "finished": 200,
    "unknown": 404,
    "forged": 404,
    "malformed": 400,
    "oversized": 413,
    "unavailable": 503,
}


class TooLarge(Exception):
    """The body is longer than ``POLLEN_INGRESS__MAX_BODY_BYTES``."""


class Ingress:
    """The app's state: a producer client (its asyncio Redis client and Celery publishing),
    the wake-up batcher, the counters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        timeout = settings.ingress.redis_timeout
        self.client = AsyncPollen(settings, redis_timeout=timeout, publish_timeout=timeout)
        self.store = self.client.store
        self.wakes = WakeBatcher(
            self.client.publish, queue=settings.queues.poll, size=settings.batch_size
        )
        self.registry = CollectorRegistry()
        self.pushes = Counter(
            "pollen_pushes_total",
            "Provider pushes the ingress answered, by outcome",
            ["provider", "outcome"],
            registry=self.registry,
        )

    async def send(self, message: Send) -> None:
        """A push's poll goes with the others of the same moment (:mod:`pollen.ingress.wakes`)."""
        if message.name != contract.POLL:
            await self.client.publish(message)
            return
        for job_id, attempt in message.kwargs["items"]:
            await self.wakes.wake(job_id, attempt)

    async def read_body(self, request: Request) -> bytes:
        """The body, refused as soon as it is longer than the limit (declared or streamed)."""
        limit = self.settings.ingress.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise TooLarge
        return bytes(body)

    async def push(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        token = request.path_params["token"]
        label = provider if provider in REGISTRY else "unknown"
        try:
            body = await self.read_body(request)
            flow = take_push(self.settings, provider, token, body, now=time.time())
            with effects.guard():
                outcome = await producer.adrive(flow, self.store.execute, self.send)
        except TooLarge:
            return self.answer(label, "oversized", token)
        except (StoreUnavailable, OSError) as exc:
            log.warning("push for %s not handled, the provider will retry: %s", label, exc)
            return self.answer(label, "unavailable", token)
        except Exception as exc:  # the broker refused the poll message, say
            log.exception("push for %s not handled: %r", label, exc)
            return self.answer(label, "unavailable", token)
        return self.answer(label, outcome.verdict, token, outcome)

    def answer(
        self, provider: str, verdict: str, token: str, outcome: PushOutcome | None = None
    ) -> Response:
        self.pushes.labels(provider, verdict).inc()
        body: dict[str, Any] = {"outcome": verdict}
        if outcome is not None and outcome.acted:
            body["job_id"] = outcome.job_id
        # a push for a finished job is normal (duplicates, a provider's retry); the rest is not
        level = logging.INFO if verdict in ("polled", "noted", "finished") else logging.WARNING
        if len(token) <= MAX_TOKEN_LENGTH:
            log.log(level, "push %s/%s: %s", provider, redact(token), verdict)
        return JSONResponse(body, status_code=STATUS[verdict])

    async def ready(self, request: Request) -> Response:
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            return JSONResponse({"ready": False, "error": str(exc)}, status_code=503)
        return JSONResponse({"ready": True})

    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


async def _alive(request: Request) -> Response:
    return JSONResponse({"ok": True})


def build_app(settings: Settings | None = None) -> Starlette:
    """The ingress app (``app.state.ingress`` holds its :class:`Ingress`)."""
    ingress = Ingress(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await ingress.client.aclose()

    routes = [
        Route("/push/{provider}/{token}", ingress.push, methods=["POST"]),
        Route("/healthz", _alive, methods=["GET"]),
        Route("/readyz", ingress.ready, methods=["GET"]),
        Route("/metrics", ingress.metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.ingress = ingress
    return app
