"""Runware dialect: ``POST /v1`` with a JSON array of tasks (inference, getResponse, details)."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pollen.simulator import runware_errors as err
from pollen.simulator.core import Simulator
from pollen.simulator.dialect import Dialect
from pollen.simulator.gateway import api_key, json_body, over_cap, provider_route
from pollen.simulator.media import media_base, media_url
from pollen.simulator.state import Generation, SimTask


def classify(method: str, body: bytes) -> str:
    """``status`` for getResponse arrays, ``submit`` for inference tasks, else ``other``.

    A cheap byte search (no JSON parsing): it runs for every request, rate-limited ones too.
    """
    if b'"getResponse"' in body:
        return "status"
    if b'Inference"' in body:
        return "submit"
    return "other"


DIALECT = Dialect(
    name="runware",
    error_body=err.http_error_body,
    unauthorized=err.UNAUTHORIZED,
    malformed='{"data": [{"taskType": "getResponse", "taskUUID": "',
    classify=classify,
    classify_reads_body=True,
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
_KINDS = {"videoInference": ("video", "mp4", 0.18), "audioInference": ("audio", "mp3", 0.0065)}
_IMAGE = ("image", "jpg", 0.0013)
MAX_RESULTS = 20


@dataclass
class TaskAnswer:
    """What one task object contributes to the response; ``ok`` means it counts for HTTP 200."""

    data: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    ok: bool = False


def _refused(item: dict[str, Any]) -> TaskAnswer:
    return TaskAnswer(errors=[item])


def _check_uuid(task: dict[str, Any]) -> dict[str, Any] | None:
    value = task.get("taskUUID")
    if value is None:
        return err.missing("taskUUID", "string", None)
    if not isinstance(value, str) or not _UUID.match(value):
        message = "Invalid value for 'taskUUID' parameter. It must be a valid UUID v4 string."
        return err.parameter_error("invalidTaskUUID", message, "taskUUID", "string", value)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_inference(task: dict[str, Any]) -> dict[str, Any] | None:
    uid = task["taskUUID"]
    model = task.get("model")
    if model is None:
        return err.missing("model", "string", uid)
    if not isinstance(model, str) or not model.strip():
        message = "Invalid value for 'model' parameter. It must be a model AIR identifier."
        return err.parameter_error("invalidModel", message, "model", "string", uid)
    prompt = task.get("positivePrompt")
    if prompt is None:
        return err.missing("positivePrompt", "string", uid)
    if not isinstance(prompt, str) or not prompt.strip():
        message = "Invalid value for 'positivePrompt' parameter. It must be a non-empty string."
        return err.parameter_error(
            "invalidPositivePrompt", message, "positivePrompt", "string", uid
        )
    count = task.get("numberResults", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_RESULTS:
        message = f"Invalid value for 'numberResults' parameter. It must be 1..{MAX_RESULTS}."
        return err.parameter_error("invalidNumberResults", message, "numberResults", "integer", uid)
    return _check_simulate(task.get("simulate"), uid)


def _check_simulate(simulate: Any, uid: str) -> dict[str, Any] | None:
    if simulate is None:
        return None
    bad = not isinstance(simulate, dict)
    if not bad:
        durations = simulate.get("durations", [])
        errors = simulate.get("errors", [])
        bad = not (
            isinstance(durations, list)
            and all(_number(d) and d >= 0 for d in durations)
            and isinstance(errors, list)
            and all(e is None or isinstance(e, str) for e in errors)
        )
    if bad:
        message = (
            "Invalid 'simulate' object: expected {'durations': [seconds >= 0, ...], "
            "'errors': [code or null, ...]}."
        )
        return err.parameter_error("invalidSimulate", message, "simulate", "object", uid)
    return None


def _generations(sim: Simulator, task: dict[str, Any], now: float) -> list[Generation]:
    simulate = task.get("simulate") or {}
    durations: list[float] = simulate.get("durations") or []
    errors: list[str | None] = simulate.get("errors") or []
    result = []
    for index in range(task.get("numberResults", 1)):
        if durations:
            duration = float(durations[min(index, len(durations) - 1)])
        else:
            duration = sim.random_duration()
        error = errors[index] if index < len(errors) else None
        result.append(Generation(index, duration, now + duration, error, sim.new_uuid()))
    return result


def _inference(sim: Simulator, task: dict[str, Any], now: float, key: str) -> TaskAnswer:
    if isinstance(task.get("taskUUID"), str):
        sim.stats.submit(task["taskUUID"])
    problem = _check_uuid(task)
    if problem is not None:
        return _refused(problem)
    uid: str = task["taskUUID"]
    if sim.store.exists(uid):
        return _refused(err.conflict(uid))
    problem = _check_inference(task)
    if problem is not None:
        return _refused(problem)
    record = SimTask(
        id=uid,
        dialect=DIALECT.name,
        task_type=task["taskType"],
        created_at=now,
        request=copy.deepcopy(task),
        generations=_generations(sim, task, now),
        params={
            "deliveryMethod": task.get("deliveryMethod", "sync"),
            "media_base": media_base(sim),
        },
        api_key=key,
    )
    if not sim.store.add(record):
        return _refused(err.conflict(uid))
    cap = sim.config.cap_of(key)
    sim.concurrency.schedule(key, uid, now, record.finished_at - now, cap, wait=False)
    sim.stats.created()
    if isinstance(task.get("webhookURL"), str):
        _plan_pushes(sim, record, task["webhookURL"])
    return TaskAnswer(data=[{"taskType": record.task_type, "taskUUID": uid}], ok=True)


def _plan_pushes(sim: Simulator, task: SimTask, url: str) -> None:
    """Runware's webhook: each generation's own item (or its error) once it is finished."""
    for gen in task.generations:

        def body(now: float, gen: Generation = gen) -> dict[str, Any]:
            at = max(now, gen.finished_at)
            if gen.status(at) == "error" and gen.error is not None:
                return {"errors": [err.generation_error(gen.error, task.id)]}
            return {"data": [_result_item(task, gen, at)]}

        sim.push(url, gen.finished_at, body)


def _result_item(task: SimTask, gen: Generation, now: float) -> dict[str, Any]:
    base: dict[str, Any] = {"taskType": task.task_type, "taskUUID": task.id}
    status = gen.status(now)
    if status == "processing":
        return {**base, "status": "processing"}
    kind, ext, cost = _KINDS.get(task.task_type, _IMAGE)
    if kind == "image":  # Runware's outputFormat: JPG (the default), PNG or WEBP
        ext = str(task.request.get("outputFormat") or ext).lower()
    return {
        **base,
        "status": "success",
        f"{kind}UUID": gen.output_id,
        f"{kind}URL": media_url(task, f"{kind}/{gen.output_id}.{ext}"),
        "cost": cost,
    }


def envelope_parts(task: SimTask, now: float) -> TaskAnswer:
    """Per generation: processing/success items in ``data``, failures in ``errors``."""
    outcome = TaskAnswer(ok=True)
    for gen in task.generations:
        if gen.status(now) == "error" and gen.error is not None:
            outcome.errors.append(err.generation_error(gen.error, task.id))
        else:
            outcome.data.append(_result_item(task, gen, now))
    return outcome


def _lookup(sim: Simulator, task: dict[str, Any], key: str) -> SimTask | TaskAnswer:
    problem = _check_uuid(task)
    if problem is not None:
        return _refused(problem)
    found = sim.store.get(task["taskUUID"], DIALECT.name)
    if found is not None and found.api_key != key:
        sim.concurrency.foreign(key)
        found = None
    return found if found is not None else _refused(err.task_not_found(task["taskUUID"]))


def _get_response(sim: Simulator, task: dict[str, Any], now: float, key: str) -> TaskAnswer:
    found = _lookup(sim, task, key)
    return found if isinstance(found, TaskAnswer) else envelope_parts(found, now)


def _task_details(sim: Simulator, task: dict[str, Any], now: float, key: str) -> TaskAnswer:
    found = _lookup(sim, task, key)
    if isinstance(found, TaskAnswer):
        return found
    parts = envelope_parts(found, now)
    envelope: dict[str, Any] = {}
    if parts.data:
        envelope["data"] = parts.data
    if parts.errors:
        envelope["errors"] = parts.errors
    item = {
        "taskType": "getTaskDetails",
        "taskUUID": found.id,
        "request": [copy.deepcopy(found.request)],
        "response": envelope,
    }
    return TaskAnswer(data=[item], ok=True)


def process_task(sim: Simulator, task: Any, now: float, key: str) -> TaskAnswer:
    """Answer one task object of the request array, made with API key ``key``."""
    if not isinstance(task, dict):
        sim.stats.task("<invalid>")
        return _refused(err.request_error("invalidRequestBody", "Each task must be an object."))
    task_type = task.get("taskType")
    sim.stats.task(task_type if isinstance(task_type, str) else "<missing>")
    if not isinstance(task_type, str) or not task_type:
        return _refused(err.missing("taskType", "string", task.get("taskUUID")))
    if task_type.endswith("Inference"):
        return _inference(sim, task, now, key)
    if task_type == "getResponse":
        return _get_response(sim, task, now, key)
    if task_type == "getTaskDetails":
        return _task_details(sim, task, now, key)
    message = f"Unsupported task type '{task_type}'."
    return _refused(
        err.parameter_error(
            "unsupportedTaskType", message, "taskType", "string", task.get("taskUUID")
        )
    )


def _creates(body: list[Any]) -> int:
    return sum(
        1
        for task in body
        if isinstance(task, dict) and str(task.get("taskType", "")).endswith("Inference")
    )


async def handle(sim: Simulator, request: Request) -> Response:
    """``POST /v1``: 200 if any task was accepted/known, else 400 (errors only).

    When the inference tasks of the array do not all fit under the key's cap, the whole
    request is answered 429 and nothing in it is done (see ``gateway.over_cap``).
    """
    body = await json_body(request)
    if not isinstance(body, list) or not body:
        message = "The request body must be a non-empty JSON array of task objects."
        payload = {"data": [], "errors": [err.request_error("invalidRequestBody", message)]}
        return JSONResponse(payload, status_code=400)
    now, key = sim.clock(), api_key(request)
    creates = _creates(body)
    if creates and not sim.concurrency.room(key, now, sim.config.cap_of(key), creates):
        return over_cap(sim, DIALECT)
    total = TaskAnswer()
    for task in body:
        outcome = process_task(sim, task, now, key)
        total.data.extend(outcome.data)
        total.errors.extend(outcome.errors)
        total.ok = total.ok or outcome.ok
    content: dict[str, Any] = {"data": total.data}
    if total.errors:
        content["errors"] = total.errors
    return JSONResponse(content, status_code=200 if total.ok else 400)


def routes(sim: Simulator) -> list[Route]:
    return [provider_route(sim, DIALECT, "/v1", handle, ["POST"])]
