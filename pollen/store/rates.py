"""Rate tokens: one sliding window per provider in Redis, on Redis's own clock so all workers
agree (the policy is :mod:`pollen.providers.ratelimit`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pollen.store import keys
from pollen.store.effects import Lua, Op, run, single

#: the scripts of rate tokens, in ``pollen/store/lua/`` (each names its KEYS and ARGV)
SCRIPTS = ("take_rate_tokens",)


def take_rate_tokens(
    provider: str, *, limit: int, window_ms: int, member: str
) -> Op[tuple[int, int]]:
    """Take one slot of ``provider``'s window: ``(0, now_ms)`` when taken at Redis time
    ``now_ms``, else ``(wait_ms, now_ms)``."""
    wait_ms, now_ms = yield from single(
        Lua("take_rate_tokens", [keys.rate_window(provider)], [limit, window_ms, member])
    )
    return int(wait_ms), int(now_ms)


class RateTokens:
    """Providers' request windows on one client: ``Store.rates``.

    A Redis failure here stays a Redis error (it is not mapped to ``StoreUnavailable``): it
    happens inside a provider call, whose caller tells the two apart.
    """

    def __init__(self, client: Any, scripts: Mapping[str, Any]) -> None:
        self.redis = client
        self.scripts = scripts

    def take(self, provider: str, *, limit: int, window_ms: int, member: str) -> tuple[int, int]:
        """Take one slot of ``provider``'s sliding window of ``window_ms`` (``limit`` slots).

        Returns ``(0, now_ms)`` when taken at Redis time ``now_ms``, else ``(wait_ms, now_ms)``.
        """
        op = take_rate_tokens(provider, limit=limit, window_ms=window_ms, member=member)
        return run(self.redis, self.scripts, op)
