"""The benchmark's smoke scenario, end to end: ``python -m bench --scenario smoke``.

Runs every system (pollen, the Celery-docs baseline and its pooled variant) on a few dozen
short jobs in a subprocess, then checks the JSON result and the printed table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ["pollen", "baseline", "baseline-pooled"]
METRICS = [
    "jobs",
    "completed",
    "jobs_per_s",
    "callback_lag_p50_s",
    "callback_lag_p95_s",
    "callback_lag_p99_s",
    "submit_requests_per_job",
    "status_requests_per_job",
    "celery_messages_per_job",
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
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scenario", "smoke", "--out", str(tmp_path)],
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
        assert metrics["submit_requests_per_job"] >= 1
        assert metrics["status_requests_per_job"] >= 1
        assert metrics["celery_messages_per_job"] >= 2
        assert metrics["worker_rss_peak_mib"] > 0
        assert metrics["jobs_per_s"] > 0
        assert 0 <= metrics["callback_lag_p50_s"] <= metrics["callback_lag_p99_s"]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric "))
    assert header.split() == ["metric", *SYSTEMS]
    for label in ("jobs/s", "callback lag p50", "DUPLICATES", "LOSSES", "worker RSS"):
        row = next(line for line in lines if line.startswith(label))
        assert len(row.split("  ")) > len(SYSTEMS), row
