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


def ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


#: the system the ratio rows compare with (same run)
REFERENCE = "baseline-pooled"
#: (metric, the ratio's metric key): each system's figure / the reference system's
RATIOS = {
    "worker_cpu_ms_per_job": f"worker_cpu_vs_{REFERENCE.replace('-', '_')}",
    "jobs_per_s": f"jobs_per_s_vs_{REFERENCE.replace('-', '_')}",
}

#: (metric key in the JSON, row label, formatter), in table order
ROWS: list[tuple[str, str, Format]] = [
    ("completed", "jobs called back", integer),
    ("jobs_per_s", "jobs/s (1st enqueue -> last callback)", num(1)),
    (RATIOS["jobs_per_s"], f"  jobs/s / {REFERENCE}'s", ratio),
    ("callback_lag_p50_s", "callback lag p50 (s)", num(2)),
    ("callback_lag_p95_s", "callback lag p95 (s)", num(2)),
    ("callback_lag_p99_s", "callback lag p99 (s)", num(2)),
    ("schedule_lag_p50_s", "  poll schedule alone: lag p50 (s)", num(2)),
    ("schedule_lag_p99_s", "  poll schedule alone: lag p99 (s)", num(2)),
    ("poll_lateness_p50_s", "poll ran after its due time, p50 <= (s)", num(2)),
    ("poll_lateness_p99_s", "poll ran after its due time, p99 <= (s)", num(2)),
    ("worker_cpu_ms_per_job", "worker CPU ms / job (all processes)", num(1)),
    (RATIOS["worker_cpu_ms_per_job"], f"  worker CPU / job / {REFERENCE}'s", ratio),
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
    ("celery_events_per_job", "celery event messages / job", num(2)),
    ("publish_per_job", "  redis PUBLISH / job (+ pollen's job events)", num(2)),
    ("redis_commands_per_job", "redis commands / job", num(1)),
    ("worker_rss_peak_mib", "worker RSS peak, all processes (MiB)", num(0)),
    ("peak_inflight", "peak in-flight jobs", integer),
    ("redis_bytes_per_inflight_job", "redis used_memory / in-flight job", _bytes),
    ("redis_key_bytes_per_inflight_job", "redis keys (MEMORY USAGE) / in-flight job", _bytes),
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
    jobs = [integer(results[s]["metrics"].get("jobs")) for s in systems]
    cells = [
        (label, [fmt(results[s]["metrics"].get(key)) if results[s]["metrics"] else "error"
                 for s in systems])
        for key, label, fmt in rows
    ]  # fmt: skip
    out = _grid(header, "metric", systems, [("jobs", jobs), *cells])
    for system in systems:
        error = results[system]["details"].get("error")
        if error:
            out.append(f"!! {system}: {error}")
    return "\n".join(out)


def _grid(
    header: str, corner: str, columns: list[str], rows: list[tuple[str, list[str]]]
) -> list[str]:
    """Labelled rows of right-aligned cells under a header line and the column names."""
    label_width = max(len(label) for label in [*(label for label, _ in rows), corner])
    widths = [max(len(c), *(len(cells[i]) for _, cells in rows)) for i, c in enumerate(columns)]

    def line(label: str, values: list[str]) -> str:
        body = "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))
        return f"{label.ljust(label_width)}  {body}"

    out = [header, line(corner, columns), line("-" * label_width, ["-" * w for w in widths])]
    return out + [line(label, cells) for label, cells in rows]


def add_ratios(results: dict[str, Any]) -> None:
    """Each system's :data:`RATIOS` against :data:`REFERENCE` of the same run (when it ran)."""
    reference = results.get(REFERENCE, {}).get("metrics") or {}
    for result in results.values():
        metrics = result["metrics"]
        for key, ratio_key in RATIOS.items():
            base, own = reference.get(key), metrics.get(key)
            if metrics and base and own is not None:
                metrics[ratio_key] = round(own / base, 3)


#: key types shown in the memory section; the others are summed in one row
MEMORY_ROWS = 12


def memory_table(results: dict[str, Any]) -> str:
    """Redis bytes per in-flight job by key type (the breakdown each system's sampler took),
    the biggest types first; "" when no system has one."""
    taken = {s: r["details"].get("redis_memory_by_key_type") for s, r in results.items()}
    systems = [s for s, memory in taken.items() if memory]
    if not systems:
        return ""
    per_kind = {s: {k: v["bytes_per_job"] for k, v in taken[s]["kinds"].items()} for s in systems}
    biggest: dict[str, float] = {}
    for kinds in per_kind.values():
        for kind, value in kinds.items():
            biggest[kind] = max(biggest.get(kind, 0.0), value)
    shown = sorted(biggest, key=lambda k: -biggest[k])[:MEMORY_ROWS]
    types = {k: v["type"] for s in systems for k, v in taken[s]["kinds"].items()}
    rows = [
        (f"{kind} ({types[kind]})", [_bytes(per_kind[s].get(kind)) for s in systems])
        for kind in shown
    ]
    rest = [sum(v for k, v in per_kind[s].items() if k not in shown) for s in systems]
    rows.append((f"{len(biggest) - len(shown)} other key types", [_bytes(v) for v in rest]))
    rows.append(("all keys", [_bytes(taken[s]["bytes_per_job"]) for s in systems]))
    rows.append(("jobs in flight when measured", [integer(taken[s]["inflight"]) for s in systems]))
    header = "\nredis memory per in-flight job by key type (MEMORY USAGE, sampled at a peak)"
    return "\n".join(_grid(header, "key type", systems, rows))


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
