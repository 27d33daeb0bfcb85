"""``python -m bench.replicas``: what waiting for a replica costs a submit.

Starts a Redis primary and a replica on loopback (the store in db 1, a broker nobody consumes
in db 0 of the same primary) and runs ``Pollen.submit`` with ``POLLEN_REPLICA_ACKS=0`` and
with ``1`` in alternating blocks, in one run, so both see the same machine. Prints submits/s,
latency p50/p99 and producer CPU per submit for each.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.analysis import percentile
from bench.producer import job_request
from pollen import Pollen
from pollen.local.servers import RedisServer, ReplicaServer
from pollen.settings import Settings

#: the modes compared: label -> POLLEN_REPLICA_ACKS
MODES = {"no wait (acks 0)": 0, "WAIT 1 replica": 1}
BLOCK = 100  #: submits per block; the modes alternate block by block


def measure(primary: RedisServer, submits: int) -> dict[str, dict[str, float]]:
    """Per mode: submits/s, p50 and p99 latency (ms), producer CPU per submit (µs)."""
    clients = {
        label: Pollen(
            Settings(redis_url=primary.url(1), broker_url=primary.url(0), replica_acks=acks)
        )
        for label, acks in MODES.items()
    }
    latencies: dict[str, list[float]] = {label: [] for label in MODES}
    cpu = dict.fromkeys(MODES, 0.0)
    try:
        for client in clients.values():  # connections and scripts loaded before timing
            client.submit_payload({"provider": "runware", "request": job_request("warm")})
        for start in range(0, submits, BLOCK):
            for label, client in clients.items():
                cpu_start = time.process_time()
                for n in range(start, min(start + BLOCK, submits)):
                    payload = {"provider": "runware", "request": job_request(f"{label}-{n}")}
                    began = time.perf_counter()
                    client.submit_payload(payload)
                    latencies[label].append(time.perf_counter() - began)
                cpu[label] += time.process_time() - cpu_start
    finally:
        for client in clients.values():
            client.close()
    return {label: _figures(latencies[label], cpu[label]) for label in MODES}


def _figures(latencies: list[float], cpu: float) -> dict[str, float]:
    return {
        "submits_per_s": len(latencies) / sum(latencies),
        "p50_ms": 1000 * (percentile(latencies, 50) or 0.0),
        "p99_ms": 1000 * (percentile(latencies, 99) or 0.0),
        "cpu_us": 1e6 * cpu / len(latencies),
    }


def table(figures: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'':18} {'submits/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/submit':>14}"]
    for label, row in figures.items():
        lines.append(
            f"{label:18} {row['submits_per_s']:>10.0f} {row['p50_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['cpu_us']:>14.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    parser.add_argument("--submits", type=int, default=2000, help="submits per mode")
    args = parser.parse_args(argv)
    if args.submits < 1:
        parser.error("--submits must be at least 1")
    with RedisServer() as primary, ReplicaServer(primary):
        figures = measure(primary, args.submits)
    print(f"{args.submits} submits per mode, one producer, primary + replica on loopback")
    print(table(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
