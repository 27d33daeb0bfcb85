"""The dashboard's ASGI app: routes, templates (package data), static files, and one
:class:`pollen.AsyncPollen` for the app's lifetime, which gives up on an unreachable Redis or
broker after ``POLLEN_DASHBOARD__REDIS_TIMEOUT`` (a page answers 503)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from pollen import AsyncPollen, StoreUnavailable
from pollen.capacity import Capacity
from pollen.dashboard import present, views
from pollen.dashboard.security import Credentials, Protect, csrf_key, csrf_token
from pollen.settings import Settings
from pollen.store import effects
from pollen.store.connection import Master, master, queue_depths

HERE = Path(__file__).resolve().parent


def templates() -> Jinja2Templates:
    found = Jinja2Templates(directory=HERE / "templates")
    found.env.filters.update(iso=present.iso, span=present.span, pretty=present.pretty)
    return found


async def unavailable(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(f"the job store is unavailable: {exc}\n", status_code=503)


def build_app(settings: Settings, credentials: Credentials | None) -> Starlette:
    """The dashboard for the store ``settings`` name; ``credentials`` None: no auth (local use
    only: the CLI asks for ``--no-auth`` explicitly)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = settings.dashboard.redis_timeout
        app.state.pollen = AsyncPollen(settings, redis_timeout=timeout, publish_timeout=timeout)
        try:
            yield
        finally:
            await app.state.pollen.aclose()

    routes = [
        Route("/", views.jobs, name="jobs"),
        Route("/jobs/{job_id}", views.job, name="job"),
        Route("/jobs/{job_id}/cancel", views.cancel, methods=["POST"], name="cancel"),
        Route("/jobs/{job_id}/replay", views.replay, methods=["POST"], name="replay"),
        Route("/overview", views.overview, name="overview"),
        Route("/api/counts", views.counts, name="counts"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Protect, credentials=credentials)],
        exception_handlers={StoreUnavailable: unavailable},
        lifespan=lifespan,
    )
    q = settings.queues
    app.state.templates = templates()
    # paths, not absolute URLs: right behind any proxy or port-forward
    app.state.templates.env.globals["path_for"] = lambda name, **params: str(
        app.url_path_for(name, **params)
    )
    app.state.csrf_key = csrf_key(credentials)
    app.state.csrf_token = csrf_token(app.state.csrf_key)
    app.state.queue_names = [q.submit, q.poll, q.callbacks]
    app.state.caps = Capacity.of(settings).capped_caps()  # the slots the overview shows
    app.state.queue_depths = _depth_reader(
        settings.broker, app.state.queue_names, settings.dashboard.redis_timeout, master(settings)
    )
    return app


def _depth_reader(
    broker: str, queues: list[str], timeout: float, master: Master | None = None
) -> Callable[[], list[int | None]]:
    """Queue lengths, read from the broker (Redis, or RabbitMQ by passive declares); unknown
    (None) when the broker does not answer within about ``timeout`` seconds."""
    read = queue_depths(broker, queues, timeout, master)

    def guarded() -> list[int | None]:
        try:
            with effects.guard():
                return list(read())
        except StoreUnavailable:
            return [None] * len(queues)

    return guarded
