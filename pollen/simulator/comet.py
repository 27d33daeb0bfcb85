"""CometAPI Runway wrapper dialect: official-format create routes, ``GET /runwayml/v1/tasks/{id}``.

A new task answers ``task_not_exist`` (HTTP 400) for ``comet_not_exist_seconds``; its lifecycle
(QUEUED for the first 20% of its duration, IN_PROGRESS, then SUCCESS/FAILURE) starts when it
becomes visible.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pollen.simulator.core import Simulator
from pollen.simulator.dialect import Dialect
from pollen.simulator.gateway import (
    Handler,
    api_key,
    json_body,
    over_cap,
    owned_task,
    provider_route,
)
from pollen.simulator.media import media_base, media_url
from pollen.simulator.scripting import Script, parse_script
from pollen.simulator.state import Generation, SimTask
from pollen.simulator.timeline import fraction, iso_offset, slot_index, slot_start


def _wrapper(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "data": None}


def _http_error(status: int, message: str) -> dict[str, Any]:
    codes = {429: "rate_limit_exceeded", 503: "service_unavailable"}
    return _wrapper(codes.get(status, "server_error" if status >= 500 else "error"), message)


DIALECT = Dialect(
    name="comet",
    error_body=_http_error,
    unauthorized=_wrapper("unauthorized", "Invalid token."),
    malformed='{"code": "success", "message": "", "data": {"task_',
)
ACTIONS = {
    "image_to_video": "IMAGE_TO_VIDEO",
    "text_to_image": "TEXT_TO_IMAGE",
    "text_to_video": "TEXT_TO_VIDEO",
}
# status_sequence entries (wrapper or Runway names) -> (wrapper status, nested Runway status)
STATUSES = {
    "QUEUED": ("QUEUED", "PENDING"),
    "PENDING": ("QUEUED", "PENDING"),
    "THROTTLED": ("QUEUED", "THROTTLED"),
    "IN_PROGRESS": ("IN_PROGRESS", "RUNNING"),
    "RUNNING": ("IN_PROGRESS", "RUNNING"),
    "SUCCESS": ("SUCCESS", "SUCCEEDED"),
    "SUCCEEDED": ("SUCCESS", "SUCCEEDED"),
    "FAILURE": ("FAILURE", "FAILED"),
    "FAILED": ("FAILURE", "FAILED"),
    "CANCELLED": ("FAILURE", "CANCELLED"),
}
TERMINAL = ("SUCCESS", "FAILURE")
DEFAULT_FAILURE_CODE = "INTERNAL.BAD_OUTPUT.CODE01"
NOT_EXIST = _wrapper("task_not_exist", "task_not_exist")


@dataclass(frozen=True)
class Phase:
    status: str  # wrapper status
    nested: str  # Runway official status
    since: float  # seconds after visibility this status began
    started: float | None  # seconds after visibility work started, once it has
    progress: float  # 0..1 within IN_PROGRESS


def phase(task: SimTask, elapsed: float) -> Phase:
    """Status ``elapsed`` seconds after the task became visible: THROTTLED (QUEUED in the
    wrapper) for the ``cap_wait`` seconds its key's cap held it back, then its lifecycle."""
    wait: float = task.params.get("cap_wait", 0.0)
    if elapsed < wait:
        return Phase("QUEUED", "THROTTLED", 0.0, None, 0.0)
    inner = _lifecycle(task, elapsed - wait)
    started = None if inner.started is None else inner.started + wait
    return Phase(inner.status, inner.nested, inner.since + wait, started, inner.progress)


def _lifecycle(task: SimTask, elapsed: float) -> Phase:
    duration: float = task.params["duration"]
    sequence: list[str] | None = task.params["status_sequence"]
    if sequence:
        index = slot_index(len(sequence), elapsed, duration)
        status, nested = STATUSES.get(sequence[index], (sequence[index], sequence[index]))
        first_work = [i for i, s in enumerate(sequence) if STATUSES.get(s, (s,))[0] != "QUEUED"]
        started = slot_start(len(sequence), first_work[0], duration) if first_work else None
        if started is not None and started > elapsed:
            started = None
        since = slot_start(len(sequence), index, duration)
        return Phase(status, nested, since, started, fraction(elapsed, 0.0, duration))
    queued_end = 0.2 * duration
    if elapsed < queued_end:
        return Phase("QUEUED", "PENDING", 0.0, None, 0.0)
    if elapsed < duration:
        return Phase(
            "IN_PROGRESS",
            "RUNNING",
            queued_end,
            queued_end,
            fraction(elapsed, queued_end, duration),
        )
    if task.params["fail_reason"] is not None:
        return Phase("FAILURE", "FAILED", duration, queued_end, 1.0)
    return Phase("SUCCESS", "SUCCEEDED", duration, queued_end, 1.0)


def _progress(current: Phase) -> str:
    if current.status in TERMINAL:
        return "100%"
    if current.status == "IN_PROGRESS":
        return f"{int(10 + 80 * current.progress)}%"
    return "0%"


def render(task: SimTask, now: float) -> dict[str, Any]:
    """The ``code/message/data`` wrapper of seed 003 for a visible task at ``now``."""
    params = task.params
    visible_at: float = params["visible_at"]
    current = phase(task, now - visible_at)
    failed = current.nested in ("FAILED", "CANCELLED") or current.status == "FAILURE"
    reason: str = (params["fail_reason"] or "Generation failed.") if failed else ""
    nested: dict[str, Any] = {
        "id": task.id,
        "status": current.nested,
        "createdAt": iso_offset(task.created_at),
    }
    if current.nested == "SUCCEEDED":
        nested["output"] = [media_url(task, f"runway/{task.id}.{params['extension']}")]
    if failed:
        nested["failure"] = reason
        nested["failureCode"] = params["failure_code"]
    started = 0 if current.started is None else int(visible_at + current.started)
    finished = int(visible_at + current.since) if current.status in TERMINAL else 0
    return {
        "code": "success",
        "message": "",
        "data": {
            "task_id": task.id,
            "action": task.task_type,
            "status": current.status,
            "fail_reason": reason,
            "submit_time": int(task.created_at),
            "start_time": started,
            "finish_time": finished,
            "progress": _progress(current),
            "data": nested,
        },
    }


def _check(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return "model is required"
    if not body.get("promptText") and not body.get("promptImage"):
        return "promptText or promptImage is required"
    return None


def _final_error(script: Script) -> str | None:
    if script.status_sequence is not None:
        last = STATUSES.get(script.status_sequence[-1], ("",))[0]
        return script.status_sequence[-1] if last == "FAILURE" else None
    return "FAILURE" if script.fail_reason is not None else None


def _create_for(endpoint: str) -> Handler:
    action = ACTIONS[endpoint]

    async def create(sim: Simulator, request: Request) -> Response:
        body = await json_body(request)
        sim.stats.task(f"comet:{endpoint}")
        problem = _check(body)
        script = Script()
        if problem is None:
            try:
                script = parse_script(body.get("simulate"))
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            return JSONResponse(_wrapper("invalid_request", problem), status_code=400)
        now, key, config = sim.clock(), api_key(request), sim.config
        uid = sim.new_uuid()
        hidden = script.not_exist_seconds
        if hidden is None:
            hidden = config.comet_not_exist_seconds
        duration = script.duration if script.duration is not None else sim.random_duration()
        start = sim.concurrency.schedule(
            key, uid, now, hidden + duration, config.cap_of(key), config.throttles(DIALECT.name)
        )
        if start is None:
            return over_cap(sim, DIALECT)
        wait = start - now
        task = SimTask(
            id=uid,
            dialect=DIALECT.name,
            task_type=action,
            created_at=now,
            request=copy.deepcopy(body),
            generations=[
                Generation(0, duration, start + hidden + duration, _final_error(script), uid)
            ],
            params={
                "visible_at": now + hidden,
                "duration": duration,
                "status_sequence": list(script.status_sequence) if script.status_sequence else None,
                "fail_reason": script.fail_reason,
                "failure_code": script.failure_code or DEFAULT_FAILURE_CODE,
                "extension": "png" if action.endswith("IMAGE") else "mp4",
                "runway_version": request.headers.get("x-runway-version"),
                "media_base": media_base(sim),
                "cap_wait": wait,
            },
            api_key=key,
        )
        sim.store.add(task)
        sim.stats.submit(uid)
        sim.stats.created()
        return JSONResponse({"id": uid})

    return create


async def get_task(sim: Simulator, request: Request) -> Response:
    """``GET /runwayml/v1/tasks/{id}``: 400 ``task_not_exist`` until visible (or never created)."""
    sim.stats.task("comet:getTask")
    task = owned_task(sim, request, request.path_params["task_id"], DIALECT.name)
    now = sim.clock()
    if task is None or now < task.params["visible_at"]:
        return JSONResponse(NOT_EXIST, status_code=400)
    return JSONResponse(render(task, now))


def routes(sim: Simulator) -> list[Route]:
    result = [
        provider_route(sim, DIALECT, f"/runwayml/v1/{endpoint}", _create_for(endpoint), ["POST"])
        for endpoint in ACTIONS
    ]
    result.append(provider_route(sim, DIALECT, "/runwayml/v1/tasks/{task_id}", get_task, ["GET"]))
    return result
