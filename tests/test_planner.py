"""The planner: how a batch's next polls wait (own retry, countdown message, parked in Redis)
and how its callbacks go out (inline or queued). Pure, so no Redis and no worker here."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pollen.worker.grouping import Due, Item
from pollen.worker.planner import Limits, Message, Plan, plan, release, submit_retries

NOW = 1_700_000_000.0
LIMITS = Limits(batch_size=10, park_after=30.0, tick_interval=1.0, inline_timeout=2.0)


def _polls(name: str, count: int, delay: float, window: float = 0.5) -> list[Due]:
    return [Due(f"{name}{i}", 3, NOW + delay, NOW + delay + window) for i in range(count)]


def _names(items: tuple[Item, ...]) -> set[str]:
    return {job_id for job_id, _ in items}


def _parked(result: Plan) -> set[str]:
    return {job_id for job_id, _, _ in result.park}


# --- the rules, one by one ---------------------------------------------------------------


def test_a_group_due_past_park_after_is_parked_with_its_due_time() -> None:
    result = plan([*_polls("near", 6, 5.0), *_polls("far", 8, 40.0)], now=NOW, limits=LIMITS)
    assert result.retry is not None and _names(result.retry.items) == {f"near{i}" for i in range(6)}
    assert result.send == ()
    assert sorted(result.park) == sorted((f"far{i}", 3, NOW + 40.0) for i in range(8))


def test_the_largest_near_group_is_the_tasks_own_retry() -> None:
    polls = [*_polls("a", 3, 0.5), *_polls("b", 6, 5.0), *_polls("c", 7, 40.0)]
    result = plan(polls, now=NOW, limits=LIMITS)
    assert result.retry == Message(NOW + 5.0, tuple((f"b{i}", 3) for i in range(6)))
    # the larger group is past park_after: it waits in Redis, not as the retry
    assert _parked(result) == {f"c{i}" for i in range(7)}
    assert [_names(b.items) for b in result.send] == [{"a0", "a1", "a2"}]


def test_of_equal_groups_the_earliest_is_the_retry() -> None:
    result = plan([*_polls("a", 6, 2.0), *_polls("b", 6, 8.0)], now=NOW, limits=LIMITS)
    assert result.retry is not None and result.retry.at == NOW + 2.0
    assert [b.at for b in result.send] == [NOW + 8.0]  # half a batch or more: its own message


def test_a_small_fragment_due_after_the_next_tick_is_parked() -> None:
    polls = [*_polls("big", 8, 5.0), *_polls("frag", 4, 10.0)]  # 4 < half of 10
    result = plan(polls, now=NOW, limits=LIMITS)
    assert _parked(result) == {f"frag{i}" for i in range(4)}
    assert result.send == ()


def test_a_small_fragment_due_before_the_next_tick_is_sent() -> None:
    polls = [*_polls("big", 8, 5.0), *_polls("frag", 4, 0.8)]
    result = plan(polls, now=NOW, limits=LIMITS)
    assert result.park == ()
    assert result.send == (Message(NOW + 0.8, tuple((f"frag{i}", 3) for i in range(4))),)
    assert result.send[0].countdown(NOW) == pytest.approx(0.8)


def test_a_fragment_is_under_two_polls_at_least() -> None:
    """With batches of 1 to 3, a single poll is still a fragment (half a batch, at least 2)."""
    tiny = Limits(batch_size=3, park_after=30.0, tick_interval=1.0)
    polls = [*_polls("big", 3, 2.0), *_polls("one", 1, 9.0), *_polls("two", 2, 20.0)]
    result = plan(polls, now=NOW, limits=tiny)
    assert _parked(result) == {"one0"}
    assert [_names(b.items) for b in result.send] == [{"two0", "two1"}]


def test_without_a_near_group_there_is_no_retry_and_everything_is_parked() -> None:
    result = plan(_polls("far", 12, 45.0), now=NOW, limits=LIMITS)
    assert result.retry is None and result.send == ()
    assert len(result.park) == 12


def test_first_parks_every_group_due_after_the_next_round_and_sends_the_rest() -> None:
    polls = [*_polls("soon", 9, 0.5), *_polls("later", 9, 3.0), *_polls("far", 2, 50.0)]
    result = plan(polls, now=NOW, limits=LIMITS, first=True)
    assert result.retry is None
    assert [_names(b.items) for b in result.send] == [{f"soon{i}" for i in range(9)}]
    assert _parked(result) == {f"later{i}" for i in range(9)} | {"far0", "far1"}


def test_a_poll_due_already_runs_at_once() -> None:
    alone = Due("suspect", 2, NOW - 1.0, NOW - 1.0, alone=True)
    result = plan([alone, *_polls("b", 6, 5.0)], now=NOW, limits=LIMITS)
    assert result.send == (Message(NOW - 1.0, (("suspect", 2),)),)
    assert result.send[0].countdown(NOW) == 0.0


def test_callbacks_are_delivered_inline_in_order_within_two_timeouts() -> None:
    result = plan([], ["d1", "d2", "d3"], now=NOW, limits=LIMITS)
    assert result.inline == ("d1", "d2", "d3") and result.queue == ()
    assert result.inline_timeout == 2.0 and result.budget == 4.0


def test_callbacks_are_queued_when_the_inline_timeout_is_zero() -> None:
    limits = Limits(batch_size=10, park_after=30.0, tick_interval=1.0, inline_timeout=0.0)
    result = plan([], ["d1", "d2"], now=NOW, limits=limits)
    assert result.inline == () and result.queue == ("d1", "d2") and result.budget == 0.0


def test_a_submits_callbacks_are_queued() -> None:
    result = plan([], ["started"], now=NOW, limits=LIMITS, first=True)
    assert result.inline == () and result.queue == ("started",)


def test_released_polls_all_go_out_batched_by_due_time() -> None:
    parked = [("a", 1, NOW + 0.1), ("b", 2, NOW + 0.3), ("c", 1, NOW + 0.9), ("d", 1, NOW - 5)]
    result = release(parked, slack=0.5, batch_size=2)
    assert result.retry is None and result.park == ()
    assert [(b.at, _names(b.items)) for b in result.send] == [
        (NOW - 5, {"d"}),  # overdue: at once (a countdown of 0)
        (NOW + 0.3, {"a", "b"}),  # a waits 0.2 s of its 0.5 s slack for b
        (NOW + 0.9, {"c"}),
    ]


def test_submit_retries_the_earliest_batch_itself_and_sends_the_others() -> None:
    retries = [("late", 9.0), *[(f"s{i}", 1.0) for i in range(3)]]
    result = submit_retries(retries, now=NOW, max_size=2, park_after=30)
    assert result.retry == Message(NOW + 1.0, (("s0", 0), ("s1", 0)))
    assert [(b.at, b.items) for b in result.send] == [
        (NOW + 1.0, (("s2", 0),)),
        (NOW + 9.0, (("late", 0),)),
    ]
    assert result.park == ()
    assert submit_retries([], now=NOW, max_size=2, park_after=30) == Plan()


def test_a_submit_retry_due_past_park_after_waits_in_redis() -> None:
    retries = [("soon", 30.0), ("far", 30.5), ("farther", 900.0)]
    result = submit_retries(retries, now=NOW, max_size=10, park_after=30)
    assert result.retry == Message(NOW + 30.0, (("soon", 0),))
    assert result.send == ()
    assert result.park == (("far", 0, NOW + 30.5), ("farther", 0, NOW + 900.0))
    assert submit_retries([("far", 31.0)], now=NOW, max_size=10, park_after=30) == Plan(
        park=(("far", 0, NOW + 31.0),)
    )


# --- properties --------------------------------------------------------------------------

specs = st.lists(
    st.tuples(
        st.floats(min_value=-2.0, max_value=120.0, allow_nan=False),  # delay (past: overdue)
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),  # window
        st.booleans(),  # alone
    ),
    max_size=120,
)
limits = st.builds(
    Limits,
    batch_size=st.integers(min_value=1, max_value=60),
    park_after=st.floats(min_value=0.0, max_value=60.0, allow_nan=False),
    tick_interval=st.floats(min_value=0.05, max_value=10.0, allow_nan=False),
    inline_timeout=st.sampled_from([0.0, 0.5, 2.0]),
)


def _dues(spec: list[tuple[float, float, bool]]) -> list[Due]:
    return [
        Due(f"j{i}", i % 4, NOW + delay, NOW + delay + window, alone=alone and i % 7 == 0)
        for i, (delay, window, alone) in enumerate(spec)
    ]


def _messages(result: Plan) -> list[Message]:
    return [*([result.retry] if result.retry else []), *result.send]


@given(specs, limits, st.booleans())
def test_every_poll_is_planned_exactly_once_never_early_never_past_its_window(
    spec: list[tuple[float, float, bool]], limits: Limits, first: bool
) -> None:
    polls = _dues(spec)
    by_item = {(p.job_id, p.attempt): p for p in polls}
    result = plan(polls, now=NOW, limits=limits, first=first)
    planned = [item for b in _messages(result) for item in b.items]
    planned += [(job_id, attempt) for job_id, attempt, _ in result.park]
    assert Counter(planned) == Counter(by_item.keys())
    for b in _messages(result):
        assert 1 <= len(b.items) <= limits.batch_size
        assert b.countdown(NOW) >= 0.0
        for item in b.items:
            assert by_item[item].due <= b.at <= by_item[item].latest
    for job_id, attempt, at in result.park:
        assert by_item[job_id, attempt].due <= at <= by_item[job_id, attempt].latest
        # parked only when the periodic round that releases it is not due before it
        assert at - NOW > min(limits.park_after, limits.tick_interval)


@given(specs, limits, st.booleans())
def test_the_retry_is_the_largest_near_group_and_only_near_groups_are_sent(
    spec: list[tuple[float, float, bool]], limits: Limits, first: bool
) -> None:
    result = plan(_dues(spec), now=NOW, limits=limits, first=first)
    if first:
        assert result.retry is None
    if result.retry is not None:
        assert result.retry.at - NOW <= limits.park_after
        assert not _names(result.retry.items) & _parked(result)  # the retry is never parked
    small = max(2, limits.batch_size // 2)
    for b in result.send:
        assert b.at - NOW <= limits.park_after
        assert result.retry is not None or first  # a near group exists, so a retry does
        if result.retry is not None:
            assert len(b.items) <= len(result.retry.items)
        if first or len(b.items) < small:  # fragments are sent only before the next round
            assert b.at - NOW <= limits.tick_interval


@given(specs, limits)
def test_there_is_a_retry_whenever_a_group_is_due_within_park_after(
    spec: list[tuple[float, float, bool]], limits: Limits
) -> None:
    polls = _dues(spec)
    result = plan(polls, now=NOW, limits=limits)
    near = any(b.at - NOW <= limits.park_after for b in _messages(result)) or any(
        at - NOW <= limits.park_after for _, _, at in result.park
    )
    assert (result.retry is not None) == near
    assert plan(polls, now=NOW, limits=limits) == result  # a pure function of its input


@given(st.lists(st.text(min_size=1, max_size=8), max_size=20), limits, st.booleans())
def test_every_callback_is_either_inline_or_queued_in_order(
    deliveries: list[str], limits: Limits, first: bool
) -> None:
    result = plan([], deliveries, now=NOW, limits=limits, first=first)
    assert [*result.inline, *result.queue] == deliveries
    if first or limits.inline_timeout == 0:
        assert result.inline == ()
    else:
        assert result.queue == () and result.budget == 2 * limits.inline_timeout


@given(
    st.lists(st.floats(min_value=-5.0, max_value=5.0, allow_nan=False), max_size=80),
    st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
    st.integers(min_value=1, max_value=30),
)
def test_released_polls_all_go_out_once_within_the_slack(
    offsets: list[float], slack: float, size: int
) -> None:
    parked = [(f"j{i}", i, NOW + offset) for i, offset in enumerate(offsets)]
    result = release(parked, slack=slack, batch_size=size)
    assert result.retry is None and result.park == ()
    due = {(job_id, attempt): at for job_id, attempt, at in parked}
    assert Counter(item for b in result.send for item in b.items) == Counter(due.keys())
    for b in result.send:
        assert len(b.items) <= size
        assert all(due[item] <= b.at <= due[item] + slack for item in b.items)


@given(
    st.lists(st.floats(min_value=0.0, max_value=600.0, allow_nan=False), max_size=80),
    st.integers(min_value=1, max_value=30),
)
def test_submit_retries_each_job_once_never_early(delays: list[float], size: int) -> None:
    retries = [(f"j{i}", delay) for i, delay in enumerate(delays)]
    result = submit_retries(retries, now=NOW, max_size=size, park_after=300)
    parked = {job_id for job_id, _, _ in result.park}
    assert parked == {job_id for job_id, delay in retries if delay > 300}
    assert all(due == NOW + dict(retries)[job_id] for job_id, _, due in result.park)
    batches = _messages(result)
    assert (result.retry is None) == (len(parked) == len(retries))
    assert Counter(job_id for b in batches for job_id, _ in b.items) + Counter(parked) == Counter(
        job_id for job_id, _ in retries
    )
    wait = dict(retries)
    for b in batches:
        assert len(b.items) <= size
        assert all(b.at >= NOW + wait[job_id] for job_id, _ in b.items)
    if result.retry is not None:
        assert all(result.retry.at <= b.at for b in result.send)
