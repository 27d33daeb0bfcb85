"""The side-by-side table (metric x system) and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.scenarios import Scenario

Format = Callable[[Any], str]


def num(digits: int) -> Format:
    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, int):
            return f"{value:,}"
        return f"{value:,.{digits}f}"

    return fmt


def integer(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _bytes(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} B" if abs(value) < 10 * 1024 else f"{value / 1024:,.1f} KiB"


#: (metric key in the JSON, row label, formatter), in table order
ROWS: list[tuple[str, str, Format]] = [
    ("completed", "jobs called back", integer),
    ("jobs_per_s", "jobs/s (1st enqueue -> last callback)", num(1)),
    ("callback_lag_p50_s", "callback lag p50 (s)", num(2)),
    ("callback_lag_p95_s", "callback lag p95 (s)", num(2)),
    ("callback_lag_p99_s", "callback lag p99 (s)", num(2)),
    ("schedule_lag_p50_s", "  poll schedule alone: lag p50 (s)", num(2)),
    ("schedule_lag_p99_s", "  poll schedule alone: lag p99 (s)", num(2)),
    ("poll_lateness_p50_s", "poll ran after its due time, p50 <= (s)", num(2)),
    ("poll_lateness_p99_s", "poll ran after its due time, p99 <= (s)", num(2)),
    ("worker_cpu_ms_per_job", "worker CPU ms / job (all processes)", num(1)),
    ("producer_cpu_ms_per_job", "producer CPU ms / job (enqueue loop)", num(2)),
    ("submit_requests_per_job", "provider submit requests / job", num(2)),
    ("status_requests_per_job", "provider status requests / job", num(2)),
    ("status_items_per_job", "provider status items / job (polls)", num(2)),
    ("provider_requests_per_job", "provider requests / job (all kinds)", num(2)),
    ("pushes_sent", "provider pushes delivered", integer),
    ("pushes_lost", "provider pushes lost (simulated)", integer),
    ("pushes_duplicated", "provider pushes sent twice (simulated)", integer),
    ("status_items_per_request", "status items / status request", num(2)),
    ("celery_messages_per_job", "celery messages / job (broker pushes)", num(2)),
    ("celery_events_per_job", "celery event messages / job (PUBLISH)", num(2)),
    ("redis_commands_per_job", "redis commands / job", num(1)),
    ("worker_rss_peak_mib", "worker RSS peak, all processes (MiB)", num(0)),
    ("peak_inflight", "peak in-flight jobs", integer),
    ("redis_bytes_per_inflight_job", "redis used_memory / in-flight job", _bytes),
    ("duplicate_callbacks", "DUPLICATES: jobs with >1 callback", integer),
    ("duplicate_provider_tasks", "DUPLICATES: jobs with >1 provider task", integer),
    ("lost", "LOSSES: jobs without a callback", integer),
    ("failed", "jobs called back not succeeded", integer),
    ("rate_limited_429", "provider 429 answers", integer),
    ("max_requests_1s", "max provider requests in any 1 s", integer),
    ("max_accepted_1s", "max accepted (non-429) in any 1 s", integer),
    ("producers", "producer processes", integer),
    ("enqueue_s", "enqueue time (s)", num(1)),
    ("wall_s", "wall time (s)", num(1)),
    ("cpu_workers_s", "CPU s: workers", num(1)),
    ("cpu_producers_s", "CPU s: producers (enqueue loops)", num(1)),
    ("cpu_simulator_s", "CPU s: simulator", num(1)),
    ("cpu_redis_s", "CPU s: redis", num(1)),
    ("cpu_receiver_s", "CPU s: callback receiver", num(1)),
    ("cpu_harness_s", "CPU s: harness (sampling)", num(1)),
]
METRIC_KEYS = [key for key, _, _ in ROWS] + ["jobs"]


def table(
    scenario: Scenario,
    results: dict[str, Any],
    header: str,
    rows: list[tuple[str, str, Format]] | None = None,
) -> str:
    """Metric x system; ``rows`` (key, label, format): the scenario's own rows, else
    :data:`ROWS`."""
    rows = ROWS if rows is None else rows
    systems = list(results)
    labels = [label for _, label, _ in rows]
    cells = [
        [fmt(results[s]["metrics"].get(key)) if results[s]["metrics"] else "error" for s in systems]
        for key, _, fmt in rows
    ]
    jobs = [integer(results[s]["metrics"].get("jobs")) for s in systems]
    label_width = max(len(label) for label in [*labels, "metric"])
    widths = [
        max(len(s), *(len(row[i]) for row in cells), len(jobs[i])) for i, s in enumerate(systems)
    ]

    def line(label: str, values: list[str]) -> str:
        body = "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))
        return f"{label.ljust(label_width)}  {body}"

    out = [header, line("metric", systems), line("-" * label_width, ["-" * w for w in widths])]
    out.append(line("jobs", jobs))
    out += [line(label, row) for label, row in zip(labels, cells, strict=True)]
    for system in systems:
        error = results[system]["details"].get("error")
        if error:
            out.append(f"!! {system}: {error}")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_mib": round(psutil.virtual_memory().total / 1024 / 1024),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json(out_dir: Path, scenario: Scenario, document: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{scenario.name}-{stamp}.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path
