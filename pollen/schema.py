"""The published JSON Schema of a job payload (what producers send to ``pollen.submit``).

It ships inside the package (``pollen/job-request.schema.json``);
a source checkout also keeps the copy in ``schema/`` that other languages' producers link to.
``pollen schema`` writes both and ``pollen schema --check`` fails when either is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from pollen.payloads import job_request_schema

FILENAME = "job-request.schema.json"
PACKAGED_PATH = Path(__file__).resolve().parent / FILENAME


def render() -> str:
    return json.dumps(job_request_schema(), indent=2, sort_keys=True) + "\n"


def repository_path() -> Path | None:
    """``schema/job-request.schema.json`` of the source checkout pollen runs from, if any
    (an installed copy has none)."""
    root = PACKAGED_PATH.parent.parent
    return root / "schema" / FILENAME if (root / "pyproject.toml").is_file() else None


def copies() -> list[Path]:
    """Every file that must hold the rendered schema: the packaged one, then the checkout's."""
    repository = repository_path()
    return [PACKAGED_PATH] if repository is None else [PACKAGED_PATH, repository]


def stale() -> list[Path]:
    """The copies that are missing or differ from what the models render."""
    text = render()
    return [path for path in copies() if not path.is_file() or path.read_text() != text]


def write() -> list[Path]:
    """Write every copy; returns their paths."""
    text = render()
    for path in copies():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return copies()
