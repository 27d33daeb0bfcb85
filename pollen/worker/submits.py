"""The submit step for a batch of jobs: read all, create every provider task, record all.

One ``pollen.submit`` message may carry many stored jobs (:meth:`pollen.Pollen.submit_many`,
or a single job). :func:`submit_batch` reads them in one round trip, asks each provider once
for all its jobs (a Runware task array; the Runway dialects concurrently) and says, per job,
when its first poll is due or when its submit is tried again. Each create request's
acknowledgements are recorded the moment they arrive (:class:`Arrivals`: the job moves to
``submitted`` with its provider task id), so a worker killed mid-batch loses only the creates
that were in flight; the other outcomes are recorded together at the end. Idempotent: a job
already submitted is only re-armed (its next poll).

Runware keys each task by the job's ``task_uuid``, so a create sent again makes no second
task. The Runway dialects take no such key: their creates are marked sent before the request
and the mark is cleared with the answer, so a job whose earlier create was never answered (its
worker died with the request in flight, or the answer was lost) is counted when it is created
again (``pollen_submit_ambiguous_total``) and logged with both attempts.

No Celery here; one job's failure is its own.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from pollen.backoff import PollPolicy, next_delay
from pollen.callbacks import events
from pollen.errors import (
    ProviderNotConfigured,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    RetryableProviderError,
    TerminalProviderError,
)
from pollen.models import Job, JobStatus
from pollen.providers import push as tokens
from pollen.providers.base import Submission
from pollen.store import pushes
from pollen.store.lifecycle import Move
from pollen.worker import admission, logs, metrics
from pollen.worker.cancels import cancel_at_provider
from pollen.worker.deliveries import emit
from pollen.worker.grouping import Due
from pollen.worker.runtime import Deps

log = logging.getLogger(__name__)


@dataclass
class SubmitNext:
    """What the caller should do after a batch of submits."""

    polls: list[Due] = field(default_factory=list)  #: each submitted job's next poll
    retries: list[tuple[str, float]] = field(default_factory=list)  #: (job, seconds) to retry
    deliveries: list[str] = field(default_factory=list)  #: callback deliveries to send now
    finished: list[str] = field(default_factory=list)  #: jobs this batch ended
    missing: list[str] = field(default_factory=list)  #: ids with no stored job
    fresh: set[str] = field(default_factory=set)  #: jobs whose first submit this was
    waiting: int = 0  #: jobs that wait for a capped provider account's slot
    providers: set[str] = field(default_factory=set)


@dataclass
class Ending:
    """A job to end without a provider answer that says so."""

    job: Job
    status: JobStatus
    code: str
    message: str


def submit_batch(deps: Deps, job_ids: Sequence[str]) -> SubmitNext:
    """Submit every stored job of ``job_ids`` once; see the module docstring."""
    now = deps.clock()
    out = SubmitNext()
    endings: list[Ending] = []
    sending: dict[str, list[Job]] = {}
    for job_id, job in zip(job_ids, deps.store.lifecycle.get_many(job_ids), strict=True):
        if job is None:
            out.missing.append(job_id)
            continue
        out.providers.add(job.provider)
        ending = _triage(deps, out, job, now)
        if ending is not None:
            endings.append(ending)
        elif job.status is JobStatus.QUEUED:
            sending.setdefault(job.provider, []).append(job)
        if job.status is JobStatus.QUEUED and job.submit_attempts == 0:
            out.fresh.add(job.id)
    endings += _gate(deps, out, sending, now)
    _spread(deps, sending)
    acks = Acks()
    for provider, jobs in sending.items():
        endings += _send(deps, out, provider, jobs, acks)
    _settle(deps, out, acks, now)
    end(deps, out, endings, now)
    return out


def _settle(deps: Deps, out: SubmitNext, acks: Acks, now: float) -> None:
    """Record the acknowledgements not recorded as they arrived (one round trip), then
    follow up every acknowledged job: cancelled meanwhile, pushed meanwhile."""
    moved = deps.store.lifecycle.transition_many(acks.moves, now=now)
    for job, done in zip(acks.unrecorded, moved, strict=True):
        if done == 1 and events.wants(job, "started"):
            out.deliveries += emit(deps, job, "started", events.started_payload(job))
    settled = [*acks.recorded, *zip(acks.unrecorded, moved, strict=True)]
    for job, done in settled:
        if done == 0 and _cancelled_meanwhile(deps, job):
            out.polls = [due for due in out.polls if due.job_id != job.id]
    _pushed_meanwhile(deps, out, [job for job, done in settled if done == 1])


@dataclass
class Acks:
    """The jobs the providers acknowledged in one batch, as ``submitted`` jobs."""

    #: (job, its move's result) of those recorded as their answers arrived
    recorded: list[tuple[Job, int]] = field(default_factory=list)
    #: those whose answer could not be recorded on arrival, with their moves (recorded last)
    unrecorded: list[Job] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)


#: codes of a create that got no answer from the provider: it may or may not have made the task
NO_ANSWER = frozenset({"timeout", "connection", "request"})


class Arrivals:
    """Records each create request's answers the moment they arrive, from the thread that
    got them (:data:`pollen.providers.calls.Arrivals`), in one round trip per request: an
    acknowledged job moves to ``submitted`` with its provider task id (and its ``started``
    event is recorded), every answered job loses its unanswered mark. A write that fails is
    left to the batch's own write at the end."""

    def __init__(self, deps: Deps, jobs: Sequence[Job], attempts: Sequence[int]) -> None:
        self.deps = deps
        self.jobs = jobs
        self.attempts = attempts
        self.marked = not deps.providers[jobs[0].provider].keyed_creates
        self.moved: dict[int, tuple[Move, int]] = {}  #: index -> (its move, the result)
        self.deliveries: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, indexes: Sequence[int], answers: Sequence[Submission | Exception]) -> None:
        now = self.deps.clock()
        acks = [(i, a) for i, a in zip(indexes, answers, strict=True) if isinstance(a, Submission)]
        moves = [_submitted(self.deps, self.jobs[i], a, now) for i, a in acks]
        heard = [
            self.jobs[i].id for i, a in zip(indexes, answers, strict=True) if answered(a)
        ] if self.marked else []  # fmt: skip
        try:
            results = self.deps.store.lifecycle.record_answers(moves, heard, now=now)
        except Exception:  # the batch records them at the end (or the reconciler resumes)
            log.exception("recording %d create answers as they arrived", len(answers))
            return
        with self._lock:
            self.moved.update(
                (i, (move, done)) for (i, _), move, done in zip(acks, moves, results, strict=True)
            )
        for (i, answer), done in zip(acks, results, strict=True):
            if done == 1:
                self._started(_as_submitted(self.jobs[i], answer))

    def sending(self, index: int) -> None:
        """Mark a create without an idempotency key as sent, just before its request goes
        (a mark that stays says the create was never answered)."""
        job = self.jobs[index]
        self.deps.store.lifecycle.mark_sent(job.id, self.attempts[index], now=self.deps.clock())

    def _started(self, job: Job) -> None:
        if not events.wants(job, "started"):
            return
        try:
            sent = emit(self.deps, job, "started", events.started_payload(job))
        except Exception:  # one job's event must not cost the others their records
            log.exception("recording the started event of job %s", job.id)
            return
        with self._lock:
            self.deliveries += sent


def answered(answer: Submission | Exception) -> bool:
    """Whether the provider answered the create (else it may or may not have made the task)."""
    if isinstance(answer, Submission):
        return True
    if isinstance(answer, (RetryableProviderError, TerminalProviderError)):
        return answer.code not in NO_ANSWER
    return False


def _as_submitted(job: Job, answer: Submission) -> Job:
    update = {"status": JobStatus.SUBMITTED, "provider_task_id": answer.provider_task_id}
    return job.model_copy(update=update)


def _gate(deps: Deps, out: SubmitNext, sending: dict[str, list[Job]], now: float) -> list[Ending]:
    """A capped provider's jobs take a slot first: those admitted are sent (with jobs that
    waited and whose turn it is), the others wait in pollen's queue; waiting jobs whose
    deadline passed end (timed out)."""
    endings: list[Ending] = []
    for provider in [p for p in sending if deps.capacity.capped(p)]:
        sending[provider], waiting, expired = admission.gate(
            deps, provider, sending[provider], now=now
        )
        out.waiting += waiting
        endings += [e for job in expired if (e := _triage(deps, out, job, now)) is not None]
    return endings


def _spread(deps: Deps, sending: dict[str, list[Job]]) -> None:
    """An uncapped provider's job without an account gets one of the accounts with a key,
    in turns (per worker process); the submit keeps it on the job, so polls go there too."""
    for provider, jobs in sending.items():
        dialect = deps.providers[provider]
        accounts = dialect.usable_accounts()
        if deps.capacity.capped(provider) or len(dialect.accounts) < 2 or not accounts:
            continue
        for index, job in enumerate(jobs):
            if job.account is None:
                turn = deps.turns.get(provider, 0)
                deps.turns[provider] = turn + 1
                jobs[index] = job.model_copy(
                    update={"account": accounts[turn % len(accounts)].name}
                )


def _pushed_meanwhile(deps: Deps, out: SubmitNext, started: Sequence[Job]) -> None:
    """A provider that pushed while its submit answer was on its way (a fast task, a slow
    network) has news already: poll those jobs at once instead of after the first delay."""
    pushing = [job.id for job in started if job.push_token]
    pushed = deps.store.run(pushes.pushed(pushing)) if pushing else set()
    if pushed:
        now = deps.clock()
        out.polls = [
            Due(due.job_id, due.attempt, now, now) if due.job_id in pushed else due
            for due in out.polls
        ]


def _cancelled_meanwhile(deps: Deps, job: Job) -> bool:
    """The provider took a task for a job that was cancelled while the request was in
    flight: cancel that task too (where the provider can) and keep its id and the outcome.
    False when the job was not cancelled (an earlier copy of the message submitted it)."""
    if deps.store.lifecycle.field(job.id, "status") != JobStatus.CANCELLED.value:
        return False
    note, _ = cancel_at_provider(deps, job)
    deps.store.lifecycle.late_task(job.id, job.provider_task_id or "", note)
    with logs.bound(job_id=job.id, provider=job.provider, provider_task_id=job.provider_task_id):
        log.info("the provider took the task of a job cancelled meanwhile: %s", note)
    return True


def _send(deps: Deps, out: SubmitNext, provider: str, jobs: list[Job], acks: Acks) -> list[Ending]:
    """Create the tasks of one provider's jobs; what ends a job is returned."""
    endings = _keyless(deps, jobs)
    ended = {ending.job.id for ending in endings}
    jobs = [job for job in jobs if job.id not in ended]
    if not jobs:  # a capped provider's jobs may all wait
        return endings
    jobs, attempts = _begin(deps, out, provider, jobs)
    if not jobs:
        return endings
    metrics.JOBS_STARTED.labels(provider).inc(attempts.count(1))
    arrivals = Arrivals(deps, jobs, attempts)
    sending = arrivals.sending if arrivals.marked else None
    answers = deps.calls.submit_many(provider, jobs, arrivals, sending=sending)
    out.deliveries += arrivals.deliveries
    now = deps.clock()  # the first poll is due its delay after the provider took the task
    retries: list[tuple[str, str, float]] = []
    refused: dict[str, list[Job]] = {}
    for index, (job, count, answer) in enumerate(zip(jobs, attempts, answers, strict=True)):
        refusal = _refusal(deps, job, answer)
        if refusal is not None:  # not the job's failure: it waits in pollen again
            metrics.SUBMITS.labels(job.provider, refusal).inc()
            refused.setdefault(refusal, []).append(job)
        elif isinstance(answer, Submission):
            _acknowledged(deps, out, acks, arrivals.moved.get(index), job, answer, count, now)
        elif isinstance(answer, TerminalProviderError):
            metrics.SUBMITS.labels(job.provider, "rejected").inc()
            endings.append(_rejected(job, answer))
        else:  # retryable, or not a provider's answer at all (a time limit, a parser bug)
            ending = _retry(deps, out, retries, job, count, _retryable(job, answer), now)
            if ending is not None:
                endings.append(ending)
    deps.store.schedule.retry_later(retries)
    retry_after = max(
        (a.retry_after or 0.0 for a in answers if isinstance(a, RateLimited)), default=0.0
    )
    for kind, jobs_refused in refused.items():
        out.waiting += admission.requeue(
            deps, provider, jobs_refused, now=now, kind=kind, retry_after=retry_after
        )
    return endings


def _begin(
    deps: Deps, out: SubmitNext, provider: str, jobs: list[Job]
) -> tuple[list[Job], list[int]]:
    """Count an attempt of each job and keep its request (and, for a provider without
    idempotency keys, count the earlier creates never answered); the jobs still stored, as
    they will be sent, and their attempt numbers."""
    jobs = _with_push_tokens(deps, provider, jobs)
    fresh = {job.id: job.push_token for job in jobs if job.push_token}
    # admission owns a capped job's account (its slot); an uncapped job's is kept here
    capped = deps.capacity.capped(provider)
    accounts = {job.id: job.account for job in jobs if job.account and not capped}
    sent = [(job.id, _sent(deps, job)) for job in jobs]
    keyed = deps.providers[provider].keyed_creates
    begun = deps.store.lifecycle.begin_submits(sent, fresh, accounts, marks=not keyed)
    out.missing += [job.id for job, n in zip(jobs, begun.attempts, strict=True) if not n]
    _ambiguous(jobs, begun.attempts, begun.unanswered)
    # a job whose record is gone meanwhile (expired) is not created; another copy of this
    # submit may have given a job its token or its account first
    present = [
        (
            job.model_copy(
                update={
                    "push_token": begun.claimed["push_token"].get(job.id, job.push_token),
                    "account": begun.claimed["account"].get(job.id, job.account),
                }
            ),
            n,
        )
        for job, n in zip(jobs, begun.attempts, strict=True)
        if n
    ]
    return [job for job, _ in present], [n for _, n in present]


def _ambiguous(jobs: Sequence[Job], attempts: Sequence[int], unanswered: dict[str, str]) -> None:
    """Count and log each job created again although an earlier create of it was never
    answered: the provider may now hold two tasks for the job (see docs/guarantees.md)."""
    for job, attempt in zip(jobs, attempts, strict=True):
        mark = unanswered.get(job.id)
        if mark is None or not attempt:
            continue
        earlier, _, sent_at = mark.partition("@")
        metrics.SUBMIT_AMBIGUOUS.labels(job.provider).inc()
        with logs.bound(job_id=job.id, provider=job.provider):
            log.warning(
                "create attempt %s (sent at %s) was never answered (its worker died or the "
                "answer was lost); attempt %d creates the task again: the provider may hold "
                "two tasks for this job",
                earlier, sent_at, attempt,
            )  # fmt: skip


def _acknowledged(
    deps: Deps,
    out: SubmitNext,
    acks: Acks,
    recorded: tuple[Move, int] | None,
    job: Job,
    answer: Submission,
    attempts: int,
    now: float,
) -> None:
    """Count and log one acknowledged create and schedule its first poll; an answer not
    recorded on arrival is recorded with the batch."""
    move = recorded[0] if recorded else _submitted(deps, job, answer, now)
    result = "already_submitted" if answer.already_submitted else "accepted"
    metrics.SUBMITS.labels(job.provider, result).inc()
    with logs.bound(job_id=job.id, provider=job.provider,
                    provider_task_id=answer.provider_task_id):  # fmt: skip
        log.info("submitted (%s) on attempt %d", result.replace("_", " "), attempts)
    due = move.expect_by if move.expect_by is not None else now
    out.polls.append(Due(job.id, 1, due, due))
    if recorded:
        acks.recorded.append((_as_submitted(job, answer), recorded[1]))
    else:
        acks.moves.append(move)
        acks.unrecorded.append(_as_submitted(job, answer))


def _refusal(deps: Deps, job: Job, answer: object) -> str | None:
    """Whether a capped account's create was refused as the account's, not the job's:
    ``capacity`` (a 429: a full account or a daily cap), ``auth`` (the account's key refused
    while the provider has other accounts with a key), else None."""
    if not job.account or not deps.capacity.capped(job.provider):
        return None
    if isinstance(answer, RateLimited):
        return "capacity"
    if (
        isinstance(answer, ProviderRejected)
        and answer.status in (401, 403)
        and len(deps.capacity.admitting(job.provider)) > 1
    ):
        return "auth"
    return None


def end(deps: Deps, out: SubmitNext, endings: Sequence[Ending], now: float) -> None:
    """Move each ending's job to its terminal status (one round trip) and send its
    ``completed`` event once."""
    moves = [
        Move(e.job.id, e.status, fields={"error_code": e.code, "error_message": e.message})
        for e in endings
    ]
    for ending, done in zip(
        endings, deps.store.lifecycle.transition_many(moves, now=now), strict=True
    ):
        if done != 1:
            continue
        try:
            _finished(deps, out, ending)
        except Exception:  # one job's events must not cost the others theirs
            log.exception("after ending job %s", ending.job.id)


def _triage(deps: Deps, out: SubmitNext, job: Job, now: float) -> Ending | None:
    """Jobs that need no provider call: finished, already submitted, expired, unsendable."""
    if job.terminal:
        return None
    if job.status is not JobStatus.QUEUED:
        # Submitted by an earlier copy of this message: make sure polling goes on (a duplicate
        # poll message is harmless: the poll step is fenced by poll_seq).
        at = max(now, job.next_poll_at or now)
        out.polls.append(Due(job.id, max(job.poll_seq, 1), at, at))
        return None
    if job.deadline_at is not None and now >= job.deadline_at:
        message = f"no result within the {job.policy.deadline:g}s deadline"
        if job.queue_reason:
            message += f" (never admitted: it was {job.queue_reason})"
        else:
            message += " (never accepted)"
        return Ending(job, JobStatus.TIMED_OUT, "deadline", message)
    return _misconfigured(deps, job)


def _misconfigured(deps: Deps, job: Job) -> Ending | None:
    missing = deps.providers[job.provider].unsendable(job)
    if missing:  # this worker can never submit it: fail now, not after an hour of retries
        metrics.SUBMITS.labels(job.provider, "misconfigured").inc()
        return _rejected(job, ProviderNotConfigured.missing(missing))
    return None


def _keyless(deps: Deps, jobs: Sequence[Job]) -> list[Ending]:
    """Jobs whose account (given at admission) has no key: they fail, the others go."""
    return [ending for job in jobs if (ending := _misconfigured(deps, job)) is not None]


def _with_push_tokens(deps: Deps, provider: str, jobs: list[Job]) -> list[Job]:
    """A job the provider will push about (``POLLEN_INGRESS__PUBLIC_URL`` set, a provider that
    pushes, no push URL of the producer's own) and without a push token gets a new one (kept
    by :meth:`pollen.store.lifecycle.Lifecycle.begin_submits` unless the job got one
    meanwhile)."""
    dialect = deps.providers[provider]
    return [
        job.model_copy(update={"push_token": tokens.new_token(job.id)})
        if not job.push_token and dialect.pushes(job)
        else job
        for job in jobs
    ]


def _sent(deps: Deps, job: Job) -> object:
    """The request pollen sends for this job (kept for the audit, push token hidden)."""
    request = deps.providers[job.provider].submit_request(job, job.task_uuid)
    content = request.content.decode()
    if job.push_token:
        content = content.replace(job.push_token, tokens.redact(job.push_token))
    return json.loads(content)


def _submitted(deps: Deps, job: Job, answer: Submission, now: float) -> Move:
    """The move of a job whose task the provider took at ``now``: its first poll is due its
    delay after that."""
    first = next_delay(job.policy, 0, elapsed=now - job.created_at, rng=deps.rng) or 0.0
    fields = {
        "provider_task_id": answer.provider_task_id,
        "submitted_at": repr(now),
        "submit_response": answer.envelope,
        "poll_seq": "1",
        "next_poll_at": repr(now + first),
    }
    relaxed = _relaxed(deps, job)
    if relaxed is not None:
        fields["policy"] = relaxed.model_dump_json(exclude_defaults=True)
    return Move(job.id, JobStatus.SUBMITTED, expect_by=now + first, fields=fields)


def _relaxed(deps: Deps, job: Job) -> PollPolicy | None:
    """The poll policy of a job the provider will push about, when pushes relax polling
    (``POLLEN_INGRESS__POLL_MAX_DELAY`` above the job's cap); None to keep the job's own."""
    cap = deps.settings.ingress.poll_max_delay
    if cap is None or cap <= job.policy.max_delay:
        return None
    if deps.providers[job.provider].push_url(job) is None:
        return None
    return job.policy.model_copy(update={"max_delay": cap})


def _retry(
    deps: Deps,
    out: SubmitNext,
    retries: list[tuple[str, str, float]],
    job: Job,
    attempts: int,
    exc: RetryableProviderError,
    now: float,
) -> Ending | None:
    metrics.SUBMITS.labels(job.provider, "retry").inc()
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
    delay = next_delay(
        job.policy, attempts, elapsed=now - job.created_at, retry_after=retry_after,
        rng=deps.rng,
    )  # fmt: skip
    error = f"{exc.code}: {exc.message}"
    if delay is None:
        message = f"no result within the {job.policy.deadline:g}s deadline"
        ending = Ending(job, JobStatus.TIMED_OUT, "deadline",
                         f"{message}; last provider error: {exc.message}")  # fmt: skip
        retries.append((job.id, error, now))
        return ending
    retries.append((job.id, error, now + delay))
    out.retries.append((job.id, delay))
    with logs.bound(job_id=job.id, provider=job.provider):
        log.warning("submit attempt %d failed, retrying in %.1fs: %s", attempts, delay, exc)
    return None


def _rejected(job: Job, exc: TerminalProviderError) -> Ending:
    return Ending(job, JobStatus.FAILED, exc.code or "providerError", exc.message)


def _retryable(job: Job, exc: Exception) -> RetryableProviderError:
    """A submit that did not get the provider's answer is tried again (the provider keys a
    task by its taskUUID where it can)."""
    if isinstance(exc, RetryableProviderError):
        return exc
    with logs.bound(job_id=job.id, provider=job.provider):
        log.error("submit interrupted; it is retried like a provider failure: %r", exc)
    return ProviderUnavailable(f"submit interrupted: {exc!r}", code="interrupted")


def _finished(deps: Deps, out: SubmitNext, ending: Ending) -> None:
    job = ending.job
    out.finished.append(job.id)
    metrics.job_finished(
        deps.tenant_labels, job.provider, ending.status.value, job.tenant, job.cost
    )
    level = logging.INFO if ending.status is JobStatus.SUCCEEDED else logging.WARNING
    detail = f" ({ending.code}: {ending.message})" if ending.code else ""
    with logs.bound(job_id=job.id, provider=job.provider):
        log.log(level, "job %s%s", ending.status.value, detail)
    if events.wants(job, "completed"):
        final = deps.store.lifecycle.get(job.id)
        out.deliveries += emit(deps, final, "completed", events.completion_payload(final))
