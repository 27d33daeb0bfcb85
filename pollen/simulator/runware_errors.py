"""Runware error items: the shapes of seeds 000/004 and the generation-failure message table."""

from __future__ import annotations

from typing import Any

DOCUMENTATION = "https://runware.ai/docs/platform/errors"

GENERATION_ERRORS: dict[str, str] = {
    "timeoutProvider": (
        "The external provider did not respond within the timeout window. "
        "The request was automatically terminated."
    ),
    "providerContentModerated": (
        "The external provider flagged the content as inappropriate and refused to process it."
    ),
    "invalidProviderContent": (
        "The external provider rejected the content of the request as invalid or unsafe."
    ),
    "providerError": "The external provider returned an error while processing the request.",
}


def generation_error(code: str, task_uuid: str) -> dict[str, Any]:
    """A failed generation, exactly like the ``errors`` item of seed 000."""
    message = GENERATION_ERRORS.get(code, f"The task failed with error '{code}'.")
    return {
        "code": code,
        "status": "error",
        "message": message,
        "documentation": DOCUMENTATION,
        "taskUUID": task_uuid,
    }


def parameter_error(
    code: str, message: str, parameter: str, type_: str, task_uuid: Any
) -> dict[str, Any]:
    """A refused task, like seed 004's failed example (``taskUUID`` echoed when a string)."""
    item: dict[str, Any] = {
        "code": code,
        "message": message,
        "parameter": parameter,
        "type": type_,
        "documentation": DOCUMENTATION,
    }
    if isinstance(task_uuid, str):
        item["taskUUID"] = task_uuid
    return item


def missing(parameter: str, type_: str, task_uuid: Any) -> dict[str, Any]:
    message = f"Missing required parameter '{parameter}'."
    return parameter_error("missingParameter", message, parameter, type_, task_uuid)


def task_not_found(task_uuid: str) -> dict[str, Any]:
    message = (
        "No task found for the provided 'taskUUID'. The taskUUID may not exist or may belong "
        "to a different organization."
    )
    return parameter_error("taskNotFound", message, "taskUUID", "string", task_uuid)


def conflict(task_uuid: str) -> dict[str, Any]:
    message = (
        "The provided 'taskUUID' is already in use by another task. "
        "Each task must have a unique taskUUID."
    )
    return parameter_error("conflictTaskUUID", message, "taskUUID", "string", task_uuid)


def request_error(code: str, message: str) -> dict[str, Any]:
    """An error about the whole request (no task to blame)."""
    return {"code": code, "message": message, "documentation": DOCUMENTATION}


UNAUTHORIZED: dict[str, Any] = {
    "errors": [
        request_error("invalidApiKey", "Invalid API key. Get one at https://my.runware.ai/signup")
    ]
}


def http_error_body(status: int, message: str) -> dict[str, Any]:
    if status == 429:
        code = "rateLimitExceeded"
    elif status == 503:
        code = "serviceUnavailable"
    elif status >= 500:
        code = "internalServerError"
    else:
        code = f"http{status}"
    return {"data": [], "errors": [request_error(code, message)]}
