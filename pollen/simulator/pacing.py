"""Creates answered one at a time (``create_gap``): a provider whose create answers arrive
staggered, so a test can act between two answers.

With ``create_gap`` set, the creates of every dialect queue for one turn each: a create is
handled when the previous one has been answered for ``create_gap`` seconds. A create still
waiting its turn when its client goes away (a killed worker) is dropped unhandled: the provider
never made its task. So between two answers no create is in progress, and ``GET /_sim/stats``
says how many wait (``creates_waiting``) and how many were dropped (``creates_dropped``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

#: how often a waiting create checks whether its client went away
CHECK_EVERY = 0.02
#: the answer to a create whose client went away (nobody reads it)
GONE = 499


class CreatePacer:
    """The turns of paced creates (one per simulator)."""

    def __init__(self) -> None:
        self._turn = asyncio.Lock()  # bound to the server's loop on first use
        self._counts = threading.Lock()
        self._last = 0.0  # monotonic time of the last paced answer
        self.waiting = 0
        self.dropped = 0

    def clear(self) -> None:
        with self._counts:
            self._last = 0.0
            self.dropped = 0

    def counts(self) -> dict[str, int]:
        with self._counts:
            return {"creates_waiting": self.waiting, "creates_dropped": self.dropped}

    async def paced(
        self, request: Request, gap: float, handle: Callable[[], Awaitable[Response]]
    ) -> Response:
        """``handle()`` the create in its turn, ``gap`` seconds after the previous answer; a
        create whose client left while it waited is dropped (``handle`` never runs)."""
        await request.body()  # read now: a disconnect check must not take the body's message
        self._count(waiting=1)
        try:
            async with self._turn:
                if not await self._wait_turn(request, gap):
                    self._count(dropped=1)
                    return Response(status_code=GONE)
                response = await handle()
                self._last = time.monotonic()
                return response
        finally:
            self._count(waiting=-1)

    async def _wait_turn(self, request: Request, gap: float) -> bool:
        """Wait until ``gap`` after the last answer; False if the client left meanwhile."""
        while (left := self._last + gap - time.monotonic()) > 0:
            if await request.is_disconnected():
                return False
            await asyncio.sleep(min(left, CHECK_EVERY))
        return not await request.is_disconnected()

    def _count(self, *, waiting: int = 0, dropped: int = 0) -> None:
        with self._counts:
            self.waiting += waiting
            self.dropped += dropped
