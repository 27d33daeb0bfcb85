"""Counting what a fault case left behind: terminal jobs, losses and duplicated effects."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pollen import JobLost, JobNotFound, Pollen
from pollen.local.servers import CallbackReceiver
from pollen.models import Job
from pollen.store import keys
from tests.faults.report import CaseRecord


@dataclass
class Tally:
    jobs: dict[str, Job | None] = field(default_factory=dict)  #: None: not found
    reported_lost: set[str] = field(default_factory=set)
    extra_provider_tasks: int = 0
    extra_callbacks: int = 0
    duplicate_generations: int = 0
    callback_posts: int = 0
    repeated_posts: int = 0
    completions: Counter[str] = field(default_factory=Counter)  #: job -> completed ids seen

    @property
    def terminal(self) -> list[Job]:
        return [job for job in self.jobs.values() if job is not None and job.terminal]

    @property
    def lost(self) -> list[str]:
        return [
            job_id
            for job_id, job in self.jobs.items()
            if job_id not in self.reported_lost and (job is None or not job.terminal)
        ]

    def missing_completions(self) -> list[str]:
        """Terminal jobs whose completion callback never reached the receiver."""
        return [job.id for job in self.terminal if self.completions[job.id] == 0]

    def recovery(self, fault_at: float) -> float | None:
        ends = [job.finished_at for job in self.terminal if job.finished_at is not None]
        return round(max(ends) - fault_at, 2) if ends else None

    def fill(self, record: CaseRecord, fault_at: float | None = None) -> None:
        record.jobs_submitted = len(self.jobs)
        record.jobs_terminal = len(self.terminal)
        record.lost = len(self.lost)
        record.reported_lost = len(self.reported_lost)
        record.extra_provider_tasks = self.extra_provider_tasks
        record.extra_callbacks = self.extra_callbacks
        record.duplicate_generations = self.duplicate_generations
        record.callback_posts = self.callback_posts
        record.repeated_posts = self.repeated_posts
        if fault_at is not None:
            record.recovery_s = self.recovery(fault_at)

    def assert_clean(self) -> None:
        """No job lost, no duplicated effect (what every case must show)."""
        assert not self.lost, f"jobs lost: {self.lost}"
        assert self.extra_provider_tasks == 0, "a job created more than one provider task"
        assert self.extra_callbacks == 0, "an event was sent under two webhook-ids"
        assert self.duplicate_generations == 0, "a generation was recorded twice"


def _event_key(post: dict[str, Any]) -> tuple[str, str, str] | None:
    """(job, event type, generation) of one received webhook; None if it is not pollen's."""
    body = post.get("json")
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        return None
    data = body["data"]
    result = data.get("result") if isinstance(data.get("result"), dict) else {}
    progress = str(data.get("progress", ""))
    return str(data.get("job_id")), str(body.get("type")), str(result.get("id", progress))


def count_callbacks(tally: Tally, posts: Iterable[dict[str, Any]], job_ids: set[str]) -> None:
    ids_by_event: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    seen: Counter[str] = Counter()
    for post in posts:
        key = _event_key(post)
        if key is None or key[0] not in job_ids:
            continue
        ident = str(post["headers"].get("webhook-id"))
        tally.callback_posts += 1
        seen[ident] += 1
        ids_by_event[key].add(ident)
    for (job_id, kind, _generation), ids in ids_by_event.items():
        tally.extra_callbacks += len(ids) - 1
        if kind == "job.completed":
            tally.completions[job_id] = len(ids)
    tally.repeated_posts = sum(n - 1 for n in seen.values())


def _generations(client: Pollen, job: Job) -> int:
    """Generation records beyond one per generation the provider made."""
    order = [str(i) for i in client.store.redis.lrange(keys.result_order(job.id), 0, -1)]
    stored = int(client.store.redis.hlen(keys.results(job.id)))
    extra = len(order) - len(set(order))
    extra += max(0, len(set(order)) - job.expected_results)
    extra += abs(stored - len(set(order)))
    return extra


def tally(
    client: Pollen,
    job_ids: Iterable[str],
    *,
    sim_stats: dict[str, Any] | None = None,
    receiver: CallbackReceiver | None = None,
    posts: list[dict[str, Any]] | None = None,
    settle: float = 0.0,
) -> Tally:
    """Look at every job of a case: its state, its generations, its provider task and the
    webhooks the receiver got for it (or ``posts``, what a receiver got).

    With ``settle``, wait up to that many seconds for every terminal job's completion callback
    to reach ``receiver`` first: a job's terminal state is stored before its callback is sent,
    so a tally taken the moment the last job ends can miss a callback on its way."""
    job_ids = list(job_ids)
    deadline = time.monotonic() + settle
    while receiver is not None and time.monotonic() < deadline:
        if not tally(client, job_ids, receiver=receiver).missing_completions():
            break
        time.sleep(0.2)
    result = Tally()
    for job_id in job_ids:
        try:
            job: Job | None = client.get(job_id)
        except JobLost:
            result.reported_lost.add(job_id)
            job = None
        except JobNotFound:
            job = None
        result.jobs[job_id] = job
        if job is not None:
            result.duplicate_generations += _generations(client, job)
    if sim_stats is not None:
        with_task = sum(1 for job in result.jobs.values() if job and job.provider_task_id)
        result.extra_provider_tasks = max(0, int(sim_stats["created"]) - with_task)
    if receiver is not None:
        posts = receiver.received()
    if posts is not None:
        count_callbacks(result, posts, set(result.jobs))
    return result
