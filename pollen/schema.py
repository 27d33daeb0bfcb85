"""The published JSON Schema of a job payload (what producers send to ``pollen.submit``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pollen.models import JobRequest

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "job-request.schema.json"


def job_request_schema() -> dict[str, Any]:
    schema = JobRequest.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }


def render() -> str:
    return json.dumps(job_request_schema(), indent=2, sort_keys=True) + "\n"
