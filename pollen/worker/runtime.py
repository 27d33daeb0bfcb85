"""Per-process resources: one Redis client, one pooled HTTP client, the provider dialects.

Built lazily on first use in each process (so a prefork child never inherits its parent's
sockets) and closed when the worker process shuts down. Never built at import time.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from pollen.addresses import STORAGE_SETTING, AddressPolicy
from pollen.capacity import Capacity
from pollen.lookup import Lookup
from pollen.providers import Provider, build_providers
from pollen.providers.calls import ProviderCalls
from pollen.providers.http import observe_requests
from pollen.providers.ratelimit import RateLimiter
from pollen.settings import Settings, get_settings
from pollen.storage import Storage, open_storage
from pollen.store.connection import http_client, open_store
from pollen.store.copies import Copies
from pollen.store.outbox import Outbox
from pollen.store.sync import Store
from pollen.tracing import OFF, Tracing
from pollen.tracing import of as tracing_of
from pollen.worker import metrics
from pollen.worker.leases import LeaseRenewer
from pollen.worker.metrics import TenantLabels, observe_batch_size, observe_provider_request


@dataclass
class Deps:
    """What the steps need, built once per worker process (see :mod:`pollen.worker.runtime`)."""

    settings: Settings
    store: Store
    http: httpx.Client
    providers: dict[str, Provider]
    outbox: Outbox
    policy: AddressPolicy
    #: where copies of results go (re-hosting), None when it is off
    storage: Storage | None = None
    #: which result URLs a copy may fetch (``POLLEN_STORAGE__ALLOW_CIDRS``)
    fetch_policy: AddressPolicy = field(default_factory=AddressPolicy)
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    epoch: str | None = None  #: the store's epoch marker this process saw (data-loss check)
    #: provider -> jobs this process gave an account (uncapped providers' accounts take turns)
    turns: dict[str, int] = field(default_factory=dict)
    limiter: RateLimiter = field(init=False)  #: provider request budget shared by all workers
    calls: ProviderCalls = field(init=False)  #: provider requests, batched where possible
    leases: LeaseRenewer = field(init=False)  #: keeps running polls' leases alive
    copies: Copies = field(init=False)  #: copy state of results' files (re-hosting)
    capacity: Capacity = field(init=False)  #: provider accounts' caps, tenants' shares
    tenant_labels: TenantLabels = field(init=False)  #: tenants' metric labels, bounded
    tracing: Tracing = OFF  #: spans of the steps (``POLLEN_TRACING``)

    def __post_init__(self) -> None:
        self.copies = Copies(self.store.redis)
        self.capacity = Capacity.of(self.settings)
        self.tenant_labels = TenantLabels(self.settings.tenants, self.settings.metrics_max_tenants)
        self.limiter = RateLimiter(self.store, self.settings.rate_limits)
        self.leases = LeaseRenewer(self.store, self.settings.poll_lease, self.clock)
        self.calls = ProviderCalls(
            self.http,
            self.providers,
            self.limiter,
            batch_size=self.settings.batch_size,
            batch_wait=self.settings.batch_wait,
            observe_batch=observe_batch_size,
        )


class _ProcessLocal:
    """Holds this process's Deps; rebuilt after a fork (the pid changes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deps: Deps | None = None
        self.pid: int | None = None


_local = _ProcessLocal()


def build_deps(settings: Settings) -> Deps:
    """Everything the steps need, from settings."""
    observe_requests(observe_provider_request)
    store, outbox = open_store(settings, on_short=lambda *_: metrics.REPLICA_ACK_TIMEOUTS.inc())
    http = http_client(settings)
    traces = tracing_of(settings)
    traces.instrument(redis=store.redis, http=http)
    lookup = Lookup()  # the process's DNS lookups, bounded in threads (callbacks and copies)
    return Deps(
        settings=settings,
        store=store,
        http=http,
        providers=build_providers(settings),
        outbox=outbox,
        policy=AddressPolicy(settings.callbacks.allow_cidrs, lookup=lookup),
        storage=open_storage(settings.storage),
        fetch_policy=AddressPolicy(
            settings.storage.allow_cidrs, setting=STORAGE_SETTING, lookup=lookup
        ),
        tracing=traces,
    )


def deps() -> Deps:
    """This process's resources, created on first use."""
    with _local.lock:
        if _local.deps is None or _local.pid != os.getpid():
            _local.deps, _local.pid = build_deps(get_settings()), os.getpid()
        return _local.deps


def close() -> None:
    """Close this process's clients (worker shutdown hook)."""
    with _local.lock:
        if _local.deps is not None and _local.pid == os.getpid():
            _local.deps.calls.close()
            _local.deps.http.close()
            _local.deps.store.close()
        _local.deps = None
