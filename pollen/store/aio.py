"""The job store on ``redis.asyncio``, for :class:`pollen.AsyncPollen`.

It runs the same operations as the synchronous store (:mod:`pollen.store.effects`) on an asyncio
connection pool, and listens to a job's events on Pub/Sub without a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis.asyncio

from pollen.store import effects, keys, outbox, sync
from pollen.store.connection import Master, connect, producer_options

T = TypeVar("T")


class AsyncStore:
    """One asyncio Redis client (a producer's: it gives up on an unreachable Redis after
    about ``window`` seconds) and the store's scripts registered on it."""

    def __init__(self, url: str, window: float, master: Master | None = None) -> None:
        options = producer_options(window, asyncio=True)
        self.redis: redis.asyncio.Redis = connect(url, master, options, asyncio=True)
        texts = {**sync.script_texts(), **outbox.script_texts()}
        self.scripts = {name: self.redis.register_script(text) for name, text in texts.items()}

    def execute(self, batch: effects.Batch) -> Awaitable[list[Any]]:
        """One batch of commands in one round trip (a pipeline for more than one)."""
        return effects.aexecute(self.redis, self.scripts, batch)

    async def run(self, op: effects.Op[T]) -> T:
        """Run a store operation (:mod:`pollen.store.effects`) on this client."""
        with effects.guard():
            return await effects.arun(self.redis, self.scripts, op)

    @asynccontextmanager
    async def listen(self, job_id: str) -> AsyncIterator[Callable[[float], Awaitable[bool]]]:
        """Listen to the job's events inside the block: yields ``await next_event(seconds)``,
        True when an event came within that time. Subscribed (and confirmed) before the block
        runs, so an event published after it starts is never missed. Leaving the block, or
        the awaiting task being cancelled, unsubscribes and frees the connection."""
        pubsub = self.redis.pubsub()
        try:
            with effects.guard():
                await pubsub.subscribe(keys.events(job_id))
                await _confirmed(pubsub)

            async def next_event(seconds: float) -> bool:
                with effects.guard():
                    return await _next_event(pubsub, seconds)

            yield next_event
        finally:
            await pubsub.aclose()

    async def ping(self) -> None:
        """Raise :class:`~pollen.errors.StoreUnavailable` unless Redis answers."""
        with effects.guard():
            await self.redis.ping()

    async def aclose(self) -> None:
        await self.redis.aclose()


async def _confirmed(pubsub: Any, within: float = 2.0) -> None:
    """Wait for Redis to confirm the subscription (at most ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while (left := until - loop.time()) > 0:
        message = await pubsub.get_message(timeout=min(left, 0.1))
        if message is not None and message["type"] == "subscribe":
            return


async def _next_event(pubsub: Any, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while (left := until - loop.time()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message is not None and message["type"] == "message":
            return True
    return False
