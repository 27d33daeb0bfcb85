"""A provider request budget shared by every worker: a sliding one-second window in Redis.

Each request to a rate-limited provider first takes a slot (one Lua call in the store,
:meth:`pollen.store.rates.RateTokens.take`, on Redis's own clock so all workers agree);
the policy (slots per window, sleeping or refusing) is here. No window of one second ever
holds more than the limit. A wait of a fraction of a second is slept through; a longer one
becomes :class:`RateLimited`, which the steps turn into a countdown retry like a provider's
own 429. A provider account with a ``rate`` of its own has a window of its own as well
(``provider@account``), taken after the provider's (``POLLEN_RATE_LIMITS``) when both are set.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pollen.errors import RateLimited

if TYPE_CHECKING:
    from pollen.settings import AccountSettings
    from pollen.store.sync import Store

MAX_SLEEP = 0.25  #: longer waits become a countdown retry instead of a sleeping task


class RateLimiter:
    """Per-provider request limits (requests per second), shared through Redis."""

    def __init__(
        self,
        store: Store,
        limits: dict[str, float],
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits = {name: rate for name, rate in limits.items() if rate > 0}
        self._store = store
        self._sleep = sleep
        self._ids = itertools.count()
        self.waited = 0.0  #: seconds slept waiting for slots (for tests and metrics)

    def acquire(self, provider: str, account: AccountSettings | None = None) -> float | None:
        """Take one request slot for ``provider`` and, when ``account`` has a ``rate`` of its
        own, one of that account's window too; raise RateLimited if one is far off.

        Returns when the slot was taken (Redis clock, unix seconds), None if unlimited.
        """
        granted = self._take(provider, self.limits.get(provider))
        if account is not None and account.rate is not None:
            label = f"{provider} account {account.name}"
            granted = self._take(f"{provider}@{account.name}", account.rate, label)
        return granted

    def _take(self, window: str, limit: float | None, label: str | None = None) -> float | None:
        """One slot of ``window`` (a provider, or ``provider@account``) at ``limit``/s."""
        if limit is None:
            return None
        # A limit below 1/s is enforced over a longer window with the same average rate.
        slots, window_ms = (limit, 1000) if limit >= 1 else (1, round(1000 / limit))
        while True:
            member = f"{os.getpid()}:{next(self._ids)}:{time.monotonic_ns()}"
            wait_ms, now_ms = self._store.rates.take(
                window, limit=int(slots), window_ms=window_ms, member=member
            )
            if wait_ms == 0:
                return now_ms / 1000
            wait = wait_ms / 1000
            if wait > MAX_SLEEP:
                raise RateLimited(
                    f"pollen's own limit of {limit:g} requests/s to {label or window} is used up",
                    retry_after=wait,
                    status=None,
                )
            self.waited += wait
            self._sleep(wait)
