"""Cancelling jobs: the chain stops, the provider is asked where it documents a call, the
completion callback fires once with status ``cancelled``, and a cancel racing the end of the
job leaves exactly one terminal status. On the session's real worker, Redis and simulator."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from pollen import Cancellation, JobNotFound, JobStatus, Pollen, contract, payloads
from pollen.local.servers import CallbackReceiver, Worker
from pollen.simulator import SimulatorServer
from pollen.worker import cancels, submits
from pollen.worker.reconciler import reconcile
from tests import steps
from tests.conftest import eventually
from tests.helpers import accept_job, sim_stats, video_request

pytestmark = pytest.mark.integration


def _useapi(duration: float) -> dict[str, Any]:
    return {"text_prompt": "a slow pan over a harbour", "simulate": {"duration": duration}}


def _completions(receiver: CallbackReceiver, path: str) -> list[dict[str, Any]]:
    return [r["json"] for r in receiver.received(path) if r["json"]["type"] == "job.completed"]


def _status_items(simulator: SimulatorServer) -> int:
    return int(sim_stats(simulator.url)["tasks"].get("getResponse", 0))


def test_cancel_during_polling_stops_the_chain_and_calls_back_once(
    worker: Worker, client: Pollen, simulator: SimulatorServer, receiver: CallbackReceiver
) -> None:
    job_id = client.submit(
        "runware",
        video_request([30.0]),
        callback_url=f"{receiver.url}/cancel",
        poll={"initial_delay": 0.1, "interval": 0.2, "max_delay": 0.2},
    )
    eventually(lambda: client.get(job_id).polls >= 2, what="two polls")
    answer = client.cancel(job_id, reason="the user closed the tab")
    polls_at_cancel = _status_items(simulator)
    assert isinstance(answer, Cancellation) and answer.cancelled
    assert answer.message == f"job {job_id} cancelled"
    job = answer.job
    assert job.status is JobStatus.CANCELLED and job.terminal
    assert job.error is not None and job.error.code == "cancelled"
    assert job.error.message == "the user closed the tab"
    [completed] = eventually(lambda: _completions(receiver, "/cancel"), what="the callback")
    data = completed["data"]
    assert data["status"] == "cancelled" and data["error"]["code"] == "cancelled"
    # Runware documents no cancel call: pollen says so in the job's record and the callback
    assert "documents no cancel call" in data["cancel_note"]
    note = eventually(lambda: client.get(job_id).cancel_note, what="the cancel note")
    assert "documents no cancel call" in note
    time.sleep(1.5)  # seven poll intervals: the chain would have polled again by now
    assert _status_items(simulator) <= polls_at_cancel + 1  # at most the one in flight
    assert len(_completions(receiver, "/cancel")) == 1
    assert client.get(job_id).status is JobStatus.CANCELLED


def test_cancel_calls_the_providers_cancel_where_it_documents_one(
    worker: Worker, client: Pollen, simulator: SimulatorServer, receiver: CallbackReceiver
) -> None:
    job_id = client.submit("useapi_runway", _useapi(30.0), callback_url=f"{receiver.url}/useapi")
    eventually(lambda: client.get(job_id).provider_task_id, what="the provider task")
    assert client.cancel(job_id).cancelled
    note = eventually(lambda: client.get(job_id).cancel_note, what="the cancel note")
    assert note.startswith("task deleted at useapi.net")
    assert sim_stats(simulator.url)["tasks"]["useapi:deleteTask"] == 1
    [completed] = eventually(lambda: _completions(receiver, "/useapi"), what="the callback")
    assert completed["data"]["status"] == "cancelled"
    assert completed["data"]["cancel_note"] == note


def test_cancelling_a_finished_job_changes_nothing(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    job_id = client.submit("runware", video_request([0.1]), callback_url=f"{receiver.url}/done")
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED
    answer = client.cancel(job_id)
    assert not answer.cancelled
    assert answer.job.status is JobStatus.SUCCEEDED and answer.job.error is None
    assert "already finished (succeeded)" in answer.message
    time.sleep(0.5)
    [completed] = _completions(receiver, "/done")
    assert completed["data"]["status"] == "succeeded"
    assert client.cancel(job_id).job.results == answer.job.results  # results stay readable


def test_cancelling_an_unknown_job_is_job_not_found(client: Pollen) -> None:
    with pytest.raises(JobNotFound):
        client.cancel("no-such-job")


def test_cancel_racing_completion_leaves_one_terminal_status_and_one_callback(
    worker: Worker, client: Pollen, receiver: CallbackReceiver
) -> None:
    fast = {"initial_delay": 0.05, "interval": 0.05, "max_delay": 0.1, "min_delay": 0.01}
    job_ids = [
        client.submit(
            "runware", video_request([0.3]), callback_url=f"{receiver.url}/race", poll=fast
        )
        for _ in range(24)
    ]
    answers: dict[str, Cancellation] = {}

    def cancel(index: int, job_id: str) -> None:
        time.sleep(0.25 + 0.02 * (index % 12))  # some before, some after the end
        answers[job_id] = client.cancel(job_id)

    threads = [threading.Thread(target=cancel, args=pair) for pair in enumerate(job_ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finals = {job_id: client.wait(job_id, timeout=20).status for job_id in job_ids}
    assert set(finals.values()) <= {JobStatus.SUCCEEDED, JobStatus.CANCELLED}
    for job_id, status in finals.items():
        assert answers[job_id].cancelled == (status is JobStatus.CANCELLED)
    eventually(lambda: len(_completions(receiver, "/race")) >= len(job_ids), what="callbacks")
    time.sleep(0.5)
    by_job: dict[str, list[str]] = {}
    for body in _completions(receiver, "/race"):
        by_job.setdefault(body["data"]["job_id"], []).append(body["data"]["status"])
    assert {job_id: [finals[job_id].value] for job_id in job_ids} == by_job


def test_a_job_cancelled_before_its_submit_never_reaches_the_provider(
    deps: Any, simulator: SimulatorServer
) -> None:
    job_id = accept_job(deps, [0.2])
    answer, unsent = steps.cancel(deps, job_id, "changed my mind")
    assert answer.cancelled and answer.job.status is JobStatus.CANCELLED
    assert [message.name for message in unsent] == [contract.CANCEL]
    again, unsent = steps.cancel(deps, job_id, "again")
    assert (again.cancelled, again.job.status, unsent) == (False, JobStatus.CANCELLED, [])
    outcome = submits.submit_batch(deps, [job_id])  # its submit message arrives after
    assert outcome.polls == [] and outcome.retries == []
    assert sim_stats(simulator.url)["created"] == 0
    cancels.follow_up(deps, job_id)
    job = deps.store.lifecycle.get(job_id)
    assert job.cancel_note == "cancelled before it was submitted: nothing to cancel at the provider"
    assert cancels.follow_up(deps, job_id) == []  # done once: a second run does nothing


def test_the_provider_task_of_a_submit_in_flight_at_the_cancel_is_cancelled_too(
    deps: Any, simulator: SimulatorServer
) -> None:
    payload = {"provider": "useapi_runway", "request": _useapi(30.0)}
    job_id, _ = payloads.accept(deps.settings, deps.store, payload, now=time.time())
    real = deps.calls.submit_many

    def submit_then_cancel(provider: str, jobs: list[Any], arrived: Any, sending: Any) -> Any:
        def cancel_then_record(indexes: Any, answers: Any) -> None:
            steps.cancel(deps, job_id, "too late")  # ... as the producer cancels
            arrived(indexes, answers)

        return real(provider, jobs, cancel_then_record, sending=sending)  # the provider took it

    deps.calls.submit_many = submit_then_cancel
    try:
        outcome = submits.submit_batch(deps, [job_id])
    finally:
        deps.calls.submit_many = real
    assert outcome.polls == []  # the job is not polled
    job = deps.store.lifecycle.get(job_id)
    assert job.status is JobStatus.CANCELLED
    assert job.provider_task_id and job.cancel_note.startswith("task deleted at useapi.net")
    assert sim_stats(simulator.url)["tasks"]["useapi:deleteTask"] == 1


def test_the_reconciler_sends_a_lost_follow_up_again(deps: Any) -> None:
    job_id = accept_job(deps, [0.2])
    steps.cancel(deps, job_id, "lost message")  # and its pollen.cancel is never sent
    now = time.time()
    sent: list[tuple[str, dict[str, object]]] = []

    def send(name: str, kwargs: dict[str, object]) -> None:
        sent.append((name, kwargs))

    reconcile(deps.store, send, now=now + 1)
    assert sent == []  # not overdue yet
    report = reconcile(deps.store, send, now=now + deps.settings.reconcile_grace + 1)
    assert report.cancels == [job_id]
    assert sent == [(contract.CANCEL, {"job_id": job_id})]
    cancels.follow_up(deps, job_id)
    assert reconcile(deps.store, send, now=now + 10 * deps.settings.reconcile_grace).cancels == []


def test_cancel_on_the_command_line(worker_env: dict[str, str], client: Pollen) -> None:
    from tests.test_cli import pollen

    job_id = client.submit("runware", video_request([30.0]))
    first = pollen(worker_env, "cancel", job_id, "--reason", "from a test")
    assert first.returncode == 0 and first.stdout.strip() == f"job {job_id} cancelled"
    again = pollen(worker_env, "cancel", job_id)
    assert again.returncode == 0
    assert again.stdout.strip() == f"job {job_id} had already finished (cancelled): nothing to do"
    stored = json.loads(pollen(worker_env, "result", job_id).stdout)
    assert stored["status"] == "cancelled" and stored["error"]["message"] == "from a test"


def test_a_follow_up_for_an_expired_job_stops_and_writes_nothing(deps: Any) -> None:
    from pollen.store import keys

    job_id = accept_job(deps, [0.2])
    now = time.time()
    steps.cancel(deps, job_id, "gone soon")
    deps.store.redis.delete(keys.job(job_id))  # the record expired before a worker followed up
    assert cancels.follow_up(deps, job_id) == []
    assert not deps.store.redis.exists(keys.job(job_id))  # no bare record without a TTL
    assert deps.store.schedule.cancels_due(now + 10 * deps.settings.reconcile_grace, 100) == []


def test_a_cancel_call_that_fails_for_now_is_tried_again_and_the_callback_goes_once(
    deps: Any, simulator: SimulatorServer
) -> None:
    from pollen.store import keys
    from tests.helpers import sim_faults

    payload = {"provider": "useapi_runway", "request": _useapi(60.0), "callback_url":
               "http://127.0.0.1:9/hook"}  # fmt: skip
    job_id, _ = payloads.accept(deps.settings, deps.store, payload, now=time.time())
    submits.submit_batch(deps, [job_id])
    assert deps.store.lifecycle.get(job_id).provider_task_id
    steps.cancel(deps, job_id, "retry me")
    deps.store.redis.zadd(keys.CANCELS, {job_id: time.time() + 3600})  # the worker's reconciler
    sim_faults(simulator.url, ["503", "503"])  # the next two provider requests fail
    first = cancels.follow_up(deps, job_id)
    assert len(first) == 1  # the callback is recorded once, on the first attempt
    job = deps.store.lifecycle.get(job_id)
    assert job.cancel_note and "pollen tries again" in job.cancel_note
    assert (
        deps.store.lifecycle.field(job_id, "cancel_state") == "pending"
    )  # still to be followed up
    assert cancels.follow_up(deps, job_id) == []  # second call: 503 again, no new callback
    assert cancels.follow_up(deps, job_id) == []  # third call: deleted
    job = deps.store.lifecycle.get(job_id)
    assert job.cancel_note and job.cancel_note.startswith("task deleted at useapi.net")
    assert deps.store.lifecycle.field(job_id, "cancel_attempts") == "2"
    assert deps.store.lifecycle.field(job_id, "cancel_state") == "done"
    assert deps.store.redis.zscore(keys.CANCELS, job_id) is None
    assert sim_stats(simulator.url)["tasks"]["useapi:deleteTask"] == 1  # the 503s ran no handler
