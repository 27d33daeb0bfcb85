"""The benchmark's smoke scenario, end to end: ``python -m bench --scenario smoke``.

Runs every system (pollen, the Celery-docs baseline and its pooled variant) on a few dozen
short jobs in a subprocess, then checks the JSON result and the printed table.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import producer
from bench.analysis import schedule_lags
from bench.cli import parse_args
from bench.memory import key_type
from bench.producer import ProducerSpec, SendTaskClient
from bench.report import add_ratios, memory_table
from bench.sampling import cpu_seconds, poll_lateness
from bench.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SYSTEMS = ["pollen", "pollen-many", "pollen-send-task", "baseline", "baseline-pooled"]
#: the smoke scenario's systems, and pollen with task events off (POLLEN_TASK_EVENTS=false)
SYSTEMS = [*DEFAULT_SYSTEMS, "pollen-quiet"]
METRICS = [
    "worker_cpu_vs_baseline_pooled",
    "jobs_per_s_vs_baseline_pooled",
    "redis_key_bytes_per_inflight_job",
    "publish_per_job",
    "jobs",
    "completed",
    "jobs_per_s",
    "callback_lag_p50_s",
    "callback_lag_p95_s",
    "callback_lag_p99_s",
    "submit_requests_per_job",
    "status_requests_per_job",
    "status_items_per_job",
    "worker_cpu_ms_per_job",
    "producer_cpu_ms_per_job",
    "schedule_lag_p99_s",
    "celery_messages_per_job",
    "redis_commands_per_job",
    "celery_events_per_job",
    "worker_rss_peak_mib",
    "redis_bytes_per_inflight_job",
    "peak_inflight",
    "duplicate_callbacks",
    "duplicate_provider_tasks",
    "lost",
    "failed",
    "rate_limited_429",
    "max_requests_1s",
    "max_accepted_1s",
]


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_smoke_scenario_runs_every_system(tmp_path: Path) -> None:
    assert list(SCENARIOS["smoke"].systems) == DEFAULT_SYSTEMS
    systems = ["--systems", ",".join(SYSTEMS)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scenario", "smoke", *systems, "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    written = list(tmp_path.glob("smoke-*.json"))
    assert len(written) == 1
    assert f"results: {written[0]}" in done.stdout
    document = json.loads(written[0].read_text())
    assert document["systems"] == SYSTEMS
    for system in SYSTEMS:
        result = document["results"][system]
        metrics = result["metrics"]
        assert result["details"]["error"] is None
        missing = [m for m in METRICS if metrics.get(m) is None]
        assert not missing, f"{system} lacks {missing}"
        assert metrics["duplicate_callbacks"] == 0
        assert metrics["duplicate_provider_tasks"] == 0
        assert metrics["lost"] == 0
        assert metrics["completed"] == metrics["jobs"] >= 20
        assert metrics["failed"] == 0
        # Every job is created once, as an item: a Runware task array of n tasks is one request
        submit_items = result["details"]["provider_items_by_task_type"]["videoInference"]
        assert submit_items >= metrics["jobs"]
        assert 0 < metrics["submit_requests_per_job"] * metrics["jobs"] <= submit_items
        # Every job is polled at least once, as an item: a batched getResponse request of n
        # tasks is one request and n items, so requests per job may well be below 1.
        details = result["details"]
        jobs = metrics["jobs"]
        status_items = details["provider_items_by_task_type"]["getResponse"]
        status_requests = details["provider_requests_by_kind"]["status"]
        assert status_items >= jobs
        assert metrics["status_items_per_job"] == pytest.approx(status_items / jobs, abs=1e-3)
        assert 0 < status_requests <= status_items
        # The baselines: a submit task and at least one poll task per job, each one message;
        # pollen's batches carry many jobs per message.
        if system.startswith("baseline"):
            assert metrics["celery_messages_per_job"] >= 2
            assert metrics["poll_lateness_p99_s"] is None  # only pollen's workers measure it
        else:
            assert metrics["celery_messages_per_job"] > 0
            # every poll is timed against its due time, in the workers' Prometheus samples
            assert details["polls_measured_for_lateness"] >= jobs
            assert 0 < metrics["poll_lateness_p50_s"] <= metrics["poll_lateness_p99_s"] <= 300
        assert details["celery_messages_by_queue"], "no broker pushes were seen"
        assert metrics["redis_commands_per_job"] > metrics["celery_messages_per_job"]
        assert metrics["worker_cpu_ms_per_job"] > 0
        assert metrics["producer_cpu_ms_per_job"] > 0
        assert metrics["cpu_workers_s"] == pytest.approx(
            metrics["worker_cpu_ms_per_job"] * metrics["completed"] / 1000, abs=0.01
        )
        assert 0 <= metrics["schedule_lag_p50_s"] <= metrics["schedule_lag_p99_s"]
        assert metrics["worker_rss_peak_mib"] > 0
        assert metrics["jobs_per_s"] > 0
        assert 0 <= metrics["callback_lag_p50_s"] <= metrics["callback_lag_p99_s"]
        reference = document["results"]["baseline-pooled"]["metrics"]
        for key in ("worker_cpu_ms_per_job", "jobs_per_s"):
            ratio = metrics[f"{key.removesuffix('_ms_per_job')}_vs_baseline_pooled"]
            assert ratio == pytest.approx(metrics[key] / reference[key], rel=0.01)
        check_memory(system, metrics, details)
        check_events(system, metrics)
    send_task = document["results"]["pollen-send-task"]["details"]
    # every message sent became a job stored under the id pollen derives from its task id
    assert send_task["send_task_messages"] == send_task["send_task_jobs_stored"] == 30
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric "))
    assert header.split() == ["metric", *SYSTEMS]
    for label in (
        "jobs/s",
        "callback lag p50",
        "  poll schedule alone: lag p99",
        "poll ran after its due time, p99",
        "worker CPU ms / job",
        "producer CPU ms / job",
        "provider status items / job",
        "celery messages / job",
        "redis commands / job",
        "DUPLICATES",
        "LOSSES",
        "worker RSS",
        "  jobs/s / baseline-pooled's",
        "  worker CPU / job / baseline-pooled's",
        "celery event messages / job",
        "redis keys (MEMORY USAGE) / in-flight job",
        "store pollen:job:<id> (hash)",
        "all keys",
    ):
        row = next(line for line in lines if line.startswith(label))
        assert len(row.split("  ")) > len(SYSTEMS), row
    assert "redis memory per in-flight job by key type" in done.stdout


def check_memory(system: str, metrics: dict[str, Any], details: dict[str, Any]) -> None:
    """The memory breakdown: taken at a peak in flight, the system's job records and the
    broker's messages in it, its types adding up to the row."""
    memory = details["redis_memory_by_key_type"]
    assert 0 < memory["inflight"] <= metrics["peak_inflight"]
    kinds = memory["kinds"]
    record = "store baseline:job:<id>" if system.startswith("baseline") else "store pollen:job:<id>"
    assert kinds[record]["type"] == "hash"
    assert 0 < kinds[record]["keys"] <= metrics["jobs"]
    assert kinds[record]["bytes_per_job"] > 100
    assert any(k.startswith("broker ") for k in kinds), "no broker key was measured"
    total = sum(k["bytes_per_job"] for k in kinds.values())
    assert metrics["redis_key_bytes_per_inflight_job"] == pytest.approx(total, abs=1)


def check_events(system: str, metrics: dict[str, Any]) -> None:
    """Task events on (the baselines run with -E) but in pollen-quiet, where only the
    workers' heartbeats are left."""
    events = metrics["celery_events_per_job"]
    assert metrics["publish_per_job"] > 0
    if system == "pollen-quiet":
        assert events < 1
    elif system == "pollen-many":
        assert events > 0  # one submit_many message and shared poll batches: few per job
    elif system.startswith("baseline"):
        assert events >= 4  # received, started, succeeded of its submit and its poll(s)
    else:
        assert events >= 2


PUSH_SYSTEMS = ["pollen", "pollen-push", "pollen-push-lossy"]


def run_bench(
    scenario: str, options: list[str], out: Path, *, timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``python -m bench --scenario SCENARIO`` with one worker and one producer per system;
    what it printed and the JSON it wrote (the run must exit 0)."""
    argv = [sys.executable, "-m", "bench", "--scenario", scenario, "--workers", "1",
            "--producers", "1", *options, "--out", str(out)]  # fmt: skip
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    [written] = out.glob(f"{scenario}-*.json")
    return done, json.loads(written.read_text())


@pytest.mark.integration
@pytest.mark.timeout(200)
def test_push_scenario_compares_polling_with_pushes(tmp_path: Path) -> None:
    """A small ``push`` run: the same jobs polled only, woken by pushes, woken by lossy
    pushes. Jobs of 1-2 s with a first poll at 2 s: polling alone waits for that poll."""
    options = ["--jobs", "20", "--durations", "1,2", "--timeout", "60"]
    done, document = run_bench("push", options, tmp_path, timeout=190)
    assert document["systems"] == PUSH_SYSTEMS
    results = {name: document["results"][name]["metrics"] for name in PUSH_SYSTEMS}
    for name, metrics in results.items():
        assert metrics["completed"] == metrics["jobs"] == 20, name
        assert metrics["duplicate_callbacks"] == metrics["lost"] == metrics["failed"] == 0, name
        assert metrics["duplicate_provider_tasks"] == 0, name
    polled, pushed, lossy = (results[name] for name in PUSH_SYSTEMS)
    assert polled["pushes_sent"] in (None, 0)
    assert pushed["pushes_sent"] >= 20 and not pushed["pushes_lost"]
    assert lossy["pushes_lost"] > 0
    # Woken by a push, a job calls back well before its first scheduled poll at 2 s.
    assert pushed["callback_lag_p99_s"] < 0.5 < polled["callback_lag_p99_s"]
    # Lost pushes cost only lag: those jobs end on their poll schedule.
    assert lossy["callback_lag_p99_s"] <= lossy["schedule_lag_p99_s"] + 1.0
    header = next(line for line in done.stdout.splitlines() if line.startswith("metric "))
    assert header.split() == ["metric", *PUSH_SYSTEMS]
    assert "provider requests / job (all kinds)" in done.stdout


OBSERVE = """
import sys
from pollen.worker import metrics
for value in sys.argv[1:]:
    metrics.POLL_LATENESS.labels("runware").observe(float(value))
"""


def test_poll_lateness_sums_every_worker_and_reads_bucket_bounds(tmp_path: Path) -> None:
    # two workers, each its own Prometheus directory, as the bench gives them
    first, second = tmp_path / "w1", tmp_path / "w2"
    for path, values in ((first, ["0.005"] * 60), (second, ["0.3"] * 39 + ["7"])):
        path.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path)}
        subprocess.run([sys.executable, "-c", OBSERVE, *values], env=env, check=True)
    lateness = poll_lateness([first, second, tmp_path / "absent"])
    assert lateness["polls"] == 100
    assert lateness["p50"] == 0.01  # 60 of 100 polls within the first bucket
    assert lateness["p99"] == 0.5  # 99 within 0.5 s; the 100th (7 s) is past p99
    assert lateness["mean"] == pytest.approx((60 * 0.005 + 39 * 0.3 + 7) / 100)
    assert poll_lateness([tmp_path / "absent"]) == {
        "polls": 0,
        "mean": None,
        "p50": None,
        "p99": None,
    }


def test_schedule_lags_follow_the_poll_times() -> None:
    # no jitter: polls at 2, 3, 4.5, 6.75 ... seconds after the submit
    policy = {"initial_delay": 2.0, "interval": 1.0, "factor": 1.5, "max_delay": 30.0}
    policy |= {"min_delay": 0.2, "jitter": 0.0, "deadline": 3600.0}
    lags = schedule_lags(policy, [0.0, 1.99, 2.0, 2.01, 2.5, 5.0])
    assert lags == pytest.approx([2.0, 0.01, 0.0, 0.99, 0.5, 1.75])


def test_schedule_lags_leave_out_jobs_past_the_deadline() -> None:
    policy = {"initial_delay": 1.0, "interval": 1.0, "factor": 1.0, "max_delay": 1.0}
    policy |= {"min_delay": 0.1, "jitter": 0.0, "deadline": 3.0}
    # polls at 1, 2, 3: the deadline; a job of 3.5 s is never seen finished by the schedule
    assert schedule_lags(policy, [2.9, 3.0, 3.5]) == pytest.approx([0.1, 0.0])


def test_schedule_lags_with_jitter_poll_earlier_never_later() -> None:
    policy = {"initial_delay": 2.0, "interval": 1.0, "factor": 1.5, "max_delay": 30.0}
    policy |= {"min_delay": 0.2, "jitter": 0.2, "deadline": 3600.0}
    plain = schedule_lags(policy | {"jitter": 0.0}, [5.0] * 50)
    jittered = schedule_lags(policy, [5.0] * 50)
    assert len(jittered) == 50
    assert all(0 <= lag < 30 for lag in jittered)
    assert len(set(jittered)) > 1  # the jitter is drawn per poll
    assert jittered == schedule_lags(policy, [5.0] * 50)  # seeded: the same every run
    assert plain == pytest.approx([1.75] * 50)


BURN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time\\nt = time.process_time()\\n"
                          "while time.process_time() - t < 0.4: pass"])
print("started", flush=True)
sys.stdin.readline()
child.wait()
print("reaped", flush=True)
sys.stdin.readline()
"""


def test_worker_cpu_counts_children_that_exit_during_the_window() -> None:
    # A pool child that burns CPU and is reaped inside the window must still be counted.
    argv = [sys.executable, "-c", BURN]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdin is not None and parent.stdout is not None
        assert parent.stdout.readline().strip() == "started"
        before = cpu_seconds([parent.pid], recursive=True)
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "reaped"
        after = cpu_seconds([parent.pid], recursive=True)
        own_only = cpu_seconds([parent.pid], recursive=False)
        parent.stdin.write("\n")
        parent.stdin.flush()
        parent.wait(10)
    assert 0.3 <= after - before < 2.0
    assert own_only < after - before  # without the reaped children's time it would be lost


FAIR_SYSTEMS = ["pollen-capped", "pollen-capped-push", "pollen"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_fair_scenario_keeps_the_cap_and_serves_the_small_tenant(tmp_path: Path) -> None:
    """A small ``fair`` run: a key capped at 3 tasks of 0.5 s; 24 jobs of tenant big, 6 of
    tenant small 2 s later. pollen told the cap (polling, and woken by pushes) never has a
    create refused and serves the small tenant between the big one's jobs; every system
    leaves no slot held and no task running."""
    options = ["--jobs", "24", "--small-jobs", "6", "--small-delay", "2", "--cap", "3",
               "--durations", "0.5,0.5", "--timeout", "90",
               "--systems", ",".join(FAIR_SYSTEMS)]  # fmt: skip
    done, document = run_bench("fair", options, tmp_path, timeout=290)
    assert document["systems"] == FAIR_SYSTEMS
    assert document["scenario"]["cap"] == 3
    results = {name: document["results"][name] for name in FAIR_SYSTEMS}
    for name, result in results.items():
        metrics = result["metrics"]
        assert result["details"]["error"] is None, name
        assert metrics["completed"] == metrics["jobs"] == 30, name
        assert metrics["small_completed"] == 6, name
        assert metrics["peak_running"] == "3 (3)", name  # the simulator's own count
        assert metrics["failed"] == metrics["duplicate_provider_tasks"] == 0, name
        assert metrics["running_at_end"] == 0, name
        assert metrics["cancelled_at_end"] == 0, name
        assert metrics["worker_cpu_ms_per_job"] > 0, name
        assert 0 < metrics["small_p50_s"] <= metrics["small_p95_s"], name
        assert metrics["backlog_jobs_per_s"] > 0, name
        assert 0 < metrics["utilisation_raw"] <= 1.05, name
    capped, pushed, plain = (results[name]["metrics"] for name in FAIR_SYSTEMS)
    assert capped["refused_for_capacity"] == pushed["refused_for_capacity"] == 0
    assert plain["refused_for_capacity"] > 0  # today: past the cap, creates are refused
    assert capped["slots_in_use_at_end"] == pushed["slots_in_use_at_end"] == 0
    # jobs of 0.5 s first polled at 2 s: a push frees the slot long before the poll would
    assert pushed["backlog_jobs_per_s"] > capped["backlog_jobs_per_s"]
    assert plain["slots_in_use_at_end"] is None  # pollen not told the cap holds no slots
    # 6 jobs on half of 3 slots of 0.5 s, plus two poll intervals of 0.5 s
    assert capped["fair_target_s"] == pytest.approx(6 / 1.5 * 0.5 + 1.0, abs=0.1)
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric "))
    assert header.split() == ["metric", *FAIR_SYSTEMS]
    for label in ("small: completion time p95", "creates refused for capacity",
                  "jobs/s while the backlog lasts", "pollen slots in use at the end"):  # fmt: skip
        assert any(line.startswith(label) for line in lines), label
    assert "reduced from the scenario's 5,000 jobs" in done.stdout


def test_fair_scenario_refuses_bad_sizes_in_one_line() -> None:
    for bad in (
        ["--cap", "0"],
        ["--cap", "100001"],
        ["--small-jobs", "-1"],
        ["--timeout", "0"],
        ["--systems", "pollen,baseline"],
    ):
        argv = [sys.executable, "-m", "bench", "--scenario", "fair", *bad]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 2, (bad, done.stderr)
        assert "Traceback" not in done.stderr
        assert bad[0] in done.stderr.splitlines()[-1], done.stderr
    # the other side of each limit is taken
    args = parse_args(["--scenario", "fair", "--cap", "1", "--small-jobs", "0", "--timeout", "1"])
    assert (args.cap, args.small_jobs, args.timeout) == (1, 0, 1.0)
    assert parse_args(["--cap", str(100_000)]).cap == 100_000
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scenario", "fleet", "--small-jobs", "5"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("--small-jobs: options of the fair scenario")


def test_memory_key_types_take_the_ids_out() -> None:
    assert key_type("pollen:job:pollen-send-task-000012") == "pollen:job:<id>"
    assert key_type("pollen:job:0f" + "a" * 30 + ":results") == "pollen:job:<id>:results"
    assert key_type("pollen:delivery:d-123") == "pollen:delivery:<id>"
    assert key_type("pollen:stats:finished:29613542") == "pollen:stats:finished:<id>"
    assert key_type("baseline:job:baseline-pooled-000003") == "baseline:job:<id>"
    assert key_type("celery-task-meta-6f1c2a1e-93c1-4bb0-9a6e-1f0f3a1b2c3d") == (
        "celery-task-meta-<id>"
    )
    # names without an id stay whole: queues, indexes, kombu's own keys
    for name in ("pollen.submit", "unacked", "pollen:index:runware:submitted", "pollen:inflight"):
        assert key_type(name) == name


def test_ratio_rows_compare_with_baseline_pooled_of_the_same_run() -> None:
    results: dict[str, Any] = {
        "pollen": {"metrics": {"worker_cpu_ms_per_job": 6.0, "jobs_per_s": 300.0}},
        "baseline-pooled": {"metrics": {"worker_cpu_ms_per_job": 10.0, "jobs_per_s": 200.0}},
        "failed": {"metrics": {}},
    }
    add_ratios(results)
    assert results["pollen"]["metrics"]["worker_cpu_vs_baseline_pooled"] == 0.6
    assert results["pollen"]["metrics"]["jobs_per_s_vs_baseline_pooled"] == 1.5
    assert results["baseline-pooled"]["metrics"]["jobs_per_s_vs_baseline_pooled"] == 1.0
    assert results["failed"]["metrics"] == {}
    alone = {"pollen": {"metrics": {"worker_cpu_ms_per_job": 6.0, "jobs_per_s": 300.0}}}
    add_ratios(alone)  # no baseline-pooled in the run: no ratio
    assert "jobs_per_s_vs_baseline_pooled" not in alone["pollen"]["metrics"]


def test_memory_table_shows_the_biggest_key_types_and_sums_the_rest() -> None:
    kinds = {f"store k{i}": {"type": "hash", "bytes_per_job": float(100 - i)} for i in range(14)}
    memory = {"inflight": 500, "bytes_per_job": 1309, "kinds": kinds}
    results = {"pollen": {"details": {"redis_memory_by_key_type": memory}},
               "baseline": {"details": {"redis_memory_by_key_type": None}}}  # fmt: skip
    lines = memory_table(results).splitlines()
    assert lines[2].split() == ["key", "type", "pollen"]
    assert lines[4].startswith("store k0 (hash)") and lines[4].endswith("100 B")
    assert not any(line.startswith("store k12") for line in lines)
    assert lines[-3].split()[-2:] == ["175", "B"]  # k12 + k13: 88 + 87
    assert lines[-1].split()[-1] == "500"
    assert memory_table({"baseline": results["baseline"]}) == ""


def test_the_send_task_producer_refuses_to_run_with_pollen_imported() -> None:
    spec = ProducerSpec(system="pollen-send-task", broker_url="redis://127.0.0.1:1/0",
                        store_url="", provider_url="", policy={"deadline": 60.0},
                        allow_cidrs=(), submit_queue="pollen.submit")  # fmt: skip
    client = SendTaskClient(spec)
    assert client.common == {"provider": "runware", "deadline": 60.0, "poll": {}}
    assert "pollen" in sys.modules  # this test process imports pollen
    with pytest.raises(RuntimeError, match="imported pollen"):
        client.flush()
    client.close()


class _Recording:
    """A producer client that only notes when each job was enqueued (the pacing is the
    harness's, not a system's)."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def warm(self) -> None:
        pass

    def enqueue(self, job_id: str, request: dict[str, Any], callback_url: str) -> int:
        self.at.append(time.monotonic())
        return 1

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        pass


@pytest.mark.parametrize("pace", [None, 50.0])
def test_a_paced_producer_spaces_its_jobs_evenly(
    pace: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _Recording()
    monkeypatch.setattr(producer, "make_client", lambda spec: client)
    events = [multiprocessing.Event() for _ in range(3)]
    events[1].set()  # go
    results: Any = queue.SimpleQueue()
    count: Any = multiprocessing.Value("q", 0)
    job_ids = [f"j{i}" for i in range(26)]
    spec = ProducerSpec("pollen", "redis://x", "redis://x", "http://x", {}, ())
    producer.produce(
        0, spec, job_ids, "http://x", events[0], events[1], events[2], count, results, pace
    )
    report = results.get_nowait()
    assert report["count"] == count.value == 26 and report["error"] is None
    took = client.at[-1] - client.at[0]
    if pace is None:  # all at once
        assert took < 0.2
    else:  # 25 gaps of 1/50 s: 0.5 s, never sooner, and no job late by more than a gap or so
        assert 0.5 <= took < 0.5 + 0.2
        gaps = [b - a for a, b in zip(client.at, client.at[1:], strict=False)]
        assert min(gaps) > 0.5 / 50


def test_the_arrival_rate_is_checked_in_one_line() -> None:
    for bad, scenario in ((["--arrival-rate", "0"], "steady"), (["--arrival-rate", "-1"], "fleet"),
                          (["--arrival-rate", "5"], "fair")):  # fmt: skip
        argv = [sys.executable, "-m", "bench", "--scenario", scenario, *bad]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 2, (bad, done.stderr)
        assert "Traceback" not in done.stderr
        assert "--arrival-rate" in done.stderr.splitlines()[-1], done.stderr
    assert parse_args(["--arrival-rate", "0.5"]).arrival_rate == 0.5
    assert SCENARIOS["steady"].arrival_rate == 100.0
    assert SCENARIOS["fleet"].arrival_rate is None


def test_a_missing_benchmark_dependency_is_one_line() -> None:
    """pollen installed without the dev extras (``pip install -e .``, or the demo's .venv)."""
    code = (
        "import runpy, sys; sys.modules['psutil'] = None; "
        "runpy.run_module('bench', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "python -m bench: the module 'psutil' is missing; the benchmark needs the dev extras: "
        "pip install -e '.[dev]' (tasks/test installs them into .venv)"
    ]
