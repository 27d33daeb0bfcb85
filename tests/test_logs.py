"""Worker logs: JSON lines with the job's id, provider, provider task id and attempt."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pollen import JobStatus, Pollen
from pollen.local.servers import Worker
from pollen.worker import logs
from tests.conftest import eventually
from tests.helpers import video_request


def test_json_lines_carry_the_bound_job() -> None:
    record = logging.LogRecord(
        "pollen.worker.steps", logging.INFO, __file__, 1, "hello %s", ("x",), None
    )
    logs.clear()  # other tests ran steps in this thread
    logs.bind(job_id="j1", provider="runware", attempt=3)
    try:
        logs.ContextFilter().filter(record)
        line = json.loads(logs.JsonFormatter().format(record))
        text = logs.TextFormatter().format(record)
    finally:
        logs.clear()
    assert line["message"] == "hello x"
    assert (line["job_id"], line["provider"], line["attempt"]) == ("j1", "runware", 3)
    assert "[job_id=j1 provider=runware attempt=3] hello x" in text


@pytest.mark.integration
def test_worker_log_lines_about_a_job_carry_its_context(worker: Worker, client: Pollen) -> None:
    job_id = client.submit("runware", video_request([0.3, 0.6]))
    job = client.wait(job_id, timeout=20)
    assert job.status is JobStatus.SUCCEEDED
    assert worker.log_file is not None
    log_file = worker.log_file

    def read() -> list[dict[str, Any]]:
        text = Path(log_file).read_text()
        return [json.loads(raw) for raw in text.splitlines() if raw.startswith("{")]

    def finished_line() -> bool:
        return any(
            line.get("job_id") == job_id and line["message"] == "job succeeded" for line in read()
        )

    eventually(finished_line, what="the job's final log line")  # written just after the status
    lines = read()
    mine = [line for line in lines if line.get("job_id") == job_id]
    steps = [
        line for line in mine if line["logger"] in ("pollen.worker.submits", "pollen.worker.batch")
    ]
    messages = " | ".join(line["message"] for line in steps)
    assert "submitted (accepted)" in messages
    assert "new result(s)" in messages
    assert "job succeeded" in messages
    for line in steps:
        assert line["provider"] == "runware"
        assert line["provider_task_id"] == job.provider_task_id
    assert any("attempt" in line for line in steps)
    assert all(line["level"] in {"debug", "info", "warning", "error", "critical"} for line in lines)
