#!/usr/bin/env python3
"""Take docs/flower-tasks.png: Flower's tasks page after a few pollen jobs ran.

Starts everything on loopback (a Redis server, the provider simulator, a pollen worker and
Flower), runs a handful of jobs through them, then has headless Chromium screenshot
``/tasks`` while one long video job is still polling (its poll task shows RETRY between
countdowns). Stops everything it started.

    apt-get install -y chromium        # Debian's Chromium (the only thing not from pip)
    python scripts/flower_screenshot.py [--out docs/flower-tasks.png] [--chromium PATH]

Flower runs with basic auth as it does in docker-compose.yml and Kubernetes; Chromium logs in
with credentials in the URL (http://user:password@host/...), which it still honours for the
top-level page and the same-origin requests the page makes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pollen import Pollen  # noqa: E402
from pollen.callbacks.webhooks import new_secret  # noqa: E402
from pollen.local.servers import CallbackReceiver, RedisServer, Worker, free_port  # noqa: E402
from pollen.settings import Settings  # noqa: E402
from pollen.simulator import SimulatorConfig, SimulatorServer  # noqa: E402

USER, PASSWORD = "pollen", "screenshot"
# pollen's (redacted) task arguments instead of the UUID and received time, to fit 1400 px.
COLUMNS = "name,state,args,kwargs,runtime,worker"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1400,900",
    # Let the page's own requests (the task table is loaded by script) finish first.
    "--virtual-time-budget=8000",
]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def video(prompt: str, durations: list[float], errors: list[str | None] | None = None) -> dict:
    simulate: dict = {"durations": durations}
    if errors:
        simulate["errors"] = errors
    return {
        "taskType": "videoInference",
        "model": "klingai:5@3",
        "positivePrompt": prompt,
        "numberResults": len(durations),
        "simulate": simulate,
    }


def image(prompt: str) -> dict:
    return {
        "taskType": "imageInference",
        "model": "runware:101@1",
        "positivePrompt": prompt,
        "width": 1024,
        "height": 1024,
    }


def run_jobs(client: Pollen, callback: str) -> tuple[list[str], str]:
    """Four short jobs (one failing at the provider) and one long video still polling."""
    short = [
        client.submit("runware", video("a red fox in fresh snow", [1.0, 2.0])),
        client.submit("runware", video("a paper boat", [1.5], errors=["timeoutProvider"])),
        client.submit("runware", image("a watercolor hummingbird"), callback_url=callback),
        client.submit("runware", image("a lighthouse at dusk"), callback_url=callback),
    ]
    long = client.submit("runware", video("city lights in the rain", [20.0]))
    for job_id in short:
        job = client.wait(job_id, 60)
        print(f"  {job_id} {job.status.value} results={len(job.results)}")
    return short, long


def flower_process(broker: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    args = [
        sys.executable, "-m", "celery", "--broker", broker, "flower",
        f"--port={port}", "--address=127.0.0.1", f"--tasks_columns={COLUMNS}",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def screenshot(chromium: str, url: str, out: Path, profile: str) -> None:
    args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed ({done.returncode}):\n{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "flower-tasks.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    options = parser.parse_args()
    sim_config = SimulatorConfig(duration_min=0.5, duration_max=1.5, seed=3)
    with (
        tempfile.TemporaryDirectory(prefix="pollen-shot-") as tmp,
        RedisServer() as redis_server,
        SimulatorServer(sim_config) as sim,
    ):
        env = {
            "POLLEN_REDIS_URL": redis_server.url(1),
            "POLLEN_BROKER_URL": redis_server.url(0),
            "POLLEN_RUNWARE__BASE_URL": f"{sim.url}/v1",
            "POLLEN_RUNWARE__API_KEY": sim.config.api_key,
            "POLLEN_HEARTBEAT_FILE": f"{tmp}/heartbeat",
            "POLLEN_POLL__INITIAL_DELAY": "0.5",
            "POLLEN_POLL__INTERVAL": "0.5",
            # The callback receiver listens on loopback, which callbacks may not reach otherwise.
            "POLLEN_CALLBACKS__ALLOW_CIDRS": '["127.0.0.0/8"]',
            "POLLEN_CALLBACKS__SECRETS": json.dumps([new_secret()]),
        }
        port = free_port()
        flower = flower_process(redis_server.url(0), port, Path(tmp) / "flower.log")
        try:
            with Worker(env, name="worker-1", concurrency=4, log_file=f"{tmp}/worker.log") as w:
                w.wait_ready(redis_server.url(0))
                api = f"http://127.0.0.1:{port}/api/workers?status=true"
                wait_for(lambda: _alive(api, "worker-1@"), "Flower to see the worker", timeout=30)
                settings = Settings(
                    redis_url=redis_server.url(1),
                    broker_url=redis_server.url(0),
                    callbacks={"allow_cidrs": ["127.0.0.0/8"]},
                )
                print("running jobs:")
                with Pollen(settings) as client, CallbackReceiver() as receiver:
                    _, long = run_jobs(client, f"{receiver.url}/hooks/pollen")
                    time.sleep(1.5)  # the last task events reach Flower
                    options.out.parent.mkdir(parents=True, exist_ok=True)
                    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/tasks"
                    screenshot(options.chromium, url, options.out, f"{tmp}/chromium")
                    print(f"  {long} {client.wait(long, 60).status.value} (after the shot)")
        finally:
            flower.terminate()
            flower.wait(10)
    print(f"wrote {options.out}")


def _alive(url: str, prefix: str) -> bool:
    try:
        status = httpx.get(url, auth=(USER, PASSWORD), timeout=2).json()
    except (httpx.TransportError, ValueError):
        return False
    return any(name.startswith(prefix) and up for name, up in status.items())


if __name__ == "__main__":
    main()
