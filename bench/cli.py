"""``python -m bench``: pollen against the Celery-docs baseline, same machine, same run.

Exit status: 0 when every system called back every job exactly once (no duplicates, no
losses, no error); 1 otherwise (the table and the JSON still say what happened); 130 when
interrupted (every process the run started is stopped first).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench import fair
from bench.report import add_ratios, machine, memory_table, table, write_json
from bench.runner import log, run, run_system
from bench.scenarios import ALL_SYSTEMS, NONBINDING_CAP, SCENARIOS, Scenario
from bench.systems import Options

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark pollen against the Celery-docs poller (see bench/README.md).",
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="smoke")
    parser.add_argument("--jobs", type=int, help="number of jobs (default: the scenario's)")
    parser.add_argument(
        "--systems",
        help=f"comma-separated, from {','.join(ALL_SYSTEMS)} (default: the scenario's)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system")
    parser.add_argument(
        "--concurrency", type=int, help="pool size per worker (default: 4; smoke: 2)"
    )
    parser.add_argument(
        "--durations", help="provider seconds per job as MIN,MAX (default: the scenario's)"
    )
    parser.add_argument(
        "--pollen-pool", default=None, help="pollen's pool (default: its own, threads)"
    )
    parser.add_argument(
        "--pollen-concurrency", type=int, default=None, help="pollen's pool size (default: 32)"
    )
    parser.add_argument(
        "--producers",
        type=int,
        help="producer processes per system (default: the scenario's, 2; smoke: 1)",
    )
    parser.add_argument("--timeout", type=float, help="seconds per system (default: scenario's)")
    parser.add_argument("--rate-limit", type=int, help="provider requests/s (rate-limit scenario)")
    parser.add_argument(
        "--cap", type=int, help="the simulator key's concurrent tasks (fair scenario: 10)"
    )
    parser.add_argument(
        "--arrival-rate",
        type=float,
        help="jobs a second the producers enqueue, evenly spaced (steady: 100; else: all at once)",
    )
    parser.add_argument("--small-jobs", type=int, help="tenant small's jobs (fair scenario: 50)")
    parser.add_argument(
        "--small-delay", type=float, help="seconds before tenant small enqueues (fair: 10)"
    )
    parser.add_argument("--loglevel", default="WARNING", help="workers' log level")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory of the JSON")
    parser.add_argument("--profile", action="store_true", help="pyinstrument in pollen's children")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' log files")
    args = parser.parse_args(argv)
    if args.systems:
        args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = sorted(set(args.systems) - set(ALL_SYSTEMS))
        if unknown:
            parser.error(
                f"unknown system(s): {', '.join(unknown)} (choose from {', '.join(ALL_SYSTEMS)})"
            )
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.producers is not None and args.producers < 1:
        parser.error("--producers must be at least 1")
    _check_fair(parser, args)
    return args


def _check_fair(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The options of the fair scenario (and of the simulator's cap)."""
    if args.cap is not None and not 1 <= args.cap <= NONBINDING_CAP:
        parser.error(f"--cap must be between 1 and {NONBINDING_CAP:,}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be above 0")
    foreign = [s for s in args.systems or () if not s.startswith("pollen")]
    if foreign and args.scenario == fair.FAIR:
        parser.error(f"--systems: the {fair.FAIR} scenario runs pollen systems only, not "
                     f"{', '.join(foreign)}")  # fmt: skip
    small = {"--small-jobs": args.small_jobs, "--small-delay": args.small_delay}
    given = [option for option, value in small.items() if value is not None]
    if given and args.scenario != fair.FAIR:
        parser.error(f"{', '.join(given)}: options of the {fair.FAIR} scenario")
    if args.arrival_rate is not None and args.arrival_rate <= 0:
        parser.error("--arrival-rate must be more than 0 jobs a second")
    if args.arrival_rate is not None and args.scenario == fair.FAIR:
        parser.error(f"--arrival-rate: the {fair.FAIR} scenario enqueues its own way")
    if args.small_jobs is not None and args.small_jobs < 0:
        parser.error("--small-jobs must be at least 0")
    if args.small_delay is not None and args.small_delay < 0:
        parser.error("--small-delay must be at least 0")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _scenario(args: argparse.Namespace) -> Scenario:
    """The chosen scenario with the command line's changes."""
    scenario = SCENARIOS[args.scenario]
    if args.jobs is not None:
        scenario = scenario.with_jobs(args.jobs)
    changes = {
        "timeout": args.timeout,
        "rate_limit": args.rate_limit,
        "cap": args.cap,
        "small_jobs": args.small_jobs,
        "small_delay": args.small_delay,
        "arrival_rate": args.arrival_rate,
    }
    scenario = replace(scenario, **{k: v for k, v in changes.items() if v is not None})
    if args.durations:
        low, _, high = args.durations.partition(",")
        scenario = scenario.with_durations(float(low), float(high or low))
    return scenario


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenario = _scenario(args)
    systems = args.systems or list(scenario.systems)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    profile_dir = args.out / f"{scenario.name}-{stamp}-profile" if args.profile else None
    options = Options(
        workers=args.workers,
        concurrency=args.concurrency or scenario.concurrency,
        pollen_pool=args.pollen_pool,
        pollen_concurrency=args.pollen_concurrency,
        loglevel=args.loglevel,
        profile_dir=profile_dir,
        producers=args.producers or scenario.producers,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    log_dir = Path(tempfile.mkdtemp(prefix=f"pollen-bench-{scenario.name}-"))
    log(f"scenario {scenario.name}: {scenario.description}; systems {', '.join(systems)}")
    log(f"logs in {log_dir}")
    started = time.time()
    try:
        run_one = fair.run_fair_system if scenario.name == fair.FAIR else run_system
        results = run(scenario, systems, options, log_dir, run_one)
    except KeyboardInterrupt:
        log(f"interrupted; every process started was stopped (logs: {log_dir})")
        return 130
    document: dict[str, Any] = {
        "scenario": scenario.describe(),
        "systems": systems,
        "options": {
            "workers": options.workers,
            "concurrency": options.concurrency,
            "pollen_pool": options.pollen_pool or "threads",
            "pollen_concurrency": options.pollen_concurrency or 32,
            "baseline_pool": "prefork",
            "loglevel": options.loglevel,
            "producers": options.producers,
        },
        "machine": machine(),
        "started_at": started,
        "finished_at": time.time(),
        "results": results,
    }
    add_ratios(results)
    path = write_json(args.out, scenario, document)
    header = (
        f"scenario {scenario.name}: {scenario.description}\n"
        f"this run: {scenario.jobs:,} jobs"
        + (f" (baselines: {scenario.baseline_cap:,})" if scenario.baseline_cap else "")
        + ", "
        f"{options.workers} worker process(es) per system: pollen "
        f"{options.pollen_pool or 'threads'} x {options.pollen_concurrency or 32}, baselines "
        f"prefork x {options.concurrency}, {options.producers} producer process(es), "
        f"provider durations {scenario.duration_min:g}-{scenario.duration_max:g} s, "
        f"poll policy {_policy(scenario.policy)}"
        + (f", provider limit {scenario.rate_limit} req/s" if scenario.rate_limit else "")
        + f", {machine()['cpus']} CPUs"
        + _fair_header(scenario)
    )
    rows = fair.ROWS if scenario.name == fair.FAIR else None
    print(table(scenario, results, header, rows))
    if scenario.name != fair.FAIR:
        print(memory_table(results))
    print(f"\nresults: {path}")
    if profile_dir is not None:
        print(f"profiles: {profile_dir}")
    if args.keep_logs:
        print(f"logs: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    clean = fair.clean if scenario.name == fair.FAIR else _clean
    return 0 if all(clean(r) for r in results.values()) else 1


def _fair_header(scenario: Scenario) -> str:
    """What the fair scenario's table needs said: its sizes, and where the run stops."""
    if scenario.name != fair.FAIR:
        return ""
    reduced = SCENARIOS[fair.FAIR].jobs
    return (
        f"\nsimulator key capped at {scenario.cap} tasks; tenant small: {scenario.small_jobs} "
        f"jobs {scenario.small_delay:g} s after the first; measuring stops when every job has "
        f"called back or at {scenario.timeout:g} s, then what is left is cancelled"
        + (f" (reduced from the scenario's {reduced:,} jobs)" if scenario.jobs < reduced else "")
    )


def _policy(policy: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in policy.items())


def _clean(result: dict[str, Any]) -> bool:
    metrics = result["metrics"]
    if result["details"].get("error") or not metrics:
        return False
    return bool(
        metrics["lost"] == 0
        and metrics["duplicate_callbacks"] == 0
        and metrics["duplicate_provider_tasks"] == 0
    )


if __name__ == "__main__":
    sys.exit(main())
