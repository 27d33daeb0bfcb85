"""Every way a job ends gives back its provider-account slot, and the next waiting job gets it.

A Runware account capped at two tasks at once (``max_in_flight``), real Redis and the
simulator over HTTP; the worker's steps are called directly (submit, poll, cancel, the
periodic pump and sweep), and one test runs the same paths on real worker processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from pollen import JobStatus, contract, payloads
from pollen.local.servers import RedisServer
from pollen.settings import Settings, TenantSettings
from pollen.simulator import SimulatorServer
from pollen.store import keys
from pollen.store.admission import ProviderQueue
from pollen.worker import admission, batch, cancels, submits
from pollen.worker.reconciler import reconcile
from pollen.worker.runtime import Deps, build_deps
from tests import steps
from tests.conftest import eventually
from tests.fleet import Fleet
from tests.helpers import sim_faults, video_request
from tests.test_cli import pollen

pytestmark = pytest.mark.integration

CAP = 2
SLOTS = keys.slots("runware", "default")


@contextmanager
def capped_deps(settings: Settings, **update: Any) -> Iterator[Deps]:
    """The steps' dependencies with the Runware key capped at :data:`CAP` tasks at once (and
    ``update`` applied to the settings)."""
    runware = settings.runware.model_copy(update={"max_in_flight": CAP})
    built = build_deps(settings.model_copy(update={"runware": runware, **update}))
    try:
        yield built
    finally:
        built.http.close()
        built.store.redis.close()


@pytest.fixture
def capped(settings: Settings, clean: None) -> Iterator[Deps]:
    with capped_deps(settings) as deps:
        yield deps


def labelled(label: str, durations: list[float], errors: list[str | None] | None = None) -> Any:
    """A Runware video request whose prompt is ``label`` (how the simulator's tasks are told
    apart)."""
    request = video_request(durations, errors)
    request["positivePrompt"] = label
    return request


def accept(
    deps: Deps,
    label: str,
    durations: list[float] | None = None,
    errors: list[str | None] | None = None,
    **job: Any,
) -> str:
    """Store a new Runware video job (see :func:`labelled`); no message is sent."""
    payload = {"provider": "runware", "request": labelled(label, durations or [0.2], errors), **job}
    job_id, created = payloads.accept(deps.settings, deps.store, payload, now=time.time())
    assert created
    return job_id


def holders(deps: Deps) -> list[str]:
    """The jobs holding a slot of the capped account, in Redis."""
    return [str(job_id) for job_id in deps.store.redis.zrange(SLOTS, 0, -1)]


def in_use(deps: Deps) -> int:
    return queue(deps).in_use


def waiting(deps: Deps) -> dict[str, int]:
    """Tenant -> its jobs waiting for a slot."""
    return queue(deps).waiting


def queue(deps: Deps) -> ProviderQueue:
    return deps.store.admission.queue_state(
        "runware", deps.capacity.caps("runware"), now=time.time()
    )


def created_at_provider(simulator: SimulatorServer) -> list[str]:
    """The labels of every task the simulator was asked to create."""
    tasks = httpx.get(f"{simulator.url}/_sim/finished").json()["tasks"]
    return sorted(task["label"] for task in tasks.values())


def pump(deps: Deps) -> list[str]:
    """The periodic round's admission: the jobs it admitted (their submits are not sent)."""
    sent: list[list[str]] = []
    admission.pump(deps, ["runware"], sent.append, now=deps.clock())
    return [job_id for ids in sent for job_id in ids]


def hold_every_slot(deps: Deps) -> list[str]:
    """Two long jobs running, holding both slots."""
    running = [accept(deps, "running-1", [30.0]), accept(deps, "running-2", [30.0])]
    for job_id in running:
        assert steps.submit(deps, job_id).poll_in is not None
    return running


def full(deps: Deps) -> tuple[list[str], str]:
    """Two running jobs holding both slots, and one waiting for them."""
    running = hold_every_slot(deps)
    behind = accept(deps, "waiting")
    assert submits.submit_batch(deps, [behind]).waiting == 1
    assert holders(deps) == running and waiting(deps) == {"default": 1}
    return running, behind


def assert_freed(deps: Deps, job_id: str, behind: str) -> None:
    """``job_id`` gave back its slot, and the periodic round admits ``behind`` into it."""
    assert job_id not in holders(deps)
    assert in_use(deps) == CAP - 1
    assert pump(deps) == [behind]
    assert behind in holders(deps) and in_use(deps) == CAP and waiting(deps) == {}
    assert deps.store.lifecycle.get(behind).account == "default"


def assert_never_admitted(deps: Deps, job_id: str) -> None:
    """The job timed out waiting for a slot, and its error says so."""
    job = deps.store.lifecycle.get(job_id)
    assert job.status is JobStatus.TIMED_OUT and job.error is not None
    assert "never admitted: it was waiting for capacity on runware" in job.error.message


def test_a_job_that_succeeds_gives_back_its_slot(capped: Deps) -> None:
    quick = accept(capped, "quick", [0.1])
    steps.submit(capped, quick)
    other = accept(capped, "other", [30.0])
    steps.submit(capped, other)
    behind = accept(capped, "behind")
    assert submits.submit_batch(capped, [behind]).waiting == 1
    assert pump(capped) == []  # every slot is held
    time.sleep(0.3)
    assert batch.poll_batch(capped, [(quick, 1)]).finished == [quick]
    assert capped.store.lifecycle.get(quick).status is JobStatus.SUCCEEDED
    assert_freed(capped, quick, behind)


def test_a_job_the_provider_fails_gives_back_its_slot(capped: Deps) -> None:
    job_id = accept(capped, "failing", [0.1], ["timeoutProvider"])
    steps.submit(capped, job_id)
    steps.submit(capped, accept(capped, "other", [30.0]))
    behind = accept(capped, "behind")
    submits.submit_batch(capped, [behind])
    time.sleep(0.3)
    batch.poll_batch(capped, [(job_id, 1)])
    assert capped.store.lifecycle.get(job_id).status is JobStatus.FAILED
    assert_freed(capped, job_id, behind)


def test_a_job_past_its_deadline_while_running_gives_back_its_slot(capped: Deps) -> None:
    (late, _), behind = full(capped)
    capped.clock = lambda: time.time() + 7200  # past every deadline
    batch.poll_batch(capped, [(late, 1)])
    capped.clock = time.time
    job = capped.store.lifecycle.get(late)
    assert job.status is JobStatus.TIMED_OUT and job.error is not None
    assert_freed(capped, late, behind)


def test_a_job_cancelled_while_running_gives_back_its_slot(capped: Deps) -> None:
    (cancelled, _), behind = full(capped)
    answer, _ = steps.cancel(capped, cancelled, "no longer needed")
    assert answer.cancelled
    cancels.follow_up(capped, cancelled)
    assert_freed(capped, cancelled, behind)


def test_a_job_cancelled_while_it_waits_leaves_the_queue_and_never_reaches_the_provider(
    capped: Deps, simulator: SimulatorServer
) -> None:
    (first, _), cancelled = full(capped)
    behind = accept(capped, "behind")
    submits.submit_batch(capped, [behind])
    assert waiting(capped) == {"default": 2}
    answer, _ = steps.cancel(capped, cancelled, "changed my mind")
    assert answer.cancelled and answer.job.status is JobStatus.CANCELLED
    assert waiting(capped) == {"default": 1}  # it left the queue at once
    assert capped.store.redis.hget(keys.job(cancelled), "waiting") is None
    cancels.follow_up(capped, cancelled)
    note = capped.store.lifecycle.get(cancelled).cancel_note
    assert note is not None and note.startswith("cancelled before it was submitted")
    steps.cancel(capped, first, "make room")
    assert pump(capped) == [behind]  # the next one in line, not the cancelled job
    assert submits.submit_batch(capped, [cancelled, behind]).polls[0].job_id == behind
    assert created_at_provider(simulator) == ["behind", "running-1", "running-2"]


def test_a_create_the_provider_refuses_gives_back_its_slot(
    capped: Deps, simulator: SimulatorServer
) -> None:
    steps.submit(capped, accept(capped, "running", [30.0]))
    refused, behind = accept(capped, "refused"), accept(capped, "behind")
    sim_faults(simulator.url, ["400"])
    out = submits.submit_batch(capped, [refused, behind])
    assert out.finished == [refused] and out.waiting == 1
    job = capped.store.lifecycle.get(refused)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "http400"
    assert_freed(capped, refused, behind)


def test_a_create_without_an_answer_keeps_its_slot_until_the_job_ends(
    capped: Deps, simulator: SimulatorServer
) -> None:
    steps.submit(capped, accept(capped, "running", [30.0]))
    unanswered, behind = accept(capped, "unanswered", [0.1]), accept(capped, "behind")
    sim_faults(simulator.url, ["timeout"])  # the simulator takes the task, after the client gave up
    out = submits.submit_batch(capped, [unanswered, behind])
    assert [job_id for job_id, _ in out.retries] == [unanswered] and out.waiting == 1
    # the provider may have its task: the slot stays taken while the create is tried again
    assert unanswered in holders(capped) and pump(capped) == []
    eventually(lambda: "unanswered" in created_at_provider(simulator), timeout=15,
               what="the simulator to create the task")  # fmt: skip
    again = submits.submit_batch(capped, [unanswered])
    assert [due.job_id for due in again.polls] == [unanswered]
    job = capped.store.lifecycle.get(unanswered)
    assert job.status is JobStatus.SUBMITTED and job.account == "default"
    assert unanswered in holders(capped) and pump(capped) == []
    time.sleep(0.3)
    batch.poll_batch(capped, [(unanswered, 1)])
    assert capped.store.lifecycle.get(unanswered).status is JobStatus.SUCCEEDED
    assert_freed(capped, unanswered, behind)
    assert created_at_provider(simulator).count("unanswered") == 1


def test_a_create_that_never_gets_an_answer_gives_back_its_slot_at_the_deadline(
    capped: Deps, simulator: SimulatorServer
) -> None:
    steps.submit(capped, accept(capped, "running", [30.0]))
    unanswered, behind = accept(capped, "unanswered"), accept(capped, "behind")
    sim_faults(simulator.url, ["503", "503"])
    assert submits.submit_batch(capped, [unanswered, behind]).retries
    assert submits.submit_batch(capped, [unanswered]).retries  # still held while it retries
    assert unanswered in holders(capped) and pump(capped) == []
    capped.clock = lambda: time.time() + 7200
    out = submits.submit_batch(capped, [unanswered])
    capped.clock = time.time
    assert out.finished == [unanswered]
    job = capped.store.lifecycle.get(unanswered)
    assert job.status is JobStatus.TIMED_OUT and job.error is not None
    assert "never accepted" in job.error.message
    assert_freed(capped, unanswered, behind)


def test_the_sweep_takes_back_the_slot_of_a_job_whose_record_expired(capped: Deps) -> None:
    (vanished, kept), behind = full(capped)
    assert admission.sweep(capped) == 0  # every holder is alive: nothing is taken
    capped.store.redis.delete(keys.job(vanished))
    assert admission.sweep(capped) == 1
    assert holders(capped) == [kept]
    assert_freed(capped, vanished, behind)
    assert admission.sweep(capped) == 0


def test_a_deadline_that_passes_while_a_job_waits_times_it_out_and_it_leaves_the_queue(
    capped: Deps, worker_env: dict[str, str]
) -> None:
    _, late = full(capped)
    job = capped.store.lifecycle.get(late)
    assert job.queue_reason is not None and "waiting for capacity on runware" in job.queue_reason
    status = pollen(worker_env, "status", late)  # the status line says why it waits
    assert status.returncode == 0, status.stderr
    assert status.stdout.rstrip().endswith(f"priority=0 queue reason: {job.queue_reason}")
    assert job.deadline_at is not None
    sent: list[tuple[str, dict[str, object]]] = []
    now = job.deadline_at + capped.settings.reconcile_grace + 1
    report = reconcile(capped.store, lambda name, kwargs: sent.append((name, kwargs)), now=now)
    assert report.resubmitted == [late]  # the reconciler wakes it at its deadline
    assert (contract.SUBMIT, {"job_ids": [late]}) in sent
    capped.clock = lambda: now
    assert submits.submit_batch(capped, [late]).finished == [late]
    assert_never_admitted(capped, late)
    assert waiting(capped) == {} and in_use(capped) == CAP
    assert pump(capped) == []


def test_real_workers_give_back_every_slot(
    worker_env: dict[str, str], redis_server: RedisServer, simulator: SimulatorServer,
    tmp_path: Any, clean: None,
) -> None:  # fmt: skip
    """Success, provider failure and cancels (running and waiting) on real worker processes:
    the slots of a capped account are given back, the waiting jobs get them, and the cap is
    never passed at the provider."""
    with Fleet(
        worker_env, redis_server.url(0), tmp_path, POLLEN_RUNWARE__MAX_IN_FLIGHT=str(CAP),
        POLLEN_TICK_INTERVAL="0.2",
    ) as fleet:  # fmt: skip
        fleet.start("capped", concurrency=2)
        with fleet.client() as client:
            longs = [client.submit("runware", labelled(f"long-{i}", [30.0])) for i in range(CAP)]
            eventually(
                lambda: all(client.get(j).status is JobStatus.PROCESSING for j in longs),
                timeout=30, what="the long jobs to run",
            )  # fmt: skip
            queued = client.submit("runware", labelled("cancelled-waiting", [0.2]))
            eventually(lambda: client.get(queued).queue_reason, timeout=30, what="it to wait")
            assert client.cancel(queued).cancelled
            ok = [client.submit("runware", labelled(f"ok-{i}", [0.3])) for i in range(3)]
            failing = client.submit("runware", labelled("failing", [0.2], ["timeoutProvider"]))
            assert all(client.get(job_id).status is JobStatus.QUEUED for job_id in ok)
            for job_id in longs:
                client.cancel(job_id)
            ends = {job_id: client.wait(job_id, timeout=30).status for job_id in ok}
            assert set(ends.values()) == {JobStatus.SUCCEEDED}
            assert client.wait(failing, timeout=30).status is JobStatus.FAILED
            store = client.store.redis
            eventually(lambda: store.zcard(SLOTS) == 0, timeout=10, what="every slot back")
            assert store.hgetall(keys.admit("runware", "waiting")) == {}
    tasks = httpx.get(f"{simulator.url}/_sim/finished").json()["tasks"].values()
    assert sorted(t["label"] for t in tasks) == [
        "failing", "long-0", "long-1", "ok-0", "ok-1", "ok-2"
    ]  # fmt: skip
    # the cancelled tasks run on at the provider (Runware has no cancel call); the others
    # never ran more than the cap at once, as the simulator saw them
    spans = [(t["created_at"], max(t["finished_at"])) for t in tasks]
    spans = [(start, end) for start, end in spans if end - start < 29]
    assert len(spans) == 4 and most_at_once(spans) <= CAP


def test_real_workers_take_back_the_slot_of_an_expired_record(
    worker_env: dict[str, str], redis_server: RedisServer, tmp_path: Any, clean: None
) -> None:
    """The periodic round's sweep finds the slot of a job whose record is gone, and the next
    waiting job gets it, with no call from anyone."""
    with Fleet(
        worker_env, redis_server.url(0), tmp_path, POLLEN_RUNWARE__MAX_IN_FLIGHT=str(CAP),
        POLLEN_TICK_INTERVAL="0.2",
    ) as fleet:  # fmt: skip
        fleet.start("capped", concurrency=2)
        with fleet.client() as client:
            vanished, other = [client.submit("runware", labelled(f"long-{i}", [30.0]))
                               for i in range(CAP)]  # fmt: skip
            eventually(lambda: client.store.redis.zcard(SLOTS) == CAP, timeout=30,
                       what="both slots held")  # fmt: skip
            behind = client.submit("runware", labelled("behind", [0.2]))
            eventually(lambda: client.get(behind).queue_reason, timeout=30, what="it to wait")
            client.store.redis.delete(keys.job(vanished))  # as if its TTL ran out
            assert client.wait(behind, timeout=30).status is JobStatus.SUCCEEDED
            held = [str(job_id) for job_id in client.store.redis.zrange(SLOTS, 0, -1)]
            assert held == [other]
            client.cancel(other)
            eventually(lambda: client.store.redis.zcard(SLOTS) == 0, timeout=10,
                       what="every slot back")  # fmt: skip


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) intervals that overlap at one time."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_the_sweep_gives_back_a_tenant_its_share_of_a_job_whose_record_expired(
    settings: Settings, clean: None
) -> None:
    with capped_deps(settings, tenants={"acme": TenantSettings(max_in_flight=1)}) as deps:
        vanished = accept(deps, "vanished", [30.0], tenant="acme")
        steps.submit(deps, vanished)
        behind = accept(deps, "behind", tenant="acme")
        assert submits.submit_batch(deps, [behind]).waiting == 1  # acme holds its one slot
        deps.store.redis.delete(keys.job(vanished))
        assert admission.sweep(deps) == 1
        assert deps.store.redis.zcard(keys.admit("runware", "held:acme")) == 0
        assert pump(deps) == [behind]


def test_a_job_whose_deadline_passed_in_the_queue_is_never_given_a_slot(capped: Deps) -> None:
    first, second = hold_every_slot(capped)
    late, behind = accept(capped, "late", deadline=60), accept(capped, "behind")
    assert submits.submit_batch(capped, [late, behind]).waiting == 2
    capped.clock = lambda: time.time() + 120  # past the late job's deadline only
    steps.cancel(capped, first, "make room")
    sent: list[list[str]] = []
    assert admission.pump(capped, ["runware"], sent.append, now=capped.clock()) == 1
    # the slot goes to a job that can still use it; the late one's submit times it out
    assert holders(capped) == [second, behind] and waiting(capped) == {}
    assert sorted(job_id for ids in sent for job_id in ids) == sorted([late, behind])
    assert submits.submit_batch(capped, [late]).finished == [late]
    assert_never_admitted(capped, late)


def test_a_submit_that_meets_a_job_expired_in_the_queue_times_it_out(capped: Deps) -> None:
    first, second = hold_every_slot(capped)
    late = accept(capped, "late", deadline=60)
    assert submits.submit_batch(capped, [late]).waiting == 1
    newer = accept(capped, "newer")
    capped.clock = lambda: time.time() + 120  # past the late job's deadline only
    steps.cancel(capped, first, "make room")
    out = submits.submit_batch(capped, [newer])  # the late one is first in line, and too late
    assert out.finished == [late] and [due.job_id for due in out.polls] == [newer]
    assert holders(capped) == [second, newer] and waiting(capped) == {}
    assert_never_admitted(capped, late)


def test_a_job_that_expired_in_the_queue_costs_its_tenant_no_turn(capped: Deps) -> None:
    first, second = hold_every_slot(capped)
    queue = [
        accept(capped, "a-late", deadline=60, tenant="a"),
        accept(capped, "b-1", tenant="b"),
        accept(capped, "a-2", tenant="a"),
    ]
    assert submits.submit_batch(capped, queue).waiting == 3
    capped.clock = lambda: time.time() + 120  # past a-late's deadline only
    steps.cancel(capped, first, "make room")
    # a's turn comes first (equal passes, neither served yet); its late job takes no slot
    # and no turn, so a's next job goes
    assert pump(capped) == [queue[2], queue[0]]  # admitted, then the late one to time out
    assert holders(capped) == [second, queue[2]] and waiting(capped) == {"b": 1}


@contextmanager
def expiring_after_the_read(deps: Deps, job_id: str) -> Iterator[None]:
    """The job's record expires just after the submit step read it."""
    read = deps.store.lifecycle.get_many

    def read_then_expire(job_ids: Any) -> Any:
        found = read(job_ids)
        deps.store.redis.delete(keys.job(job_id))
        return found

    deps.store.lifecycle.get_many = read_then_expire  # type: ignore[method-assign]
    try:
        yield
    finally:
        deps.store.lifecycle.get_many = read  # type: ignore[method-assign]


def test_a_record_that_expires_during_its_submit_takes_no_slot(
    capped: Deps, simulator: SimulatorServer
) -> None:
    (_, kept), behind = full(capped)
    steps.cancel(capped, kept, "make room")
    vanishing = accept(capped, "vanishing")
    with expiring_after_the_read(capped, vanishing):
        out = submits.submit_batch(capped, [vanishing])
    assert [due.job_id for due in out.polls] == [behind]  # the slot went to the next in line
    assert capped.store.redis.exists(keys.job(vanishing)) == 0
    assert "vanishing" not in created_at_provider(simulator)
    assert vanishing not in holders(capped) and in_use(capped) == CAP


def test_a_record_that_expires_during_its_submit_is_not_created_nor_written_again(
    deps: Deps, simulator: SimulatorServer
) -> None:
    vanishing = accept(deps, "vanishing")  # no cap: straight to the create
    with expiring_after_the_read(deps, vanishing):
        out = submits.submit_batch(deps, [vanishing])
    assert out.missing == [vanishing] and out.polls == [] and out.retries == []
    assert deps.store.redis.exists(keys.job(vanishing)) == 0  # no bare record without a TTL
    assert created_at_provider(simulator) == []


def test_a_retry_noted_for_a_record_gone_meanwhile_writes_nothing(deps: Deps) -> None:
    kept, gone = accept(deps, "kept"), accept(deps, "gone")
    deps.store.redis.delete(keys.job(gone))
    deps.store.schedule.retry_later([(kept, "http503: busy", 1.0), (gone, "http503: busy", 1.0)])
    assert deps.store.lifecycle.raw(kept)["last_error"] == "http503: busy"
    assert deps.store.redis.exists(keys.job(gone)) == 0
