"""A submitted job is on a replica before the submit returns (real primary and replica).

Every create path (``Pollen.submit``/``submit_many``, ``AsyncPollen``'s, a worker's create of a
plain ``send_task`` job) sends ``WAIT`` when the primary has replicas, counted in the primary's
``INFO commandstats``; none without replicas or with ``POLLEN_REPLICA_ACKS=0``. A replica that
does not answer in time costs the timeout, not the job.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from bench import replicas as replicas_bench
from pollen import AsyncPollen, Pollen
from pollen.local.servers import RedisServer, ReplicaServer
from pollen.payloads import accept
from pollen.settings import Settings
from pollen.store import keys, lifecycle, replication
from pollen.store.connection import open_store, redis_client
from pollen.store.sync import Store
from pollen.worker import metrics
from pollen.worker.periodic import check_store
from pollen.worker.runtime import build_deps
from tests.helpers import image_request
from tests.sentinel import SwitchProxy

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def primary() -> Iterator[RedisServer]:
    with RedisServer() as server, ReplicaServer(server) as replica:
        server.replica = replica  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def admin(primary: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=primary.port, decode_responses=True)
    client.config_resetstat()
    yield client
    client.close()


def on(server: RedisServer, settings: Settings, **update: Any) -> Settings:
    """``settings`` with the store on ``server`` (db 1) and a broker nobody consumes (db 0)."""
    return settings.model_copy(
        update={"redis_url": server.url(1), "broker_url": server.url(0), **update}
    )


def calls(admin: redis.Redis) -> dict[str, int]:
    """Calls of each command since the fixture reset the stats (one INFO: read once per test,
    as each read is itself an INFO call)."""
    stats: dict[str, Any] = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def create(store: Store, *job_ids: str) -> list[Any]:
    """Create bare queued jobs in one batch (scripts, and WAIT if the store's replicas ask)."""
    fields = {"provider": "runware", "status": "queued", "poll_seq": "0"}
    return store.run(lifecycle.create_many(
        [(job_id, {**fields, "id": job_id}, 600, "fp") for job_id in job_ids],
        now=time.time(), submit_grace=60, replicas=store.replicas,
    ))  # fmt: skip


def job() -> dict[str, Any]:
    return {"provider": "runware", "request": image_request("a fox")}


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server frozen (SIGSTOP): connected, but acknowledging nothing."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_every_sync_create_waits_for_the_replica(
    primary: RedisServer, admin: redis.Redis, settings: Settings
) -> None:
    with Pollen(on(primary, settings)) as pollen:
        job_id = pollen.submit_payload(job())
        pollen.submit_many([job(), job()])
        counted = calls(admin)
        assert counted["wait"] == 2  # one per create round trip
        assert counted["info"] == 1  # auto asks once, not per submit
    replica = redis.Redis(port=primary.replica.port, db=1)  # type: ignore[attr-defined]
    assert replica.exists(f"pollen:job:{job_id}")  # already there when submit returned
    replica.close()


async def test_every_async_create_waits_for_the_replica(
    primary: RedisServer, admin: redis.Redis, settings: Settings
) -> None:
    async with AsyncPollen(on(primary, settings)) as pollen:
        await pollen.submit_payload(job())
        await pollen.submit_many([job(), job()])
    assert calls(admin)["wait"] == 2


def test_a_workers_create_waits_for_the_replica(
    primary: RedisServer, admin: redis.Redis, settings: Settings
) -> None:
    deps = build_deps(on(primary, settings, replica_acks=1))
    try:
        _, created = accept(deps.settings, deps.store, job(), now=time.time())
    finally:
        deps.http.close()
        deps.store.close()
    assert created
    assert calls(admin)["wait"] == 1


def test_no_wait_without_replicas_or_when_off(
    primary: RedisServer,
    admin: redis.Redis,
    redis_server: RedisServer,
    settings: Settings,
    clean: None,
) -> None:
    lone = redis.Redis(port=redis_server.port, decode_responses=True)
    before = calls(lone).get("wait", 0)  # the session's Redis: its stats are not reset
    with Pollen(settings) as pollen:  # it has no replica: auto waits for none
        pollen.submit_payload(job())
        pollen.submit_many([job()])
    assert calls(lone).get("wait", 0) == before
    lone.close()
    with Pollen(on(primary, settings, replica_acks=0)) as pollen:
        pollen.submit_payload(job())
    assert calls(admin).keys().isdisjoint({"wait", "info"})  # a number needs no INFO


def test_a_replica_that_does_not_answer_costs_the_timeout_not_the_job(
    primary: RedisServer, admin: redis.Redis, settings: Settings, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, "pollen.store.replication")
    with Pollen(on(primary, settings, replica_timeout=300)) as pollen:
        started = time.monotonic()
        pollen.submit_payload(job())  # a replica that answers: no wait to speak of
        assert time.monotonic() - started < 0.3
        assert not caplog.records
        with stopped(primary.replica):  # type: ignore[attr-defined]
            started = time.monotonic()
            job_id = pollen.submit_payload(job())
            waited = time.monotonic() - started
        assert 0.3 <= waited < 2.0
        assert pollen.get(job_id).id == job_id  # stored on the primary and returned
        assert "acknowledged by 0 of 1 replicas within 300 ms" in caplog.text
        pollen.submit_payload(job())
        assert calls(admin)["info"] == 2  # auto counts the replicas again after a shortfall


@pytest.mark.parametrize("refused", ["wait", "info"])
def test_a_server_that_refuses_the_replica_check_fails_no_submit(
    primary: RedisServer, admin: redis.Redis, settings: Settings, caplog: Any, refused: str
) -> None:
    """An ACL (or a proxy) without WAIT or INFO: the job is stored and the submit returns; the
    client says so once and stops waiting (a raised error would make the caller submit again)."""
    caplog.set_level(logging.WARNING, "pollen.store.replication")
    user = f"no{refused}"
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                      commands=["+@all", f"-{refused}"])  # fmt: skip
    url = f"redis://{user}:pw@127.0.0.1:{primary.port}/1"
    try:
        with Pollen(on(primary, settings).model_copy(update={"redis_url": url})) as pollen:
            first = pollen.submit_payload(job())
            second = pollen.submit_payload(job())
            assert pollen.get(first).id == first and pollen.get(second).id == second
    finally:
        admin.acl_deluser(user)
    # once: the second submit did not try again (each refusal would say so)
    assert caplog.text.count("Redis refused a replica check") == 1


def test_a_create_batch_follows_a_managed_failover_with_its_scripts() -> None:
    """A DNS-named primary turns replica (READONLY) and the name moves to the promoted one: a
    pipelined create (scripts + WAIT) is sent again on a new connection with its scripts
    loaded there (the new primary never ran SCRIPT LOAD: scripts are not replicated)."""
    with RedisServer() as old, ReplicaServer(old) as new, SwitchProxy(old.port) as proxy:
        store = Store(redis_client(proxy.url), finished_ttl=60)
        store.replicas = replication.Replicas(1, 500)
        assert create(store, "before-1", "before-2") == [True, True]
        admin = redis.Redis(port=new.port)
        admin.replicaof("NO", "ONE")
        proxy.upstream = new.port
        demoted = redis.Redis(port=old.port)
        demoted.replicaof("127.0.0.1", new.port)
        demoted.close()
        admin.script_flush()  # as on a server that never saw pollen's scripts
        started = time.monotonic()
        assert create(store, "after-1", "after-2") == [True, True]
        assert time.monotonic() - started < 5
        assert create(store, "before-1") == [False]  # the new primary has the old one's jobs
        admin.close()
        store.close()


def test_a_workers_short_wait_is_counted(
    primary: RedisServer, admin: redis.Redis, settings: Settings
) -> None:
    deps = build_deps(on(primary, settings, replica_acks=1, replica_timeout=50))
    before = metrics.REPLICA_ACK_TIMEOUTS._value.get()
    try:
        accept(deps.settings, deps.store, job(), now=time.time())
        assert metrics.REPLICA_ACK_TIMEOUTS._value.get() == before
        with stopped(primary.replica):  # type: ignore[attr-defined]
            _, created = accept(deps.settings, deps.store, job(), now=time.time())
    finally:
        deps.http.close()
        deps.store.close()
    assert created
    assert metrics.REPLICA_ACK_TIMEOUTS._value.get() == before + 1


@pytest.mark.parametrize(
    ("variable", "good", "bad"),
    [
        ("POLLEN_REPLICA_ACKS", "16", "17"),
        ("POLLEN_REPLICA_ACKS", "0", "-1"),
        ("POLLEN_REPLICA_ACKS", "auto", "one"),
        ("POLLEN_REPLICA_TIMEOUT", "1", "0"),
        ("POLLEN_REPLICA_TIMEOUT", "10000", "10001"),
    ],
)
def test_replica_settings_bounds(
    monkeypatch: pytest.MonkeyPatch, variable: str, good: str, bad: str
) -> None:
    monkeypatch.setenv(variable, good)
    Settings()
    monkeypatch.setenv(variable, bad)
    with pytest.raises(ValidationError, match=r"(?i)replica_(acks|timeout)"):
        Settings()


@pytest.mark.parametrize(("redis_timeout", "waits"), [(5.0, 800), (1.0, 500), (0.001, 1)])
def test_a_producer_waits_at_most_half_its_redis_timeout(redis_timeout: float, waits: int) -> None:
    settings = Settings(replica_timeout=800, producer={"redis_timeout": redis_timeout})
    assert replication.of(settings).timeout_ms == waits


def test_every_job_a_submit_returned_is_on_the_replica_when_the_primary_dies(
    settings: Settings,
) -> None:
    """(With POLLEN_REPLICA_ACKS=0 one run in three on this machine kept none of them.)"""
    with RedisServer() as old, ReplicaServer(old) as replica:
        with Pollen(on(old, settings, replica_timeout=2000)) as pollen:
            job_ids = [pollen.submit_payload(job()) for _ in range(100)]
            job_ids += pollen.submit_many([job() for _ in range(100)]).accepted
            assert old.proc is not None
            old.proc.kill()  # SIGKILL right after the last submit returned
            old.proc.wait(5)
        promoted = redis.Redis(port=replica.port, db=1)
        promoted.replicaof("NO", "ONE")
        kept = promoted.pipeline()
        for job_id in job_ids:
            kept.exists(keys.job(job_id))
        assert sum(kept.execute()) == len(job_ids) == 200
        promoted.close()


# --- the epoch check after a failover --------------------------------------------------------


def _store_at(server: RedisServer, settings: Settings) -> Store:
    store, _ = open_store(on(server, settings))
    return store


def test_a_promoted_replica_is_not_an_emptied_store(
    settings: Settings, tmp_path: Path, caplog: Any
) -> None:
    worker = on_disk(settings, tmp_path)
    with RedisServer() as old, ReplicaServer(old) as replica, RedisServer() as fresh:
        deps = build_deps(on(old, worker))
        try:
            assert not check_store(deps)  # writes the marker; the replica receives it
            known = deps.epoch
            deps.store.redis.wait(1, 2000)
            old.stop()  # the primary dies; its replica is promoted
            promoted = redis.Redis(port=replica.port)
            promoted.replicaof("NO", "ONE")
            promoted.close()
            deps.store.close()
            deps.store = _store_at(replica, settings)  # the worker follows the failover
            assert not check_store(deps)
            assert deps.epoch == known
            assert not deps.store.redis.exists(keys.DATA_LOSS)
            deps.store.close()
            deps.store = _store_at(fresh, settings)  # a replica that never synced: empty
            assert check_store(deps)
            assert deps.store.redis.hget(keys.DATA_LOSS, "lost_epoch") == known
        finally:
            deps.http.close()
            deps.store.close()
    assert "the job store lost its data" in caplog.text


def on_disk(settings: Settings, tmp_path: Path) -> Settings:
    """``settings`` with this test's own heartbeat (and epoch) file."""
    return settings.model_copy(update={"heartbeat_file": tmp_path / "worker.heartbeat"})


def test_the_replica_bench_prints_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert replicas_bench.main(["--submits", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("3 submits per mode")
    assert [row.split()[0] for row in rows[2:]] == ["no", "WAIT"]
    with pytest.raises(SystemExit) as refused:
        replicas_bench.main(["--submits", "0"])
    assert refused.value.code == 2
    assert "--submits must be at least 1" in capsys.readouterr().err
