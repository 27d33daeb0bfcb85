"""Claims on submit messages: a worker writes down each submit message it takes, a dead
worker's messages are sent again once its lease lapsed, and a message sent twice is one job."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import celery
import pytest
import redis

from pollen import JobStatus, Pollen
from pollen.local.servers import RedisServer, Worker
from pollen.payloads import message_job_id
from pollen.settings import Settings
from pollen.store import keys, orphans
from pollen.store.claims import Held
from pollen.store.sync import Store
from pollen.worker.reconciler import reconcile
from tests.conftest import BROKER_DB, OWN_BROKER_DB, OWN_STORE_DB, eventually
from tests.helpers import accept_job, video_request

pytestmark = pytest.mark.integration


@pytest.fixture
def quiet(redis_server: RedisServer) -> Iterator[Any]:
    """A store no worker watches (its own database): the session worker's reconciler takes
    any lapsed holder in its store, which would race the tests of lapsed holders."""
    client = redis.Redis.from_url(redis_server.url(OWN_STORE_DB), decode_responses=True)
    client.flushdb()
    yield SimpleNamespace(store=Store(client, finished_ttl=60))
    client.flushdb()
    client.close()


def test_a_lapsed_holders_messages_are_taken_once(quiet: Any) -> None:
    claims = quiet.store.claims
    dead = Held("t-1", {"job": {"provider": "runware"}}, eta=None)
    later = Held("t-2", {"job_id": "j-2"}, eta=time.time() + 30)
    claims.renew("dead", 0.5)  # leases run in the server's time
    claims.renew("alive", 30)
    claims.hold("dead", "tag-1", dead)
    claims.hold("dead", "tag-2", later)
    claims.hold("alive", "tag-3", Held("t-3", {"job_ids": ["a", "b"]}))
    claims.release("dead", ["tag-1"])  # done: not sent again
    claims.hold("dead", "tag-1b", dead)
    assert claims.take_lapsed() == []  # the lease still holds
    time.sleep(0.6)
    taken = claims.take_lapsed()
    assert taken in ([("dead", [dead, later])], [("dead", [later, dead])])
    assert claims.take_lapsed() == []  # taken once
    assert quiet.store.redis.exists(keys.held("dead")) == 0
    claims.drop("alive")  # a clean stop: nothing to send again
    claims.renew("alive", 0.01)
    time.sleep(0.05)
    assert claims.take_lapsed() == [("alive", [])]


def test_a_renewal_keeps_a_holder_alive_past_its_first_lease(quiet: Any) -> None:
    claims = quiet.store.claims
    claims.renew("w", 0.5)
    claims.hold("w", "tag", Held("t", {"job_id": "j"}))
    for _ in range(4):  # 0.8 s in all: well past the first lease
        time.sleep(0.2)
        claims.renew("w", 0.5)
    assert claims.take_lapsed() == []
    time.sleep(0.6)
    assert [held.task_id for _, messages in claims.take_lapsed() for held in messages] == ["t"]


def test_a_lease_is_the_servers_time_not_the_workers_clock(quiet: Any) -> None:
    """A worker whose clock runs an hour behind still renews for a whole lease."""
    claims = quiet.store.claims
    claims.renew("skewed", 5)
    until = float(quiet.store.redis.zscore(keys.HOLDERS, "skewed"))
    server = quiet.store.redis.time()
    assert 4.5 < until - (server[0] + server[1] / 1e6) <= 5.0


def test_a_held_submit_keeps_its_stored_jobs_off_the_overdue_list(deps: Any) -> None:
    job_id = accept_job(deps, [0.5])
    now = time.time()
    assert job_id in deps.store.schedule.overdue(now + 61, 10)  # the submit grace only
    deps.store.claims.hold(
        "w", "tag", Held("t", {"job_ids": [job_id, "gone"]}), expect_by=now + 200
    )
    assert job_id not in deps.store.schedule.overdue(now + 199, 10)
    assert job_id in deps.store.schedule.overdue(now + 201, 10)
    assert deps.store.redis.zscore(keys.INFLIGHT, "gone") is None  # XX: no entry made up


def test_the_reconciler_resends_a_dead_workers_messages_as_they_were(quiet: Any) -> None:
    now = time.time()
    message = Held("task-9", {"job": {"provider": "runware"}}, eta=now + 3, retries=2,
                   claimed_at=now)  # fmt: skip
    stale = Held("old", {"job_id": "x"}, claimed_at=now - 3600)  # its release was lost
    quiet.store.claims.renew("dead", 0.3)
    quiet.store.claims.hold("dead", message.tag, message)
    quiet.store.claims.hold("dead", stale.tag, stale)
    resent: list[Held] = []
    report = reconcile(quiet.store, lambda *_: None, now=now, resend=resent.append)
    assert resent == [] and report.held == []
    time.sleep(0.4)
    # right after a Redis restart the live workers' renewals may not have landed yet
    report = reconcile(quiet.store, lambda *_: None, now=now, resend=resent.append,
                       min_uptime=10**9)  # fmt: skip
    assert resent == []
    report = reconcile(quiet.store, lambda *_: None, now=now, resend=resent.append)
    assert resent == [message]  # same task id, arguments, retry number, due time; not stale
    assert report.held == ["task-9"]
    reconcile(quiet.store, lambda *_: None, now=now, resend=resent.append)
    assert resent == [message]


def test_messages_that_could_not_be_sent_again_are_kept_for_the_next_round(quiet: Any) -> None:
    first, second = Held("a", {"job_id": "a"}), Held("b", {"job_id": "b"})
    quiet.store.claims.renew("dead", 0.01)
    quiet.store.claims.hold("dead", first.tag, first)
    quiet.store.claims.hold("dead", second.tag, second)
    time.sleep(0.05)

    def broker_down(message: Held) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        reconcile(quiet.store, lambda *_: None, now=time.time(), resend=broker_down)
    resent: list[Held] = []
    reconcile(quiet.store, lambda *_: None, now=time.time(), resend=resent.append)
    assert sorted(m.task_id for m in resent) == ["a", "b"]


def test_an_overdue_queued_job_waits_while_the_submit_queue_has_a_backlog(deps: Any) -> None:
    job_id = accept_job(deps, [0.5])
    later = time.time() + deps.settings.submit_grace + 1
    sent: list[tuple[str, dict[str, object]]] = []
    report = reconcile(deps.store, lambda *a: sent.append(a), now=later, backlog=lambda: True)
    assert sent == [] and report.waiting == 1  # its message may still be in the queue
    grace = deps.settings.submit_grace
    report = reconcile(
        deps.store, lambda *a: sent.append(a), now=later + grace + 1, backlog=lambda: False
    )
    assert sent == [("pollen.submit", {"job_ids": [job_id]})]
    assert report.resubmitted == [job_id]


def test_the_submit_queue_counts_as_busy_a_moment_after_it_emptied(quiet: Any) -> None:
    schedule = quiet.store.schedule
    assert schedule.backlog(False, keep=0.3) is False  # never seen busy
    assert schedule.backlog(True, keep=0.3) is True
    # just emptied: a message taken from it may not be claimed yet
    assert schedule.backlog(False, keep=0.3) is True
    time.sleep(0.35)
    assert schedule.backlog(False, keep=0.3) is False


def test_a_payload_without_an_id_sent_twice_under_one_task_id_is_one_job(
    worker: Worker, client: Pollen, redis_server: RedisServer
) -> None:
    producer = celery.Celery(broker=redis_server.url(BROKER_DB))
    payload = {"provider": "runware", "request": video_request([0.2])}
    for _ in range(2):  # a redelivery, or a dead worker's message sent again
        producer.send_task(
            "pollen.submit", kwargs={"job": payload}, queue="pollen.submit", task_id="msg-1"
        )
    job_id = message_job_id("msg-1")
    eventually(lambda: client.store.lifecycle.get_many([job_id])[0], what="the job stored")
    assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED
    other = "msg-2"
    producer.send_task("pollen.submit", kwargs={"job": payload}, queue="pollen.submit",
                       task_id=other)  # fmt: skip
    eventually(
        lambda: client.store.lifecycle.get_many([message_job_id(other)])[0],
        what="the other job stored",
    )
    assert client.wait(message_job_id(other), timeout=20).status is JobStatus.SUCCEEDED
    # two task ids, two jobs; the repeated one is not a third
    assert (
        client.store.redis.zcard(keys.BY_AGE)
        + client.store.redis.zcard(keys.index("runware", "succeeded"))
        == 2
    )
    producer.close()


def test_the_worker_claims_a_submit_it_holds_and_drops_the_claim_when_done(
    worker: Worker, client: Pollen, redis_server: RedisServer
) -> None:
    producer = celery.Celery(broker=redis_server.url(BROKER_DB))
    store = client.store.redis
    # a countdown submit for a job that does not exist: held, then run as a harmless no-op
    producer.send_task(
        "pollen.submit", kwargs={"job_id": "no-such-job"}, queue="pollen.submit",
        task_id="held-1", countdown=3,
    )  # fmt: skip

    def claimed() -> list[Held]:
        found = []
        for key in store.scan_iter(match=keys.held("*")):
            found += [Held.load(str(v)) for v in store.hvals(key)]
        return [held for held in found if held.task_id == "held-1"]

    [held] = eventually(claimed, what="the claim")
    assert held.kwargs == {"job_id": "no-such-job"} and held.eta is not None

    def leases() -> list[float]:  # renewed every third of the lease (the store is flushed
        holders: Any = store.zrange(keys.HOLDERS, 0, -1, withscores=True)  # between tests)
        return [float(until) for _, until in holders]

    assert min(eventually(leases, timeout=5, what="the worker's lease")) > time.time()
    eventually(lambda: not claimed(), timeout=15, what="the claim dropped after the run")
    producer.close()


def test_worker_lease_and_visibility_timeout_defaults_follow_their_floor() -> None:
    settings = Settings()
    assert settings.worker_lease == 5.0
    # the longest countdown held (poll.max_delay 30 <= park_after 30; callbacks.park_after 30)
    # plus the time limit 120
    assert settings.held_floor == 150
    assert settings.visibility_timeout == 300  # derived: twice the floor
    assert Settings(task_time_limit=60).visibility_timeout == 180
    assert Settings(park_after=10, callbacks={"park_after": 5}).visibility_timeout == 260
    assert Settings(visibility_timeout=151).visibility_timeout == 151
    with pytest.raises(ValueError, match=r"poll\.max_delay"):
        Settings(visibility_timeout=150)
    with pytest.raises(ValueError, match="worker_lease"):
        Settings(worker_lease=0)


def test_a_jobs_own_max_delay_is_limited_only_by_what_a_worker_holds() -> None:
    from pollen.errors import InvalidJob
    from pollen.payloads import prepare

    job = {"provider": "runware", "request": video_request([1.0])}
    # defaults: waits past park_after (30 s) are parked, so any max_delay fits the timeout
    prepare(Settings(), {**job, "poll": {"max_delay": 3500}}, now=0)
    tight = Settings(
        visibility_timeout=15, task_time_limit=10, park_after=20,
        poll={"max_delay": 1}, callbacks={"park_after": 1},
    )  # fmt: skip
    prepare(tight, {**job, "poll": {"max_delay": 4.9}}, now=0)  # held 4.9 < 15 - 10
    with pytest.raises(InvalidJob, match=r"poll\.max_delay: must be below 5s"):
        prepare(tight, {**job, "poll": {"max_delay": 5}}, now=0)


def take_unacked(url: str, queue: str, count: int) -> Any:
    """A kombu consumer that takes ``count`` messages of ``queue`` and never acknowledges
    them: what a worker killed between taking a message and claiming it leaves behind."""
    import kombu

    komb: Any = kombu  # kombu's annotations are partial: used untyped
    connection = komb.Connection(url)
    taken: list[Any] = []
    declared = komb.Queue(queue, komb.Exchange(queue), routing_key=queue)
    consumer = connection.Consumer(
        [declared], callbacks=[lambda _body, message: taken.append(message)]
    )
    consumer.qos(prefetch_count=count)
    consumer.consume()
    deadline = time.monotonic() + 5
    while len(taken) < count and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError, OSError):
            connection.drain_events(timeout=0.2)
    assert len(taken) == count, taken
    return connection


def test_an_unclaimed_submit_in_the_brokers_hands_is_sent_again_once(
    deps: Any, redis_server: RedisServer
) -> None:
    url = redis_server.url(OWN_BROKER_DB)
    broker = redis.Redis.from_url(url, decode_responses=True)
    broker.flushdb()
    producer = celery.Celery(broker=url)
    payload = {"provider": "runware", "request": video_request([0.2])}
    for task_id, queue in (("lost-1", "q.submit"), ("claimed-1", "q.submit"), ("x", "other")):
        producer.send_task(
            "pollen.submit", kwargs={"job": payload}, queue=queue, task_id=task_id,
            countdown=30 if task_id == "claimed-1" else None,
        )  # fmt: skip
    producer.send_task("pollen.poll", kwargs={"items": []}, queue="q.submit", task_id="a-poll")
    held = take_unacked(url, "q.submit", 3)
    other = take_unacked(url, "other", 1)
    assert broker.hlen(orphans.UNACKED) == 4
    deps.store.claims.renew("live", 60)
    deps.store.claims.hold("live", "claimed-1:0", Held("claimed-1", {}))
    orphan_finder = orphans.Orphans(broker, "q.submit")
    resent: list[Held] = []
    now = time.time()
    too_soon = reconcile(
        deps.store, lambda *_: None, now=now, resend=resent.append, orphans=orphan_finder,
        orphan_age=5,
    )  # fmt: skip
    assert too_soon.orphans == []  # handed over under 5 s ago: a live worker may claim it yet
    report = reconcile(
        deps.store, lambda *_: None, now=now + 6, resend=resent.append, orphans=orphan_finder,
        orphan_age=5,
    )  # fmt: skip
    assert [m.task_id for m in resent] == ["lost-1"]  # not the claimed one, not the poll
    assert resent[0].kwargs == {"job": payload} and report.orphans == ["lost-1"]
    assert broker.hlen(orphans.UNACKED) == 4  # kombu's copy stays (a later copy: the same job)
    again = reconcile(
        deps.store, lambda *_: None, now=now + 8, resend=resent.append, orphans=orphan_finder,
        orphan_age=5,
    )  # fmt: skip
    assert again.orphans == [] and len(resent) == 1  # each delivery looked at once
    held.close()
    other.close()
    producer.close()


def test_a_dead_workers_message_sent_again_from_its_claim_is_not_sent_again_as_unclaimed(
    quiet: Any, redis_server: RedisServer
) -> None:
    url = redis_server.url(OWN_BROKER_DB)
    broker = redis.Redis.from_url(url, decode_responses=True)
    broker.flushdb()
    producer = celery.Celery(broker=url)
    producer.send_task("pollen.submit", kwargs={"job_id": "j"}, queue="q.submit", task_id="d-1")
    held = take_unacked(url, "q.submit", 1)  # the dead worker took it and claimed it
    quiet.store.claims.renew("dead", 0.01)
    quiet.store.claims.hold("dead", "d-1:0", Held("d-1", {"job_id": "j"}))
    time.sleep(0.05)
    resent: list[Held] = []
    for later in (6, 8):  # the claim's round, then the scan of that delivery
        reconcile(
            quiet.store, lambda *_: None, now=time.time() + later, resend=resent.append,
            orphans=orphans.Orphans(broker, "q.submit"), orphan_age=5,
        )  # fmt: skip
    assert [m.task_id for m in resent] == ["d-1"]  # once
    held.close()
    producer.close()
