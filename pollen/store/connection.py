"""Redis and HTTP clients, built from settings (one of each per worker process), and probes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.connection import parse_url
from redis.retry import Retry

from pollen.errors import StoreUnavailable
from pollen.settings import Settings, is_redis_url, is_sentinel_url, sentinel_addresses
from pollen.store import replication
from pollen.store.outbox import Outbox
from pollen.store.sync import Store

#: what a call raises when Redis cannot be reached (for callers outside the store)
UNREACHABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
#: what redis-py's Sentinel raises when no Sentinel names the master (sync, asyncio)
NO_MASTER = (redis.sentinel.MasterNotFoundError, redis.asyncio.sentinel.MasterNotFoundError)


def reason(exc: BaseException, url: str) -> str:
    """Why a call to the Redis at ``url`` failed, in one line: redis-py's "No master found"
    lists every Sentinel client's repr (kilobytes); this names the Sentinels instead."""
    if not isinstance(exc, NO_MASTER) or not is_sentinel_url(url):
        return str(exc)
    name = str(exc).removeprefix("No master found for ").split(" : ", 1)[0]
    where = ", ".join(f"{host}:{port}" for host, port in sentinel_addresses(url))
    return f"no Sentinel of {where} names master {name}"


def client_options(retry: type[Any] = Retry) -> dict[str, Any]:
    """How pollen's Redis clients connect (``retry``: redis-py's Retry class of the sync or
    the asyncio client): they ride out a restart, reconnecting with backoff for about 20 s."""
    return {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "socket_timeout": 15,
        "health_check_interval": 15,
        "retry": retry(ExponentialBackoff(cap=2.0, base=0.05), retries=12),
        # READONLY (the primary behind a DNS name became a replica: a managed failover) is
        # handled where the store runs its batches (pollen.store.effects.execute), which
        # sends a refused batch again with its scripts on new connections
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }


@dataclass(frozen=True)
class Master:
    """Which primary a ``sentinel://`` URL leads to: the master's name the Sentinels know,
    and the Sentinels' own password if they need one."""

    name: str
    sentinel_password: str | None = field(default=None, repr=False)


def master(settings: Settings) -> Master | None:
    """The Sentinel master of ``settings`` (None without ``POLLEN_SENTINEL_MASTER``)."""
    if settings.sentinel_master is None:
        return None
    password = settings.sentinel_password
    return Master(settings.sentinel_master, password.get_secret_value() if password else None)


def transport_master(options: dict[str, Any]) -> Master | None:
    """The master of a Celery app's transport options (:func:`sentinel_options`), if any."""
    if "master_name" not in options:
        return None
    password = (options.get("sentinel_kwargs") or {}).get("password")
    return Master(options["master_name"], password)


def connect(
    url: str, master: Master | None, options: dict[str, Any], *, asyncio: bool = False
) -> Any:
    """The one way pollen builds a Redis client (``redis.Redis``, or ``redis.asyncio.Redis``
    with ``asyncio``) with ``options``: from the URL, or for a ``sentinel://`` URL the
    master the Sentinels name now, followed through a failover (redis-py's Sentinel)."""
    if not is_sentinel_url(url):
        return (redis.asyncio.Redis if asyncio else redis.Redis).from_url(url, **options)
    if master is None:
        raise ValueError("a sentinel:// URL needs a master's name (POLLEN_SENTINEL_MASTER)")
    # the first address's password and db are the Redis servers' (as Celery and kombu read it)
    first = parse_url("redis://" + url.split(";", 1)[0].split("://", 1)[1])  # type: ignore[no-untyped-call]
    server = {k: first[k] for k in ("db", "username", "password") if first.get(k) is not None}
    own = {k: v for k, v in options.items() if k.startswith("socket_")}
    if master.sentinel_password is not None:
        own["password"] = master.sentinel_password
    if asyncio:
        sentinel: Any = redis.asyncio.sentinel.Sentinel(
            sentinel_addresses(url), sentinel_kwargs=own, **options, **server
        )
        return sentinel.master_for(
            master.name, AsyncSentinelClient, connection_class=FollowingConnection
        )
    sentinel = redis.sentinel.Sentinel(
        sentinel_addresses(url), sentinel_kwargs=own, **options, **server
    )
    return sentinel.master_for(master.name, SentinelClient)


class SentinelClient(redis.Redis):
    """A master's client that closes its connections to the Sentinels with its own."""

    def close(self) -> None:
        super().close()
        cast("Any", self.connection_pool).sentinel_manager.close()


class AsyncSentinelClient(redis.asyncio.Redis):
    """:class:`SentinelClient` for ``redis.asyncio``."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await cast("Any", self.connection_pool).sentinel_manager.aclose()


class FollowingConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """redis-py's asyncio Sentinel connection, asking the Sentinels for the master also when
    a command's retry reconnects: redis-py's own reconnects there to the address it had, so
    a client kept retrying a dead primary for its whole retry budget after a failover."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:  # the Sentinel connection's connect: the master's address first
            await self.connect()  # type: ignore[no-untyped-call]
        await super().send_packed_command(command, check_health)


class Window(AbstractBackoff):
    """A retry budget of ``seconds`` from the start of each command: backoff doubles from
    50 ms up to 1 s and never sleeps past the end; :meth:`open` (the Retry's ``is_retryable``)
    says no once the time is up, so a failure then is raised instead of retried. ``depth``
    counts the calls under way: a reconnect retried inside a command keeps its window."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until = time.monotonic() + seconds
        self.depth = 0

    def reset(self) -> None:
        if self.depth <= 1:
            self.until = time.monotonic() + self.seconds

    def compute(self, failures: int) -> float:
        left = self.until - time.monotonic()
        return max(0.0, min(0.05 * 2.0 ** min(failures, 5), 1.0, left))

    def open(self, _error: Exception) -> bool:
        return time.monotonic() < self.until


class WindowRetry(Retry):
    """redis-py's Retry within one :class:`Window` per command (reconnects included)."""

    def __init__(self, window: Window) -> None:
        super().__init__(window, retries=-1, is_retryable=window.open)
        self.window = window

    def call_with_retry(self, *args: Any, **kwargs: Any) -> Any:
        self.window.depth += 1
        try:
            return super().call_with_retry(*args, **kwargs)
        finally:
            self.window.depth -= 1


class AsyncWindowRetry(AsyncRetry):
    """:class:`WindowRetry` for ``redis.asyncio``."""

    def __init__(self, window: Window) -> None:
        super().__init__(window, retries=-1, is_retryable=window.open)
        self.window = window

    async def call_with_retry(self, *args: Any, **kwargs: Any) -> Any:
        self.window.depth += 1
        try:
            return await super().call_with_retry(*args, **kwargs)
        finally:
            self.window.depth -= 1


def producer_options(window: float, asyncio: bool = False) -> dict[str, Any]:
    """How the producer clients connect: an app's request should fail, not hang, while Redis
    is away, so a command is tried again for ``window`` seconds and each connect or reply is
    waited for at most that long. It gives up after about ``window`` seconds (at most twice
    that if the last try began just before the end and then waited its full timeout)."""
    retry = AsyncWindowRetry if asyncio else WindowRetry
    return client_options() | {
        "socket_connect_timeout": window,
        "socket_timeout": window,
        "retry": retry(Window(window)),
    }


def redis_client(url: str, master: Master | None = None) -> redis.Redis:
    """A Redis client that rides out a restart (:func:`client_options`)."""
    return cast("redis.Redis", connect(url, master, client_options()))


def producer_client(url: str, window: float, master: Master | None = None) -> redis.Redis:
    """A Redis client that gives up after about ``window`` seconds (:func:`producer_options`)."""
    return cast("redis.Redis", connect(url, master, producer_options(window)))


def open_store(
    settings: Settings,
    client: redis.Redis | None = None,
    on_short: Callable[[int, int], None] | None = None,
) -> tuple[Store, Outbox]:
    """The job store and the callback outbox of ``settings.redis_url``, sharing one client
    (default :func:`redis_client`); its creates wait for the replicas the settings ask for
    (``on_short``: called when a wait falls short, see :mod:`pollen.store.replication`)."""
    if client is None:
        client = redis_client(settings.redis_url, master(settings))
    store = Store(
        client,
        finished_ttl=settings.job_ttl,
        grace=settings.reconcile_grace,
        submit_grace=settings.submit_grace,
        rehost=settings.storage.url is not None,
    )
    store.replicas = replication.of(settings, on_short)
    return store, Outbox(client)


def probe_client(url: str, master: Master | None = None, timeout: float = 2.0) -> redis.Redis:
    """A client for one probe: short timeouts, no retries, replies decoded."""
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    return cast("redis.Redis", connect(url, master, options | {"decode_responses": True}))


def probe(url: str, timeout: float = 2.0, master: Master | None = None) -> str | None:
    """PING the Redis at ``url`` with short timeouts: None if it answers, else why not."""
    client = probe_client(url, master, timeout)
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return reason(exc, url)
    finally:
        client.close()


def queue_depths(
    url: str, queues: list[str], timeout: float | None = None, master: Master | None = None
) -> Callable[[], list[int]]:
    """A reader of the broker's queue lengths (Redis: one client, one pipeline per call; with
    ``timeout``, a client that gives up after about that long: :func:`producer_client`).
    Another broker (RabbitMQ) is asked by :func:`_declared_depths`, never Redis."""
    if not is_redis_url(url):
        return _declared_depths(url, queues, timeout or 5.0)
    client = redis_client(url, master) if timeout is None else producer_client(url, timeout, master)

    def read() -> list[int]:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        return [int(n) for n in pipe.execute()]

    return read


def _declared_depths(url: str, queues: list[str], timeout: float) -> Callable[[], list[int]]:
    """Queue lengths on another broker (RabbitMQ): the messages ready in each queue, asked
    with a passive declare on one short connection per call (0 for a queue not declared
    yet); an unreachable broker raises ``StoreUnavailable``."""
    from kombu.connection import Connection

    def read() -> list[int]:
        depths = []
        connection = Connection(url, connect_timeout=timeout)  # type: ignore[no-untyped-call]
        try:
            with connection:
                for queue in queues:
                    channel = connection.channel()  # type: ignore[no-untyped-call]
                    try:
                        ok = channel.queue_declare(queue, passive=True)
                        depths.append(int(ok.message_count))
                    except connection.channel_errors:
                        depths.append(0)
                    finally:
                        channel.close()
        except (OSError, *connection.connection_errors) as exc:
            raise StoreUnavailable(f"the broker is unreachable: {exc}") from exc
        return depths

    return read


#: how kombu's Redis transport joins a binding's fields (routing key, pattern, queue)
BINDING_SEPARATOR = "\x06\x16"


def drop_stale_bindings(url: str, queues: list[str], master: Master | None = None) -> int:
    """Remove from each queue's exchange in the broker every binding but ``queue -> queue``
    (see :mod:`pollen.worker.bindings`); how many. Raises ``StoreUnavailable``."""
    client = redis_client(url, master)
    removed = 0
    try:
        for name in queues:
            key = f"_kombu.binding.{name}"
            own = BINDING_SEPARATOR.join([name, "", name])
            members = cast("set[str]", client.smembers(key))  # the client decodes replies
            stale = [m for m in members if m != own]
            if stale:
                removed += int(client.srem(key, *stale))
    except redis.RedisError as exc:
        raise StoreUnavailable(f"Redis is unreachable: {reason(exc, url)}") from exc
    finally:
        client.close()
    return removed


def http_client(settings: Settings) -> httpx.Client:
    """The pooled keep-alive client shared by all provider and callback calls in a process."""
    return httpx.Client(
        timeout=httpx.Timeout(settings.http_timeout, connect=10.0),
        limits=httpx.Limits(
            max_connections=settings.http_max_connections,
            max_keepalive_connections=settings.http_max_connections,
        ),
        follow_redirects=False,
        headers={"User-Agent": "pollen/0.1"},
    )
