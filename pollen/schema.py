"""The published JSON Schema of a job payload (what producers send to ``pollen.submit``)."""

from __future__ import annotations

import json
from pathlib import Path

from pollen.payloads import job_request_schema

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "job-request.schema.json"


def render() -> str:
    return json.dumps(job_request_schema(), indent=2, sort_keys=True) + "\n"
