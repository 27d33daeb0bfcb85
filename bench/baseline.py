"""The baseline: the poller most teams write from the Celery docs.

One Celery task submits the job, one task per poll re-schedules itself with
``self.retry(countdown=...)``, the pool is prefork, results go to a plain Redis hash, and the last
poll POSTs the callback. Broker settings are Celery's defaults (early acks, prefetch multiplier
4, Redis visibility timeout 1 h) plus JSON and ignored results.

The poll schedule is pollen's own pure function (:func:`pollen.backoff.next_delay`) with the
same numbers, so both systems follow exactly the same backoff policy (Retry-After included).

``BENCH_BASELINE_POOLED=0``: a new ``httpx.Client`` for every HTTP call (the classic version);
``=1``: one client per worker process (``baseline-pooled``).

Started by the harness as ``celery -A bench.baseline worker -P prefork -Q baseline``; it reads:

===============================  ==================================================
``BENCH_BASELINE_BROKER``        broker URL (Redis)
``BENCH_BASELINE_STORE``         Redis URL of the result hashes
``BENCH_BASELINE_PROVIDER_URL``  Runware endpoint (the simulator's ``/v1``)
``BENCH_BASELINE_API_KEY``       bearer key
``BENCH_BASELINE_POLICY``        the poll policy as JSON (``PollPolicy``)
``BENCH_BASELINE_POOLED``        ``0`` or ``1``
``BENCH_BASELINE_HTTP_TIMEOUT``  seconds
===============================  ==================================================
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import httpx
import redis
from celery import Celery, Task

from pollen.backoff import PollPolicy, next_delay

QUEUE = "baseline"
TERMINAL = ("succeeded", "failed", "timed_out")

BROKER = os.environ.get("BENCH_BASELINE_BROKER", "redis://127.0.0.1:6379/2")
STORE = os.environ.get("BENCH_BASELINE_STORE", "redis://127.0.0.1:6379/3")
PROVIDER_URL = os.environ.get("BENCH_BASELINE_PROVIDER_URL", "http://127.0.0.1:8765/v1")
API_KEY = os.environ.get("BENCH_BASELINE_API_KEY", "sim-key")
POLICY = PollPolicy.model_validate_json(os.environ.get("BENCH_BASELINE_POLICY", "{}"))
POOLED = os.environ.get("BENCH_BASELINE_POOLED", "0") == "1"
HTTP_TIMEOUT = float(os.environ.get("BENCH_BASELINE_HTTP_TIMEOUT", "30"))

app = Celery("baseline", broker=BROKER)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_process: dict[str, Any] = {}


def key(job_id: str) -> str:
    return f"baseline:job:{job_id}"


def _redis() -> redis.Redis:
    pid = os.getpid()
    if _process.get("redis_pid") != pid:
        _process["redis"] = redis.Redis.from_url(STORE, decode_responses=True)
        _process["redis_pid"] = pid
    client: redis.Redis = _process["redis"]
    return client


def _post(url: str, payload: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST JSON: through a brand-new client, or the process's pooled one."""
    if not POOLED:
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            return client.post(url, json=payload, headers=headers)
    pid = os.getpid()
    if _process.get("http_pid") != pid:
        _process["http"] = httpx.Client(timeout=HTTP_TIMEOUT)
        _process["http_pid"] = pid
    pooled: httpx.Client = _process["http"]
    return pooled.post(url, json=payload, headers=headers)


def _provider(tasks: list[dict[str, Any]]) -> httpx.Response:
    return _post(PROVIDER_URL, tasks, {"Authorization": f"Bearer {API_KEY}"})


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _retryable(response: httpx.Response) -> bool:
    if response.status_code == 429 or response.status_code >= 500:
        return True
    try:
        return not isinstance(response.json(), dict)
    except ValueError:
        return True


def _finish(job_id: str, job: dict[str, str], status: str, **fields: str) -> None:
    """Store the outcome and POST the callback (once: the status guard is a plain read)."""
    store = _redis()
    now = time.time()
    mapping: dict[str, str] = {"status": status, "finished_at": repr(now), **fields}
    store.hset(key(job_id), mapping=mapping)  # type: ignore[arg-type]
    url = job.get("callback_url")
    if not url:
        return
    body = {
        "event": "job.completed",
        "job_id": job_id,
        "status": status,
        "provider_task_id": job.get("task_uuid"),
        "results": json.loads(fields.get("results", "[]")),
        "error": fields.get("error"),
    }
    try:
        answer = _post(url, body)
        state = "delivered" if answer.is_success else f"HTTP {answer.status_code}"
    except httpx.HTTPError as exc:
        state = f"failed: {exc!r}"
    store.hset(key(job_id), "callback_state", state)


def _delay(job: dict[str, str], attempt: int, retry_after: float | None = None) -> float | None:
    elapsed = time.time() - float(job["created_at"])
    return next_delay(POLICY, attempt, elapsed=elapsed, retry_after=retry_after)


def submit(self: Task, job_id: str) -> None:
    """Create the provider task, then start the poll chain."""
    store = _redis()
    job: dict[str, str] = store.hgetall(key(job_id))  # type: ignore[assignment]
    if not job or job.get("status") != "queued":
        return
    task = {**json.loads(job["request"]), "taskUUID": job["task_uuid"], "deliveryMethod": "async"}
    attempt = self.request.retries + 1
    try:
        response = _provider([task])
    except httpx.HTTPError:
        response = None
    if response is None or _retryable(response):
        retry_after = None if response is None else _retry_after(response)
        delay = _delay(job, attempt, retry_after)
        if delay is None:
            _finish(job_id, job, "timed_out", error="never accepted by the provider")
            return
        raise self.retry(countdown=delay)
    errors = response.json().get("errors") or []
    if errors and errors[0].get("code") != "conflictTaskUUID":
        _finish(job_id, job, "failed", error=str(errors[0].get("code")))
        return
    store.hset(key(job_id), mapping={"status": "submitted", "submitted_at": repr(time.time())})
    poll_task.apply_async(args=[job_id], countdown=_delay(job, 0) or 0.0)


def poll(self: Task, job_id: str) -> None:
    """Ask the provider once; finished: store and call back; else ``self.retry(countdown)``."""
    store = _redis()
    job: dict[str, str] = store.hgetall(key(job_id))  # type: ignore[assignment]
    if not job or job.get("status") in TERMINAL:
        return
    attempt = self.request.retries + 1
    store.hincrby(key(job_id), "polls", 1)
    try:
        response = _provider([{"taskType": "getResponse", "taskUUID": job["task_uuid"]}])
    except httpx.HTTPError:
        response = None
    if response is None or _retryable(response):
        retry_after = None if response is None else _retry_after(response)
        delay = _delay(job, attempt, retry_after)
        if delay is None:
            _finish(job_id, job, "timed_out", error="deadline")
            return
        raise self.retry(countdown=delay)
    envelope = response.json()
    mine = job["task_uuid"]
    errors = [e for e in envelope.get("errors") or [] if e.get("taskUUID") in (mine, None)]
    if any(e.get("status") != "error" for e in errors):
        _finish(job_id, job, "failed", error=str(errors[0].get("code")))
        return
    done = [i for i in envelope.get("data") or [] if i.get("status") == "success"]
    if len(done) + len(errors) >= int(job["expected_results"]):
        status = "succeeded" if done else "failed"
        _finish(job_id, job, status, results=json.dumps(done))
        return
    delay = _delay(job, attempt)
    if delay is None:
        _finish(job_id, job, "timed_out", error="deadline")
        return
    raise self.retry(countdown=delay)


submit_task = app.task(bind=True, name="baseline.submit", max_retries=None)(submit)
poll_task = app.task(bind=True, name="baseline.poll", max_retries=None)(poll)


def enqueue(
    store: redis.Redis,
    producer: Celery,
    job_id: str,
    request: dict[str, Any],
    callback_url: str,
) -> None:
    """What the baseline's producer does: write the job hash, send ``baseline.submit``."""
    store.hset(
        key(job_id),
        mapping={
            "status": "queued",
            "request": json.dumps(request),
            "task_uuid": str(uuid.uuid4()),
            "expected_results": str(request.get("numberResults", 1)),
            "callback_url": callback_url,
            "created_at": repr(time.time()),
        },
    )
    producer.send_task("baseline.submit", args=[job_id], queue=QUEUE)
