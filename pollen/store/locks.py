"""Locks of periodic work: one holder per period across all workers."""

from __future__ import annotations

from pollen.store.effects import Op, Runner, cmd, single


def try_lock(key: str, ttl: float) -> Op[bool]:
    """Take ``key`` for ``ttl`` seconds unless someone holds it (no unlock: it expires)."""
    taken = yield from single(cmd("set", key, "1", nx=True, px=max(1, int(ttl * 1000))))
    return bool(taken)


class Locks:
    """Periodic locks on one client: ``Store.locks``."""

    def __init__(self, run: Runner) -> None:
        self.run = run

    def acquire(self, key: str, ttl: float) -> bool:
        """One holder per ``ttl`` seconds across all workers (no unlock: it simply expires)."""
        return self.run(try_lock(key, ttl))
