"""Calls to providers for many jobs at once, in as few requests as each provider allows.

:class:`ProviderCalls` serves the batch steps: for a provider that takes task arrays
(Runware) up to ``batch_size`` jobs share one HTTP request, for creating tasks and for asking
about them; for the others (the Runway dialects) the requests run concurrently over the
pooled client. Either way one job's error is its own answer, never its neighbours'. Single
polls (:meth:`ProviderCalls.status`) that fire at about the same time in one process still
share a request through a :class:`~pollen.providers.batching.Batcher`. Every request first
takes a slot from the shared :class:`~pollen.providers.ratelimit.RateLimiter`.

A request goes to one provider account (the job's: :meth:`Provider.account`): jobs of several
accounts travel in one request per account, each limited by its account's ``rate`` too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import httpx

from pollen.errors import RateLimited
from pollen.models import Job
from pollen.providers import Provider, Snapshot
from pollen.providers.base import Submission
from pollen.providers.batching import Batcher
from pollen.providers.http import send
from pollen.providers.ratelimit import RateLimiter

Item = tuple[Job, float]
Answer = TypeVar("Answer")
Listed = TypeVar("Listed")
#: ``(provider, jobs)`` of every status request that carried several jobs' polls
BatchObserver = Callable[[str, int], None]
#: ``(indexes, answers)``: one create request's answers as they arrive (the jobs' positions
#: in the call), from the thread that got them
Arrivals = Callable[[Sequence[int], Sequence[Submission | Exception]], None]
#: most requests one call runs at once for a provider without task arrays
MAX_CONCURRENT = 16


class ProviderCalls:
    """Status and submit calls, one answer (or the job's own exception) per job."""

    def __init__(
        self,
        http: httpx.Client,
        providers: dict[str, Provider],
        limiter: RateLimiter,
        *,
        batch_size: int,
        batch_wait: float,
        observe_batch: BatchObserver,
    ) -> None:
        self.http = http
        #: the worker's batch-size histogram; providers never import the worker's metrics
        self.observe_batch = observe_batch
        self.providers = providers
        self.limiter = limiter
        self.batch_size = batch_size
        self.batchers: dict[str, Batcher[Item, Snapshot]] = {
            name: Batcher(
                partial(self._status_chunk, provider), max_size=batch_size, max_wait=batch_wait
            )
            for name, provider in providers.items()
            if self._batches(provider)
        }
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # --- status -------------------------------------------------------------------------

    def status(self, job: Job, now: float) -> Snapshot:
        """The provider's current view of one job's task (shares a request where it can)."""
        batcher = self.batchers.get(job.provider)
        if batcher is not None:
            return batcher.call((job, now))
        provider = self.providers[job.provider]
        self.limiter.acquire(job.provider, provider.account(job))
        answer = send(self.http, provider.status_request(job), provider=job.provider, kind="status")
        return provider.parse_status(job, answer, now)

    def status_many(
        self, provider_name: str, jobs: Sequence[Job], now: float
    ) -> list[Snapshot | Exception]:
        """Each job's snapshot, or the exception its poll raised, in order."""
        provider = self.providers[provider_name]
        if len(jobs) > 1 and self._batches(provider):
            chunk = partial(self._status_chunk, provider)
            return self._chunked([(job, now) for job in jobs], chunk)
        return self._each(jobs, lambda job: self.status(job, now))

    def _status_chunk(
        self, provider: Provider, items: Sequence[Item]
    ) -> list[Snapshot | Exception]:
        """One request per account among ``items`` (single polls of several accounts may
        share a batch); an account's failed request fails only its own jobs."""
        return _per_account(
            provider, items, lambda item: item[0], partial(self._status_request, provider)
        )

    def _status_request(
        self, provider: Provider, items: Sequence[Item]
    ) -> list[Snapshot | Exception]:
        jobs = [job for job, _ in items]
        now = max(when for _, when in items)
        self.limiter.acquire(provider.name, provider.batch_account(jobs))
        request = provider.status_batch_request(jobs)
        answer = send(self.http, request, provider=provider.name, kind="status")
        self.observe_batch(provider.name, len(jobs))
        return provider.parse_status_batch(jobs, answer, now)

    # --- submit -------------------------------------------------------------------------

    def submit_many(
        self,
        provider_name: str,
        jobs: Sequence[Job],
        arrived: Arrivals | None = None,
        *,
        sending: Callable[[int], None] | None = None,
    ) -> list[Submission | Exception]:
        """Create each job's provider task (keyed by its ``task_uuid`` where the provider
        takes a key); one acknowledgement or the job's own exception each, in order.
        ``arrived`` is told each request's answers the moment they arrive (a task array's at
        once, a concurrent create's on its own thread), before the call returns; ``sending``
        is told the position of each job whose single create is about to be sent."""
        provider = self.providers[provider_name]
        if len(jobs) > 1 and self._batches(provider):
            return self._chunked(jobs, partial(self._submit_chunk, provider), arrived)
        position = {job.id: index for index, job in enumerate(jobs)}

        def marked(job: Job) -> None:
            if sending is not None:
                sending(position[job.id])

        return self._each(jobs, partial(self._submit_one, provider, marked), arrived)

    def _submit_one(
        self, provider: Provider, sending: Callable[[Job], None], job: Job
    ) -> Submission:
        self.limiter.acquire(provider.name, provider.account(job))
        sending(job)  # after the rate limit's wait: a create marked sent is on its way
        request = provider.submit_request(job, job.task_uuid)
        answer = send(self.http, request, provider=provider.name, kind="submit")
        return provider.parse_submit(job, job.task_uuid, answer)

    def _submit_chunk(
        self, provider: Provider, jobs: Sequence[Job]
    ) -> list[Submission | Exception]:
        """One request per account among ``jobs``, as for polls."""
        return _per_account(
            provider, jobs, lambda job: job, partial(self._submit_request, provider)
        )

    def _submit_request(
        self, provider: Provider, jobs: Sequence[Job]
    ) -> list[Submission | Exception]:
        """One create request for ``jobs``; a task array refused whole (429: the account is
        full, or limits requests) is split in two, and each half tried in turn, down to
        single tasks. A cap of n free slots then creates n tasks instead of refusing every
        larger array again and again. Once a half is refused, whole or in part, the account
        is full: the rest is refused without a request (an account with no free slot costs
        one more request per halving)."""
        try:
            return self._submit_array(provider, jobs)
        except RateLimited:
            if len(jobs) < 2:
                raise
        middle = len(jobs) // 2
        first = self._submit_request(provider, jobs[:middle])  # refused whole: raises
        full = next((answer for answer in first if isinstance(answer, RateLimited)), None)
        if full is not None:
            return [*first, *[full] * (len(jobs) - middle)]
        try:
            rest = self._submit_request(provider, jobs[middle:])
        except RateLimited as refused:
            rest = [refused] * (len(jobs) - middle)
        return [*first, *rest]

    def _submit_array(
        self, provider: Provider, jobs: Sequence[Job]
    ) -> list[Submission | Exception]:
        self.limiter.acquire(provider.name, provider.batch_account(jobs))
        request = provider.submit_batch_request(jobs)
        answer = send(self.http, request, provider=provider.name, kind="submit")
        return provider.parse_submit_batch(jobs, answer)

    # --- cancel -------------------------------------------------------------------------

    def cancel(self, job: Job) -> str:
        """Cancel the job's task at its provider, where the provider documents a call for it;
        what happened, in a few words (raises from :mod:`pollen.errors` when the call fails)."""
        provider = self.providers[job.provider]
        if not job.provider_task_id:
            return "cancelled before the provider took the task: nothing to cancel there"
        if not provider.supports_cancel:
            return (
                f"{provider.name} documents no cancel call: pollen stopped polling; the "
                "provider task may still run (and be billed) to its end"
            )
        self.limiter.acquire(provider.name, provider.account(job))
        request = provider.cancel_request(job)
        answer = send(self.http, request, provider=provider.name, kind="cancel")
        return provider.parse_cancel(job, answer)

    # --- how many calls travel ----------------------------------------------------------

    def _batches(self, provider: Provider) -> bool:
        return provider.supports_batching and self.batch_size > 1

    def _chunked(
        self,
        items: Sequence[Answer | object],
        flush: Callable[[Sequence[object]], Sequence[Answer | Exception]],
        arrived: Callable[[Sequence[int], Sequence[Answer | Exception]], None] | None = None,
    ) -> list[Answer | Exception]:
        """``flush`` per ``batch_size`` items; a chunk whose request failed fails each item
        with that error (each job then retries on its own schedule)."""
        answers: list[Answer | Exception] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            try:
                got = list(flush(chunk))
                if len(got) != len(chunk):
                    raise RuntimeError(f"{len(got)} answers for {len(chunk)} tasks")
            except Exception as exc:
                got = [exc] * len(chunk)
            if arrived is not None:
                arrived(range(start, start + len(chunk)), got)
            answers += got
        return answers

    def _each(
        self,
        jobs: Sequence[Job],
        call: Callable[[Job], Answer],
        arrived: Callable[[Sequence[int], Sequence[Answer | Exception]], None] | None = None,
    ) -> list[Answer | Exception]:
        """``call`` per job, concurrently when there are several; exceptions as answers."""

        def one(index: int, job: Job) -> Answer | Exception:
            answer: Answer | Exception
            try:
                answer = call(job)
            except Exception as exc:
                answer = exc
            if arrived is not None:
                arrived([index], [answer])
            return answer

        if len(jobs) == 1:
            return [one(0, jobs[0])]
        return list(self._concurrent().map(one, range(len(jobs)), jobs))

    def _concurrent(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(MAX_CONCURRENT, thread_name_prefix="pollen-calls")
            return self._pool

    def close(self) -> None:
        """Stop the threads of concurrent requests (worker process shutdown)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


def _per_account(
    provider: Provider,
    items: Sequence[Listed],
    job_of: Callable[[Listed], Job],
    run: Callable[[Sequence[Listed]], Sequence[Answer | Exception]],
) -> list[Answer | Exception]:
    """``run`` once per account among ``items`` (a request goes to one account), answers
    back in the items' order; a group whose ``run`` raised answers that error for each."""
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(provider.account(job_of(item)).name, []).append(index)
    answers: list[Answer | Exception | None] = [None] * len(items)
    for indexes in groups.values():
        try:
            got: Sequence[Answer | Exception] = run([items[i] for i in indexes])
        except Exception as exc:
            got = [exc] * len(indexes)
        for index, answer in zip(indexes, got, strict=True):
            answers[index] = answer
    return [answer for answer in answers if answer is not None]
