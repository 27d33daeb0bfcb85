"""The benchmark scenarios: how many jobs, how long they take at the provider, the poll policy.

Every system in a scenario gets the same jobs, the same simulator settings and the same poll
policy (pollen through ``POLLEN_POLL__*``, the baseline through ``BENCH_BASELINE_POLICY``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

#: pollen-many: pollen's workers, jobs enqueued with Pollen.submit_many (MANY_CHUNK per call);
#: pollen-send-task: the same workers, jobs sent by a bare Celery app (no pollen import)
SYSTEMS = ("pollen", "pollen-many", "pollen-send-task", "baseline", "baseline-pooled")
#: task events off (``POLLEN_TASK_EVENTS=false``; the baseline without ``-E``): the other
#: systems run with them on, as a Flower-monitored fleet does
QUIET_SYSTEMS = ("pollen-quiet", "baseline-pooled-quiet")
#: pollen-push: pollen's workers and `pollen ingress`, the simulator pushing; -lossy: 20 % of
#: the pushes lost, 10 % duplicated, reordered
PUSH_SYSTEMS = ("pollen", "pollen-push", "pollen-push-lossy")
#: pollen-capped: pollen's workers told the simulator key's cap (``POLLEN_RUNWARE__MAX_IN_FLIGHT``);
#: in a scenario without a cap, one high enough never to bind (what admission alone costs)
CAPPED = "pollen-capped"
#: pollen-capped with pushes on: a slot frees when the provider says so, not at the next poll
CAPPED_PUSH = "pollen-capped-push"
#: pollen with OpenTelemetry traces on (POLLEN_TRACING), exported over OTLP/HTTP to a sink:
#: what tracing costs against ``pollen``
TRACED = "pollen-traced"
ALL_SYSTEMS = (*SYSTEMS, *PUSH_SYSTEMS[1:], CAPPED, CAPPED_PUSH, TRACED, *QUIET_SYSTEMS)
#: the ``fair`` scenario: pollen told the cap, with tenants; pollen with neither (today's)
FAIR_SYSTEMS = (CAPPED, "pollen")
#: the cap pollen-capped is told when the simulator caps nothing: 100,000 (the most allowed)
NONBINDING_CAP = 100_000

#: pollen's defaults (``pollen/backoff.py``): 2 s before the first poll, then 1, 1.5, 2.25 ... 30 s
DEFAULT_POLICY: dict[str, float] = {
    "initial_delay": 2.0,
    "interval": 1.0,
    "factor": 1.5,
    "max_delay": 30.0,
    "min_delay": 0.2,
    "jitter": 0.2,
    "deadline": 3600.0,
}
#: the test suite's quick policy, for sub-second jobs
FAST_POLICY: dict[str, float] = {
    "initial_delay": 0.2,
    "interval": 0.2,
    "factor": 1.5,
    "max_delay": 1.0,
    "min_delay": 0.05,
    "jitter": 0.2,
    "deadline": 300.0,
}
#: the ``fair`` scenario's jobs of 2 s: first poll at 2 s, then every 0.5 s (20% jitter)
FAIR_POLICY: dict[str, float] = {
    "initial_delay": 2.0,
    "interval": 0.5,
    "factor": 1.0,
    "max_delay": 0.5,
    "min_delay": 0.2,
    "jitter": 0.2,
    "deadline": 3600.0,
}
#: long jobs: first poll after 60 s, then every 60 s (the cap), 20% jitter
SCALE_POLICY: dict[str, float] = {
    "initial_delay": 60.0,
    "interval": 60.0,
    "factor": 1.5,
    "max_delay": 60.0,
    "min_delay": 1.0,
    "jitter": 0.2,
    "deadline": 7200.0,
}


@dataclass(frozen=True)
class Scenario:
    """One benchmark setting. ``timeout`` bounds each system's run (first enqueue to end)."""

    name: str
    description: str
    jobs: int
    duration_min: float
    duration_max: float
    timeout: float
    policy: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_POLICY))
    systems: tuple[str, ...] = SYSTEMS
    rate_limit: int | None = None  #: global provider requests/s (simulator answers 429 above)
    baseline_cap: int | None = None  #: at most this many jobs for the baseline systems
    grace: float = 3.0  #: seconds to keep listening for duplicate callbacks after the last one
    http_timeout: float = 10.0
    sample_interval: float = 0.5
    concurrency: int = 4  #: default pool size per worker process (``--concurrency``)
    #: producer processes per system (``--producers``): 2, one per core of the reference
    #: machine, so the enqueue loop is not what bounds a run (see "enqueue time" in the table)
    producers: int = 2
    #: the simulator key's cap of concurrent tasks (``--cap``; creates past it answer 429)
    cap: int | None = None
    #: jobs a second the producers enqueue, evenly spaced (``--arrival-rate``); None: all at
    #: once, as fast as they can
    arrival_rate: float | None = None
    #: jobs of a second tenant, ``small``, enqueued ``small_delay`` s after the first job
    small_jobs: int = 0
    small_delay: float = 10.0

    def jobs_for(self, system: str) -> int:
        if not system.startswith("pollen") and self.baseline_cap is not None:
            return min(self.jobs, self.baseline_cap)
        return self.jobs

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "jobs": self.jobs,
            "duration_min": self.duration_min,
            "duration_max": self.duration_max,
            "policy": self.policy,
            "rate_limit": self.rate_limit,
            "baseline_cap": self.baseline_cap,
            "timeout_per_system": self.timeout,
            "grace": self.grace,
            "http_timeout": self.http_timeout,
            "default_concurrency": self.concurrency,
            "default_producers": self.producers,
            "cap": self.cap,
            "small_jobs": self.small_jobs,
            "small_delay": self.small_delay,
            "arrival_rate": self.arrival_rate,
        }

    def with_durations(self, low: float, high: float) -> Scenario:
        return replace(self, duration_min=low, duration_max=high)

    def with_jobs(self, jobs: int) -> Scenario:
        """The scenario with ``jobs`` jobs; more jobs than its own get a proportionally longer
        time limit (``fleet --jobs 10000``: 6,000 s), fewer keep it."""
        cap = self.baseline_cap if self.baseline_cap is None else min(self.baseline_cap, jobs)
        timeout = self.timeout * max(1.0, jobs / self.jobs)
        return replace(self, jobs=jobs, baseline_cap=cap, timeout=timeout)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="smoke",
            description="a few dozen sub-second jobs through every system (< 60 s in all)",
            jobs=30,
            duration_min=0.2,
            duration_max=0.6,
            timeout=30.0,
            policy=dict(FAST_POLICY),
            grace=1.0,
            sample_interval=0.25,
            concurrency=2,
            producers=1,
        ),
        Scenario(
            name="fleet",
            description="2,000 jobs of 5 s +- 20% enqueued at once",
            jobs=2000,
            duration_min=4.0,
            duration_max=6.0,
            timeout=1200.0,
            systems=(*SYSTEMS, *QUIET_SYSTEMS),
        ),
        Scenario(
            name="steady",
            description=(
                "3,000 jobs of 5 s +- 20% arriving at 100 a second (30 s): the lag of a fleet "
                "that keeps up, where fleet's burst measures one that cannot"
            ),
            jobs=3000,
            duration_min=4.0,
            duration_max=6.0,
            timeout=1200.0,
            arrival_rate=100.0,
            systems=(*SYSTEMS, *QUIET_SYSTEMS),
        ),
        Scenario(
            name="saturation",
            description="10,000 jobs that finish at once: pure system throughput",
            jobs=10_000,
            duration_min=0.0,
            duration_max=0.0,
            timeout=3600.0,
        ),
        Scenario(
            name="scale",
            description=(
                "100,000 jobs in flight at once: 30-40 min jobs, first poll after 60 s, poll cap "
                "60 s; the baselines are capped at 10,000 jobs"
            ),
            jobs=100_000,
            duration_min=1800.0,
            duration_max=2400.0,
            timeout=4 * 3600.0,
            policy=dict(SCALE_POLICY),
            baseline_cap=10_000,
            sample_interval=2.0,
            http_timeout=30.0,
        ),
        Scenario(
            name="push",
            description=(
                "500 jobs of 20-40 s, polled on pollen's default schedule, with and without "
                "provider pushes (and with 20 % of pushes lost, 10 % duplicated)"
            ),
            jobs=500,
            duration_min=20.0,
            duration_max=40.0,
            timeout=600.0,
            systems=PUSH_SYSTEMS,
        ),
        Scenario(
            name="rate-limit",
            description="500 jobs of 5 s +- 20% against a provider limit of 25 requests/s",
            jobs=500,
            duration_min=4.0,
            duration_max=6.0,
            timeout=600.0,
            rate_limit=25,
        ),
        Scenario(
            name="fair",
            description=(
                "a simulator key capped at 10 tasks of 2 s; tenant big enqueues 5,000 jobs at "
                "once, tenant small 50 jobs 10 s later"
            ),
            jobs=5000,
            duration_min=2.0,
            duration_max=2.0,
            timeout=600.0,
            policy=dict(FAIR_POLICY),
            systems=FAIR_SYSTEMS,
            cap=10,
            small_jobs=50,
            sample_interval=1.0,
        ),
    )
}
