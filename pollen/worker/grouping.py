"""Grouping polls that fall due at about the same time into batches (pure, no I/O).

Every job keeps its own schedule: its backoff (jitter included) decides when it is *due*. A
batch is sent at the due time of its latest member, so no job is polled earlier than its
policy allows; each job accepts being polled up to a small *window* after it is due (a
fraction of the delay it was waiting, capped), so no job is polled later than that. The
deadline caps the window: a batch never waits past the deadline of any job in it.

Why a fraction of the delay: a job that waited 20 s loses nothing if it is asked 0.5 s late,
while one that waited 0.2 s would lose its pace; the cap keeps the callback lag of long jobs
within the schedule's own lag plus the cap. Jitter is applied per job before grouping, so
jobs still spread over their jitter range and the groups they form spread with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: a poll to send: (job id, attempt)
Item = tuple[str, int]


@dataclass(frozen=True)
class Due:
    """One job's next poll: when it is due and how late it may run."""

    job_id: str
    attempt: int
    due: float  #: earliest time the poll may run (its policy's delay after the last poll)
    latest: float  #: latest time it should run (due plus its window, never past the deadline)
    alone: bool = False  #: polled in a batch of its own (a worker died polling it)


@dataclass
class Group:
    """Polls sent together in one message at ``at``."""

    at: float
    items: list[Item] = field(default_factory=list)
    latest: float = float("inf")  #: the earliest of the members' latest times


def window(delay: float, *, fraction: float, cap: float) -> float:
    """How late a poll that waited ``delay`` seconds may run: ``fraction`` of it, at most
    ``cap`` seconds."""
    return max(0.0, min(delay * fraction, cap))


def due(
    job_id: str,
    attempt: int,
    *,
    now: float,
    delay: float,
    fraction: float,
    cap: float,
    deadline_at: float | None = None,
) -> Due:
    """The :class:`Due` of a poll ``delay`` seconds from ``now``."""
    at = now + delay
    latest = at + window(delay, fraction=fraction, cap=cap)
    if deadline_at is not None:
        latest = max(at, min(latest, deadline_at))
    return Due(job_id, attempt, at, latest)


def group(polls: Iterable[Due], *, max_size: int) -> list[Group]:
    """Batches of at most ``max_size`` polls, each sent when its latest member is due.

    Greedy over the polls in order of due time: a poll joins the open group while its due
    time is no later than every member's latest time (so the group's send time, its newest
    member's due time, is within every member's window); otherwise it opens a new group. A
    poll marked ``alone`` gets a group of its own.
    """
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    groups: list[Group] = []
    current: Group | None = None
    for poll in sorted(polls, key=lambda p: (p.due, p.latest)):
        if poll.alone:
            groups.append(Group(at=poll.due, items=[(poll.job_id, poll.attempt)]))
            continue
        if current is None or len(current.items) >= max_size or poll.due > current.latest:
            current = Group(at=poll.due, latest=poll.latest)
            groups.append(current)
        current.items.append((poll.job_id, poll.attempt))
        current.at = poll.due
        current.latest = min(current.latest, poll.latest)
    return groups
