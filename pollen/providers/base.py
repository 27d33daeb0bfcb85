"""The provider interface: build a request, parse the answer. No I/O, no Celery, no Redis.

A dialect is one module with one :class:`Provider` subclass plus a line in
:mod:`pollen.providers` (the registry). The submit and poll steps only see these shapes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

import httpx

from pollen.errors import ProviderNotConfigured
from pollen.models import GenerationError, GenerationResult, Job, JobRequest
from pollen.providers import push as tokens
from pollen.settings import AccountSettings, ProviderAccounts, Settings, pick_account

ProviderState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


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
    provider_status: str | None = None  #: the provider's own status word, for audit and logs


def ratio(value: str | float | None) -> float | None:
    """A progress ratio such as "0.45" as a float in [0, 1]; None if absent or garbage."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    if number is None or math.isnan(number):
        return None
    return min(max(number, 0.0), 1.0)


def percent(value: str | None) -> float | None:
    """A progress like "45%" as 0.45; None if absent or garbage."""
    if value is None:
        return None
    try:
        number = float(value.strip().rstrip("%"))
    except ValueError:
        return None
    return ratio(number / 100)


def progress_hint(job: Job, now: float, progress: float | None) -> float | None:
    """Seconds until done if progress keeps its pace so far (None without a usable progress)."""
    started = job.submitted_at
    if progress is None or started is None or not 0 < progress < 1:
        return None
    return (now - started) * (1 - progress) / progress


def env_var(group: str, name: str) -> str:
    """The environment variable of setting ``group.name``: ``POLLEN_RUNWARE__API_KEY``."""
    config = Settings.model_config
    delimiter = config.get("env_nested_delimiter") or "__"
    return f"{config.get('env_prefix', '')}{group}{delimiter}{name}".upper()


class Provider(ABC):
    """One provider dialect."""

    name: ClassVar[str]
    job_model: ClassVar[type[JobRequest]]  #: the payload a producer sends for this dialect
    #: settings the dialect cannot work without, as (group, field): ``("runware", "api_key")``;
    #: the first names the dialect's settings group (its accounts)
    credentials: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def group(self) -> ProviderAccounts:
        """The dialect's settings group (``settings.runware``, ...)."""
        group = getattr(self.settings, self.credentials[0][0])
        assert isinstance(group, ProviderAccounts)
        return group

    @cached_property
    def accounts(self) -> tuple[AccountSettings, ...]:
        """The provider's accounts, in order (one named ``default`` without a list)."""
        return tuple(self.group.resolved())

    def account(self, job: Job) -> AccountSettings:
        """The account of the job's task: the one it names, else the first."""
        return pick_account(self.accounts, job.account)

    def batch_account(self, jobs: Sequence[Job]) -> AccountSettings:
        """The one account every job of a batched request belongs to."""
        names = {self.account(job).name for job in jobs}
        if len(names) != 1:
            raise ValueError(f"one request cannot go to several accounts: {sorted(names)}")
        return self.account(jobs[0])

    def missing_credentials(self, account: str | None = None) -> list[str]:
        """The settings (environment variables) of API keys that are empty: every account's,
        or only the one of ``account`` (a name; unknown: the first account) when given."""
        accounts = self.accounts if account is None else (pick_account(self.accounts, account),)
        return [self._key_setting(a) for a in accounts if not a.has_key]

    def unsendable(self, job: Job) -> list[str]:
        """The empty key settings that stop the job's create: its account's, or, for a job
        with no account yet (one goes to it at submit), every account's when none has one."""
        if job.account is not None:
            return self.missing_credentials(job.account)
        missing = self.missing_credentials()
        return missing if len(missing) == len(self.accounts) else []

    def usable_accounts(self) -> list[AccountSettings]:
        """The accounts whose key is set (where a job without an account may go)."""
        return [account for account in self.accounts if account.has_key]

    def _key_setting(self, account: AccountSettings) -> str:
        group = self.credentials[0][0]
        if not self.group.accounts:
            return env_var(group, "api_key")
        return f"{env_var(group, 'accounts')} (account {account.name!r}: api_key)"

    def bearer(self, account: AccountSettings) -> str:
        """``Bearer <key>`` of ``account``; :class:`~pollen.errors.ProviderNotConfigured`
        when its key is empty."""
        key = account.api_key.get_secret_value()
        if not key.strip():
            raise ProviderNotConfigured.missing([self._key_setting(account)])
        return f"Bearer {key}"

    @staticmethod
    def base_url(account: AccountSettings) -> str:
        """The account's API root, without a trailing slash."""
        return (account.base_url or "").rstrip("/")

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

    #: the request field in which the provider takes a URL to push to when the task has news
    #: (``pollen ingress``), or None if it cannot push: the submit request then carries
    #: :meth:`push_url` there, unless the producer's request has a URL of its own in it
    push_field: ClassVar[str | None] = None

    def pushes(self, job: Job) -> bool:
        """Whether the provider will push to pollen about ``job`` (pushes on, a provider that
        pushes, and no push URL of the producer's own in the request)."""
        return bool(
            self.push_field
            and self.settings.ingress.public_url
            and self.push_field not in job.request
        )

    def push_url(self, job: Job) -> str | None:
        """Where the provider should push about ``job``, or None (it will not push to us)."""
        public = self.settings.ingress.public_url
        if not (public and job.push_token and self.pushes(job)):
            return None
        return tokens.push_url(public, self.name, job.push_token)

    #: True if a create carries a key the provider recognises when it is sent again (Runware's
    #: ``taskUUID``): a repeated create makes no second task. Without it a create whose answer
    #: never came is ambiguous (see :mod:`pollen.worker.submits`).
    keyed_creates: ClassVar[bool] = False

    #: True if the provider documents a call that cancels (or deletes) a task: the two
    #: methods below. Without it a cancel stops pollen's polling and nothing else.
    supports_cancel: ClassVar[bool] = False

    def cancel_request(self, job: Job) -> httpx.Request:
        """The HTTP request that cancels the job's task at the provider."""
        raise NotImplementedError

    def parse_cancel(self, job: Job, response: httpx.Response) -> str:
        """What the provider did, in a few words; raises from :mod:`pollen.errors`."""
        raise NotImplementedError

    #: True if one request can ask about (or create) many tasks: the four methods below
    supports_batching: ClassVar[bool] = False

    def status_batch_request(self, jobs: Sequence[Job]) -> httpx.Request:
        """One request asking about every job's task."""
        raise NotImplementedError

    def parse_status_batch(
        self, jobs: Sequence[Job], response: httpx.Response, now: float
    ) -> list[Snapshot | Exception]:
        """One snapshot (or this job's own error) per job, in order."""
        raise NotImplementedError

    def submit_batch_request(self, jobs: Sequence[Job]) -> httpx.Request:
        """One request creating every job's task (with ``supports_batching``)."""
        raise NotImplementedError

    def parse_submit_batch(
        self, jobs: Sequence[Job], response: httpx.Response
    ) -> list[Submission | Exception]:
        """One acknowledgement (or this job's own error) per job, in order."""
        raise NotImplementedError
