"""The provider interface: build a request, parse the answer. No I/O, no Celery, no Redis.

A dialect is one module with one :class:`Provider` subclass plus a line in
:mod:`pollen.providers` (the registry). The submit and poll steps only see these shapes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import httpx

from pollen.models import GenerationError, GenerationResult, Job
from pollen.settings import Settings

ProviderState = Literal["pending", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class Submission:
    """The provider accepted the task (or had already accepted it earlier)."""

    provider_task_id: str
    envelope: dict[str, Any] | list[Any]
    already_submitted: bool = False


@dataclass(frozen=True)
class Snapshot:
    """A provider's answer to "how is this task doing?", normalised.

    ``state`` is the provider's view of the whole task; the poll step combines it with the
    number of finished generations to decide whether the job is over.
    """

    state: ProviderState
    envelope: dict[str, Any]
    results: list[GenerationResult] = field(default_factory=list)
    errors: list[GenerationError] = field(default_factory=list)
    progress: float | None = None
    cost: float | None = None
    hint_delay: float | None = None


class Provider(ABC):
    """One provider dialect."""

    name: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def submit_request(self, job: Job, task_uuid: str) -> httpx.Request:
        """The HTTP request that creates the provider task."""

    @abstractmethod
    def parse_submit(self, job: Job, task_uuid: str, response: httpx.Response) -> Submission:
        """The provider task id from the create answer; raises from :mod:`pollen.errors`."""

    @abstractmethod
    def status_request(self, job: Job) -> httpx.Request:
        """The HTTP request that asks for the task's status."""

    @abstractmethod
    def parse_status(self, job: Job, response: httpx.Response, now: float) -> Snapshot:
        """The normalised status; raises from :mod:`pollen.errors` on failure answers."""
