"""One benchmark run: shared simulator and receiver, then each system in turn on a fresh Redis.

For each system: start its workers, enqueue every job at once (from a harness thread), sample
worker memory, Redis memory and progress until every job has called back (or the scenario's
timeout), keep listening ``grace`` seconds for duplicate callbacks, then read the simulator's
stats and finish times, the receiver's receipts and Redis's command counters, and stop it all.
What is measured is :mod:`bench.sampling`; the figures made of it, :mod:`bench.analysis`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.analysis import analyse, figures
from bench.producer import Producers
from bench.sampling import Components, MessageCounter, Sampler, command_calls, poll_lateness
from bench.scenarios import Scenario
from bench.services import Service
from bench.systems import Options, System, make_system
from pollen.local.servers import RedisServer


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_system(
    name: str,
    scenario: Scenario,
    options: Options,
    sim: Service,
    recv: Service,
    log_dir: Path,
) -> dict[str, Any]:
    """Run one system through the scenario and return its metrics (never raises for a failed
    system: the error is reported in the result)."""
    jobs = scenario.jobs_for(name)
    job_ids = [f"{name}-{i:06d}" for i in range(jobs)]
    with ExitStack() as stack:
        http, redis_server, client, system = open_system(stack, name, scenario, options, sim, recv)
        log(f"[{name}] starting {options.workers} worker(s), {_pool(name, options)}")
        t_start = time.monotonic()
        n_producers = options.producers or scenario.producers
        system.prepare(log_dir)
        producers = Producers(
            system.producer_spec(), job_ids, f"{recv.url}/cb", n_producers, scenario.arrival_rate
        )
        stack.callback(producers.close)
        producers.start()
        system.start(log_dir)
        producers.wait_ready()
        log(
            f"[{name}] workers and {producers.n} producer(s) ready in "
            f"{time.monotonic() - t_start:.1f} s; enqueueing {jobs} jobs"
        )
        components = components_of(system, redis_server, sim, recv)
        messages = MessageCounter(client)
        stack.callback(messages.close)
        messages.start()
        sampler = Sampler(system, client, http, recv.url)
        stack.callback(sampler.close)
        calls_before = command_calls(client)
        cpu_before = components.snapshot()
        messages.counting.set()
        started = time.time()
        producers.go()
        outcome = _wait(name, scenario, system, sampler, producers, started, jobs)
        ended = time.time()
        if outcome is None:
            time.sleep(scenario.grace)
        cpu_after = components.snapshot()
        calls_after = command_calls(client)
        messages.drain()
        checked = system.check(producers.reports)
        stats, rate, tasks, dump = _read_outcome(http, sim, recv)
        log(f"[{name}] {time.time() - started:.1f} s after the first enqueue; stopping workers")
        t_stop = time.monotonic()
    log(f"[{name}] stopped in {time.monotonic() - t_stop:.1f} s")
    lateness = poll_lateness(system.metrics_dirs)
    analysis = analyse(job_ids, dump["completed"], tasks["tasks"])
    analysis["other_callbacks"] = dump["other"]
    first = producers.first_at or started
    cpu = {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_before}
    cpu["producers"] = round(producers.cpu_s, 2)  # their enqueue loops, measured by each
    calls = {k: calls_after.get(k, 0) - calls_before.get(k, 0) for k in calls_after}
    # in the window: the sampler's INFO calls but its first (before the window), plus the
    # INFO commandstats of the first reading
    calls["harness"] = sampler.harness_commands
    result = figures(
        scenario=scenario,
        jobs=jobs,
        analysis=analysis,
        stats=stats,
        rate=rate,
        calls=calls,
        messages=messages,
        peaks=sampler.peaks,
        redis_before=sampler.redis_before,
        producers=producers,
        first=first,
        ended=ended,
        error=outcome,
        cpu=cpu,
        lateness=lateness,
    )
    result["details"].update(checked)
    return result


def open_system(
    stack: ExitStack, name: str, scenario: Scenario, options: Options, sim: Service, recv: Service
) -> tuple[httpx.Client, RedisServer, redis.Redis, System]:
    """A system on a fresh Redis, the simulator and receiver reset for it; ``stack`` closes
    the HTTP and Redis clients, stops the system's workers and then its Redis."""
    http = stack.enter_context(httpx.Client(trust_env=False, timeout=60.0))
    redis_server = stack.enter_context(RedisServer())
    client = redis.Redis(port=redis_server.port)
    stack.callback(client.close)
    system = make_system(name, redis_server, sim.url, scenario, options)
    reset_services(http, sim, recv, system)
    stack.callback(system.stop)
    return http, redis_server, client, system


def reset_services(http: httpx.Client, sim: Service, recv: Service, system: System) -> None:
    """A fresh simulator (with this system's settings) and receiver."""
    http.post(f"{sim.url}/_sim/reset").raise_for_status()
    http.patch(f"{sim.url}/_sim/config", json=system.sim_config()).raise_for_status()
    http.post(f"{recv.url}/_recv/reset").raise_for_status()


def _pool(name: str, options: Options) -> str:
    if name.startswith("pollen"):
        return f"{options.pollen_pool or 'threads'} x {options.pollen_concurrency or 32}"
    return f"prefork x {options.concurrency}"


def components_of(
    system: System, redis_server: RedisServer, sim: Service, recv: Service
) -> Components:
    worker_pids = [w.proc.pid for w in system.workers if w.proc is not None]
    worker_pids += system.extra_pids()
    assert redis_server.proc is not None and sim.proc is not None and recv.proc is not None
    return Components(
        {
            "workers": worker_pids,
            "simulator": [sim.pid],
            "redis": [redis_server.proc.pid],
            "receiver": [recv.pid],
            "harness": [os.getpid()],
        }
    )


def _read_outcome(http: httpx.Client, sim: Service, recv: Service) -> list[Any]:
    """The simulator's stats, rate windows and finish times; the receiver's receipts."""
    return [
        http.get(f"{sim.url}/_sim/stats").json(),
        http.get(f"{sim.url}/_sim/rate").json(),
        http.get(f"{sim.url}/_sim/finished", params={"dialect": "runware"}).json(),
        http.get(f"{recv.url}/_recv/dump").json(),
    ]


def _wait(
    name: str,
    scenario: Scenario,
    system: System,
    sampler: Sampler,
    producers: Producers,
    started: float,
    jobs: int,
) -> str | None:
    """Sample until every job has called back; the reason it stopped early, else None."""
    deadline = started + scenario.timeout
    next_report = started + 5.0
    while True:
        done = sampler.sample(started, producers.count, producers.finished)
        if producers.done and producers.error:
            return producers.error
        if producers.finished and done >= jobs:
            return None
        now = time.time()
        if now > deadline:
            return f"timed out after {scenario.timeout:g} s with {jobs - done} jobs unfinished"
        dead = [w.name for w in system.workers if w.proc is not None and w.proc.poll() is not None]
        if dead:
            return f"worker(s) exited during the run: {', '.join(dead)}"
        if now >= next_report:
            next_report = now + 5.0
            log(
                f"[{name}] {now - started:6.1f} s  enqueued {producers.count}/{jobs}  "
                f"called back {done}  worker RSS {sampler.peaks.timeline[-1][3]:.0f} MiB"
            )
        time.sleep(scenario.sample_interval)


#: run_one(name, scenario, options, sim, recv, log_dir): one system's result
RunOne = Callable[[str, Scenario, Options, Service, Service, Path], dict[str, Any]]


def run(
    scenario: Scenario,
    systems: list[str],
    options: Options,
    log_dir: Path,
    run_one: RunOne = run_system,
) -> dict[str, Any]:
    """Start the simulator and the receiver, then run each system in turn."""
    sim_config = {
        "duration_min": scenario.duration_min,
        "duration_max": scenario.duration_max,
        "rate_limit": scenario.rate_limit,
        "seed": 1,
    }
    if scenario.cap is not None:  # the key's cap of concurrent tasks (429 past it)
        sim_config["max_running_per_key"] = scenario.cap
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        sim = stack.enter_context(
            Service("simulator", "bench.simproc", ["--config", json.dumps(sim_config)], log_dir)
        )
        recv = stack.enter_context(Service("receiver", "bench.receiver", [], log_dir))
        for name in systems:
            try:
                results[name] = run_one(name, scenario, options, sim, recv, log_dir)
            except Exception as exc:
                log(f"[{name}] failed: {exc!r}")
                traceback.print_exc()
                results[name] = {"metrics": {}, "details": {"error": f"{exc!r}"}}
            error = results[name]["details"].get("error")
            log(f"[{name}] done" + (f" -- {error}" if error else ""))
    return results
