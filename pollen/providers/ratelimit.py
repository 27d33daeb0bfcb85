"""A provider request budget shared by every worker: a sliding one-second window in Redis.

Each request to a rate-limited provider first takes a slot (one Lua call, using Redis's own
clock so all workers agree). No window of one second ever holds more than the limit. A wait of
a fraction of a second is slept through; a longer one becomes :class:`RateLimited`, which the
steps turn into a countdown retry like a provider's own 429.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

import redis

from pollen.errors import RateLimited
from pollen.store import keys

# KEYS: window   ARGV: limit, window_ms, member
# -> {0, now_ms} when a slot was taken at now_ms, or {milliseconds to wait, now_ms}
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {0, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {math.max(1, tonumber(oldest[2]) + window - now + 1), now}
"""

MAX_SLEEP = 0.25  #: longer waits become a countdown retry instead of a sleeping task


class RateLimiter:
    """Per-provider request limits (requests per second), shared through Redis."""

    def __init__(
        self,
        client: redis.Redis,
        limits: dict[str, float],
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits = {name: rate for name, rate in limits.items() if rate > 0}
        self._take = client.register_script(_TAKE)
        self._sleep = sleep
        self._ids = itertools.count()
        self.waited = 0.0  #: seconds slept waiting for slots (for tests and metrics)

    def acquire(self, provider: str) -> float | None:
        """Take one request slot for ``provider``; raise RateLimited if it is far off.

        Returns when the slot was taken (Redis clock, unix seconds), None if unlimited.
        """
        limit = self.limits.get(provider)
        if limit is None:
            return None
        # A limit below 1/s is enforced over a longer window with the same average rate.
        slots, window_ms = (limit, 1000) if limit >= 1 else (1, round(1000 / limit))
        while True:
            member = f"{os.getpid()}:{next(self._ids)}:{time.monotonic_ns()}"
            wait_ms, now_ms = self._take(
                keys=[keys.rate_window(provider)], args=[int(slots), window_ms, member]
            )
            if int(wait_ms) == 0:
                return int(now_ms) / 1000
            wait = wait_ms / 1000
            if wait > MAX_SLEEP:
                raise RateLimited(
                    f"pollen's own limit of {limit:g} requests/s to {provider} is used up",
                    retry_after=wait,
                    status=None,
                )
            self.waited += wait
            self._sleep(wait)
