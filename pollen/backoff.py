"""The poll schedule: a pure function of the policy, the attempt number and the clock.

Nothing here talks to Celery or Redis, so the schedule can be unit- and property-tested.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PollPolicy(BaseModel):
    """How often to ask a provider whether a job is done.

    The first poll waits ``initial_delay`` after submission (long jobs such as videos need not
    be asked about at once). After the n-th unfinished poll the next one waits
    ``interval * factor**(n-1)``, capped at ``max_delay``, minus up to ``jitter`` of itself,
    never below ``min_delay``. No poll is scheduled past ``deadline`` seconds after the job was
    accepted: the job then ends ``timed_out``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_delay: float = Field(2.0, ge=0, le=3600, description="Seconds before the first poll.")
    interval: float = Field(1.0, gt=0, le=3600, description="Delay after the first poll.")
    factor: float = Field(1.5, ge=1, le=10, description="Growth of the delay per attempt.")
    max_delay: float = Field(30.0, gt=0, le=3600, description="Cap of one delay, seconds.")
    min_delay: float = Field(0.2, ge=0, le=3600, description="Floor of a jittered delay.")
    jitter: float = Field(0.2, ge=0, le=1, description="Fraction of a delay taken off at random.")
    deadline: float = Field(
        3600.0,
        gt=0,
        le=7 * 86400,
        description="Seconds after acceptance before a job ends timed_out.",
    )

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> PollPolicy:
        if self.min_delay > self.max_delay:
            raise ValueError("min_delay must not exceed max_delay")
        return self


def base_delay(policy: PollPolicy, attempt: int) -> float:
    """Un-jittered delay after poll number ``attempt`` (1-based), capped at max_delay."""
    if attempt < 1:
        return min(policy.initial_delay, policy.deadline)
    if policy.factor == 1 or policy.interval >= policy.max_delay:
        return min(policy.max_delay, policy.interval)
    # Past the attempt that reaches the cap the delay stays there; bounding the exponent
    # keeps huge attempt numbers from overflowing a float.
    to_cap = math.ceil(math.log(policy.max_delay / policy.interval, policy.factor))
    exponent = min(attempt - 1, to_cap)
    return min(policy.max_delay, policy.interval * policy.factor**exponent)


def next_delay(
    policy: PollPolicy,
    attempt: int,
    *,
    elapsed: float,
    retry_after: float | None = None,
    hint: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before the next poll, or None when the deadline has passed.

    ``attempt`` is the number of polls made so far (0 before the first), ``elapsed`` the
    seconds since the job was accepted. ``retry_after`` (a provider's Retry-After) is a lower
    bound even above the cap; ``hint`` (a provider's own estimate) replaces the exponential
    delay but stays within [min_delay, max_delay]. The result never reaches past the deadline.
    """
    remaining = policy.deadline - elapsed
    if remaining <= 0:
        return None
    if attempt < 1:
        delay = policy.initial_delay
    else:
        delay = base_delay(policy, attempt)
        if hint is not None:
            delay = min(max(hint, policy.min_delay), policy.max_delay)
        delay *= 1 - policy.jitter * (rng or random).random()
        delay = max(delay, policy.min_delay)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, remaining)


def schedule(policy: PollPolicy, rng: random.Random | None = None) -> Iterator[float]:
    """The delays a job that never finishes would wait, up to its deadline."""
    elapsed, attempt = 0.0, 0
    while (delay := next_delay(policy, attempt, elapsed=elapsed, rng=rng)) is not None:
        yield delay
        elapsed += delay
        attempt += 1
