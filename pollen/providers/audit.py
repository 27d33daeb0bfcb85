"""Asking a provider for its own record of a task (Runware's ``getTaskDetails``)."""

from __future__ import annotations

from typing import Any

from pollen.errors import ProviderRejected
from pollen.models import Job
from pollen.providers.http import send
from pollen.providers.runware import Runware
from pollen.settings import Settings
from pollen.store.connection import http_client


def provider_task_details(settings: Settings, job: Job) -> dict[str, Any]:
    """The provider's ``getTaskDetails`` item for the job's task (request + response)."""
    if job.provider != Runware.name or not job.provider_task_id:
        raise ProviderRejected(f"{job.provider} offers no task details for job {job.id}")
    runware = Runware(settings)
    with http_client(settings) as http:
        response = send(http, runware.task_details_request(job))
        return runware.parse_task_details(response).model_dump(exclude_unset=True)
