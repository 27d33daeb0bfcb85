"""Asking providers about tasks: one request per poll, or batched where the provider allows.

With a thread pool, many polls of one worker process fire at about the same time; for a
provider that takes task arrays (Runware) they share one HTTP request through a
:class:`~pollen.providers.batching.Batcher`. Every request first takes a slot from the shared
:class:`~pollen.providers.ratelimit.RateLimiter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import httpx

from pollen.models import Job
from pollen.providers import Provider, Snapshot
from pollen.providers.batching import Batcher
from pollen.providers.http import send
from pollen.providers.ratelimit import RateLimiter
from pollen.worker import metrics

Item = tuple[Job, float]


class StatusFetcher:
    """``fetch(job, now)``: the provider's current view of a job's task."""

    def __init__(
        self,
        http: httpx.Client,
        providers: dict[str, Provider],
        limiter: RateLimiter,
        *,
        batch_size: int,
        batch_wait: float,
    ) -> None:
        self.http = http
        self.providers = providers
        self.limiter = limiter
        self.batchers: dict[str, Batcher[Item, Snapshot]] = {
            name: Batcher(partial(self._flush, provider), max_size=batch_size, max_wait=batch_wait)
            for name, provider in providers.items()
            if provider.supports_batching and batch_size > 1
        }

    def fetch(self, job: Job, now: float) -> Snapshot:
        batcher = self.batchers.get(job.provider)
        if batcher is not None:
            return batcher.call((job, now))
        provider = self.providers[job.provider]
        self.limiter.acquire(job.provider)
        answer = send(self.http, provider.status_request(job), provider=job.provider, kind="status")
        return provider.parse_status(job, answer, now)

    def _flush(self, provider: Provider, items: Sequence[Item]) -> list[Snapshot | Exception]:
        jobs = [job for job, _ in items]
        now = max(when for _, when in items)
        self.limiter.acquire(provider.name)
        request = provider.status_batch_request(jobs)
        answer = send(self.http, request, provider=provider.name, kind="status")
        metrics.BATCH_SIZE.labels(provider.name).observe(len(jobs))
        return provider.parse_status_batch(jobs, answer, now)
