"""pollen: submit long-running generative-AI jobs, poll them with backoff, keep the results.

What producers import is listed in ``__all__``.
"""

from pollen.client import Pollen
from pollen.errors import (
    InvalidJob,
    JobNotFound,
    PollenError,
    StoreUnavailable,
    WaitTimeout,
)
from pollen.models import GenerationError, GenerationResult, Job, JobRequest, JobStatus

__all__ = [
    "GenerationError",
    "GenerationResult",
    "InvalidJob",
    "Job",
    "JobNotFound",
    "JobRequest",
    "JobStatus",
    "Pollen",
    "PollenError",
    "StoreUnavailable",
    "WaitTimeout",
]
__version__ = "0.1.0"
