"""Wake-up polls sent together: pushes that arrive within a short window of each other share
one ``pollen.poll`` message, so a burst of pushes costs one message and, for a provider that
takes task arrays (Runware), one status request per batch, as scheduled polls do.

Each push still waits for the message that carries its poll to be published (its provider gets
a 2xx only then, or a 5xx to retry when the broker refused it). Two pushes for one job in the
same window make one item: the job is polled once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pollen import contract
from pollen.producer import Send

Publish = Callable[[Send], Awaitable[None]]


class WakeBatcher:
    """Collects ``[job_id, attempt]`` items for ``window`` seconds after the first (or until
    ``size`` jobs) and publishes them as one poll message on ``queue``."""

    def __init__(self, publish: Publish, *, queue: str, window: float, size: int) -> None:
        self.publish = publish
        self.queue = queue
        self.window = window
        self.size = size
        self._items: dict[str, int] = {}
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()  #: held, so they are not collected

    async def wake(self, job_id: str, attempt: int) -> None:
        """Poll ``job_id`` (its attempt ``attempt``) in the next message; returns once that
        message is published, raises what publishing raised."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            self._timer = asyncio.create_task(self._flush_later())
        done = self._done
        self._items[job_id] = max(attempt, self._items.get(job_id, attempt))
        if len(self._items) >= self.size:
            self._cut()
        await asyncio.shield(done)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window)
        if self._timer is asyncio.current_task():
            self._cut()

    def _cut(self) -> None:
        """Close the open batch and publish it in the background."""
        items: list[list[str | int]] = [[job_id, n] for job_id, n in self._items.items()]
        done, timer = self._done, self._timer
        self._items, self._done, self._timer = {}, None, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        if done is not None:
            task = asyncio.get_running_loop().create_task(self._send(items, done))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

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
        else:
            done.set_result(None)
