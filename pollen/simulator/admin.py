"""Introspection and control routes (no auth, never faulted or limited): ``/healthz``, ``/_sim/*``.

``/_sim/finished`` is the bulk view of every task's generation finish times (one request for
100k tasks); ``/_sim/rate`` the provider requests per one-second window (see ``ratelimit``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pollen.simulator import comet, useapi
from pollen.simulator.core import Simulator
from pollen.simulator.faults import Fault, ScriptedFault, check_kind
from pollen.simulator.gateway import json_body
from pollen.simulator.state import SimTask


def _error(message: str, status: int = 400, **extra: Any) -> Response:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _provider_status(task: SimTask, now: float) -> str | None:
    if task.dialect == "useapi":
        return useapi.phase(task, now).status
    if task.dialect == "comet":
        if now < task.params["visible_at"]:
            return "task_not_exist"
        return comet.phase(task, now - task.params["visible_at"]).status
    return None


def task_view(task: SimTask, now: float) -> dict[str, Any]:
    """The simulator's view of one task (``GET /_sim/tasks/{id}``)."""
    generations = [
        {
            "index": gen.index,
            "duration": gen.duration,
            "finished_at": gen.finished_at,
            "status": gen.status(now),
            "error": gen.error,
        }
        for gen in task.generations
    ]
    statuses = {g["status"] for g in generations}
    overall = "success"
    if "processing" in statuses:
        overall = "processing"
    elif statuses == {"error"}:
        overall = "error"
    return {
        "id": task.id,
        "dialect": task.dialect,
        "task_type": task.task_type,
        "api_key": task.api_key,
        "created_at": task.created_at,
        "now": now,
        "status": overall,
        "provider_status": _provider_status(task, now),
        "generations": generations,
        "request": task.request,
        "params": task.params,
    }


_LABEL_FIELDS = ("positivePrompt", "text_prompt", "promptText")


def _label(request: Any) -> str | None:
    """The task's prompt (whichever field its dialect uses), to tie tasks to client jobs."""
    if isinstance(request, dict):
        for name in _LABEL_FIELDS:
            value = request.get(name)
            if isinstance(value, str):
                return value
    return None


def finished_view(tasks: list[SimTask], now: float) -> dict[str, Any]:
    """Finish times of many tasks at once (``GET /_sim/finished``)."""
    return {
        "now": now,
        "tasks": {
            task.id: {
                "created_at": task.created_at,
                "finished_at": [gen.finished_at for gen in task.generations],
                "errors": [gen.error for gen in task.generations],
                "label": _label(task.request),
            }
            for task in tasks
        },
    }


def _scripted(body: Any, default_retry_after: int) -> list[ScriptedFault]:
    if not isinstance(body, dict) or not isinstance(body.get("faults"), list):
        raise ValueError("body must be an object with a 'faults' list")
    retry_after = body.get("retry_after", default_retry_after)
    prefix = body.get("path_prefix", "")
    path = body.get("path")
    if not isinstance(retry_after, int) or isinstance(retry_after, bool) or retry_after < 0:
        raise ValueError("retry_after must be an integer >= 0")
    if not isinstance(prefix, str) or not (path is None or isinstance(path, str)):
        raise ValueError("path_prefix and path must be strings")
    kinds = [check_kind(str(kind)) for kind in body["faults"]]
    return [ScriptedFault(Fault(kind, retry_after), prefix, path) for kind in kinds]


class Admin:
    """Handlers of the admin routes, bound to one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def stats(self, request: Request) -> Response:
        keys = self.sim.concurrency.snapshot(self.sim.clock())
        stats = {
            **self.sim.stats.snapshot(),
            **self.sim.pacer.counts(),
            "pushes": self.sim.pusher.counts(),
            "keys": keys,
        }
        return JSONResponse(stats)

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.sim.config.model_dump())

    async def patch_config(self, request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            return _error("body must be a JSON object")
        try:
            return JSONResponse(self.sim.update_config(body).model_dump())
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_context=False, include_input=False)
            return _error("invalid config", details=details)
        except ValueError as exc:
            return _error(str(exc))

    async def faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.sim.faults.clear()
        elif request.method == "POST":
            try:
                items = _scripted(await json_body(request), self.sim.config.retry_after)
            except ValueError as exc:
                return _error(str(exc))
            self.sim.faults.enqueue(items)
        pending = self.sim.faults.pending()
        return JSONResponse({"queued": len(pending), "faults": pending})

    async def task(self, request: Request) -> Response:
        found = self.sim.store.get(request.path_params["task_id"])
        if found is None:
            return _error("task not found", status=404)
        return JSONResponse(task_view(found, self.sim.clock()))

    async def finished(self, request: Request) -> Response:
        tasks = self.sim.store.all(request.query_params.get("dialect"))
        return JSONResponse(finished_view(tasks, self.sim.clock()))

    async def rate(self, request: Request) -> Response:
        return JSONResponse(self.sim.stats.timeline.view(self.sim.config.rate_limit))

    async def reset(self, request: Request) -> Response:
        self.sim.reset()
        return JSONResponse({"ok": True})


def routes(sim: Simulator) -> list[Route]:
    admin = Admin(sim)
    return [
        Route("/healthz", admin.healthz, methods=["GET"]),
        Route("/_sim/stats", admin.stats, methods=["GET"]),
        Route("/_sim/config", admin.get_config, methods=["GET"]),
        Route("/_sim/config", admin.patch_config, methods=["PATCH"]),
        Route("/_sim/faults", admin.faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/tasks/{task_id:path}", admin.task, methods=["GET"]),
        Route("/_sim/finished", admin.finished, methods=["GET"]),
        Route("/_sim/rate", admin.rate, methods=["GET"]),
        Route("/_sim/reset", admin.reset, methods=["POST"]),
    ]
