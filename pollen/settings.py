"""pollen's one settings object, read from ``POLLEN_*`` environment variables.

Nested groups use ``__``: ``POLLEN_RUNWARE__API_KEY``, ``POLLEN_POLL__INITIAL_DELAY``.
Build it with :func:`get_settings` (cached) or construct ``Settings(...)`` directly in tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from pollen.backoff import PollPolicy
from pollen.errors import InvalidSettings
from pollen.models import TENANT_PATTERN, TENANT_RULE

#: what a provider account's or a tenant's name may hold (it is part of Redis keys and metric
#: labels): the pattern of a job's tenant
NAME_PATTERN = TENANT_PATTERN
#: the name of a provider's account configured by its own api_key (no ``accounts`` list)
DEFAULT_ACCOUNT = "default"


class AccountSettings(BaseModel):
    """One provider account: its key, and how much it may run at once."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="The account's name (jobs record it).")
    api_key: SecretStr = Field(description="The account's API key (secret).")
    base_url: str | None = Field(None, description="API root; unset: the provider's base_url.")
    max_in_flight: int | None = Field(
        None, ge=1, le=100_000, description="Most provider tasks of this account at once."
    )
    rate: float | None = Field(None, gt=0, description="Most requests per second of this account.")

    @property
    def has_key(self) -> bool:
        """Whether the account's key is set (an account without one can create nothing)."""
        return bool(self.api_key.get_secret_value().strip())


def pick_account(accounts: Sequence[AccountSettings], name: str | None) -> AccountSettings:
    """The account named ``name``, or the first one when it names none or one that is no
    longer configured."""
    for account in accounts:
        if account.name == name:
            return account
    return accounts[0]


class ProviderAccounts(BaseModel):
    """What every provider's settings have: one key and its cap, or a list of accounts."""

    max_in_flight: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Most provider tasks the api_key may have running at once, fleet-wide; jobs "
        "past it wait in pollen, fairly shared between tenants. Unset: no cap.",
    )
    accounts: list[AccountSettings] = Field(
        default_factory=list,
        description='Several accounts instead of api_key (JSON list of {"name", "api_key", '
        '"base_url", "max_in_flight", "rate"}); jobs go to an account with free slots.',
    )

    @model_validator(mode="after")
    def _one_way_to_configure(self) -> ProviderAccounts:
        if not self.accounts:
            return self
        key = getattr(self, "api_key", None)
        if (key is not None and key.get_secret_value()) or self.max_in_flight is not None:
            raise ValueError("set either accounts, or api_key (and max_in_flight), not both")
        names = [account.name for account in self.accounts]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"account names must differ: {', '.join(repeated)} repeated")
        return self

    def resolved(self) -> list[AccountSettings]:
        """The provider's accounts: the ``accounts`` list (each with a base URL), or one
        account named ``default`` made of ``api_key``, ``base_url`` and ``max_in_flight``."""
        base_url: str = getattr(self, "base_url", "")
        if self.accounts:
            return [
                a if a.base_url else a.model_copy(update={"base_url": base_url})
                for a in self.accounts
            ]
        key = getattr(self, "api_key", SecretStr(""))
        return [
            AccountSettings(
                name=DEFAULT_ACCOUNT, api_key=key, base_url=base_url,
                max_in_flight=self.max_in_flight,
            )
        ]  # fmt: skip


class TenantSettings(BaseModel):
    """One tenant's share of capped provider accounts."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(
        1.0, gt=0, le=1000, description="Its share: a tenant of weight 2 gets twice the turns."
    )
    max_in_flight: int | None = Field(
        None, ge=1, description="Most of its jobs holding a capped provider's slots at once."
    )


class AdmissionSettings(BaseModel):
    """Admission to capped provider accounts (``max_in_flight``)."""

    cooldown: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Seconds an account's cap stays lowered to what it holds after the provider "
        "refused a create for capacity (429); the job waits in pollen meanwhile.",
    )
    throttled_poll_delay: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds between polls of a task the provider holds back as THROTTLED "
        "(Runway's status past an account's concurrency; within the job's poll delays).",
    )


class RunwareSettings(ProviderAccounts):
    """Runware's task-array API."""

    base_url: str = Field(
        "https://api.runware.ai/v1", description="Runware's single POST endpoint."
    )
    api_key: SecretStr = Field(SecretStr(""), description="Runware API key (secret).")


class UseapiSettings(ProviderAccounts):
    """Runway through useapi.net."""

    base_url: str = Field(
        "https://api.useapi.net", description="useapi.net API root (Runway through useapi.net)."
    )
    api_key: SecretStr = Field(SecretStr(""), description="useapi.net API token (secret).")
    create_path: str = Field(
        "/v1/runwayml/gen3/create", description="Path of the create call (model-specific)."
    )


class CometSettings(ProviderAccounts):
    """Runway through CometAPI's official-format wrapper."""

    base_url: str = Field(
        "https://api.cometapi.com", description="CometAPI API root (Runway through CometAPI)."
    )
    api_key: SecretStr = Field(SecretStr(""), description="CometAPI key (secret).")
    runway_version: str | None = Field(None, description="X-Runway-Version header, if set.")
    not_exist_grace: float = Field(
        30.0, ge=0, description="Seconds a new task may answer task_not_exist before it fails."
    )


class QueueSettings(BaseModel):
    """Celery queue names (workers can be split by queue)."""

    submit: str = Field("pollen.submit", description="Queue producers send jobs to.")
    poll: str = Field("pollen.poll", description="Queue of pollen.poll (the countdown chains).")
    callbacks: str = Field("pollen.callbacks", description="Queue of callback deliveries.")


SVIX_LIKE_SCHEDULE = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


class CallbackSettings(BaseModel):
    """Callbacks: signed webhooks and Python callbacks."""

    timeout: float = Field(15.0, gt=0, description="HTTP timeout of one delivery, seconds.")
    secrets: list[SecretStr] = Field(
        default_factory=list,
        description="Signing secrets (whsec_..., `pollen secret` makes one); all sign, so a new "
        "one can be added first during rotation. JSON list. A worker without one refuses to "
        "start unless allow_unsigned is true.",
    )
    allow_unsigned: bool = Field(
        False,
        description="Let a worker without secrets start and deliver webhooks unsigned "
        "(receivers cannot tell them from forgeries); warned at every start.",
    )
    schedule: list[float] = Field(
        default_factory=lambda: list(SVIX_LIKE_SCHEDULE),
        min_length=1,
        description="Delay before each delivery attempt, seconds (JSON list).",
    )
    jitter: float = Field(0.1, ge=0, le=1, description="Fraction of each delay varied at random.")
    park_after: float = Field(
        30.0, ge=0, description="Waits longer than this wait in Redis, not in a worker."
    )
    progress_interval: float = Field(
        10.0, ge=0, description="Least seconds between two progress events of a job."
    )
    allow_cidrs: list[str] = Field(
        default_factory=list,
        description="Networks callbacks may reach although private (JSON list of CIDRs).",
    )


#: how long the ingress and the dashboard wait for an unreachable Redis by default, seconds
SERVER_REDIS_TIMEOUT = 1.0


def shutdown_grace(redis_timeout: float) -> int:
    """Seconds the ingress or the dashboard waits, after SIGTERM, for the requests under way
    (whole seconds, as uvicorn takes them): each ends within about twice its Redis timeout
    (the store, then the broker)."""
    return math.ceil(2 * redis_timeout) + 1


class IngressSettings(BaseModel):
    """Provider push as a wake-up (``pollen ingress``): the provider's push makes pollen poll
    the job at once; polling stays the safety net, so a lost push costs only lag."""

    public_url: str | None = Field(
        None,
        max_length=1024,
        description="Where providers reach `pollen ingress` (https://hooks.example.com); set, "
        "submissions ask Runware (webhookURL) and useapi.net (replyUrl) to push there.",
    )
    max_body_bytes: int = Field(
        256 * 1024, gt=0, description="Largest push body the ingress reads, bytes."
    )
    redis_timeout: float = Field(
        SERVER_REDIS_TIMEOUT,
        gt=0,
        description="Seconds a push or /readyz waits for an unreachable Redis (or broker) "
        "before it answers 503; the provider retries the push.",
    )
    poll_max_delay: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="With pushes on, jobs that get one poll at most this many seconds apart "
        "(a longer cap than poll.max_delay saves provider requests; polling is the safety net).",
    )

    @field_validator("public_url")
    @classmethod
    def _an_http_url(cls, url: str | None) -> str | None:
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://hooks.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        if parts.path.rstrip("/").endswith("/push"):
            raise ValueError("give the ingress's base URL: pollen adds /push/<provider>/<token>")
        return url.rstrip("/")


STORAGE_SCHEMES = ("file", "s3")
COPY_SCHEDULE = [0.0, 10.0, 60.0, 300.0, 1800.0]


class StorageSettings(BaseModel):
    """Re-hosting: pollen's own copy of every finished generation's file (off without url)."""

    url: str | None = Field(
        None,
        description="Where copies go: file:///a/directory or s3://bucket/prefix; unset: "
        "re-hosting is off. Another scheme stops the worker at start.",
    )
    public_url: str | None = Field(
        None,
        description="Base URL the stored files are served from (a CDN, a web server over the "
        "directory); a stored URL is this plus the object's key.",
    )
    max_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="Largest file copied, bytes (512 MiB); larger ones fail.",
    )
    schedule: list[float] = Field(
        default_factory=lambda: list(COPY_SCHEDULE),
        min_length=1,
        description="Copy attempts (JSON list): its length is how many; the first runs as soon "
        "as the result is seen, each later entry is the delay before that attempt, seconds. An "
        "attempt counts when it starts, so a copier killed mid-copy uses one up too.",
    )
    timeout: float = Field(60.0, gt=0, description="HTTP timeout of the result URL, seconds.")
    allow_cidrs: list[str] = Field(
        default_factory=list,
        description="Networks result URLs may be fetched from although private (JSON list of "
        "CIDRs).",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, R2...); unset: AWS."
    )
    s3_region: str | None = Field(None, description="S3 region.")
    s3_access_key_id: SecretStr | None = Field(
        None,
        description="S3 access key id (secret); unset: boto3's own credential chain (IAM "
        "role, AWS_*).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="S3 secret access key (secret)."
    )

    @field_validator("url")
    @classmethod
    def _a_storage_url(cls, url: str | None) -> str | None:
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in STORAGE_SCHEMES:
            raise ValueError(
                f"must start with {' or '.join(s + '://' for s in STORAGE_SCHEMES)}, "
                f"not {redact(url)!r}"
            )
        local = parts.netloc in ("", "localhost") and parts.path.startswith("/")
        if parts.scheme == "file" and not local:
            raise ValueError(
                f"a file:// storage URL needs an absolute path (file:///dir): {redact(url)!r}"
            )
        if parts.scheme == "s3" and not parts.netloc:
            raise ValueError(
                f"an s3:// storage URL needs a bucket (s3://bucket/prefix): {redact(url)!r}"
            )
        return url


def parse_basic_auth(value: str) -> tuple[str, str]:
    """``user:password`` as (user, password): both non-empty, the user without a colon (the
    password may hold one); ValueError saying what is wrong."""
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        raise ValueError("give user:password (both non-empty)")
    return user, password


class DashboardSettings(BaseModel):
    """The jobs dashboard (``pollen dashboard``); its command-line options override these."""

    basic_auth: SecretStr | None = Field(
        None,
        description="user:password the dashboard asks for; it refuses to start without (or "
        "--no-auth). --basic-auth overrides it.",
    )
    host: str = Field("127.0.0.1", description="Address the dashboard listens on (--host).")
    redis_timeout: float = Field(
        SERVER_REDIS_TIMEOUT,
        gt=0,
        description="Seconds a page waits for an unreachable Redis (or broker) before it "
        "answers 503.",
    )
    port: int = Field(5556, ge=1, le=65535, description="Port the dashboard listens on (--port).")

    @field_validator("basic_auth")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_basic_auth(value.get_secret_value())
        return value


#: most replicas a create may wait for (POLLEN_REPLICA_ACKS)
MAX_REPLICA_ACKS = 16
#: the default longest wait for them, milliseconds (POLLEN_REPLICA_TIMEOUT)
REPLICA_TIMEOUT_MS = 500

#: how long a producer call waits for an unreachable Redis by default, seconds
PRODUCER_REDIS_TIMEOUT = 5.0


class ProducerSettings(BaseModel):
    """The producer clients (``pollen.Pollen``, ``pollen.AsyncPollen``) inside your app."""

    redis_timeout: float = Field(
        PRODUCER_REDIS_TIMEOUT,
        gt=0,
        description="Seconds a producer call keeps trying an unreachable Redis (and waits for "
        "one answer) before it raises StoreUnavailable: long enough to ride out a failover or "
        "a quick restart, short enough for a web request to answer 503 instead of hanging. "
        "Workers keep their own ~20 s reconnect window.",
    )


REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
#: Celery's and kombu's Sentinel URL: ``sentinel://[:password@]host:port[/db]``, one per
#: Sentinel, joined by ``;`` (the password and db of the first are the Redis servers')
SENTINEL_SCHEME = "sentinel"


def is_sentinel_url(url: str | None) -> bool:
    return url is not None and urlsplit(url).scheme.lower() == SENTINEL_SCHEME


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``****`` (in each address of a
    Sentinel URL: ``sentinel://:pw@a:26379;sentinel://:pw@b:26379``)."""
    if ";" in url:
        return ";".join(redact(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL urlsplit reads: mask whatever stands between ':' and '@'
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1****@", url)
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}"))


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """The Sentinels' ``(host, port)`` of a Sentinel URL; ValueError saying what is wrong."""
    addresses = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        first = urlsplit(url.split(";", 1)[0])
        if parts.path not in ("", "/", first.path) or parts.password not in (None, first.password):
            raise ValueError(
                "the addresses of a Sentinel URL name one database and password, or only the "
                "first does (Celery and kombu read the first's): sentinel://:pw@a:26379/1;..."
            )
        try:
            port = parts.port or 26379  # Sentinel's own port, as kombu reads it
        except ValueError:
            port = 0
        if parts.scheme.lower() != SENTINEL_SCHEME or not parts.hostname or not port:
            raise ValueError(
                f"{redact(part.strip())!r}: each address of a Sentinel URL is "
                "sentinel://host:port, joined by ';'"
            )
        if parts.query:  # kombu's ?ssl=... would be dropped here: refused, never plaintext
            raise ValueError(
                f"{redact(part.strip())!r}: a Sentinel URL takes no query (?...): "
                "TLS to Sentinel and its Redis servers is not supported"
            )
        addresses.append((parts.hostname, port))
    return addresses


def _message(text: str) -> str:
    """A validation error as a user reads it (without pydantic's ``Value error, `` prefix)."""
    return text.removeprefix("Value error, ")


def _explain(error: Any) -> str:
    """One validation error as a user reads it: a yes/no setting names what it accepts."""
    if error["type"] == "bool_parsing":
        return f"{error['input']!r} is not a yes/no value (use true or false; 1/0, yes/no, on/off)"
    return _message(error["msg"])


def is_redis_url(url: str) -> bool:
    """Whether ``url`` names a Redis server (the one test of it: a broker, a backend)."""
    return urlsplit(url).scheme.lower() in REDIS_SCHEMES


#: the URL schemes of an AMQP broker (RabbitMQ), as kombu names its transports
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


class Settings(BaseSettings):
    """Everything pollen reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="POLLEN_", env_nested_delimiter="__", extra="ignore"
    )

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Job store.")
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url.")
    result_backend: str | None = Field(
        None,
        description="Celery result backend (submit answers); defaults to broker_url on a "
        "Redis broker, to redis_url on any other (Celery has no AMQP result backend).",
    )
    sentinel_master: str | None = Field(
        None,
        description="The Sentinel master's name, for sentinel:// URLs (required with them).",
    )
    sentinel_password: SecretStr | None = Field(
        None,
        description="The Sentinels' own password, if they need one (the Redis servers' is "
        "in the URL: sentinel://:password@host:26379).",
    )
    quorum_queues: bool = Field(
        False,
        description="Declare pollen's queues as RabbitMQ quorum queues (replicated; an AMQP "
        "broker only): countdowns are rounded up to whole seconds for Celery's native delayed "
        "delivery and publishes wait for the broker's confirm. Existing classic queues must be "
        "deleted first (RabbitMQ cannot change a queue's type).",
    )
    runware: RunwareSettings = RunwareSettings()
    useapi: UseapiSettings = UseapiSettings()
    comet: CometSettings = CometSettings()
    poll: PollPolicy = PollPolicy()
    queues: QueueSettings = QueueSettings()
    callbacks: CallbackSettings = CallbackSettings()
    ingress: IngressSettings = IngressSettings()
    storage: StorageSettings = StorageSettings()
    dashboard: DashboardSettings = DashboardSettings()
    producer: ProducerSettings = ProducerSettings()
    admission: AdmissionSettings = AdmissionSettings()
    tenants: dict[str, TenantSettings] = Field(
        default_factory=dict,
        description='Tenants\' weights and caps (JSON, e.g. {"acme": {"weight": 2, '
        '"max_in_flight": 10}}); a tenant not named has weight 1 and no cap of its own.',
    )
    replica_acks: Literal["auto"] | int = Field(
        "auto",
        description="Replicas a new job must reach before its submit returns (Redis WAIT after "
        "the create, in the same round trip): auto waits for one when the primary has any "
        "connected (INFO replication, read at most every 10 s per client), a number waits for "
        "that many, 0 never waits. A wait that times out is logged and counted, and the submit "
        "still returns: the job is stored on the primary.",
    )
    replica_timeout: int = Field(
        REPLICA_TIMEOUT_MS,
        ge=1,
        le=10_000,
        description="Longest wait for the replicas of replica_acks, milliseconds; a producer "
        "waits at most half its redis_timeout.",
    )
    job_ttl: int = Field(7 * 86400, gt=0, description="Seconds a finished job is kept.")
    max_request_bytes: int = Field(
        64 * 1024, gt=0, description="Largest accepted provider request, bytes of JSON."
    )
    task_time_limit: int = Field(120, gt=0, description="Hard time limit of one task run, seconds.")
    visibility_timeout: int = Field(
        0,
        ge=0,
        description="Seconds before a Redis broker redelivers a message a worker took and never "
        "acknowledged. 0 (the default) derives it: twice the longest a message is held on "
        "purpose (its longest countdown plus task_time_limit: held_floor), 300 s with the "
        "defaults; "
        "a value you set must exceed that floor.",
    )
    soft_shutdown_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds a stopping worker lets running tasks finish before it requeues them "
        "with its reserved countdown polls (Celery's worker_soft_shutdown_timeout).",
    )
    poll_lease: float = Field(
        10.0,
        gt=0,
        description="Seconds a poll's claim on its jobs lasts; renewed every third of it while "
        "the poll runs, so a dead worker's jobs are free again this long after it died.",
    )
    worker_lease: float = Field(
        5.0,
        ge=0.5,
        le=60,
        description="Seconds a worker's claim on the submit messages it holds lasts (Redis "
        "broker); renewed every third of it, so a dead worker's submits are sent again this "
        "long after it died, not after the visibility timeout.",
    )
    max_worker_losses: int = Field(
        3,
        ge=1,
        description="Worker deaths while polling one job before the job fails (a poison job).",
    )
    tick_interval: float = Field(
        1.0, gt=0, description="Seconds between rounds that release parked polls and callbacks."
    )
    park_after: float = Field(
        30.0,
        ge=0,
        description="Poll waits longer than this wait in Redis instead of as countdown messages "
        "held by a worker (bounds worker memory with many jobs in flight).",
    )
    reconcile_interval: float = Field(
        2.0, gt=0, description="Seconds between reconciler rounds (one worker does each)."
    )
    reconcile_grace: float = Field(
        10.0,
        gt=0,
        description="How late a job's next step may be before it is resumed (a dead worker's "
        "jobs resume within about poll_lease + reconcile_grace + reconcile_interval).",
    )
    submit_grace: float = Field(
        60.0,
        gt=0,
        description="How long a queued job may wait for its submit before the reconciler sends "
        "it again (a backlog on the submit queue is normal under load; duplicates are "
        "harmless but cost a message each).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Worker log lines: readable text, or json: one object per line, with "
        "job_id, provider, provider_task_id, attempt.",
    )
    log_level: str = Field("INFO", description="Log level of pollen's workers.")
    task_events: bool = Field(
        True,
        description="Workers send Celery task events (what Flower shows: task-received, "
        "-started, -succeeded...), one PUBLISH each on the broker; false turns them off, "
        "which saves those messages and their CPU (worker heartbeats still go).",
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry traces (needs pip install 'pollen-jobs[tracing]'): a span for "
        "each submit, poll batch, provider request and callback delivery, in the job's trace. "
        "Where they go is set by OpenTelemetry's own variables (OTEL_SERVICE_NAME, "
        "OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT); a producer uses its app's "
        "TracerProvider.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus metrics on this port (worker)."
    )
    metrics_max_tenants: int = Field(
        50,
        ge=0,
        le=10_000,
        description="Tenants not named in POLLEN_TENANTS that get a metric label of their own, "
        "per worker process; the ones it sees after that many share the label _other.",
    )
    heartbeat_file: Path = Field(
        default_factory=lambda data: default_heartbeat_file(
            data.get("redis_url", ""), data.get("sentinel_master")
        ),
        description="File the worker touches on every heartbeat (for `pollen health --local`); "
        "default pollen-worker-<store>.heartbeat in the temp dir, <store> a hash of the store's "
        "host:port/db (with Sentinel: master name, Sentinels, db). The store's epoch marker "
        "is remembered beside it (pollen-worker-<store>.epoch), so workers of different "
        "stores on one machine never raise a false data-loss alarm.",
    )
    http_timeout: float = Field(30.0, gt=0, description="Timeout of one provider request, seconds.")
    batch_size: int = Field(
        50,
        ge=1,
        le=500,
        description="Most polls in one poll message, and in one request to a provider that "
        "takes task arrays.",
    )
    batch_wait: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Seconds a single poll waits for others of the same process to share its "
        "request.",
    )
    batch_window: float = Field(
        0.1,
        ge=0,
        le=1,
        description="How late a poll may run to share a batch, as a fraction of the delay it "
        "waited (capped by batch_window_max).",
    )
    batch_window_max: float = Field(
        0.5, ge=0, le=60, description="Most seconds a poll may run late to share a batch."
    )
    inline_callback_timeout: float = Field(
        2.0,
        ge=0,
        description="HTTP timeout of the completion webhook the finishing poll sends itself, "
        "seconds; a slower or failed one goes to the callbacks queue. 0 sends every "
        "callback through the queue.",
    )
    rate_limits: dict[str, float] = Field(
        default_factory=dict,
        description="Requests per second per provider, shared by all workers (JSON, e.g. "
        '{"runware": 50}).',
    )
    http_max_connections: int = Field(
        100, gt=0, description="HTTP connection pool size per worker process."
    )

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: dict[str, TenantSettings]) -> dict[str, TenantSettings]:
        for name in tenants:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"tenant name {name!r}: {TENANT_RULE}")
        return tenants

    @field_validator("replica_acks", mode="before")
    @classmethod
    def _replica_count(cls, value: Any) -> Any:
        rule = f"must be auto or a whole number of replicas from 0 to {MAX_REPLICA_ACKS}"
        if value == "auto":
            return value
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{rule}, not {value!r}") from None
        if not 0 <= count <= MAX_REPLICA_ACKS or str(value).strip() != str(count):
            raise ValueError(f"{rule}, not {value!r}")
        return count

    @field_validator("redis_url")
    @classmethod
    def _a_redis_url(cls, url: str) -> str:
        """The store is Redis (the broker may be anything Celery speaks): a wrong URL is a
        settings error naming the variable, not redis-py's ValueError when first used."""
        if urlsplit(url).scheme.lower() not in REDIS_SCHEMES:
            raise ValueError(f"must start with {', '.join(s + '://' for s in REDIS_SCHEMES)}")
        return url

    @field_validator("redis_url", "broker_url", "result_backend")
    @classmethod
    def _sentinel_addresses(cls, url: str | None) -> str | None:
        if url is not None and is_sentinel_url(url):
            sentinel_addresses(url)
        elif url is not None and ";" in url:  # a second address would be ignored
            raise ValueError(
                f"{redact(url)!r}: only a Sentinel URL lists several addresses "
                "(sentinel://host:port;sentinel://host2:port)"
            )
        return url

    @model_validator(mode="after")
    def _sentinel_master_with_sentinel_urls(self) -> Settings:
        """A Sentinel URL names no master (Celery's form): POLLEN_SENTINEL_MASTER says which,
        and is refused without one; it and the Sentinels' password are refused without a
        Sentinel URL (a setting that nothing reads hides a typo in a URL)."""
        urls = {
            "POLLEN_REDIS_URL": self.redis_url,
            "POLLEN_BROKER_URL": self.broker_url,
            "POLLEN_RESULT_BACKEND": self.result_backend,
        }
        sentinel = [name for name, url in urls.items() if is_sentinel_url(url)]
        if sentinel and not self.sentinel_master:
            raise ValueError(f"POLLEN_SENTINEL_MASTER: must be set for {sentinel[0]}=sentinel://")
        for name, value in (
            ("POLLEN_SENTINEL_MASTER", self.sentinel_master),
            ("POLLEN_SENTINEL_PASSWORD", self.sentinel_password),
        ):
            if value and not sentinel:
                raise ValueError(
                    f"{name}: set, but no URL is sentinel:// "
                    "(POLLEN_REDIS_URL, POLLEN_BROKER_URL, POLLEN_RESULT_BACKEND)"
                )
        return self

    @property
    def held_floor(self) -> float:
        """The longest a worker holds a message on purpose, unacknowledged: its longest
        countdown plus the task time limit. Poll and submit waits longer than ``park_after``
        are parked in Redis, so a poll or submit countdown is at most ``poll.max_delay`` (a
        job's own is refused above what the timeout allows) or ``park_after``, whichever is
        less; a callback retry at most ``callbacks.park_after``. (A provider's Retry-After
        between the two is held as asked; a copy Redis redelivers meanwhile is fenced.)"""
        polls = min(max(self.poll.max_delay, self.ingress.poll_max_delay or 0), self.park_after)
        return max(polls, self.callbacks.park_after) + self.task_time_limit

    @model_validator(mode="after")
    def _visibility_timeout_covers_countdowns(self) -> Settings:
        """A Redis-broker rule: only kombu's Redis transport redelivers by visibility timeout
        (RabbitMQ returns a dead consumer's messages at once, and ignores the setting)."""
        floor = self.held_floor
        if self.visibility_timeout == 0:
            self.visibility_timeout = math.ceil(2 * floor)
        elif self.visibility_timeout <= floor and self.redis_broker:
            raise ValueError(
                f"visibility_timeout ({self.visibility_timeout}s) must be larger than "
                f"the longest countdown a worker holds plus task_time_limit ({floor:g}s: "
                "max(min(poll.max_delay, park_after), callbacks.park_after) + task_time_limit), "
                "or Redis redelivers countdown messages that are still waiting"
            )
        return self

    @model_validator(mode="after")
    def _quorum_queues_need_amqp(self) -> Settings:
        if self.quorum_queues and urlsplit(self.broker).scheme.lower() not in AMQP_SCHEMES:
            raise ValueError(
                "POLLEN_QUORUM_QUEUES: quorum queues are a RabbitMQ feature; set "
                "POLLEN_BROKER_URL to an amqp:// URL or leave quorum_queues off"
            )
        return self

    @property
    def epoch_file(self) -> Path:
        """Where the worker remembers the store's epoch marker: beside the heartbeat file,
        named after the store it describes."""
        return (
            self.heartbeat_file.parent
            / f"pollen-worker-{store_tag(self.redis_url, self.sentinel_master)}.epoch"
        )

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def redis_broker(self) -> bool:
        """Whether the broker is Redis (kombu keeps a taken message until the visibility
        timeout) rather than one that returns a dead consumer's messages at once."""
        return is_redis_url(self.broker)

    @property
    def backend(self) -> str:
        """The result backend: the one set, else the broker when it is Redis (as always), else
        the store's Redis: Celery has no result backend on RabbitMQ."""
        return self.result_backend or (self.broker if self.redis_broker else self.redis_url)

    @property
    def backend_default(self) -> str:
        """The variable :attr:`backend` falls back to (for ``pollen config``)."""
        return "POLLEN_BROKER_URL" if self.redis_broker else "POLLEN_REDIS_URL"


def store_tag(url: str, master: str | None = None) -> str:
    """A short name for the Redis database ``url`` points at (a hash of host:port/db; for a
    Sentinel URL, of its master's name, its Sentinels in any order, and the db).

    Local files that describe one store (the remembered epoch marker, the default heartbeat
    file) carry it, so deployments with different stores on one machine stay apart (one set
    of Sentinels may watch several masters: each is another store).
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if is_sentinel_url(url):
        addresses = ",".join(sorted(f"{h}:{p}" for h, p in sentinel_addresses(url)))
        where = f"{master or ''}@{addresses}"
        db = urlsplit(url.split(";", 1)[0]).path.strip("/") or "0"
    elif parts.scheme == "unix":
        where, db = parts.path, query.get("db", ["0"])[0]
    else:
        where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        db = parts.path.strip("/") or query.get("db", ["0"])[0]
    return hashlib.sha256(f"{where}/{db}".encode()).hexdigest()[:12]


def default_heartbeat_file(redis_url: str, master: str | None = None) -> Path:
    tag = store_tag(redis_url, master)
    return Path(tempfile.gettempdir()) / f"pollen-worker-{tag}.heartbeat"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def load() -> Settings:
    """:func:`get_settings`, with a mistake in the environment raised as
    :class:`~pollen.errors.InvalidSettings` saying, in one line, what is wrong where."""
    try:
        return get_settings()
    except Exception as exc:
        found = problems(exc)
        if found is None:
            raise
        raise InvalidSettings(f"invalid settings: {found}") from None


def _json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def problems(exc: Exception) -> str | None:
    """What is wrong with the environment's settings, in one line naming each variable, for
    an exception :func:`get_settings` raised (None for any other exception)."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"POLLEN_{'__'.join(str(p) for p in e['loc']).upper()}: {_explain(e)}"
            if e["loc"]
            else _explain(e)
            for e in exc.errors()
            # a default computed from a bad value only repeats that value's error
            if e["type"] != "default_factory_not_called"
        )
    if isinstance(exc, SettingsError):  # a value that is not JSON where JSON is expected
        group = re.search(r'field "([^"]+)"', str(exc))
        prefix = f"POLLEN_{group.group(1).upper()}" if group else "POLLEN_"
        named = sorted(n for n in os.environ if n.upper().startswith(prefix))
        broken = [
            n for n in named if os.environ[n].lstrip()[:1] in "[{" and not _json(os.environ[n])
        ]
        where = f"{' or '.join(broken or named) or prefix}: " if named or group else ""
        cause = exc.__cause__ or exc
        return f"{where}not valid JSON ({cause})"
    return None


def _describe(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _describe(annotation, f"{env}__")
            continue
        if info.default_factory is None:
            default = info.default
        elif info.default_factory_takes_validated_data:  # derived from other settings
            default = "(per store)"
        else:
            default = info.get_default(call_default_factory=True)
        shown = "(secret)" if isinstance(default, SecretStr) else repr(default)
        rows.append((env, shown, info.description or ""))
    return rows


def environment_variables() -> list[tuple[str, str, str]]:
    """Every ``POLLEN_*`` variable with its default and meaning (for docs and ``pollen config``)."""
    return _describe(Settings, "POLLEN_")
