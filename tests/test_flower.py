"""Flower against the session's real broker and worker: it sees pollen's tasks from their events,
shows only the redacted argument reprs (ids, never prompts or callback URLs), and answers
nothing but its health check without the basic-auth credentials it was started with (from
``FLOWER_BASIC_AUTH``, as docker-compose.yml and the Kubernetes manifests give them)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pollen import JobStatus, Pollen
from pollen.local.servers import CallbackReceiver
from tests.conftest import eventually
from tests.flower import Flower
from tests.helpers import video_request

pytestmark = pytest.mark.integration

TASKS = {"pollen.submit", "pollen.poll", "pollen.deliver_callback"}


def test_flower_shows_pollen_tasks_with_redacted_arguments_only(
    flower: Flower, client: Pollen, receiver: CallbackReceiver
) -> None:
    callback = f"{receiver.url}/hooks/flower-secret-path"
    # The finishing poll delivers the callback itself; its first attempt is refused here, so
    # the retry travels as a pollen.deliver_callback message Flower shows too.
    receiver.script("/hooks/flower-secret-path", (500, {}, 0.0))
    jobs = [
        client.submit("runware", video_request([0.3]), callback_url=callback),
        client.submit("runware", video_request([0.2, 0.4]), callback_url=callback),
    ]
    for job_id in jobs:
        assert client.wait(job_id, 20).status is JobStatus.SUCCEEDED

    def seen() -> dict[str, Any] | None:
        tasks = flower.get("/api/tasks").json()
        names = {t["name"] for t in tasks.values()}
        done = all(t["state"] == "SUCCESS" for t in tasks.values() if t["name"] in TASKS)
        return tasks if names >= TASKS and done else None

    tasks: dict[str, Any] = eventually(seen, timeout=20, interval=0.3, what="all task kinds")
    ours = [t for t in tasks.values() if t["name"] in TASKS]
    # the jobs went in wakes (group commit): at least one submit task, naming a job
    submits = [t for t in ours if t["name"] == "pollen.submit"]
    assert submits and any(j in str(t["kwargs"]) for t in submits for j in jobs), submits
    assert len([t for t in ours if t["name"] == "pollen.deliver_callback"]) >= 1
    for task in ours:
        shown = f"{task['args']} {task['kwargs']}"
        assert any(job_id in shown for job_id in jobs), task
        if task["name"] != "pollen.deliver_callback":  # takes the id as its one argument
            assert "job_id=" in task["kwargs"] or "job_ids=" in task["kwargs"], task
        for secret in ("positivePrompt", "a fox running", receiver.url, "flower-secret-path"):
            assert secret not in shown, (secret, task)
    # The worker Flower tracks is the session's, seen through its events.
    assert any(t["worker"].startswith("test-worker@") for t in ours)


def test_flower_requires_its_credentials(flower: Flower) -> None:
    for path in ("/api/workers", "/api/tasks", "/tasks", "/"):
        assert flower.get(path, auth=False).status_code == 401, path
        assert httpx.get(flower.url + path, auth=("ops", "wrong"), timeout=5).status_code == 401
    assert flower.get("/tasks").status_code == 200
    assert flower.get("/api/tasks").status_code == 200
    # The probe path of docker-compose.yml and the Kubernetes manifests needs no credentials.
    health = flower.get("/healthcheck", auth=False)
    assert (health.status_code, health.text) == (200, "OK")
