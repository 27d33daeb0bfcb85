"""Admission to capped provider accounts, from the worker's side.

A capped provider's job (:mod:`pollen.capacity`) takes a slot before its create goes out:

- the submit step hands its queued jobs to :func:`gate`, which queues them and admits what
  the free slots allow in one Redis call; the jobs admitted (this batch's, or others that
  waited longer or have a higher priority or tenant turn) are sent by the same step;
- when slots free up (a poll that ended jobs, the periodic round), :func:`pump` admits more and
  sends their ``pollen.submit`` messages;
- a create the provider refused for capacity goes back to the queue (:func:`requeue`), and
  the account's cap is lowered to what it holds for ``POLLEN_ADMISSION__COOLDOWN``;
- :func:`sweep` (the reconciler's round) takes back slots whose jobs vanished.

No Celery here: the caller passes how to send a submit message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from pollen import contract
from pollen.models import Job, JobStatus
from pollen.store.admission import Admitted, Entry
from pollen.worker import metrics
from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)

#: the longest a provider's Retry-After lowers an account's cap after a refusal, seconds
MAX_COOLDOWN = 86_400.0

#: most jobs one pump admits per provider (the periodic round pumps again a second later)
PUMP_LIMIT = 500

#: send(job_ids): one ``pollen.submit`` message for admitted jobs
SendSubmits = Callable[[list[str]], None]


def entry(job: Job) -> Entry:
    deadline_at = job.deadline_at or job.created_at + job.policy.deadline
    return Entry(job.id, job.tenant, job.priority, job.created_at, deadline_at)


def _admit(
    deps: Deps,
    provider: str,
    *,
    now: float,
    limit: int,
    enqueue: Sequence[Job] = (),
    requeue: Sequence[tuple[str, str, str]] = (),
    cooldown: float = 0.0,
) -> Admitted:
    capacity = deps.capacity
    result = deps.store.admission.admit(
        provider,
        now=now,
        limit=limit,
        caps=capacity.admitting(provider),
        shares=capacity.shares(),
        enqueue=[entry(job) for job in enqueue],
        requeue=requeue,
        cooldown_until=now + max(cooldown, deps.settings.admission.cooldown),
        capped=capacity.capped(provider),
    )
    if result.admitted:
        metrics.ADMITTED.labels(provider).inc(len(result.admitted))
    return result


def gate(
    deps: Deps, provider: str, jobs: Sequence[Job], *, now: float
) -> tuple[list[Job], int, list[Job]]:
    """Of a capped provider's queued ``jobs``, the ones to send now, each with its account,
    plus waiting jobs the free slots admitted ahead of them (fairness decides, not arrival);
    how many of ``jobs`` wait; and waiting jobs whose deadline passed (to time out, never
    sent). One round trip (two when others were admitted or expired)."""
    limit = max(len(jobs), deps.settings.batch_size)
    result = _admit(deps, provider, now=now, limit=limit, enqueue=jobs)
    mine = {job.id: job for job in jobs}
    ready: list[Job] = []
    for job_id, account in {**result.held, **result.admitted}.items():
        if job_id in mine:
            ready.append(mine[job_id].model_copy(update={"account": account}))
    others = [job_id for job_id in result.admitted if job_id not in mine]
    # a job admitted but expired before this read is missing: the sweep frees its slot
    read = (
        deps.store.lifecycle.get_many(others + result.expired) if others or result.expired else []
    )
    # (a job cancelled between its admission and this read gave its slot back: not sent)
    found = [job for job in read if job is not None and job.status is JobStatus.QUEUED]
    ready += [job for job in found if job.id not in result.expired]
    for job_id, reason in result.waiting.items():
        log.info("job %s waits: %s", job_id, reason)
    return ready, len(result.waiting), [job for job in found if job.id in result.expired]


def pump(
    deps: Deps, providers: Iterable[str], send: SendSubmits, *, now: float, drain: bool = False
) -> int:
    """Admit waiting jobs of the capped ``providers`` into their free slots and send their
    submits (batches of ``contract.SUBMIT_BATCH_JOBS``); how many were admitted. With
    ``drain`` (the periodic round), also the jobs still waiting for a provider that no worker
    caps any more (its cap was removed everywhere, not only on this worker): they all go."""
    count = 0
    pumped = set(providers) & deps.capacity.capped_providers
    if drain:
        pumped |= {p for p in set(providers) - pumped if deps.store.admission.stranded(p)}
    for provider in sorted(pumped):
        result = _admit(deps, provider, now=now, limit=PUMP_LIMIT)
        admitted = list(result.admitted)
        # jobs past their deadline go to the submit step too, which times them out
        due = admitted + result.expired
        for start in range(0, len(due), contract.SUBMIT_BATCH_JOBS):
            send(due[start : start + contract.SUBMIT_BATCH_JOBS])
        count += len(admitted)
    return count


def requeue(
    deps: Deps,
    provider: str,
    refused: Sequence[Job],
    *,
    now: float,
    kind: str = "capacity",
    retry_after: float | None = None,
) -> int:
    """Give back the slots of jobs whose create the provider refused and put the jobs back at
    their place in the queue; how many. ``kind`` ``capacity`` (a 429): the account's cap is
    lowered to what it holds; ``auth`` (it refused the account's key, while the provider has
    other accounts): the account takes no job. Either for the cooldown, or the provider's
    ``retry_after`` when longer (up to a day)."""
    items = [(job.id, job.account, kind) for job in refused if job.account]
    if not items:
        return 0
    cooldown = min(retry_after or 0.0, MAX_COOLDOWN)
    result = _admit(deps, provider, now=now, limit=0, requeue=items, cooldown=cooldown)
    accounts = ", ".join(sorted({a for _, a, _ in items}))
    wait = max(cooldown, deps.settings.admission.cooldown)
    if kind == "capacity":
        metrics.CAPACITY_REFUSALS.labels(provider).inc(len(items))
        log.warning(
            "%s refused %d create(s) for capacity; the jobs wait in pollen and the cap of "
            "account(s) %s is lowered to what they hold for %gs",
            provider, len(items), accounts, wait,
        )  # fmt: skip
    else:
        log.error(
            "%s refused the key of account(s) %s; their %d job(s) wait for the other accounts, "
            "and the account takes no job for %gs",
            provider, accounts, len(items), wait,
        )  # fmt: skip
    return result.requeued


def sweep(deps: Deps) -> int:
    """Take back the slots of jobs that vanished without giving theirs back; how many."""
    freed = 0
    for provider in sorted(deps.capacity.capped_providers):
        ids = deps.store.admission.sweep(provider, [a for a, _ in deps.capacity.caps(provider)])
        if ids:
            log.warning("%s: took back %d slot(s) of vanished jobs: %s", provider, len(ids),
                        ids[:10])  # fmt: skip
        freed += len(ids)
        deps.store.admission.prune(provider)
    return freed
