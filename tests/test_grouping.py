"""Grouping a batch's next polls by due time: never early, never past the window or deadline."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pollen.worker.grouping import Due, due, group, window

NOW = 1_700_000_000.0

delays = st.floats(min_value=0.0, max_value=120.0, allow_nan=False)
jobs = st.lists(
    st.tuples(delays, st.one_of(st.none(), st.floats(min_value=0.0, max_value=200.0))),
    min_size=0,
    max_size=200,
)


def _polls(spec: list[tuple[float, float | None]]) -> list[Due]:
    return [
        due(
            f"j{i}",
            i + 1,
            now=NOW,
            delay=delay,
            fraction=0.1,
            cap=0.5,
            deadline_at=None if deadline is None else NOW + deadline,
        )
        for i, (delay, deadline) in enumerate(spec)
    ]


@given(jobs, st.integers(min_value=1, max_value=60))
def test_every_poll_runs_inside_its_own_window(
    spec: list[tuple[float, float | None]], size: int
) -> None:
    polls = _polls(spec)
    by_item = {(p.job_id, p.attempt): p for p in polls}
    groups = group(polls, max_size=size)
    sent = [item for g in groups for item in g.items]
    assert sorted(sent) == sorted(by_item)  # each poll exactly once
    for g in groups:
        assert 1 <= len(g.items) <= size
        for item in g.items:
            poll = by_item[item]
            assert g.at >= poll.due  # never earlier than its policy allows
            assert g.at <= poll.latest  # never later than its due time plus its window


@given(jobs)
def test_no_poll_is_sent_past_its_deadline_because_of_grouping(
    spec: list[tuple[float, float | None]],
) -> None:
    polls = _polls(spec)
    deadlines = {(f"j{i}", i + 1): NOW + d for i, (_, d) in enumerate(spec) if d is not None}
    for g in group(polls, max_size=50):
        for item in g.items:
            if item in deadlines:
                poll = next(p for p in polls if (p.job_id, p.attempt) == item)
                # the window never stretches past the deadline (a poll already due after its
                # deadline is sent when due and times the job out)
                assert g.at <= max(poll.due, deadlines[item])


def test_polls_due_close_together_share_a_batch_and_far_ones_do_not() -> None:
    close = [due(f"a{i}", 1, now=NOW, delay=10 + i * 0.01, fraction=0.1, cap=0.5) for i in range(5)]
    far = due("b", 1, now=NOW, delay=20, fraction=0.1, cap=0.5)
    groups = group([*close, far], max_size=50)
    assert [len(g.items) for g in groups] == [5, 1]
    assert groups[0].at == close[-1].due and groups[1].at == far.due


def test_a_full_group_opens_the_next_one() -> None:
    polls = [due(f"a{i}", 1, now=NOW, delay=10, fraction=0.1, cap=0.5) for i in range(7)]
    assert [len(g.items) for g in group(polls, max_size=3)] == [3, 3, 1]


def test_the_window_is_a_fraction_of_the_delay_capped() -> None:
    assert window(2.0, fraction=0.1, cap=0.5) == 0.2
    assert window(30.0, fraction=0.1, cap=0.5) == 0.5
    assert window(0.0, fraction=0.1, cap=0.5) == 0.0


def test_a_poll_marked_alone_gets_a_group_of_its_own() -> None:
    polls = [due(f"a{i}", 1, now=NOW, delay=10, fraction=0.1, cap=0.5) for i in range(3)]
    suspect = Due("s", 1, NOW + 10, NOW + 10, alone=True)
    groups = group([*polls, suspect], max_size=50)
    assert sorted(len(g.items) for g in groups) == [1, 3]
    assert [("s", 1)] in [g.items for g in groups]
