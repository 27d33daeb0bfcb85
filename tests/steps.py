"""Tests' shortcuts for one job: submit it, or end it, the way the worker's batch steps do;
or cancel it, the way a producer does.

The work is :func:`pollen.worker.submits.submit_batch` and :func:`pollen.worker.submits.end`
(batches of one): these only turn their answers into a :class:`Next` a test can assert on.
"""

from __future__ import annotations

from dataclasses import dataclass

from pollen import producer
from pollen.errors import JobNotFound
from pollen.models import Job, JobStatus
from pollen.producer import Cancellation, Send, Session
from pollen.store import effects
from pollen.worker.runtime import Deps
from pollen.worker.submits import Ending, SubmitNext, end, submit_batch


@dataclass(frozen=True)
class Next:
    """What the caller should do after a step."""

    poll_in: float | None = None  #: schedule poll number ``attempt`` after this many seconds
    attempt: int = 0
    submit_in: float | None = None  #: run the submit step again after this many seconds
    finished: bool = False  #: this step ended the job
    provider: str = ""  #: for the task's log and Flower repr
    deliveries: tuple[str, ...] = ()  #: callback deliveries to send now


def submit(deps: Deps, job_id: str) -> Next:
    """Create the provider task once; a redelivered submit only re-arms the poll chain."""
    out = submit_batch(deps, [job_id])
    if out.missing:
        raise JobNotFound(job_id)
    provider = next(iter(out.providers), "")
    deliveries = tuple(out.deliveries)
    if out.retries:
        return Next(submit_in=out.retries[0][1], provider=provider, deliveries=deliveries)
    if out.polls:
        poll = out.polls[0]
        return Next(poll_in=max(0.0, poll.due - deps.clock()), attempt=poll.attempt,
                    provider=provider, deliveries=deliveries)  # fmt: skip
    return Next(finished=bool(out.finished), provider=provider, deliveries=deliveries)


def finish(deps: Deps, job: Job, status: JobStatus, code: str = "", message: str = "") -> Next:
    """End one job in ``status`` now (the path every step takes when a job ends)."""
    out = SubmitNext()
    end(deps, out, [Ending(job, status, code, message)], deps.clock())
    return Next(finished=bool(out.finished), provider=job.provider,
                deliveries=tuple(out.deliveries))  # fmt: skip


def cancel(deps: Deps, job_id: str, reason: str) -> tuple[Cancellation, list[Send]]:
    """Cancel one job as :meth:`pollen.Pollen.cancel` does, but keep the follow-up message it
    sends (``pollen.cancel``) unsent: the answer, and the messages kept back."""
    unsent: list[Send] = []
    flow = producer.cancel(Session(deps.settings), job_id, reason)
    answer = producer.drive(
        flow, lambda batch: effects.execute(deps.store.redis, deps.store.scripts, batch),
        unsent.append,
    )  # fmt: skip
    return answer, unsent
