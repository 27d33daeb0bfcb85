"""The simulator's live runtime: config, task store, stats, fault injector, RNG, clock."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pollen.simulator.concurrency import Concurrency
from pollen.simulator.config import SimulatorConfig
from pollen.simulator.faults import FaultInjector
from pollen.simulator.pacing import CreatePacer
from pollen.simulator.push import BodyFn, Pusher
from pollen.simulator.ratelimit import SimulatedRateLimit
from pollen.simulator.state import SimulatorStats, TaskStore


class Simulator:
    """Everything the HTTP handlers share. ``clock`` returns unix seconds (``time.time``)."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        #: ``<own url>/media`` once a server serves this simulator (result file URLs use it)
        self.own_media_url: str | None = None
        self.store = TaskStore()
        self.stats = SimulatorStats()
        self.concurrency = Concurrency()
        self.faults = FaultInjector(config.seed)
        self.limiter = SimulatedRateLimit()
        self.pusher = Pusher(clock)
        self.pacer = CreatePacer()
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # set on shutdown: stalled requests answer at once
        self._rng = random.Random()
        self._seed(config.seed)

    def _seed(self, seed: int | None) -> None:
        with self._lock:
            self._rng = random.Random(None if seed is None else f"durations-{seed}")
        self.faults.reseed(seed)
        self.pusher.reseed(seed)

    def random_duration(self) -> float:
        """Seconds for a generation that has no scripted duration."""
        config = self.config
        with self._lock:
            return round(self._rng.uniform(config.duration_min, config.duration_max), 3)

    def random_int(self, upper: int) -> int:
        with self._lock:
            return self._rng.randint(0, upper)

    @staticmethod
    def new_uuid() -> str:
        """A fresh UUID v4 string; never seeded, so ids stay unique across resets and runs."""
        return str(uuid.uuid4())

    def push(self, url: str, at: float, body: BodyFn) -> None:
        """Push ``body`` to ``url`` when the news is out at ``at``, as the config says."""
        config = self.config
        self.pusher.plan(
            url,
            at,
            body,
            delay=config.push_delay,
            loss=config.push_loss,
            duplicate=config.push_duplicate,
            reorder=config.push_reorder,
        )

    def update_config(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """Apply a validated partial update (raises ``ValueError``/``ValidationError``)."""
        new = self.config.patched(changes)
        old_seed = self.config.seed
        self.config = new
        if new.seed != old_seed:
            self._seed(new.seed)
        return new

    def reset(self) -> None:
        """Forget tasks, stats (per key too), scripted faults, the rate-limit window and the
        create pacing; restart the RNGs."""
        self.store.clear()
        self.stats.clear()
        self.concurrency.clear()
        self.faults.clear()
        self.limiter.clear()
        self.pusher.clear()
        self.pacer.clear()
        self._seed(self.config.seed)
