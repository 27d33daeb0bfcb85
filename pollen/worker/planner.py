"""How a step's next polls wait and how its callbacks go out (pure: no I/O, no Celery, no clock).

A next poll waits in one of three ways:

- as the poll message's own countdown retry (``self.retry(countdown=...)``), so a chain of
  polls goes on by retries: :attr:`Plan.retry`;
- as another countdown message: :attr:`Plan.send`;
- parked in Redis, for the periodic round to send when it is due: :attr:`Plan.park`.

A callback delivery is attempted from the step itself (inline, with a short timeout, within a
time budget) or sent to the callbacks queue; a failed attempt waits again by countdown or in
the outbox's due set, which :mod:`pollen.worker.deliveries` decides.

The Celery tasks call a function here with what a step returned and do what the
:class:`Plan` says. Polls are grouped by due time with :mod:`pollen.worker.grouping`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pollen.worker.grouping import Due, Group, Item, group

if TYPE_CHECKING:
    from pollen.settings import Settings

#: a poll to keep in Redis until it is due: (job id, attempt, due time)
Parked = tuple[str, int, float]


@dataclass(frozen=True)
class Limits:
    """The settings numbers the plans depend on."""

    batch_size: int  #: most polls in one message
    park_after: float  #: waits longer than this are parked in Redis
    tick_interval: float  #: seconds between periodic rounds
    inline_timeout: float = 0.0  #: HTTP timeout of an inline delivery; 0: none inline

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            batch_size=settings.batch_size,
            park_after=settings.park_after,
            tick_interval=settings.tick_interval,
            inline_timeout=settings.inline_callback_timeout,
        )


@dataclass(frozen=True)
class Message:
    """Polls (or submits) that go in one message, to run at ``at``."""

    at: float
    items: tuple[Item, ...]

    def countdown(self, now: float) -> float:
        """Seconds from ``now`` until the batch is due (0 when it is due already)."""
        return max(0.0, self.at - now)


@dataclass(frozen=True)
class Plan:
    """What a task does after a step: send and park polls, deliver callbacks, retry."""

    retry: Message | None = None  #: the message's own countdown retry
    send: tuple[Message, ...] = ()  #: other countdown messages
    park: tuple[Parked, ...] = ()  #: polls that wait in Redis for the periodic round
    #: deliveries to attempt here, in this order, while the attempts took under ``budget``
    #: seconds; those left when the budget is spent (or an attempt errs) go to the queue
    inline: tuple[str, ...] = ()
    queue: tuple[str, ...] = ()  #: deliveries sent to the callbacks queue at once
    inline_timeout: float = 0.0  #: HTTP timeout of one inline attempt
    budget: float = 0.0  #: seconds the inline attempts may take before the rest are queued


def plan(
    polls: Iterable[Due],
    deliveries: Sequence[str] = (),
    *,
    now: float,
    limits: Limits,
    first: bool = False,
) -> Plan:
    """The plan after a poll batch (or, with ``first``, after a submit).

    The next polls go as batches grouped by due time; the largest group due within
    ``park_after`` is the message's own retry (none with ``first``). Parked in Redis instead
    (the periodic round sends it when it is due, as batches of everything parked that falls
    due together, whichever message it came from):

    - a group due later than ``park_after``, so worker memory holds no long countdowns;
    - besides the retry group, a fragment of under half a batch due after the next periodic
      round, so the fragments jitter splits off batches merge again instead of each costing
      a message of its own;
    - ``first`` (the first polls of a submit): every group due after the next round, so jobs
      submitted one message each are polled together.

    Deliveries are attempted inline when ``inline_timeout`` is over 0, within a budget of two
    timeouts, so a dead receiver cannot hold up the poll chain; a submit's (``first``) go to
    the queue.
    """
    groups = group(polls, max_size=limits.batch_size)
    mine = None if first else _largest_near(groups, now=now, limits=limits)
    small = max(2, limits.batch_size // 2)
    send: list[Message] = []
    park: list[Parked] = []
    for each in groups:
        if each is mine:
            continue
        wait = each.at - now
        merge = (first or len(each.items) < small) and wait > limits.tick_interval
        if wait > limits.park_after or merge:
            park += [(job_id, attempt, each.at) for job_id, attempt in each.items]
        else:
            send.append(_message(each))
    polls_plan = Plan(
        retry=None if mine is None else _message(mine), send=tuple(send), park=tuple(park)
    )
    return _deliver(polls_plan, deliveries, inline=not first, timeout=limits.inline_timeout)


def _largest_near(groups: list[Group], *, now: float, limits: Limits) -> Group | None:
    """The largest group due within ``park_after`` (the first of equals), or None."""
    near = [each for each in groups if each.at - now <= limits.park_after]
    return max(near, key=lambda each: len(each.items)) if near else None


def _deliver(plan: Plan, deliveries: Sequence[str], *, inline: bool, timeout: float) -> Plan:
    """``plan`` with its deliveries inline (a timeout over 0; a budget of two timeouts) or
    queued."""
    if inline and timeout > 0:
        return replace(plan, inline=tuple(deliveries), inline_timeout=timeout, budget=2 * timeout)
    return replace(plan, queue=tuple(deliveries))


def release(parked: Iterable[Parked], *, slack: float, batch_size: int) -> Plan:
    """The plan for parked polls the periodic round took: every poll goes out in a message,
    batched by due time, each waiting up to ``slack`` seconds for its batch."""
    polls = [Due(job_id, attempt, due, due + slack) for job_id, attempt, due in parked]
    return Plan(send=tuple(_message(each) for each in group(polls, max_size=batch_size)))


def submit_retries(
    retries: Iterable[tuple[str, float]], *, now: float, max_size: int, park_after: float
) -> Plan:
    """The plan for submits to try again, (job id, seconds from ``now``): those due later
    than ``park_after`` are parked in Redis (:attr:`Plan.park`, attempt 0), the others go as
    batches by due time, the earliest one the message's own retry. Items are (job id, 0)."""
    retries = list(retries)
    park = tuple((job_id, 0, now + delay) for job_id, delay in retries if delay > park_after)
    later = [Due(job_id, 0, now + delay, now + delay) for job_id, delay in retries
             if delay <= park_after]  # fmt: skip
    groups = [_message(each) for each in group(later, max_size=max_size)]
    if not groups:
        return Plan(park=park)
    return Plan(retry=groups[0], send=tuple(groups[1:]), park=park)


def _message(each: Group) -> Message:
    return Message(each.at, tuple(each.items))
