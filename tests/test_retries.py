"""Retries without a formatted traceback (:mod:`pollen.worker.retries`): Celery's tracer,
run as the worker runs it, on a task that retries and on one that fails."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, states
from celery.app import trace
from celery.canvas import Signature

from pollen.worker import retries


@pytest.fixture
def tracer_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Celery's tracer for a task of a broker-less app (a retry's message goes nowhere)."""
    sent: list[Signature] = []
    monkeypatch.setattr(Signature, "apply_async", lambda sig, *a, **k: sent.append(sig))
    monkeypatch.setattr(trace, "ExceptionInfo", trace.ExceptionInfo)  # restored afterwards
    app = Celery("retries-test", broker="memory://", set_as_current=False)

    @app.task(bind=True, max_retries=None, name="retries.again")
    def again(self: Any) -> None:
        raise self.retry(countdown=1.5)

    @app.task(name="retries.broken")
    def broken() -> None:
        raise ValueError("a real failure")

    def build(task: Any) -> Any:
        return trace.build_tracer(task.name, task, app=app, eager=False)

    build.tasks = {"again": again, "broken": broken}  # type: ignore[attr-defined]
    build.sent = sent  # type: ignore[attr-defined]
    yield build


def test_a_retry_keeps_celerys_semantics_without_frames(tracer_of: Any) -> None:
    assert retries.install() and retries.install()  # once, and idempotent
    tracer = tracer_of(tracer_of.tasks["again"])
    result = tracer("t-1", (), {}, request={"id": "t-1", "retries": 2})
    info = result.retval
    assert isinstance(info, retries.RetryInfo)
    assert result.info.state == states.RETRY
    assert info.tb is None and info.traceback == "Retry: Retry in 1.5s\n"
    assert type(info.exception.exc).__name__ == "Retry"  # what task-retried reports
    assert pickle.loads(pickle.dumps(info)).traceback == info.traceback  # prefork sends it
    [sig] = tracer_of.sent  # the retry itself: same task, next attempt, the countdown
    assert sig.options["task_id"] == "t-1" and sig.options["countdown"] == 1.5
    assert sig.options["retries"] == 3


def test_a_failure_keeps_its_full_traceback(tracer_of: Any) -> None:
    retries.install()
    result = tracer_of(tracer_of.tasks["broken"])("t-2", (), {}, request={"id": "t-2"})
    info = result.retval
    assert result.info.state == states.FAILURE
    assert info.tb is not None
    assert 'raise ValueError("a real failure")' in info.traceback
