"""pollen's error tree. Every exception pollen raises on purpose is one of these.

    PollenError
    ├── InvalidJob                  producer input refused before anything is stored or enqueued
    │   └── IdempotencyConflict         ... a job_id already used with a different request
    ├── JobNotFound                 no job with that id (never created, or expired)
    │   ├── JobLost                     ... and the store is known to have lost its data
    │   └── JobRejected                 ... a worker refused the payload sent with that id
    ├── InvalidSettings             a POLLEN_* variable is wrong (the message names it)
    ├── StoreUnavailable            Redis is unreachable or refused a write (read-only, or full)
    ├── WaitTimeout                 wait() gave up before the job ended
    ├── CallbackNotDelivered        one callback delivery attempt did not deliver (its task fails)
    ├── CopyError                   re-hosting a result's file did not work this time
    │   ├── CopyUnavailable             storage or the result's host failed for now: retried
    │   └── CopyRefused                 it never will (too large, 404, a refused address)
    └── ProviderError               something went wrong talking to a provider
        ├── RetryableProviderError  try again later, within the job's deadline
        │   ├── ProviderUnavailable     5xx, timeout, connection error
        │   ├── RateLimited             429; carries retry_after seconds when the provider sent it
        │   └── ProviderProtocolError   an answer we cannot parse (garbage, wrong shape)
        └── TerminalProviderError   the job cannot succeed; carries the provider's code and message
            ├── ProviderRejected        400/401/403-class answers, refused task parameters
            ├── ProviderTaskNotFound    the provider does not know the task (any more)
            └── ProviderNotConfigured   pollen's own settings make the request impossible

HTTP statuses and httpx exceptions become these in exactly one place per provider
(`pollen.providers.http`); the poll and submit steps only ever see this tree.
"""

from __future__ import annotations


class PollenError(Exception):
    """Base class of every error pollen raises on purpose."""


class InvalidSettings(PollenError, ValueError):
    """The environment's settings are wrong; the message names each variable, in one line."""


class InvalidJob(PollenError, ValueError):
    """Producer input was refused; nothing was stored or enqueued."""

    def __init__(self, message: str, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class IdempotencyConflict(InvalidJob):
    """The job_id was already used with a different request (the same request is the same job)."""


class JobNotFound(PollenError, KeyError):
    """No job with that id exists (it was never created or its record expired)."""

    def __str__(self) -> str:
        return f"job not found: {self.args[0]!s}"


class JobLost(JobNotFound):
    """No job with that id, and the job store is known to have lost its data."""

    def __str__(self) -> str:
        return f"job not found: {self.args[0]!s} ({self.args[1]!s})"


class JobRejected(JobNotFound):
    """No job with that id: a worker refused the ``pollen.submit`` payload that named it
    (sent by name, e.g. ``send_task``); ``reason`` and ``error`` say why."""

    def __init__(self, job_id: str, reason: str, error: str) -> None:
        super().__init__(job_id, reason, error)
        self.job_id, self.reason, self.error = job_id, reason, error

    def __str__(self) -> str:
        return f"job {self.job_id} was rejected by a worker ({self.reason}): {self.error}"


class StoreUnavailable(PollenError):
    """Redis is unreachable, or could not take a write (read-only replica, out of memory)."""


class WaitTimeout(PollenError, TimeoutError):
    """The job did not reach a terminal state within the wait timeout."""


class CallbackNotDelivered(PollenError):
    """A callback delivery attempt did not deliver; it is retried on its schedule, or is dead."""


class CopyError(PollenError):
    """Copying a generation's file to pollen's storage (re-hosting) did not work this time."""


class CopyUnavailable(CopyError):
    """The storage or the host of the result URL failed for now; the copy is tried again."""


class CopyRefused(CopyError):
    """The copy can never work (the file is too large or gone, its address is refused)."""


class ProviderError(PollenError):
    """A provider call failed."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0])


class RetryableProviderError(ProviderError):
    """A failure worth retrying with backoff, within the job's deadline."""


class ProviderUnavailable(RetryableProviderError):
    """5xx, timeout or connection error."""


class RateLimited(RetryableProviderError):
    """HTTP 429; retry_after is the provider's Retry-After in seconds, if any."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429
    ) -> None:
        super().__init__(message, code="rateLimited", status=status)
        self.retry_after = retry_after


class ProviderProtocolError(RetryableProviderError):
    """The provider answered something that is not the documented shape."""


class TerminalProviderError(ProviderError):
    """The job cannot succeed; code and message come from the provider."""


class ProviderRejected(TerminalProviderError):
    """The provider refused the request (400/401/403-class)."""


class ProviderTaskNotFound(TerminalProviderError):
    """The provider does not know the task id."""


class ProviderNotConfigured(TerminalProviderError):
    """The request cannot be sent as configured: an API key not set, a header value HTTP refuses.

    Never retried: no provider outage is involved, only a worker's configuration.
    """

    @classmethod
    def missing(cls, variables: list[str]) -> ProviderNotConfigured:
        """The dialect's required settings ``variables`` (environment names) are empty."""
        verb = "is" if len(variables) == 1 else "are"
        return cls(f"{', '.join(variables)} {verb} not set", code="missingCredentials")
