"""Listing jobs (``Pollen.jobs``, ``pollen jobs``): indexes kept by the store's scripts, filters
that combine, stable cursors while jobs change state, expired jobs leaving the indexes, and a
cost that does not grow with the jobs in other states. On a real Redis; most tests use a
server of their own, so no worker moves their jobs and its command counts are theirs alone."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from pollen import AsyncPollen, InvalidJob, JobPage, JobStatus, Pollen
from pollen.local.servers import RedisServer, Worker
from pollen.settings import Settings
from pollen.store import keys, lifecycle, listing
from pollen.store.connection import open_store
from pollen.store.lifecycle import Move
from pollen.store.sync import Store
from tests.helpers import video_request

LISTING_DB = 7
ALL = [status.value for status in JobStatus]


@pytest.fixture(scope="module")
def quiet_redis() -> Iterator[RedisServer]:
    """A Redis server of this module's own: no worker moves its jobs, and its command
    statistics count only what the test's client sent (the session's server also serves the
    worker's periodic round)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def pollen(quiet_redis: RedisServer, settings: Settings) -> Iterator[Pollen]:
    """A client on a server no worker reads (jobs stay where the test puts them)."""
    url = quiet_redis.url(LISTING_DB)
    redis.Redis.from_url(url).flushdb()
    with Pollen(settings.model_copy(update={"redis_url": url, "job_ttl": 60})) as client:
        yield client


def _create(
    store: Store,
    count: int,
    *,
    provider: str = "runware",
    metadata: dict[str, str] | None = None,
    now: float | None = None,
    prefix: str = "job",
    tenant: str | None = None,
) -> list[str]:
    now = time.time() if now is None else now
    fields: dict[str, Any] = {"provider": provider, "status": "queued", "created_at": repr(now)}
    fields |= {"updated_at": repr(now), "metadata": metadata or {}, "policy": "{}"}
    if tenant is not None:
        fields["tenant"] = tenant
    ids = [f"{prefix}-{i:05d}" for i in range(count)]
    jobs = [(job_id, {"id": job_id, **fields}, 600, "") for job_id in ids]
    grace = store.schedule.submit_grace
    assert all(
        store.run(lifecycle.create_many(jobs, now=now, submit_grace=grace, replicas=store.replicas))
    )
    return [job_id for job_id, *_ in jobs]


def _move(store: Store, job_ids: list[str], *statuses: JobStatus) -> None:
    for status in statuses:
        store.lifecycle.transition_many([Move(j, status) for j in job_ids], now=time.time())


def _ids(page: JobPage) -> list[str]:
    return [job.id for job in page.jobs]


def test_filters_combine(pollen: Pollen) -> None:
    store = pollen.store
    a = _create(store, 3, metadata={"team": "a"}, prefix="a", now=1000.0)
    b = _create(store, 2, provider="useapi_runway", metadata={"team": "b"}, prefix="b", now=2000.0)
    c = _create(store, 4, metadata={"team": "b"}, prefix="c", now=3000.0)
    _move(store, a[:2], JobStatus.SUBMITTED, JobStatus.FAILED)
    _move(store, c[:1], JobStatus.SUBMITTED, JobStatus.SUCCEEDED)
    assert len(pollen.jobs(limit=100).jobs) == 9
    assert sorted(_ids(pollen.jobs(status="failed"))) == a[:2]
    assert sorted(_ids(pollen.jobs(provider="useapi_runway"))) == b
    assert sorted(_ids(pollen.jobs(provider="runware", metadata={"team": "b"}))) == c
    queued_b = pollen.jobs(status=["queued"], metadata={"team": "b"}, provider="runware")
    assert sorted(_ids(queued_b)) == c[1:]
    assert sorted(_ids(pollen.jobs(since=1500, until=2500))) == b
    moment = datetime.fromtimestamp(2500, UTC)
    assert sorted(_ids(pollen.jobs(since=moment, status="queued"))) == c[1:]
    assert pollen.jobs(status="succeeded", provider="useapi_runway").jobs == []
    newest_first = pollen.jobs(limit=100).jobs
    assert [j.created_at for j in newest_first] == sorted(
        (j.created_at for j in newest_first), reverse=True
    )
    assert newest_first[0].id == c[-1]  # same creation time: id descending


def test_the_tenant_filter_pages_through_one_tenants_jobs(pollen: Pollen) -> None:
    store = pollen.store
    acme = _create(store, 5, tenant="acme", prefix="acme", now=1000.0)
    other = _create(store, 4, tenant="other", prefix="other", now=2000.0)
    unnamed = _create(store, 2, prefix="unnamed", now=3000.0)
    _move(store, acme[:2], JobStatus.SUBMITTED, JobStatus.SUCCEEDED)
    assert sorted(_ids(pollen.jobs(tenant="acme", limit=100))) == acme
    assert sorted(_ids(pollen.jobs(tenant="other"))) == other
    assert sorted(_ids(pollen.jobs(tenant="default"))) == unnamed  # jobs that named none
    assert sorted(_ids(pollen.jobs(tenant="acme", status="succeeded"))) == acme[:2]
    assert pollen.jobs(tenant="nobody").jobs == []
    seen: list[str] = []
    cursor = None
    while True:  # pages of two, each holding only acme's jobs, none repeated
        page = pollen.jobs(tenant="acme", limit=2, cursor=cursor)
        assert len(page.jobs) <= 2 and {job.tenant for job in page.jobs} <= {"acme"}
        seen += _ids(page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == acme and len(seen) == len(set(seen))
    with pytest.raises(InvalidJob, match="tenant 'no spaces'"):
        pollen.jobs(tenant="no spaces")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_client_filters_by_tenant(pollen: Pollen, anyio_backend: str) -> None:
    acme = _create(pollen.store, 3, tenant="acme", prefix="acme")
    _create(pollen.store, 3, prefix="unnamed")
    async with AsyncPollen(pollen.settings) as client:
        page = await client.jobs(tenant="acme")
        assert sorted(_ids(page)) == acme
        with pytest.raises(InvalidJob, match="tenant"):
            await client.jobs(tenant="-starts-with-a-dash")


def test_pages_never_repeat_or_skip_a_job_while_jobs_change_state(pollen: Pollen) -> None:
    store = pollen.store
    created = _create(store, 25, now=1000.0, prefix="same") + _create(store, 25, prefix="later")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = pollen.jobs(limit=7, cursor=cursor)
        seen += _ids(page)
        pages += 1
        # between pages, jobs on both sides of the cursor move to other states
        _move(store, created[pages * 3 : pages * 3 + 4], JobStatus.SUBMITTED)
        _move(store, created[-pages * 2 :], JobStatus.CANCELLED)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(created) and len(seen) == len(set(seen))
    assert pages == 8  # 50 jobs, 7 a page


def test_finished_jobs_leave_the_indexes_when_they_expire(
    redis_server: RedisServer, settings: Settings
) -> None:
    url = redis_server.url(LISTING_DB)
    redis.Redis.from_url(url).flushdb()
    store, _ = open_store(settings.model_copy(update={"redis_url": url, "job_ttl": 1}))
    done = _create(store, 3, prefix="done")
    running = _create(store, 2, prefix="running")
    _move(store, done, JobStatus.SUBMITTED, JobStatus.SUCCEEDED)
    _move(store, running, JobStatus.SUBMITTED)
    assert store.redis.zcard(keys.index("runware", "succeeded")) == 3
    assert store.schedule.trim_indexes(time.time()) == 0  # not expired yet
    time.sleep(1.2)
    assert store.schedule.trim_indexes(time.time()) == 3
    assert store.redis.zcard(keys.index("runware", "succeeded")) == 0
    assert store.redis.zcard(keys.INDEX_EXPIRY) == 0
    assert store.redis.zcard(keys.index("runware", "submitted")) == 2
    # an entry whose record is gone anyway is dropped when a listing meets it
    store.redis.delete(keys.job(running[0]))
    page = store.run(listing.query(statuses=ALL, providers=["runware"]))
    assert _ids(page) == [running[1]]
    assert store.redis.zrange(keys.index("runware", "submitted"), 0, -1) == [running[1]]
    store.close()


def _commands(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


def test_the_cost_of_a_listing_does_not_grow_with_jobs_in_other_states(pollen: Pollen) -> None:
    store = pollen.store
    failed = _create(store, 10, prefix="failed", now=1000.0)
    _move(store, failed, JobStatus.SUBMITTED, JobStatus.FAILED)

    def listing_cost() -> tuple[list[str], dict[str, int]]:
        before = _commands(store.redis)
        page = pollen.jobs(status="failed", limit=5)
        after = _commands(store.redis)
        cost = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        cost.pop("cmdstat_info", None)
        return _ids(page), cost

    alone = listing_cost()
    for start in range(0, 5000, 1000):  # 5,000 succeeded and 5,000 queued jobs more
        others = _create(store, 1000, prefix=f"other{start}", now=2000.0)
        _create(store, 1000, prefix=f"waiting{start}", now=2000.0)
        _move(store, others, JobStatus.SUBMITTED, JobStatus.SUCCEEDED)
    among_many = listing_cost()
    assert alone == among_many  # the same page, the same Redis commands, the same count each
    assert "cmdstat_scan" not in among_many[1] and "cmdstat_keys" not in among_many[1]


def test_bad_filters_are_refused(pollen: Pollen) -> None:
    with pytest.raises(InvalidJob, match="unknown status nope"):
        pollen.jobs(status="nope")
    with pytest.raises(InvalidJob, match="unknown provider openai"):
        pollen.jobs(provider=["runware", "openai"])
    with pytest.raises(InvalidJob, match="not a cursor"):
        pollen.jobs(cursor="garbage!")
    with pytest.raises(InvalidJob, match="limit"):
        pollen.jobs(limit=0)
    with pytest.raises(InvalidJob, match="aware datetime"):
        pollen.jobs(since=datetime(2026, 1, 1))


@pytest.mark.integration
def test_jobs_are_listed_in_the_state_the_worker_moved_them_to(
    worker: Worker, client: Pollen
) -> None:
    quick = [
        client.submit("runware", video_request([0.1]), metadata={"run": "x"}) for _ in range(3)
    ]
    slow = client.submit("runware", video_request([30.0]), metadata={"run": "x"})
    for job_id in quick:
        assert client.wait(job_id, timeout=20).status is JobStatus.SUCCEEDED
    assert sorted(_ids(client.jobs(status="succeeded", metadata={"run": "x"}))) == sorted(quick)
    page = client.jobs(status=["queued", "submitted", "processing"])
    assert _ids(page) == [slow]
    client.cancel(slow)
    assert _ids(client.jobs(status="cancelled")) == [slow]
    assert client.jobs(status=["queued", "submitted", "processing"]).jobs == []
    [listed] = [job for job in client.jobs().jobs if job.id == quick[0]]
    assert listed.results and listed.results[0].url  # listed with its results


@pytest.mark.integration
def test_jobs_on_the_command_line(
    worker_env: dict[str, str], worker: Worker, client: Pollen
) -> None:
    from tests.test_cli import assert_user_error
    from tests.test_cli import pollen as run

    job_ids = [client.submit("runware", video_request([30.0])) for _ in range(3)]
    table = run(worker_env, "jobs", "--provider", "runware", "--since", "10m", "--limit", "2")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["JOB", "STATUS", "PROVIDER"]
    assert [row.split()[0] for row in rows] == [job_ids[2], job_ids[1]]  # newest first
    assert table.stderr.startswith("more: add --cursor ")
    cursor = table.stderr.split("--cursor ", 1)[1].strip()
    rest = run(worker_env, "jobs", "--json", "--cursor", cursor, "--limit", "2")
    document = json.loads(rest.stdout)
    assert len(document["jobs"]) == 1 and document["next_cursor"] is None
    listed = {row.split()[0] for row in rows} | {document["jobs"][0]["id"]}
    assert listed == set(job_ids)
    assert "created_at_iso" in document["jobs"][0]
    assert_user_error(run(worker_env, "jobs", "--status", "nope"), "unknown status nope", 2)
    assert_user_error(run(worker_env, "jobs", "--since", "yesterday"), "--since 'yesterday'", 2)
    assert_user_error(run(worker_env, "jobs", "--metadata", "team"), "KEY=VALUE", 2)
    assert_user_error(run(worker_env, "jobs", "--cursor", "zzz"), "not a cursor", 2)
    for job_id in job_ids:
        client.cancel(job_id)


def test_jobs_submitted_together_page_without_rereading_their_ties(
    pollen: Pollen, settings: Settings
) -> None:
    from pollen.payloads import accept_many_op

    payloads = [{"provider": "runware", "request": video_request([1.0])} for _ in range(300)]
    answers = pollen.store.run(
        accept_many_op(settings, payloads, pollen.store.replicas, now=time.time())
    )
    created = {answer[0] for answer in answers if not isinstance(answer, Exception)}
    assert len(created) == 300
    stored = pollen.store.lifecycle.get_with_results(sorted(created))
    assert len({job.created_at for job in stored if job}) == 300  # one position each
    seen: list[str] = []
    cursor = None
    while True:
        before = _commands(pollen.store.redis).get("cmdstat_zrange", 0)
        page = pollen.jobs(status="queued", provider="runware", limit=20, cursor=cursor)
        # one ZRANGE for the one index asked for, however deep in the call's jobs the page is
        assert _commands(pollen.store.redis)["cmdstat_zrange"] - before == 1
        seen += _ids(page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(created)


def test_an_expired_in_flight_job_leaves_the_indexes_when_the_reconciler_drops_it(
    pollen: Pollen,
) -> None:
    from pollen.worker.reconciler import reconcile

    store = pollen.store
    [job_id] = _create(store, 1, prefix="lost")
    _move(store, [job_id], JobStatus.SUBMITTED)
    store.redis.delete(keys.job(job_id))  # expired (or evicted) while in flight
    report = reconcile(store, lambda *_: None, now=time.time() + 10_000)
    assert report.dropped == [job_id]
    assert store.redis.zcard(keys.index("runware", "submitted")) == 0


def test_oldest_first_pages_through_the_same_jobs_in_reverse(pollen: Pollen) -> None:
    store = pollen.store
    early = _create(store, 3, prefix="early", now=1000.0)
    late = _create(store, 4, metadata={"team": "x"}, prefix="late", now=2000.0)
    _move(store, late[:2], JobStatus.SUBMITTED)
    newest = _ids(pollen.jobs(limit=100))
    seen: list[str] = []
    cursor = None
    while True:
        page = pollen.jobs(limit=2, cursor=cursor, oldest_first=True)
        seen += _ids(page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest[::-1] and len(seen) == 7
    assert _ids(pollen.jobs(oldest_first=True, limit=1)) == [early[0]]
    window = pollen.jobs(oldest_first=True, since=1500, metadata={"team": "x"}, limit=3)
    assert _ids(window) == late[:3] and window.next_cursor is not None
