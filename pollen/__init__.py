"""pollen: submit long-running generative-AI jobs, poll them with backoff, keep the results.

What producers import is listed in ``__all__``. Names load lazily, so ``pollen.simulator`` or
``pollen.backoff`` do not pull in Celery.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pollen.async_client import AsyncPollen as AsyncPollen
    from pollen.client import Cancellation as Cancellation
    from pollen.client import Pollen as Pollen
    from pollen.client import Submitted as Submitted
    from pollen.errors import IdempotencyConflict as IdempotencyConflict
    from pollen.errors import InvalidJob as InvalidJob
    from pollen.errors import JobLost as JobLost
    from pollen.errors import JobNotFound as JobNotFound
    from pollen.errors import JobRejected as JobRejected
    from pollen.errors import PollenError as PollenError
    from pollen.errors import StoreUnavailable as StoreUnavailable
    from pollen.errors import WaitTimeout as WaitTimeout
    from pollen.models import GenerationError as GenerationError
    from pollen.models import GenerationResult as GenerationResult
    from pollen.models import Job as Job
    from pollen.models import JobRequest as JobRequest
    from pollen.models import JobStatus as JobStatus
    from pollen.models import StoredCopy as StoredCopy
    from pollen.requests import CometRunwayRequest as CometRunwayRequest
    from pollen.requests import RunwareImageRequest as RunwareImageRequest
    from pollen.requests import RunwareVideoRequest as RunwareVideoRequest
    from pollen.requests import UseapiRunwayRequest as UseapiRunwayRequest
    from pollen.store.listing import JobPage as JobPage

_EXPORTS = {
    "AsyncPollen": "pollen.async_client",
    "Cancellation": "pollen.client",
    "Pollen": "pollen.client",
    "Submitted": "pollen.client",
    "IdempotencyConflict": "pollen.errors",
    "InvalidJob": "pollen.errors",
    "JobNotFound": "pollen.errors",
    "JobLost": "pollen.errors",
    "JobRejected": "pollen.errors",
    "PollenError": "pollen.errors",
    "StoreUnavailable": "pollen.errors",
    "WaitTimeout": "pollen.errors",
    "GenerationError": "pollen.models",
    "GenerationResult": "pollen.models",
    "Job": "pollen.models",
    "JobRequest": "pollen.models",
    "JobStatus": "pollen.models",
    "StoredCopy": "pollen.models",
    "JobPage": "pollen.store.listing",
    "CometRunwayRequest": "pollen.requests",
    "RunwareImageRequest": "pollen.requests",
    "RunwareVideoRequest": "pollen.requests",
    "UseapiRunwayRequest": "pollen.requests",
}

__all__ = [
    "AsyncPollen",
    "Cancellation",
    "CometRunwayRequest",
    "GenerationError",
    "GenerationResult",
    "IdempotencyConflict",
    "InvalidJob",
    "Job",
    "JobLost",
    "JobNotFound",
    "JobPage",
    "JobRejected",
    "JobRequest",
    "JobStatus",
    "Pollen",
    "PollenError",
    "RunwareImageRequest",
    "RunwareVideoRequest",
    "StoreUnavailable",
    "StoredCopy",
    "Submitted",
    "UseapiRunwayRequest",
    "WaitTimeout",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pollen' has no attribute {name!r}")
