"""Redis with Sentinel, and a Redis whose name moves in a managed failover.

The settings take Celery's ``sentinel://`` URLs with ``POLLEN_SENTINEL_MASTER``; the store,
the asyncio store and a worker follow a real failover (a primary SIGKILLed under three
Sentinels, tests/sentinel.py); a plain ``redis://`` client whose old primary turned replica
(``READONLY``) reconnects to the name's new address.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pollen import JobStatus, Pollen, StoreUnavailable, contract
from pollen.local.servers import RedisServer, ReplicaServer, Worker, free_port
from pollen.settings import Settings, problems, store_tag
from pollen.store import durability, lifecycle
from pollen.store.aio import AsyncStore
from pollen.store.connection import (
    Master,
    client_options,
    connect,
    open_store,
    probe,
    reason,
    redis_client,
    transport_master,
)
from pollen.store.sync import Store
from tests.conftest import settings_from
from tests.helpers import video_request
from tests.sentinel import MASTER, SentinelGroup, SwitchProxy
from tests.test_cli import assert_user_error, pollen

SENTINELS = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380"


def sentinels(db: int) -> str:
    """:data:`SENTINELS` on database ``db`` (each address names it)."""
    return f"sentinel://10.0.0.1:26379/{db};sentinel://10.0.0.2:26380/{db}"


JOB_TTL = 3600

# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://10.0.0.1:26379",
        "sentinel://10.0.0.1",  # Sentinel's own port
        sentinels(2),
        "sentinel://10.0.0.1:26379/2;sentinel://10.0.0.2:26380",  # the first's database
        "sentinel://:secret@10.0.0.1:26379/1;sentinel://:secret@10.0.0.2:26379/1",
    ],
)
def test_sentinel_urls_with_a_master_are_a_redis_store_broker_and_backend(url: str) -> None:
    settings = Settings(
        redis_url=url, broker_url=url, result_backend=url, sentinel_master="mymaster"
    )
    assert settings.redis_broker  # claims, orphans, visibility timeout and depths apply
    config = contract.celery_config(settings)
    for options in ("broker_transport_options", "result_backend_transport_options"):
        assert config[options]["master_name"] == "mymaster"
        assert "password" not in config[options]["sentinel_kwargs"]


def test_the_sentinels_own_password_goes_to_celery_and_the_store() -> None:
    url = "sentinel://:server-pw@10.0.0.1:26379/3;sentinel://10.0.0.2:26379/3"
    settings = Settings(redis_url=url, sentinel_master="mymaster", sentinel_password="s-pw")
    transport = contract.celery_config(settings)["broker_transport_options"]
    assert transport["sentinel_kwargs"]["password"] == "s-pw"
    assert transport_master(transport) == Master("mymaster", "s-pw")  # the worker's bindings
    assert transport_master({"visibility_timeout": 300}) is None
    bounded = contract.producer_app(settings, timeout=1.5).conf.broker_transport_options
    assert bounded["sentinel_kwargs"] == {
        "socket_connect_timeout": 1.5,
        "socket_timeout": 1.5,
        "password": "s-pw",
    }
    client = redis_client(url, Master("mymaster", "s-pw"))  # builds; connects on first use
    pool: Any = client.connection_pool
    assert pool.connection_kwargs["password"] == "server-pw"
    assert pool.connection_kwargs["db"] == 3
    first = pool.sentinel_manager.sentinels[0]
    assert first.connection_pool.connection_kwargs["password"] == "s-pw"
    assert len(pool.sentinel_manager.sentinels) == 2
    client.close()


def test_a_plain_broker_with_a_sentinel_store_gets_no_sentinel_options() -> None:
    settings = Settings(
        redis_url=SENTINELS, broker_url="redis://broker:6379/0", sentinel_master="m"
    )
    config = contract.celery_config(settings)
    assert config["result_backend"] == "redis://broker:6379/0"  # defaults to the broker
    for options in ("broker_transport_options", "result_backend_transport_options"):
        assert "master_name" not in config[options]
    backend = Settings(redis_url=SENTINELS, result_backend=sentinels(2), sentinel_master="m")
    assert contract.celery_config(backend)["result_backend_transport_options"]["master_name"]


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"redis_url": SENTINELS}, "POLLEN_SENTINEL_MASTER: must be set for POLLEN_REDIS_URL"),
        (
            {"broker_url": SENTINELS},
            "POLLEN_SENTINEL_MASTER: must be set for POLLEN_BROKER_URL",
        ),
        (
            {"result_backend": SENTINELS},
            "POLLEN_SENTINEL_MASTER: must be set for POLLEN_RESULT_BACKEND",
        ),
        ({"sentinel_master": "m"}, "POLLEN_SENTINEL_MASTER: set, but no URL is sentinel://"),
        (
            {"redis_url": "sentinel://a:26379;redis://b:6379", "sentinel_master": "m"},
            "POLLEN_REDIS_URL: 'redis://b:6379': each address of a Sentinel URL",
        ),
        (
            {"broker_url": "sentinel://a:port", "sentinel_master": "m"},
            "POLLEN_BROKER_URL: 'sentinel://a:port'",
        ),
        ({"redis_url": "sentinels://a:26379"}, "POLLEN_REDIS_URL: must start with"),
        (
            {"redis_url": f"{SENTINELS}/1", "sentinel_master": "m"},
            "POLLEN_REDIS_URL: the addresses of a Sentinel URL name one database and password",
        ),
        (
            {
                "redis_url": "sentinel://:pw@a:26379;sentinel://:other@b:26379",
                "sentinel_master": "m",
            },
            "POLLEN_REDIS_URL: the addresses of a Sentinel URL name one database and password",
        ),
        (  # a URL quoted in an error shows no password
            {"redis_url": "sentinel://:hunter2@10.0.0.1:bad/1", "sentinel_master": "m"},
            "POLLEN_REDIS_URL: 'sentinel://:****@10.0.0.1:bad/1': each address",
        ),
        (
            {
                "redis_url": "sentinel://:hunter2@a:26379;redis://:hunter2@b:6379",
                "sentinel_master": "m",
            },
            "POLLEN_REDIS_URL: 'redis://:****@b:6379': each address",
        ),
        (  # kombu's TLS options would be dropped: a plaintext connection
            {"redis_url": "sentinel://10.0.0.1:26379/1?ssl=true", "sentinel_master": "m"},
            "POLLEN_REDIS_URL: 'sentinel://10.0.0.1:26379/1?ssl=true': a Sentinel URL takes no "
            "query (?...): TLS to Sentinel and its Redis servers is not supported",
        ),
        (
            {
                "broker_url": "sentinel://:hunter2@a:26379;sentinel://b:26379?ssl_cert_reqs=none",
                "sentinel_master": "m",
            },
            "POLLEN_BROKER_URL: 'sentinel://b:26379?ssl_cert_reqs=none': a Sentinel URL takes no",
        ),
        (
            {"sentinel_password": "s-pw"},
            "POLLEN_SENTINEL_PASSWORD: set, but no URL is sentinel://",
        ),
        (  # a plain URL first: the Sentinel after it would be ignored, no failover followed
            {"redis_url": "redis://:hunter2@a:6379/0;sentinel://:hunter2@b:26379/0"},
            "POLLEN_REDIS_URL: 'redis://:****@a:6379/0;sentinel://:****@b:26379/0': only a "
            "Sentinel URL lists several addresses",
        ),
    ],
)
def test_bad_sentinel_settings_are_one_line_naming_the_variable(
    given: dict[str, str], says: str
) -> None:
    with pytest.raises(Exception) as caught:
        Settings(**given)  # type: ignore[arg-type]
    found = problems(caught.value)
    assert found is not None
    assert says in found
    assert "hunter2" not in found and "\n" not in found


def test_a_bad_sentinel_url_at_the_command_line_shows_no_password(
    worker_env: dict[str, str],
) -> None:
    env = {**worker_env, "POLLEN_REDIS_URL": "sentinel://:hunter2@10.0.0.1:bad/1"}
    result = pollen(env, "config")
    assert_user_error(result, "POLLEN_REDIS_URL: 'sentinel://:****@10.0.0.1:bad/1'")
    assert "hunter2" not in result.stdout + result.stderr


def test_the_sentinels_password_is_not_in_a_masters_repr() -> None:
    assert "s-pw" not in repr(Master("mymaster", "s-pw"))
    assert "mymaster" in repr(Master("mymaster", "s-pw"))
    assert Master("mymaster", "s-pw") != Master("mymaster", "other")


def test_a_sentinel_url_without_a_master_is_refused_at_the_command_line(
    worker_env: dict[str, str],
) -> None:
    result = pollen({**worker_env, "POLLEN_REDIS_URL": sentinels(1)}, "config")
    assert_user_error(result, "POLLEN_SENTINEL_MASTER: must be set for POLLEN_REDIS_URL")


def test_config_shows_the_master_and_masks_each_sentinels_password(
    worker_env: dict[str, str],
) -> None:
    url = "sentinel://:hunter2@10.0.0.1:26379/1;sentinel://:hunter2@10.0.0.2:26379/1"
    env = {**worker_env, "POLLEN_REDIS_URL": url, "POLLEN_SENTINEL_MASTER": "mymaster"}
    result = pollen(env, "config")
    assert result.returncode == 0, result.stderr
    assert "POLLEN_SENTINEL_MASTER=mymaster\n" in result.stdout
    assert "hunter2" not in result.stdout


def test_a_sentinel_store_is_named_by_its_master_sentinels_and_database() -> None:
    """Local files of one store (the remembered epoch, the heartbeat) carry its tag: one set
    of Sentinels may watch several masters, each another store."""
    one = store_tag(sentinels(1), "m")
    assert store_tag("sentinel://:pw@10.0.0.1:26379/1;sentinel://:pw@10.0.0.2:26380/1", "m") == one
    assert store_tag("sentinel://10.0.0.2:26380/1;sentinel://10.0.0.1:26379/1", "m") == one
    assert store_tag(sentinels(1), "other") != one
    assert store_tag(sentinels(2), "m") != one
    assert store_tag("sentinel://10.0.0.3:26379/1", "m") != one
    a, b = (Settings(redis_url=sentinels(1), sentinel_master=name) for name in ("a", "b"))
    assert a.epoch_file != b.epoch_file and a.heartbeat_file != b.heartbeat_file
    again = Settings(redis_url=sentinels(1), sentinel_master="a")
    assert (again.epoch_file, again.heartbeat_file) == (a.epoch_file, a.heartbeat_file)


def test_a_sentinel_url_needs_a_master_to_build_a_client() -> None:
    with pytest.raises(ValueError, match="POLLEN_SENTINEL_MASTER"):
        connect(SENTINELS, None, client_options())


# --- Sentinels that name no master: one line --------------------------------------------


def _dead_sentinels() -> tuple[str, str]:
    """A Sentinel URL of two ports nothing listens on, and what pollen says of it."""
    ports = [free_port(), free_port()]
    url = ";".join(f"sentinel://127.0.0.1:{port}/0" for port in ports)
    where = ", ".join(f"127.0.0.1:{port}" for port in ports)
    return url, f"no Sentinel of {where} names master 'm'"


def test_sentinels_that_name_no_master_are_one_line(tmp_path: Path) -> None:
    url, says = _dead_sentinels()
    assert probe(url, master=Master("m")) == says
    with pytest.raises(StoreUnavailable) as caught:
        durability.last_loss(url, master=Master("m"))
    assert str(caught.value) == says

    async def ping() -> BaseException:
        client = connect(url, Master("m"), {"socket_connect_timeout": 1}, asyncio=True)
        try:
            await client.ping()
        except redis.RedisError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("the dead Sentinels answered")

    failed = asyncio.run(ping())
    assert len(str(failed)) > 500  # redis-py's: every Sentinel client's repr
    assert reason(failed, url) == says
    (tmp_path / "sentinel.conf").write_text("")  # a Sentinel that answers, watching no master
    conf, workdir = str(tmp_path / "sentinel.conf"), str(tmp_path)
    with RedisServer(config_file=conf, extra_args=["--sentinel"], workdir=workdir) as sentinel:
        one = f"sentinel://127.0.0.1:{sentinel.port}"
        assert (
            probe(one, master=Master("m"))
            == f"no Sentinel of 127.0.0.1:{sentinel.port} names master 'm'"
        )
        store = Store(redis_client(one, Master("m")), finished_ttl=60)
        with pytest.raises(StoreUnavailable) as caught:  # a library user's error: short too
            store.lifecycle.fields("job", "status")
        store.close()
        assert str(caught.value) == "Redis is unreachable: No master found for 'm'"
        # a plain URL at a Sentinel's port (an easy slip): a clear error, not redis-py's
        store = Store(redis_client(f"redis://127.0.0.1:{sentinel.port}/0"), finished_ttl=60)
        with pytest.raises(StoreUnavailable) as caught:
            store.lifecycle.fields("job", "status")
        store.close()
        assert "if it is a Sentinel, use a sentinel:// URL and POLLEN_SENTINEL_MASTER" in str(
            caught.value
        )


def test_dead_sentinels_are_one_line_in_stats_and_health(worker_env: dict[str, str]) -> None:
    url, says = _dead_sentinels()
    env = {**worker_env, "POLLEN_REDIS_URL": url, "POLLEN_SENTINEL_MASTER": "m"}
    line = assert_user_error(pollen(env, "stats"), f"is unreachable ({says})")
    assert len(line) < 200
    health = pollen(env, "health", "--local")
    assert health.returncode == 1
    assert f"FAIL store: unreachable: {says}\n" in health.stdout
    assert max(len(line) for line in health.stdout.splitlines()) < 200
    assert "Traceback" not in health.stderr


# --- a real failover ---------------------------------------------------------------------


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with SentinelGroup(tmp_path) as started:
        yield started


def _create(store: Store, job_id: str) -> bool:
    fields = {"id": job_id, "provider": "runware", "status": "queued", "poll_seq": "0"}
    [created] = store.run(
        lifecycle.create_many(
            [(job_id, fields, JOB_TTL, "fp")],
            now=time.time(),
            submit_grace=60,
            replicas=store.replicas,
        )
    )
    return created is True


def _replicated(client: redis.Redis) -> None:
    """Wait for the replica to hold every write so far (a kill then loses nothing)."""
    assert client.wait(1, 2000) == 1


def test_the_store_and_the_async_store_follow_a_sentinel_failover(group: SentinelGroup) -> None:
    url = group.url(1)
    settings = Settings(redis_url=url, sentinel_master=MASTER)
    store, _ = open_store(settings)
    aio = AsyncStore(url, window=20, master=Master(MASTER))
    marker = durability.marker()

    async def epoch() -> str:
        return await aio.run(durability.epoch(marker))

    loop = asyncio.new_event_loop()
    try:
        assert _create(store, "before")
        first = loop.run_until_complete(epoch())
        _replicated(store.redis)
        killed = group.kill_primary()
        assert _create(store, "after")  # rides out the failover: no error on the way
        followed = time.monotonic() - killed
        # the promoted replica is the same store: its jobs and its epoch marker
        assert loop.run_until_complete(epoch()) == first
        assert not _create(store, "before")
        assert group.master_port() == group.replica.port
        print(f"the store followed the failover {followed:.1f}s after the kill")
        assert followed < 15
    finally:
        loop.run_until_complete(aio.aclose())
        loop.close()
        store.close()


def test_a_worker_follows_a_sentinel_failover(
    group: SentinelGroup, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **worker_env,
        "POLLEN_REDIS_URL": group.url(1),
        "POLLEN_BROKER_URL": group.url(0),
        "POLLEN_SENTINEL_MASTER": MASTER,
        "POLLEN_METRICS_PORT": str(free_port()),
        "POLLEN_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    settings = settings_from(env)
    log = tmp_path / "worker.log"

    def done(client: Pollen, job_id: str) -> None:
        job = client.wait(job_id, timeout=45)
        assert job.status is JobStatus.SUCCEEDED, log.read_text()[-3000:]

    with Worker(env, name="on-sentinel", concurrency=4, log_file=str(log)) as worker:
        transport = contract.celery_config(settings)["broker_transport_options"]
        worker.wait_ready(settings.broker, timeout=60, transport=transport)
        with Pollen(settings) as client:
            done(client, client.submit("runware", video_request([0.3])))
            raw = redis_client(settings.redis_url, Master(MASTER))
            _replicated(raw)
            raw.close()
            killed = group.kill_primary()
            group.wait_promoted()
            job_id = client.submit("runware", video_request([0.3]))
            done(client, job_id)
            print(f"a job submitted after the kill was done {time.monotonic() - killed:.1f}s later")


# --- a managed Redis: one name, a new address after a failover -----------------------------


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer()
    with primary, ReplicaServer(primary) as replica:
        yield primary, replica


def _fail_over(proxy: SwitchProxy, old: RedisServer, new: RedisServer) -> None:
    """What a managed Redis does: the replica becomes the primary, the name points at it,
    and the old primary comes back as the new one's replica (answering writes READONLY)."""
    promoted, demoted = redis.Redis(port=new.port), redis.Redis(port=old.port)
    try:
        promoted.replicaof("NO", "ONE")
        proxy.upstream = new.port
        demoted.replicaof("127.0.0.1", new.port)
    finally:
        promoted.close()
        demoted.close()


def test_a_plain_url_reconnects_when_its_primary_turned_replica(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = servers
    with SwitchProxy(primary.port) as proxy:
        store = Store(redis_client(proxy.url), finished_ttl=60)
        options: dict[str, Any] = client_options()
        options["retry_on_error"] = [redis.ConnectionError, redis.TimeoutError]
        stale = redis.Redis.from_url(proxy.url, **options)  # without the READONLY retry
        assert _create(store, "before") and stale.ping()
        _replicated(store.redis)
        _fail_over(proxy, primary, replica)
        with pytest.raises(redis.ReadOnlyError):
            stale.set("k", "v")  # kept its connection to the old primary: fails for good
        with pytest.raises(redis.ReadOnlyError):
            stale.set("k", "v")
        started = time.monotonic()
        assert _create(store, "after")  # dropped the READONLY connection, reconnected
        assert not _create(store, "before")  # the new primary has the old one's jobs
        assert time.monotonic() - started < 5
        stale.close()
        store.close()
