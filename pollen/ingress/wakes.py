"""Wake-up polls sent together when pushes come faster than they can be published (group
commit): the first push's poll is published at once, alone; pushes that arrive while a publish
is on its way wait for it to end and then go together in the next ``pollen.poll`` message. A
steady trickle of pushes costs no added latency; a burst costs one message and, for a provider
that takes task arrays (Runware), one status request per batch, as scheduled polls do.

Each push still waits until the message that carries its poll is published: its provider gets
a 2xx only then, or a 5xx to retry when the broker refused it. Two pushes for one job in the
same batch make one item: the job is polled once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pollen import contract
from pollen.producer import Send

Publish = Callable[[Send], Awaitable[None]]


class WakeBatcher:
    """Publishes ``[job_id, attempt]`` items as poll messages on ``queue``, at most ``size``
    jobs each, one publish at a time; what arrives meanwhile goes in the next message."""

    def __init__(self, publish: Publish, *, queue: str, size: int) -> None:
        self.publish = publish
        self.queue = queue
        self.size = size
        self._batches: list[tuple[dict[str, int], asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def wake(self, job_id: str, attempt: int) -> None:
        """Poll ``job_id`` (its attempt ``attempt``) in the next message; returns once that
        message is published, raises what publishing raised."""
        if not self._batches or len(self._batches[-1][0]) >= self.size:
            self._batches.append(({}, asyncio.get_running_loop().create_future()))
        items, done = self._batches[-1]
        items[job_id] = max(attempt, items.get(job_id, attempt))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all())
        await asyncio.shield(done)

    async def _send_all(self) -> None:
        try:
            while self._batches:
                items, done = self._batches.pop(0)
                await self._send([[job_id, n] for job_id, n in items.items()], done)
        finally:
            self._sender = None

    async def _send(self, items: list[list[str | int]], done: asyncio.Future[None]) -> None:
        message = Send(
            contract.POLL,
            self.queue,
            kwargs={"items": items},
            kwargsrepr=contract.describe_batch(items),
        )
        try:
            await self.publish(message)
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # retrieved here: no warning if every push waiting on it is gone
        else:
            done.set_result(None)
