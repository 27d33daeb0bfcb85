"""Turning a producer's payload into a validated :class:`JobRequest` (or a clear refusal),
and storing it as a queued job (:func:`accept`, :func:`accept_many_op`).

The accepted shape is the union of every registered dialect's job model, told apart by
``provider``; its JSON Schema is what ``pollen schema`` publishes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from pollen import tracing
from pollen.addresses import AddressPolicy, UnsafeCallbackURL
from pollen.errors import IdempotencyConflict, InvalidJob
from pollen.models import DEFAULT_TENANT, JobRequest, JobStatus, PollOverrides
from pollen.providers import REGISTRY
from pollen.providers.runware import REQUEST_TAGS
from pollen.settings import Settings
from pollen.store import keys, lifecycle
from pollen.store.effects import Op
from pollen.store.replication import Replicas
from pollen.store.sync import Store

MAX_NESTING = 8
#: how alike (difflib ratio, case ignored) an unknown request field must be to a typed one to be
#: refused as its misspelling: positivPrompt is 0.96 like positivePrompt, while Runware's
#: referenceVideos, a real parameter, is 0.80 like referenceImages and passes through
TYPO_CUTOFF = 0.85
#: how alike an unknown top-level job field must be to a job field to be named in its refusal:
#: every unknown job field is refused, so this only picks the hint (tenent is 0.83 like tenant)
HINT_CUTOFF = 0.6
KNOWN_PROVIDERS: tuple[str, ...] = tuple(REGISTRY)

_models = tuple(provider.job_model for provider in REGISTRY.values())
# A discriminated union built from the registry: adding a dialect adds its variant here.
JOB_REQUEST: TypeAdapter[JobRequest] = TypeAdapter(
    Annotated[Union[_models], Field(discriminator="provider")]  # type: ignore[arg-type]  # noqa: UP007
)


def _too_deep(value: Any, limit: int) -> bool:
    """True if containers nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level + 1 > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return False


def _field_loc(loc: Any, provider: str) -> tuple[Any, ...]:
    """A validation error's location as the payload's field path: without the unions' tags
    (the provider's job variant, a Runware request variant), which are not fields."""
    parts = list(loc)
    if parts and parts[0] == provider:
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "request" and parts[1] in REQUEST_TAGS:
        parts = [parts[0], *parts[2:]]
    return tuple(parts)


def _field_path(error: Any) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(payload)"


def _invalid(details: list[dict[str, Any]]) -> InvalidJob:
    """The refusal naming the first bad field (and how many more there are)."""
    first = details[0]
    message = f"{_field_path(first)}: {first['msg']}"
    if len(details) > 1:
        message += f" (and {len(details) - 1} more)"
    return InvalidJob(message, errors=details)


def _misspelt(model: BaseModel, loc: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """The fields of ``model`` (and of the models in it) that no model types but that are
    close to one it does: each one's location and the field it was probably meant as.

    Fields far from every typed one pass through: providers add parameters pollen does not type.
    """
    fields = type(model).model_fields
    typed = {
        spelling.lower(): spelling
        for name, field in fields.items()
        for spelling in (name, field.alias)
        if spelling
    }
    for extra in model.model_extra or {}:
        close = difflib.get_close_matches(extra.lower(), typed, n=1, cutoff=TYPO_CUTOFF)
        if close:
            yield (*loc, extra), typed[close[0]]
    for name in fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _misspelt(value, (*loc, name))


def _check_spelling(request: BaseModel) -> None:
    details = [
        {"type": "unknown_field", "loc": loc, "msg": f"unknown field; did you mean {meant!r}?"}
        for loc, meant in _misspelt(request, ("request",))
    ]
    if details:
        raise _invalid(details)


def _hinted(error: dict[str, Any], provider: str) -> dict[str, Any]:
    """An unknown top-level job field close to a job field (``callbak_url``) as a did-you-mean,
    like a misspelt request field; other errors as they are."""
    loc = error["loc"]
    if error["type"] != "extra_forbidden" or len(loc) != 1:
        return error
    fields = REGISTRY[provider].job_model.model_fields
    close = difflib.get_close_matches(str(loc[0]).lower(), fields, n=1, cutoff=HINT_CUTOFF)
    if not close:
        return error
    return {**error, "type": "unknown_field", "msg": f"unknown field; did you mean {close[0]!r}?"}


def _check_request_size(request: Any, max_bytes: int) -> None:
    if _too_deep(request, MAX_NESTING):
        raise InvalidJob(f"request: nested deeper than {MAX_NESTING} levels")
    try:
        size = len(json.dumps(request, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"request: not JSON-serialisable ({exc})") from exc
    if size > max_bytes:
        raise InvalidJob(f"request: {size} bytes of JSON, more than the {max_bytes} allowed")


def parse_job_request(payload: Any, *, max_request_bytes: int) -> JobRequest:
    """Validate a producer payload, raising :class:`InvalidJob` that names the bad field."""
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise InvalidJob(f"job payload is not valid JSON: {exc}") from exc
        except RecursionError:
            raise InvalidJob("job payload is nested too deeply to parse") from None
    if not isinstance(payload, dict):
        raise InvalidJob(f"job payload must be a JSON object, got {type(payload).__name__}")
    provider = payload.get("provider")
    if provider is None:
        raise InvalidJob("provider: field required (one of: " + ", ".join(KNOWN_PROVIDERS) + ")")
    if provider not in KNOWN_PROVIDERS:
        known = ", ".join(KNOWN_PROVIDERS)
        raise InvalidJob(f"provider: unknown provider {provider!r} (known: {known})")
    _check_request_size(payload.get("request"), max_request_bytes)
    try:
        job = JOB_REQUEST.validate_python(payload)
    except ValidationError as exc:
        details = [
            _hinted({**error, "loc": _field_loc(error["loc"], provider)}, provider)
            for error in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise _invalid(details) from None
    _check_spelling(job.request)
    return job


def job_request_schema() -> dict[str, Any]:
    """The JSON Schema of a job payload (every provider's variant)."""
    schema = JOB_REQUEST.json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pollen job request",
        **schema,
    }


@dataclass(frozen=True)
class Prepared:
    """A validated job, ready to be stored: its record, TTL and request fingerprint."""

    job_id: str
    fields: dict[str, Any]
    ttl: int
    fingerprint: str


#: the namespace of job ids derived from a message's task id (:func:`message_job_id`)
MESSAGE_JOBS = uuid.UUID("5f1c0b6e-3c1d-4d52-9a55-6b3b1c2a7e10")


def message_job_id(task_id: str) -> str:
    """The id of a job whose payload came without one, from the id of the message that
    brought it: every copy of that message (a redelivery, a dead worker's message sent again)
    is the same job, never a second one."""
    return uuid.uuid5(MESSAGE_JOBS, task_id).hex


def prepare(
    settings: Settings,
    payload: Any,
    *,
    now: float,
    default_id: str | None = None,
    traceparent: str | None = None,
) -> Prepared:
    """Validate a producer payload and build the record of a new queued job (no I/O); a
    payload without ``job_id`` gets ``default_id``, or a new random id. ``traceparent``: the
    trace the job's steps continue (tracing on).

    Raises :class:`InvalidJob` (naming the bad field) or :class:`UnsafeCallbackURL`.
    """
    request = parse_job_request(payload, max_request_bytes=settings.max_request_bytes)
    try:
        policy = (request.poll or PollOverrides()).apply(settings.poll, request.deadline)
    except ValidationError as exc:
        raise InvalidJob(f"poll: {exc.errors()[0]['msg']}") from None
    # a wait longer than park_after is parked in Redis: only shorter ones are held
    limit = settings.visibility_timeout - settings.task_time_limit
    if settings.redis_broker and min(policy.max_delay, settings.park_after) >= limit:
        raise InvalidJob(
            f"poll.max_delay: must be below {limit}s (the broker visibility timeout, "
            "POLLEN_VISIBILITY_TIMEOUT, less the task time limit)"
        )
    if request.callback_url:
        try:
            AddressPolicy(settings.callbacks.allow_cidrs).check_url(str(request.callback_url))
        except UnsafeCallbackURL as exc:
            raise UnsafeCallbackURL(f"callback_url: {exc}") from None
    job_id = request.job_id or default_id or uuid.uuid4().hex
    task = request.request.model_dump(mode="json", exclude_unset=False, exclude_none=True)
    fields = {
        "id": job_id,
        "provider": request.provider,
        "status": JobStatus.QUEUED.value,
        "created_at": repr(now),
        "updated_at": repr(now),
        "deadline_at": repr(now + policy.deadline),
        "task_uuid": str(uuid.uuid4()),
        "expected_results": str(request.expected_results),
        "request": task,
        # only what differs from PollPolicy's defaults: they are read back the same
        "policy": policy.model_dump_json(exclude_defaults=True),
        "events": request.events,
        "tenant": request.tenant or DEFAULT_TENANT,
        "priority": str(request.priority or 0),
        "submit_attempts": "0",
        "polls": "0",
        "poll_seq": "0",
    }
    # optional parts only when given: an absent field reads as empty (store.decode)
    if request.callback_url:
        fields["callback_url"] = str(request.callback_url)
    if request.callback_secret:
        fields["callback_secret"] = request.callback_secret
    if request.python_callback:
        fields["python_callback"] = request.python_callback.model_dump()
    if request.metadata:
        fields["metadata"] = request.metadata
    if traceparent:
        fields[tracing.FIELD] = traceparent
    ttl = int(policy.deadline) + settings.job_ttl + keys.EXTRA_TTL
    return Prepared(job_id, fields, ttl, fingerprint(request))


def accept(
    settings: Settings,
    store: Store,
    payload: Any,
    *,
    now: float,
    default_id: str | None = None,
    traceparent: str | None = None,
) -> tuple[str, bool]:
    """Validate a producer payload and store it as a queued job.

    Returns ``(job_id, created)``; ``created`` is False when a job with that id already
    exists with the same request (the id is an idempotency key). Raises :class:`InvalidJob`
    before writing anything, and :class:`IdempotencyConflict` when the id exists with a
    different request.
    """
    job_id, created, _ = accept_ready(
        settings, store, payload, now=now, default_id=default_id, traceparent=traceparent,
        ready=False,
    )  # fmt: skip
    return job_id, created


def accept_ready_op(
    settings: Settings,
    payload: Any,
    replicas: Replicas,
    *,
    now: float,
    default_id: str | None = None,
    traceparent: str | None = None,
    ready: bool = True,
) -> Op[tuple[str, bool, bool | None]]:
    """:func:`accept` as a store operation (:mod:`pollen.store.effects`), the new job made
    ready for a wake message on the submit queue when ``ready`` (group commit:
    ``Pollen.submit``, or a plain ``send_task`` payload a worker took). Returns ``(job_id,
    created, wake)``: ``wake`` is None when the job is not in the ready set (it existed, or
    not ``ready``), else True when the caller must send the wake message. The job is on
    ``replicas`` when it returns (:mod:`pollen.store.replication`)."""
    job = prepare(settings, payload, now=now, default_id=default_id, traceparent=traceparent)
    created, wake = yield from lifecycle.create_one(
        (job.job_id, job.fields, job.ttl, job.fingerprint),
        now=now,
        submit_grace=settings.submit_grace,
        replicas=replicas,
        ready=settings.queues.submit if ready else None,
    )
    if isinstance(created, IdempotencyConflict):
        raise created
    return job.job_id, created, (wake if ready and created else None)


def accept_ready(
    settings: Settings,
    store: Store,
    payload: Any,
    *,
    now: float,
    default_id: str | None = None,
    traceparent: str | None = None,
    ready: bool = True,
) -> tuple[str, bool, bool | None]:
    """:func:`accept_ready_op`, run on ``store``."""
    op = accept_ready_op(
        settings, payload, store.replicas, now=now, default_id=default_id,
        traceparent=traceparent, ready=ready,
    )  # fmt: skip
    return store.run(op)


def accept_many_op(
    settings: Settings,
    payloads: Sequence[Any],
    replicas: Replicas,
    *,
    now: float,
    traceparent: str | None = None,
) -> Op[list[tuple[str, bool] | InvalidJob]]:
    """:func:`accept` for many payloads, stored in one round trip (a store operation:
    :mod:`pollen.store.effects`).

    Each payload is judged on its own: one answer per payload, in order, either
    ``(job_id, created)`` or the :class:`InvalidJob` (or :class:`IdempotencyConflict`) that
    refused it; a refused payload writes nothing and refuses no other. The same ``job_id``
    twice in one call is refused the second time.
    """
    answers: list[tuple[str, bool] | InvalidJob] = []
    ready: list[tuple[int, Prepared]] = []
    seen: set[str] = set()
    for index, payload in enumerate(payloads):
        try:
            # a microsecond apart: each job's creation time (its listing position) is its own
            job = prepare(settings, payload, now=now + index * 1e-6, traceparent=traceparent)
        except InvalidJob as exc:
            answers.append(exc)
            continue
        if job.job_id in seen:
            answers.append(InvalidJob(f"job_id: {job.job_id!r} appears twice in this batch"))
            continue
        seen.add(job.job_id)
        ready.append((index, job))
        answers.append((job.job_id, False))
    created = yield from lifecycle.create_many(
        [(job.job_id, job.fields, job.ttl, job.fingerprint) for _, job in ready],
        now=now,
        submit_grace=settings.submit_grace,
        replicas=replicas,
    )
    for (index, job), outcome in zip(ready, created, strict=True):
        answers[index] = outcome if isinstance(outcome, InvalidJob) else (job.job_id, outcome)
    return answers


#: request fields the first release's models had without a value (dumped as null): they stay
#: in the fingerprint, so a job_id submitted before typed requests keeps its idempotency key
LEGACY_NULLS: dict[str, frozenset[str]] = {
    "runware": frozenset({"positivePrompt"}),
    "comet_runway": frozenset({"promptText", "promptImage"}),
}


def fingerprint(request: JobRequest) -> str:
    """sha256 of the validated request's canonical JSON: what makes two submits the same job.

    Optional request fields left empty are left out, so a field a later release types does
    not change the key of a request that does not use it.
    """
    document = request.model_dump(mode="json")
    # fields later than the first keys: out when unset (the default tenant named is unset)
    if document.get("tenant") in (None, DEFAULT_TENANT):
        del document["tenant"]
    if not document.get("priority"):
        del document["priority"]
    keep = LEGACY_NULLS.get(request.provider, frozenset())
    document["request"] = {
        k: v for k, v in document["request"].items() if v is not None or k in keep
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
