"""useapi.net Runway dialect: ``POST /v1/runwayml/gen3/create``, ``GET /v1/runwayml/tasks/{id}``."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pollen.simulator.core import Simulator
from pollen.simulator.dialect import Dialect
from pollen.simulator.gateway import api_key, json_body, over_cap, owned_task, provider_route
from pollen.simulator.media import media_base, media_url
from pollen.simulator.scripting import Script, parse_script
from pollen.simulator.state import Generation, SimTask
from pollen.simulator.timeline import fraction, iso_ms, ratio_string, slot_index, slot_start

DIALECT = Dialect(
    name="useapi",
    error_body=lambda status, message: {"error": message, "code": status},
    unauthorized={"error": "Unauthorized", "code": 401},
    malformed='{"taskId": "user:1000-runwayml:sim@pollen.invalid-task:',
)
USER_ID = 1000
DEFAULT_EMAIL = "sim@pollen.invalid"
WAITING = ("PENDING", "THROTTLED")
DEFAULT_ERROR = {
    "errorMessage": "An unexpected error occurred while generating the video.",
    "reason": "INTERNAL.BAD_OUTPUT.CODE01",
    "message": "Task failed.",
}


def _bad_request(message: str) -> Response:
    return JSONResponse(DIALECT.error_body(400, message), status_code=400)


@dataclass(frozen=True)
class Phase:
    """The status at some moment and the elapsed second it began."""

    status: str
    since: float
    waiting_until: float | None  # elapsed second RUNNING (or later) starts, if still waiting
    progress: float  # 0..1 within RUNNING


def phase(task: SimTask, now: float) -> Phase:
    """Where a useapi.net task is in its lifecycle at ``now``: THROTTLED for the ``cap_wait``
    seconds its key's cap held it back, then its own lifecycle."""
    elapsed = now - task.created_at
    cancelled = task.params.get("cancelled_after")
    if cancelled is not None and elapsed >= cancelled:
        return Phase("CANCELLED", cancelled, None, 0.0)
    wait: float = task.params.get("cap_wait", 0.0)
    if elapsed < wait:
        until = _lifecycle(task, 0.0).waiting_until
        return Phase("THROTTLED", 0.0, wait + (until or 0.0), 0.0)
    inner = _lifecycle(task, elapsed - wait)
    until = None if inner.waiting_until is None else inner.waiting_until + wait
    return Phase(inner.status, inner.since + wait, until, inner.progress)


def _lifecycle(task: SimTask, elapsed: float) -> Phase:
    duration: float = task.params["duration"]
    throttled: float = task.params["throttled_seconds"]
    sequence: list[str] | None = task.params["status_sequence"]
    total = duration + throttled
    if sequence:
        index = slot_index(len(sequence), elapsed, total)
        status = sequence[index]
        later = [i for i in range(index, len(sequence)) if sequence[i] not in WAITING]
        until = slot_start(len(sequence), later[0], total) if later else total
        since = slot_start(len(sequence), index, total)
        return Phase(status, since, until, fraction(elapsed, 0.0, total))
    pending_end = 0.2 * duration
    running_start = pending_end + throttled
    if elapsed < pending_end:
        return Phase("PENDING", 0.0, running_start, 0.0)
    if elapsed < running_start:
        return Phase("THROTTLED", pending_end, running_start, 0.0)
    if elapsed < total:
        return Phase("RUNNING", running_start, None, fraction(elapsed, running_start, total))
    final = "FAILED" if task.params["fail"] is not None else "SUCCEEDED"
    return Phase(final, total, None, 1.0)


def _error_object(fail: dict[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_ERROR, **(fail or {})}


def _artifact(task: SimTask, finished_at: float) -> dict[str, Any]:
    params = task.params
    asset = task.generations[0].output_id
    return {
        "assetId": f"user:{USER_ID}-runwayml:{params['email']}-asset:{asset}",
        "id": asset,
        "createdAt": iso_ms(finished_at),
        "updatedAt": iso_ms(finished_at),
        "userId": USER_ID,
        "createdBy": USER_ID,
        "taskId": params["taskId"],
        "parentAssetGroupId": params["asset_group_id"],
        "filename": params["name"],
        "url": media_url(task, f"runway/{asset}.mp4"),
        "fileSize": "12345678",
        "isDirectory": False,
        "previewUrls": [media_url(task, f"runway/{asset}.jpg")],
        "private": True,
        "privateInTeam": True,
        "deleted": False,
        "reported": False,
        "metadata": {
            "frameRate": 24,
            "duration": params["options"]["seconds"] + 0.209,
            "dimensions": [1280, 768],
            "size": {"width": 1280, "height": 768},
        },
        "favorite": False,
    }


def render(task: SimTask, now: float) -> dict[str, Any]:
    """The task object of ``GET /v1/runwayml/tasks/{taskId}`` (seed 002) at ``now``."""
    params = task.params
    current = phase(task, now)
    changed_at = task.created_at + current.since
    if current.status == "RUNNING":
        ratio = ratio_string(0.25 + 0.65 * current.progress)
    else:
        ratio = "1" if current.status == "SUCCEEDED" else "0"
    eta = None
    if current.status in WAITING and current.waiting_until is not None:
        eta = round(max(0.0, current.waiting_until - (now - task.created_at)), 2)
    return {
        "taskId": params["taskId"],
        "id": task.id,
        "name": params["name"],
        "image": task.request.get("image"),
        "createdAt": iso_ms(task.created_at),
        "updatedAt": iso_ms(changed_at),
        "taskType": task.task_type,
        "options": copy.deepcopy(params["options"]),
        "status": current.status,
        "error": _error_object(params["fail"]) if current.status == "FAILED" else None,
        "progressText": None,
        "progressRatio": ratio,
        "estimatedTimeToStartSeconds": eta,
        "artifacts": [_artifact(task, changed_at)] if current.status == "SUCCEEDED" else [],
        "sharedAsset": None,
    }


def _options(body: dict[str, Any], name: str, seed: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": name,
        "seconds": body.get("seconds", 5),
        "text_prompt": body["text_prompt"],
        "seed": seed,
        "exploreMode": bool(body.get("exploreMode", True)),
        "watermark": bool(body.get("watermark", False)),
        "enhance_prompt": bool(body.get("enhance_prompt", False)),
        "resolution": body.get("resolution", "720p"),
        "assetGroupName": "Generative Video",
        "recordingEnabled": True,
    }
    init_image = body.get("init_image", body.get("image"))
    if init_image is not None:
        options["init_image"] = init_image
    return options


def _final_error(script: Script) -> str | None:
    if script.status_sequence is not None:
        last = script.status_sequence[-1]
        return last if last in ("FAILED", "CANCELLED") else None
    return "FAILED" if script.fail is not None else None


def _check(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    prompt = body.get("text_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "Parameter text_prompt is required."
    if body.get("seconds", 5) not in (5, 10) or isinstance(body.get("seconds"), bool):
        return "Parameter seconds valid values: 5, 10."
    return None


async def create(sim: Simulator, request: Request) -> Response:
    """``POST /v1/runwayml/gen3/create``: 200 with the new task object (status PENDING)."""
    body = await json_body(request)
    sim.stats.task("useapi:create")
    problem = _check(body)
    if problem is not None:
        return _bad_request(problem)
    try:
        script = parse_script(body.get("simulate"))
    except ValueError as exc:
        return _bad_request(str(exc))
    now, key = sim.clock(), api_key(request)
    uid = sim.new_uuid()
    duration = script.duration if script.duration is not None else sim.random_duration()
    total = duration + script.throttled_seconds
    config = sim.config
    start = sim.concurrency.schedule(
        key, uid, now, total, config.cap_of(key), config.throttles(DIALECT.name)
    )
    if start is None:
        return over_cap(sim, DIALECT)
    email = body.get("email") if isinstance(body.get("email"), str) else DEFAULT_EMAIL
    seed = body["seed"] if isinstance(body.get("seed"), int) else sim.random_int(4_294_967_294)
    name = f"Gen-3 Alpha {seed}, {body['text_prompt']}"
    total += start - now
    model = str(body.get("model", "gen3"))
    task = SimTask(
        id=uid,
        dialect=DIALECT.name,
        task_type="gen3a_turbo" if "turbo" in model else "gen3a",
        created_at=now,
        request=copy.deepcopy(body),
        generations=[Generation(0, total, now + total, _final_error(script), sim.new_uuid())],
        params={
            "taskId": f"user:{USER_ID}-runwayml:{email}-task:{uid}",
            "email": email,
            "name": name,
            "options": _options(body, name, seed),
            "asset_group_id": sim.new_uuid(),
            "duration": duration,
            "throttled_seconds": script.throttled_seconds,
            "status_sequence": list(script.status_sequence) if script.status_sequence else None,
            "fail": script.fail,
            "media_base": media_base(sim),
            "cap_wait": start - now,
        },
        api_key=key,
    )
    sim.store.add(task, aliases=[task.params["taskId"]])
    sim.stats.submit(uid)
    sim.stats.created()
    if isinstance(body.get("replyUrl"), str):
        done = now + total
        reply_ref = body.get("replyRef")
        sim.push(body["replyUrl"], done,
                 lambda at: {**render(task, max(at, done)), "replyRef": reply_ref})  # fmt: skip
    return JSONResponse(render(task, now))


async def get_task(sim: Simulator, request: Request) -> Response:
    """``GET /v1/runwayml/tasks/{taskId}`` (the full ``taskId``, or its bare uuid ``id``);
    ``DELETE`` on the same path cancels it."""
    if request.method == "DELETE":
        return await delete_task(sim, request)
    sim.stats.task("useapi:getTask")
    task = owned_task(sim, request, request.path_params["task_id"], DIALECT.name)
    if task is None:
        return JSONResponse(DIALECT.error_body(404, "Not found."), status_code=404)
    return JSONResponse(render(task, sim.clock()))


async def delete_task(sim: Simulator, request: Request) -> Response:
    """``DELETE /v1/runwayml/tasks/{taskId}``: a task still running is cancelled (its status
    becomes CANCELLED); a finished one stays as it is. 204 either way, 404 if unknown."""
    sim.stats.task("useapi:deleteTask")
    task = owned_task(sim, request, request.path_params["task_id"], DIALECT.name)
    if task is None:
        return JSONResponse(DIALECT.error_body(404, "Not found."), status_code=404)
    now = sim.clock()
    if phase(task, now).status not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        task.params["cancelled_after"] = now - task.created_at
        task.generations[0].finished_at = now
        task.generations[0].error = "CANCELLED"
        sim.concurrency.finish(task.api_key, task.id, now)
    return Response(status_code=204)


def routes(sim: Simulator) -> list[Route]:
    return [
        provider_route(sim, DIALECT, "/v1/runwayml/gen3/create", create, ["POST"]),
        provider_route(
            sim, DIALECT, "/v1/runwayml/tasks/{task_id:path}", get_task, ["GET", "DELETE"]
        ),
    ]
