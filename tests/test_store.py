"""The store's contract, on the real Redis: statuses only move forward, counters and indexes
agree with the jobs, finished jobs expire, poll steps are fenced, ids are idempotency keys;
and the epoch marker a worker remembers belongs to the store it describes."""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import redis

from pollen import Pollen
from pollen.errors import IdempotencyConflict, StoreUnavailable
from pollen.ingress.pushes import take_push
from pollen.local.servers import RedisServer, free_port
from pollen.models import GenerationResult, JobStatus
from pollen.producer import drive
from pollen.providers import push as tokens
from pollen.settings import Settings
from pollen.store import effects, fetch, keys, lifecycle, scripts, strays
from pollen.store.connection import redis_client
from pollen.store.copies import SCRIPTS as COPY_SCRIPTS
from pollen.store.lifecycle import Move
from pollen.store.outbox import SCRIPTS as OUTBOX_SCRIPTS
from pollen.store.outbox import Outbox
from pollen.store.polls import PollRecord, Recorded
from pollen.store.sync import SCRIPTS as JOB_SCRIPTS
from pollen.store.sync import Store
from pollen.worker import health
from pollen.worker.periodic import check_store
from pollen.worker.runtime import Deps, build_deps
from tests.conftest import OWN_STORE_DB, STORE_DB
from tests.helpers import video_request

FINISHED_TTL = 600
JOB_TTL = 7200
NOW = 1_700_000_000.0


def _flush(client: redis.Redis) -> None:
    epoch = client.get(keys.EPOCH)  # keep it: the session's worker would see a data loss
    client.flushdb()
    if epoch is not None:
        client.set(keys.EPOCH, epoch)


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(STORE_DB), decode_responses=True)
    _flush(client)
    yield client
    client.close()


@pytest.fixture
def store(raw: redis.Redis, redis_server: RedisServer) -> Iterator[Store]:
    built = Store(redis_client(redis_server.url(STORE_DB)), finished_ttl=FINISHED_TTL, grace=60)
    yield built
    built.close()


@pytest.fixture
def quiet(redis_server: RedisServer) -> Iterator[tuple[Store, redis.Redis]]:
    """A store no worker watches, and a raw client of it, for the tests that compare every key
    before and after: the session worker's periodic round writes to its own store (leases,
    locks, and it resumes these tests' jobs, whose times are in the past, as overdue)."""
    client = redis.Redis.from_url(redis_server.url(OWN_STORE_DB), decode_responses=True)
    client.flushdb()
    built = Store(redis_client(redis_server.url(OWN_STORE_DB)), finished_ttl=FINISHED_TTL, grace=60)
    yield built, client
    built.close()
    client.flushdb()
    client.close()


def _create(store: Store, job_id: str, fingerprint: str = "fp-1", now: float = NOW) -> bool:
    """Store a new queued job (a batch of one); raises the IdempotencyConflict the store
    answers for an id already used with another fingerprint."""
    fields = {"id": job_id, "provider": "runware", "status": "queued", "poll_seq": "0"}
    jobs = [(job_id, fields, JOB_TTL, fingerprint)]
    grace = store.schedule.submit_grace
    [answer] = store.run(
        lifecycle.create_many(jobs, now=now, submit_grace=grace, replicas=store.replicas)
    )
    if isinstance(answer, IdempotencyConflict):
        raise answer
    return answer


def _transition(store: Store, job_id: str, status: JobStatus, *, now: float, **fields: Any) -> bool:
    """Move one existing job forward (a batch of one): False if it was there or beyond."""
    [moved] = store.lifecycle.transition_many([Move(job_id, status, fields=fields)], now=now)
    assert moved != -1, f"job {job_id} is missing"
    return bool(moved)


def _rollback(store: Store, job_id: str) -> bool:
    """Undo the creation of one still-queued job (a batch of one): whether it was undone."""
    return store.run(lifecycle.rollback_many([job_id])) == 1


def _counts(raw: redis.Redis) -> dict[str, int]:
    """Jobs per status, as the counter hash holds them (zeros dropped)."""
    counts: dict[str, str] = raw.hgetall(keys.STATUS_COUNTS)  # type: ignore[assignment]
    return {status: int(n) for status, n in counts.items() if int(n) != 0}


def _indexed(raw: redis.Redis) -> tuple[set[str], set[str]]:
    return set(raw.zrange(keys.INFLIGHT, 0, -1)), set(raw.zrange(keys.BY_AGE, 0, -1))  # type: ignore[arg-type]


def _status(raw: redis.Redis, job_id: str) -> str:
    return str(raw.hget(keys.job(job_id), "status"))


# --- statuses only move forward -----------------------------------------------------------


@pytest.mark.parametrize(("start", "target"), list(itertools.product(JobStatus, JobStatus)))
def test_a_status_only_moves_forward(
    store: Store, raw: redis.Redis, start: JobStatus, target: JobStatus
) -> None:
    assert _create(store, "j")
    if start is not JobStatus.QUEUED:
        assert _transition(store, "j", start, now=NOW + 1)
    moved = _transition(store, "j", target, now=NOW + 2)
    assert moved is (target.rank > start.rank)
    final = target if moved else start
    assert _status(raw, "j") == final.value
    assert _counts(raw) == {final.value: 1}
    inflight, by_age = _indexed(raw)
    assert inflight == by_age == (set() if final.terminal else {"j"})


def test_a_transition_of_a_missing_job_answers_missing(store: Store, raw: redis.Redis) -> None:
    assert store.lifecycle.transition_many([Move("nope", JobStatus.SUBMITTED)], now=NOW) == [-1]
    assert raw.keys("pollen:job:*") == []  # and writes no record


# --- counters and indexes -----------------------------------------------------------------


def test_counters_and_indexes_follow_create_transition_finish_and_rollback(
    store: Store, raw: redis.Redis
) -> None:
    for n in range(5):
        assert _create(store, f"j{n}", now=NOW + n)
    assert _counts(raw) == {"queued": 5}
    assert _indexed(raw) == ({f"j{n}" for n in range(5)},) * 2
    _transition(store, "j0", JobStatus.SUBMITTED, now=NOW + 10)
    _transition(store, "j1", JobStatus.PROCESSING, now=NOW + 10)
    _transition(store, "j2", JobStatus.SUCCEEDED, now=NOW + 10)
    _transition(store, "j3", JobStatus.FAILED, now=NOW + 10)
    assert _counts(raw) == {"queued": 1, "submitted": 1, "processing": 1, "succeeded": 1,
                            "failed": 1}  # fmt: skip
    assert _indexed(raw) == ({"j0", "j1", "j4"},) * 2
    # The oldest in-flight job is still the first created.
    assert raw.zrange(keys.BY_AGE, 0, 0) == ["j0"]

    assert _rollback(store, "j4")
    assert _counts(raw) == {"submitted": 1, "processing": 1, "succeeded": 1, "failed": 1}
    assert _indexed(raw) == ({"j0", "j1"},) * 2
    # A job that already moved on is not undone.
    assert not _rollback(store, "j0")
    assert _status(raw, "j0") == "submitted"
    assert _counts(raw)["submitted"] == 1
    assert _indexed(raw) == ({"j0", "j1"},) * 2
    # Nothing to undo for an unknown id: the counters stay.
    assert not _rollback(store, "never")
    assert _counts(raw) == {"submitted": 1, "processing": 1, "succeeded": 1, "failed": 1}


def test_rollback_undoes_exactly_what_create_wrote(quiet: tuple[Store, redis.Redis]) -> None:
    store, raw = quiet
    assert _create(store, "other")

    def dump() -> dict[str, object]:
        # Not the counters (compared below), nor a running worker's periodic-round locks.
        return {
            str(key): raw.dump(key)
            for key in raw.keys("*")
            if key != keys.STATUS_COUNTS and not str(key).startswith("pollen:lock:")
        }

    before = dump()
    before_counts = _counts(raw)
    assert _create(store, "j")
    assert _rollback(store, "j")
    assert dump() == before
    assert _counts(raw) == before_counts
    # The id is free again: the retried submit creates it anew.
    assert _create(store, "j", fingerprint="fp-2")


# --- expiry ---------------------------------------------------------------------------------


def _result(ident: str) -> GenerationResult:
    return GenerationResult(id=ident, kind="video", url=f"https://cdn/{ident}.mp4", seen_at=NOW)


def test_every_key_of_a_finished_job_expires(store: Store, raw: redis.Redis) -> None:
    outbox = Outbox(store.redis)
    store.polls.rehost = True  # its results' copies (re-hosting) are the job's keys too
    now = time.time()
    assert _create(store, "j", now=now)
    _transition(store, "j", JobStatus.SUBMITTED, now=now, poll_seq="1")
    assert store.polls.claim([("j", 1)], now=now, lease=30)[0].verdict == "ok"
    recorded = _record(store, "j", 1, now=now, envelope={"data": []}, results=[_result("g1")],
                       progress=0.5, next_poll_at=now + 1)  # fmt: skip
    assert (recorded.verdict, recorded.added) == ("ok", ["g1"])
    delivery = "msg_j_completed"
    outbox.create(delivery, job_id="j", event="completed", kind="http", target="https://x/cb",
                  body="{}", now=now, watch=60, ttl=JOB_TTL)  # fmt: skip
    claim = outbox.claim(delivery, now=now, lease=30, recheck=1)
    assert claim.verdict == "ok" and claim.delivery is not None
    outbox.record(claim.delivery, {"outcome": "delivered"}, state="delivered", now=now)
    token = tokens.new_token("j")
    store.redis.hset(keys.job("j"), "push_token", token)
    push = take_push(Settings(), "runware", token, b"{}", now=now)
    sent: list[Any] = []
    outcome = drive(
        push, lambda batch: effects.execute(store.redis, store.scripts, batch), sent.append
    )
    assert (outcome.verdict, len(sent)) == ("polled", 1)
    assert _transition(store, "j", JobStatus.SUCCEEDED, now=now)

    job_keys = set(raw.keys(keys.job("j") + "*"))  # the record and every key named after it
    assert keys.job_deliveries("j") in job_keys and keys.delivery_attempts("j") in job_keys
    ttls = {key: raw.ttl(key) for key in job_keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls  # -2 missing, -1 no expiry
    assert keys.stored("j") in job_keys
    for key in (
        keys.job("j"), keys.results("j"), keys.result_order("j"), keys.responses("j"),
        keys.stored("j"), keys.pushes("j"),
    ):  # fmt: skip
        assert ttls[key] <= FINISHED_TTL
    assert 0 < raw.ttl(keys.delivery(delivery)) <= JOB_TTL


# --- fencing --------------------------------------------------------------------------------


def _submitted(store: Store, job_id: str, now: float) -> None:
    assert _create(store, job_id, now=now)
    _transition(store, job_id, JobStatus.SUBMITTED, now=now, poll_seq="1")


def test_a_busy_lease_and_a_stale_attempt_are_refused(store: Store) -> None:
    _submitted(store, "j", NOW)
    assert store.polls.claim([("j", 1)], now=NOW, lease=30)[0].verdict == "ok"
    busy = store.polls.claim([("j", 1)], now=NOW + 29.5, lease=30)[0]
    assert busy.verdict == "busy" and 0.49 < busy.wait < 0.51
    assert (
        store.polls.claim([("j", 1)], now=NOW + 30.5, lease=30)[0].verdict == "ok"
    )  # lease expired
    assert store.polls.claim([("j", 0)], now=NOW, lease=30)[0].verdict == "stale"
    assert store.polls.claim([("j", 2)], now=NOW, lease=30)[0].verdict == "stale"
    assert store.polls.claim([("nope", 1)], now=NOW, lease=30)[0].verdict == "missing"
    _transition(store, "j", JobStatus.SUCCEEDED, now=NOW)
    assert store.polls.claim([("j", 1)], now=NOW + 100, lease=30)[0].verdict == "done"


def _record(store: Store, job_id: str, attempt: int, *, now: float, **found: Any) -> Recorded:
    """One poll answer recorded (kept for the audit, as a provider answer)."""
    [recorded] = store.polls.record([PollRecord(job_id, attempt, keep=True, **found)], now=now)
    return recorded


def test_a_stale_poll_answer_changes_nothing(quiet: tuple[Store, redis.Redis]) -> None:
    store, raw = quiet
    now = time.time()
    _submitted(store, "j", now)
    assert store.polls.claim([("j", 1)], now=now, lease=30)[0].verdict == "ok"
    first = _record(store, "j", 1, now=now, envelope={"n": 1}, results=[_result("g1")],
                    progress=0.3, next_poll_at=now + 1)  # fmt: skip
    assert first == Recorded("ok", ["g1"], result_count=1)
    snapshot = {key: raw.dump(key) for key in raw.keys("*")}
    stale: dict[str, Any] = {"now": now + 1, "progress": 0.9, "cost": 2.0}
    for attempt in (1, 3):  # the same poll again, and one from the future
        assert _record(
            store, "j", attempt, envelope={"n": attempt}, results=[_result("g2")],
            next_poll_at=now + 2, **stale,
        ) == Recorded("stale")  # fmt: skip
    assert {key: raw.dump(key) for key in raw.keys("*")} == snapshot


# --- idempotent create ----------------------------------------------------------------------


def test_a_duplicate_create_returns_false_and_writes_nothing(
    quiet: tuple[Store, redis.Redis],
) -> None:
    store, raw = quiet
    assert _create(store, "j", fingerprint="fp-1")
    snapshot = {key: raw.dump(key) for key in raw.keys("*")}
    assert not _create(store, "j", fingerprint="fp-1", now=NOW + 5)
    assert {key: raw.dump(key) for key in raw.keys("*")} == snapshot
    with pytest.raises(IdempotencyConflict, match="already used with a different request"):
        _create(store, "j", fingerprint="fp-2", now=NOW + 5)
    assert {key: raw.dump(key) for key in raw.keys("*")} == snapshot


# --- small gateway methods --------------------------------------------------------------


def test_fields_forget_and_lock(store: Store, raw: redis.Redis) -> None:
    assert _create(store, "j")
    assert store.lifecycle.field("j", "provider") == "runware"
    assert (
        store.lifecycle.field("j", "absent") is None and store.lifecycle.field("nope", "id") is None
    )
    assert store.lifecycle.fields("j", "status", "poll_seq", "absent") == ["queued", "0", None]
    store.schedule.forget_inflight("j")
    assert _indexed(raw) == (set(), set())
    assert _status(raw, "j") == "queued"  # only the indexes: the record stays
    assert store.locks.acquire("pollen:lock:test", ttl=0.3)
    time.sleep(0.2)
    assert not store.locks.acquire("pollen:lock:test", ttl=0.3)  # held for 0.3 s
    time.sleep(0.15)
    assert store.locks.acquire("pollen:lock:test", ttl=0.3)  # expired: the next round takes it
    assert store.locks.acquire("pollen:lock:tiny", ttl=0.0001)  # under 1 ms is still a lock


# --- the Lua files --------------------------------------------------------------------------


def test_every_lua_file_is_a_registered_script_with_its_keys_and_args() -> None:
    shipped = {
        path.name.removesuffix(".lua")
        for path in resources.files("pollen.store").joinpath("lua").iterdir()
        if path.name.endswith(".lua")
    }
    # fetch, strays: on the broker
    used = {*JOB_SCRIPTS, *OUTBOX_SCRIPTS, *COPY_SCRIPTS, fetch.SCRIPT, strays.SCRIPT}
    assert shipped == used | {"prelude"}
    for name in used:
        lines = scripts.source(name).splitlines()
        header = list(itertools.takewhile(lambda line: line.startswith("--"), lines))
        assert any(line.startswith("-- KEYS:") for line in header), name
        assert any(line.startswith("-- ARGV:") for line in header), name


def test_the_lua_ranks_are_generated_from_job_status() -> None:
    generated = scripts.constants()
    for status in JobStatus:
        assert f"['{status.value}']={status.rank}" in generated
    assert "local TERMINAL = 3" in generated


# --- the epoch marker belongs to its store --------------------------------------------------

OTHER_DBS = (5, 6)  # not the session's store or broker


@pytest.fixture
def two_stores(
    settings: Settings, redis_server: RedisServer, tmp_path: Path
) -> Iterator[list[Settings]]:
    """Two deployments on one machine: same heartbeat directory, different Redis databases."""
    chosen = []
    for db in OTHER_DBS:
        client = redis.Redis.from_url(redis_server.url(db))
        client.flushdb()
        client.close()
        chosen.append(
            settings.model_copy(
                update={
                    "redis_url": redis_server.url(db),
                    "heartbeat_file": tmp_path / "worker.heartbeat",
                }
            )
        )
    yield chosen
    for db in OTHER_DBS:
        client = redis.Redis.from_url(redis_server.url(db))
        client.flushdb()
        client.close()


def _started(settings: Settings) -> Deps:
    """A worker process that just started: nothing remembered but what is on disk."""
    return build_deps(settings)


def _round(settings: Settings) -> bool:
    deps = _started(settings)
    try:
        return check_store(deps)
    finally:
        deps.http.close()
        deps.store.close()


def test_a_worker_started_against_another_store_sees_no_data_loss(
    two_stores: list[Settings],
) -> None:
    first, second = two_stores
    assert not _round(first)
    assert not _round(second)  # a new store, not an emptied one
    assert not _round(first)  # and back: the first store's marker is still remembered
    assert not _round(second)
    assert first.epoch_file != second.epoch_file
    assert first.epoch_file.parent == first.heartbeat_file.parent
    for one in two_stores:
        client = redis.Redis.from_url(one.redis_url)
        assert not client.exists(keys.DATA_LOSS)
        client.close()


def test_an_emptied_store_is_still_detected(
    two_stores: list[Settings], redis_server: RedisServer
) -> None:
    first, second = two_stores
    assert not _round(first)
    assert not _round(second)
    emptied = redis.Redis.from_url(first.redis_url, decode_responses=True)
    emptied.flushdb()
    assert _round(first)  # a restarted worker compares with the marker it remembered
    assert emptied.hget(keys.DATA_LOSS, "lost_epoch")
    emptied.close()
    other = redis.Redis.from_url(second.redis_url)
    assert not other.exists(keys.DATA_LOSS)
    other.close()
    assert not _round(second)


def test_the_default_heartbeat_file_is_per_store_and_health_reads_it(
    settings: Settings, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    one = Settings(redis_url=redis_server.url(OTHER_DBS[0]))
    same = Settings(redis_url=redis_server.url(OTHER_DBS[0]))
    other = Settings(redis_url=redis_server.url(OTHER_DBS[1]))
    assert one.heartbeat_file == same.heartbeat_file != other.heartbeat_file
    assert one.heartbeat_file.parent == tmp_path
    health.touch_heartbeat(one.heartbeat_file)  # what the worker does
    by_name = {c.name: c for c in health.run_checks(same, local=True)}
    assert by_name["heartbeat"].ok, by_name["heartbeat"].detail
    by_name = {c.name: c for c in health.run_checks(other, local=True)}
    assert not by_name["heartbeat"].ok


def test_a_job_whose_message_cannot_be_sent_leaves_no_trace(
    settings: Settings, raw: redis.Redis
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    broken = settings.model_copy(update={"broker_url": unreachable, "result_backend": None})
    with Pollen(broken) as pollen:
        with pytest.raises(StoreUnavailable, match="could not enqueue job unsent"):
            pollen.submit("runware", video_request([0.3]), job_id="unsent")
        assert raw.keys("pollen:job:*") == []
        assert _counts(raw) == {}
        assert _indexed(raw) == (set(), set())
        # not ready, and no wake on its way: the next create sends its own wake
        queue = broken.queues.submit
        assert raw.zcard(keys.ready_submits(queue)) == 0
        assert not raw.exists(keys.submit_wake(queue))
        # The id is free: the producer's retry is a new job, not a duplicate.
        with pytest.raises(StoreUnavailable):
            pollen.submit("runware", video_request([0.3]), job_id="unsent")
