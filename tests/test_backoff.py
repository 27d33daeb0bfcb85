"""The poll schedule (:mod:`pollen.backoff`): unit tests and Hypothesis properties.

Everything here is pure: no Redis, no Celery, no clock. ``elapsed`` is passed explicitly and
randomness comes from seeded ``random.Random`` instances.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pollen.backoff import PollPolicy, base_delay, next_delay, schedule

# Relative slack for float rounding when delays are added up (elapsed += delay).
FLOAT_SLACK = 1e-9
PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

seconds = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def policies(draw: st.DrawFn, *, deadline: st.SearchStrategy[float] | None = None) -> PollPolicy:
    """A valid PollPolicy within sane ranges (min_delay <= max_delay, interval <= max_delay)."""
    interval = draw(st.floats(0.01, 60))
    factor = draw(st.floats(1, 4))
    max_delay = draw(st.floats(interval, 3600))
    min_delay = draw(st.floats(0, max_delay))
    jitter = draw(st.floats(0, 0.9))
    initial_delay = draw(st.floats(0, 600))
    return PollPolicy(
        initial_delay=initial_delay,
        interval=interval,
        factor=factor,
        max_delay=max_delay,
        min_delay=min_delay,
        jitter=jitter,
        deadline=draw(deadline if deadline is not None else st.floats(1, 3600)),
    )


def min_step(policy: PollPolicy) -> float:
    """A lower bound of every delay after the first poll (except the one clamped to the end)."""
    smallest_base = min(policy.interval, policy.max_delay)
    return max(policy.min_delay, smallest_base * (1 - policy.jitter))


@st.composite
def bounded_policies(draw: st.DrawFn, max_steps: int = 2000) -> PollPolicy:
    """Policies whose never-ending job has at most ~max_steps polls (keeps schedule() fast)."""
    policy = draw(policies())
    budget = max_steps * min_step(policy)
    deadline = min(policy.deadline, budget)
    return policy.model_copy(update={"deadline": deadline})


FAR = 7 * 86400.0  # the largest deadline: far beyond any single delay
attempts = st.integers(1, 500)


# --------------------------------------------------------------------------- unit tests


def test_defaults_follow_the_documented_shape() -> None:
    policy = PollPolicy(jitter=0)
    # initial_delay, then interval * factor**(n-1) capped at max_delay.
    assert next_delay(policy, 0, elapsed=0) == 2.0
    assert [base_delay(policy, n) for n in (1, 2, 3)] == [1.0, 1.5, 2.25]
    assert base_delay(policy, 100) == 30.0
    assert base_delay(policy, 10**9) == 30.0  # huge attempt numbers do not overflow


def test_attempt_zero_base_delay_is_the_initial_delay_clamped_to_the_deadline() -> None:
    assert base_delay(PollPolicy(initial_delay=5, deadline=60), 0) == 5
    assert base_delay(PollPolicy(initial_delay=500, deadline=60), 0) == 60


def test_jitter_only_shortens_and_respects_the_floor() -> None:
    policy = PollPolicy(interval=10, factor=1, max_delay=10, min_delay=6, jitter=0.9)
    delays = {next_delay(policy, 1, elapsed=0, rng=random.Random(seed)) for seed in range(200)}
    assert all(d is not None and 6 <= d <= 10 for d in delays)
    assert min(d for d in delays if d is not None) == 6  # the floor is hit, not undercut
    assert len(delays) > 10  # jitter actually varies the delay


def test_no_jitter_gives_exact_delays() -> None:
    policy = PollPolicy(initial_delay=1, interval=2, factor=2, max_delay=10, jitter=0)
    delays = list(itertools.islice(schedule(policy, random.Random(1)), 6))
    assert delays == [1, 2, 4, 8, 10, 10]


def test_schedule_ends_exactly_at_the_deadline() -> None:
    policy = PollPolicy(initial_delay=1, interval=2, factor=2, max_delay=10, jitter=0, deadline=20)
    delays = list(schedule(policy))
    assert delays == [1, 2, 4, 8, 5]
    assert sum(delays) == 20


def test_next_delay_is_none_at_and_after_the_deadline() -> None:
    policy = PollPolicy(deadline=60)
    assert next_delay(policy, 3, elapsed=60) is None
    assert next_delay(policy, 3, elapsed=61) is None
    assert next_delay(policy, 0, elapsed=60, retry_after=5) is None
    assert next_delay(policy, 3, elapsed=59.5, rng=random.Random(0)) == 0.5


def test_retry_after_beats_the_cap_but_not_the_deadline() -> None:
    policy = PollPolicy(max_delay=30, deadline=600, jitter=0)
    assert next_delay(policy, 1, elapsed=0, retry_after=120) == 120
    assert next_delay(policy, 1, elapsed=550, retry_after=120) == 50
    assert next_delay(policy, 0, elapsed=0, retry_after=120) == 120  # before the first poll too


def test_hint_replaces_the_exponential_delay_within_the_bounds() -> None:
    policy = PollPolicy(interval=1, min_delay=0.5, max_delay=30, jitter=0)
    assert next_delay(policy, 1, elapsed=0, hint=12) == 12
    assert next_delay(policy, 1, elapsed=0, hint=1000) == 30
    assert next_delay(policy, 1, elapsed=0, hint=0) == 0.5


def test_seeded_rng_gives_reproducible_schedules() -> None:
    policy = PollPolicy(jitter=0.5, deadline=300)
    first = list(schedule(policy, random.Random(42)))
    again = list(schedule(policy, random.Random(42)))
    other = list(schedule(policy, random.Random(43)))
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"min_delay": 31, "max_delay": 30}, "min_delay"),
        ({"interval": 0}, "interval"),
        ({"interval": -1}, "interval"),
        ({"max_delay": 0}, "max_delay"),
        ({"max_delay": -3}, "max_delay"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -5}, "deadline"),
        ({"initial_delay": -1}, "initial_delay"),
        ({"min_delay": -0.1}, "min_delay"),
        ({"factor": 0.5}, "factor"),
        ({"factor": 0}, "factor"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
        ({"interval": math.nan}, "interval"),
        ({"deadline": math.inf}, "deadline"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_policy_refuses_bad_values(fields: dict[str, Any], name: str) -> None:
    with pytest.raises(ValidationError) as info:
        PollPolicy(**fields)
    assert name in str(info.value)


def test_policy_is_frozen() -> None:
    policy = PollPolicy()
    with pytest.raises(ValidationError):
        policy.interval = 5  # type: ignore[misc]


def test_base_delay_with_a_small_factor_still_reaches_the_cap() -> None:
    # Regression: the exponent used to be bounded at 200, so a factor close to 1 plateaued
    # below max_delay (here at 1.02**200 = 52 s instead of growing to 3600 s).
    policy = PollPolicy(interval=1, factor=1.02, max_delay=3600)
    # 1.02**414 > 3600: poll 415 onwards should wait the full max_delay.
    assert base_delay(policy, 500) == pytest.approx(min(3600, 1.02**499))
    assert base_delay(policy, 1000) == 3600
    assert base_delay(policy, 10**12) == 3600


# --------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(policy=policies(deadline=st.just(FAR)), attempt=attempts, seed=st.integers(0, 2**32))
def test_delays_after_the_first_poll_stay_within_bounds(
    policy: PollPolicy, attempt: int, seed: int
) -> None:
    delay = next_delay(policy, attempt, elapsed=0, rng=random.Random(seed))
    assert delay is not None
    assert policy.min_delay <= delay <= policy.max_delay
    # Jitter only ever takes off; it never adds.
    assert delay <= max(base_delay(policy, attempt), policy.min_delay)


@PROPERTY_SETTINGS
@given(policy=policies(), attempt=st.integers(0, 10_000))
def test_base_delay_is_non_decreasing_and_capped(policy: PollPolicy, attempt: int) -> None:
    here, after = base_delay(policy, attempt + 1), base_delay(policy, attempt + 2)
    assert here <= after <= policy.max_delay
    assert here >= min(policy.interval, policy.max_delay)


@PROPERTY_SETTINGS
@given(policy=policies(), data=st.data())
def test_base_delay_reaches_the_cap(policy: PollPolicy, data: st.DataObject) -> None:
    if policy.factor > 1:
        growth = policy.max_delay / policy.interval
        # Exponent that reaches the cap (+1 below: a margin for rounding of the logarithm).
        needed = math.ceil(math.log(growth) / math.log(policy.factor)) if growth > 1 else 0
        beyond = data.draw(st.integers(needed + 1, needed + 10_000), label="attempt")
        # Equal up to float rounding: with factors a few ulps above 1 the computed exponent
        # can land one step short and plateau 1 ulp below max_delay (harmless).
        cap = pytest.approx(policy.max_delay, rel=1e-12)
        assert base_delay(policy, beyond) == cap
        assert base_delay(policy, beyond * 10**6) == cap  # and stays there
    else:
        # factor 1: the delay never grows past the interval.
        assert base_delay(policy, 10_000) == min(policy.interval, policy.max_delay)


@PROPERTY_SETTINGS
@given(policy=bounded_policies(), seed=st.integers(0, 2**32))
def test_schedule_ends_within_the_deadline(policy: PollPolicy, seed: int) -> None:
    bound = 3 + math.ceil(policy.deadline / min_step(policy))
    delays = list(itertools.islice(schedule(policy, random.Random(seed)), bound + 1))
    assert len(delays) <= bound, "schedule() did not end"
    assert all(d >= 0 for d in delays)
    total = 0.0
    for delay in delays:
        total += delay
    assert total <= policy.deadline * (1 + FLOAT_SLACK)
    # It does end *at* the deadline: a never-finishing job uses its whole time budget.
    assert total == pytest.approx(policy.deadline, rel=1e-9, abs=1e-9)


@PROPERTY_SETTINGS
@given(
    policy=policies(),
    attempt=st.integers(0, 500),
    overshoot=st.floats(0, 10**6),
    retry_after=st.none() | st.floats(0, 10**5),
    hint=st.none() | st.floats(0, 10**5),
)
def test_next_delay_is_none_once_the_deadline_has_passed(
    policy: PollPolicy,
    attempt: int,
    overshoot: float,
    retry_after: float | None,
    hint: float | None,
) -> None:
    elapsed = policy.deadline + overshoot
    assert next_delay(policy, attempt, elapsed=elapsed, retry_after=retry_after, hint=hint) is None


@PROPERTY_SETTINGS
@given(
    policy=policies(),
    attempt=st.integers(0, 500),
    progress=st.floats(0, 0.999999),
    retry_after=st.floats(0, 10**5),
    seed=st.integers(0, 2**32),
)
@example(
    policy=PollPolicy(max_delay=30, deadline=3600), attempt=3, progress=0, retry_after=3000, seed=0
)
def test_retry_after_is_a_lower_bound_that_never_passes_the_deadline(
    policy: PollPolicy, attempt: int, progress: float, retry_after: float, seed: int
) -> None:
    elapsed = policy.deadline * progress
    remaining = policy.deadline - elapsed
    delay = next_delay(
        policy, attempt, elapsed=elapsed, retry_after=retry_after, rng=random.Random(seed)
    )
    assert delay is not None
    assert delay <= remaining
    assert delay >= min(retry_after, remaining)


@PROPERTY_SETTINGS
@given(
    policy=policies(deadline=st.just(FAR)),
    attempt=attempts,
    hint=st.floats(0, 10**7),
    seed=st.integers(0, 2**32),
)
def test_hint_stays_within_bounds(policy: PollPolicy, attempt: int, hint: float, seed: int) -> None:
    delay = next_delay(policy, attempt, elapsed=0, hint=hint, rng=random.Random(seed))
    assert delay is not None
    assert policy.min_delay <= delay <= policy.max_delay
    assert delay <= max(hint, policy.min_delay)  # jitter takes off the hint, never adds


@PROPERTY_SETTINGS
@given(policy=policies(), seed=st.integers(0, 2**32))
def test_first_delay_is_the_initial_delay_clamped_to_the_deadline(
    policy: PollPolicy, seed: int
) -> None:
    expected = min(policy.initial_delay, policy.deadline)
    assert next_delay(policy, 0, elapsed=0, rng=random.Random(seed)) == expected
    assert next(schedule(policy, random.Random(seed))) == expected


@PROPERTY_SETTINGS
@given(policy=bounded_policies(max_steps=300), seed=st.integers(0, 2**32))
def test_seeded_schedules_are_reproducible(policy: PollPolicy, seed: int) -> None:
    assert list(schedule(policy, random.Random(seed))) == list(
        schedule(policy, random.Random(seed))
    )


@PROPERTY_SETTINGS
@given(
    max_delay=st.floats(0.01, 3600),
    excess=st.floats(1e-6, 3600),
)
def test_min_delay_above_max_delay_is_refused(max_delay: float, excess: float) -> None:
    with pytest.raises(ValidationError, match="min_delay"):
        PollPolicy(interval=max_delay, max_delay=max_delay, min_delay=max_delay + excess)
