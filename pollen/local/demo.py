"""``pollen demo``: the whole pipeline on one machine, with nothing to install or configure.

Starts a local Redis (``redis-server`` or the embedded Valkey), the provider simulator, a
callback receiver and a Celery worker; enqueues a few jobs; shows live progress; prints the
stored results and the callbacks received. The jobs dashboard runs beside them (its URL and
a one-off password are printed first); on a terminal it stays up after the report until
Ctrl+C, so the jobs can be looked at; otherwise (stdin not a terminal: CI, scripts) the demo
ends by itself. Either way it stops everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pollen.callbacks import webhooks
from pollen.client import Pollen
from pollen.local.servers import CallbackReceiver, RedisServer, Worker, free_port
from pollen.models import Job
from pollen.settings import Settings
from pollen.simulator import SimulatorConfig, SimulatorServer

TIMEOUT = 90.0


Demo = tuple[str, str, dict[str, Any]]  # label, provider, request


def _jobs(extra: int) -> list[Demo]:
    video: dict[str, Any] = {
        "taskType": "videoInference",
        "model": "klingai:5@3",
        "positivePrompt": "a red fox trotting through fresh snow, golden hour",
        "numberResults": 3,
        "simulate": {"durations": [2.0, 4.0, 6.0]},
    }
    failing: dict[str, Any] = {
        "taskType": "videoInference",
        "model": "bytedance:1@1",
        "positivePrompt": "a paper boat in a storm",
        "simulate": {"durations": [2.5], "errors": ["timeoutProvider"]},
    }
    useapi = {
        "text_prompt": "slow motion zoom in, cat chasing dog in the kitchen",
        "seconds": 5,
        "simulate": {"duration": 3.0, "throttled_seconds": 1.0},
    }
    comet = {
        "action": "image_to_video",
        "model": "gen4_turbo",
        "promptImage": "https://example.invalid/cat.png",
        "promptText": "the cat jumps onto the table",
        "simulate": {"duration": 2.0, "not_exist_seconds": 1.5},
    }
    jobs: list[Demo] = [
        ("runware: 3 videos, 2-6 s", "runware", video),
        ("runware: provider error", "runware", failing),
        ("useapi.net: throttled", "useapi_runway", useapi),
        ("CometAPI: task_not_exist", "comet_runway", comet),
    ]
    for n in range(extra):
        image: dict[str, Any] = {
            "taskType": "imageInference",
            "model": "runware:101@1",
            "positivePrompt": f"a watercolor hummingbird, variation {n + 1}",
            "width": 1024,
            "height": 1024,
        }
        jobs.append((f"runware: image #{n + 1}", "runware", image))
    return jobs


def _table(jobs: list[tuple[str, Job]], started: float) -> Table:
    # box.SIMPLE and short labels: the six columns fit in 80 columns without wrapping
    table = Table(title=f"pollen demo — {time.monotonic() - started:4.1f} s", box=box.SIMPLE)
    for column in ("job", "what", "status", "results", "polls", "progress"):
        table.add_column(column)
    colours = {"succeeded": "green", "failed": "red", "timed_out": "red"}
    for label, job in jobs:
        colour = colours.get(job.status.value, "yellow")
        table.add_row(
            job.id[:8],
            label,
            f"[{colour}]{job.status.value}[/{colour}]",
            f"{len(job.results)}/{job.expected_results}",
            str(job.polls),
            f"{(job.progress or 0) * 100:3.0f}%",
        )
    return table


def _copying(jobs: list[tuple[str, Job]]) -> bool:
    """Whether pollen is still storing its copy of some result (re-hosting)."""
    copies = [r.stored for _, job in jobs for r in job.results]
    return any(copy is not None and copy.status == "pending" for copy in copies)


def _report(
    console: Console, jobs: list[tuple[str, Job]], receiver: CallbackReceiver, secret: str
) -> None:
    console.rule("stored results")
    for label, job in jobs:
        cost = "" if job.cost is None else f", cost {job.cost:g}"
        console.print(f"[bold]{job.id}[/bold] {label}: {job.status.value}{cost}", soft_wrap=True)
        for result in job.results:
            offset = result.seen_at - (job.submitted_at or job.created_at)
            console.print(
                f"  {result.kind} {result.url}  (seen {offset:.1f} s after submit)",
                soft_wrap=True,
            )
            if result.stored is not None:
                copy = result.stored
                where = copy.url or copy.error or ""
                console.print(f"    pollen's copy: {copy.status} {where}", soft_wrap=True)
        for error in job.errors:
            console.print(
                f"  [red]generation error {error.code}[/red]: {error.message}", soft_wrap=True
            )
    console.rule("signed webhooks received")
    for request in receiver.received():
        envelope = request["json"] or {}
        data = envelope.get("data", {})
        try:
            webhooks.verify(secret, request["body"], request["headers"])
            signature = "[green]signature ok[/green]"
        except webhooks.WebhookVerificationError as exc:
            signature = f"[red]bad signature: {exc}[/red]"
        kind = envelope.get("type")
        if kind == "job.partial":
            detail = f"result {data.get('index')}/{data.get('expected_results')}"
        elif kind == "job.result_stored":
            stored = (data.get("result") or {}).get("stored") or {}
            detail = f"copy of result {data.get('index')}: {stored.get('status')}"
        else:
            detail = f"{data.get('status')} with {len(data.get('results', []))} result(s)"
        console.print(
            f"{envelope.get('type', '?'):<17} job {str(data.get('job_id'))[:8]} {detail}  "
            f"({signature})",
            soft_wrap=True,
        )


def run_demo(extra_jobs: int = 2, dashboard: bool = True) -> int:
    console = Console()
    secret = webhooks.new_secret()
    with tempfile.TemporaryDirectory(prefix="pollen-demo-") as tmp:
        log = Path(tmp) / "worker.log"
        console.print("starting Redis, the provider simulator, a callback receiver, a worker…")
        sim_config = SimulatorConfig(duration_min=1.0, duration_max=3.0, seed=1)
        with (
            RedisServer() as redis_server,
            SimulatorServer(sim_config) as sim,
            CallbackReceiver() as receiver,
        ):
            env = {
                "POLLEN_CALLBACKS__SECRETS": json.dumps([secret]),
                "POLLEN_CALLBACKS__ALLOW_CIDRS": '["127.0.0.0/8"]',
                "POLLEN_REDIS_URL": redis_server.url(0),
                "POLLEN_RUNWARE__BASE_URL": f"{sim.url}/v1",
                "POLLEN_RUNWARE__API_KEY": sim_config.api_key,
                "POLLEN_USEAPI__BASE_URL": sim.url,
                "POLLEN_USEAPI__API_KEY": sim_config.api_key,
                "POLLEN_COMET__BASE_URL": sim.url,
                "POLLEN_COMET__API_KEY": sim_config.api_key,
                "POLLEN_POLL__INITIAL_DELAY": "1.0",
                "POLLEN_POLL__INTERVAL": "0.5",
                "POLLEN_POLL__MAX_DELAY": "2.0",
                # re-hosting into the demo's directory; the simulator's result URLs are local
                "POLLEN_STORAGE__URL": (Path(tmp) / "stored").as_uri(),
                "POLLEN_STORAGE__ALLOW_CIDRS": '["127.0.0.0/8"]',
            }
            console.print(f"  redis {Path(redis_server.binary).name} on :{redis_server.port}")
            console.print(f"  simulator {sim.url}   receiver {receiver.url}")
            with Worker(env, name="demo", log_file=str(log)) as worker:
                worker.wait_ready(redis_server.url(0))
                os.environ.update(env)
                settings = Settings()
                with _dashboard(console, settings, dashboard) as url, Pollen(settings) as client:
                    code = _run_jobs(console, client, receiver, extra_jobs, secret)
                    if url and not code:
                        _stay_up(console, url)
                if code:
                    console.print(f"[red]worker log:[/red]\n{log.read_text()[-3000:]}")
        console.print("stopped the worker, the simulator and Redis.")
        return code


@contextmanager
def _dashboard(console: Console, settings: Settings, wanted: bool) -> Iterator[str | None]:
    """The jobs dashboard on this process's thread while the block runs (its URL), with a
    one-off password; None when not ``wanted``."""
    if not wanted:
        yield None
        return
    from pollen.dashboard.security import Credentials
    from pollen.local.servers import DashboardServer

    credentials = Credentials("demo", secrets.token_urlsafe(9))
    with DashboardServer(settings, credentials, free_port()) as server:
        console.print(
            f"  dashboard {server.url}/  (user demo, password {credentials.password})",
            soft_wrap=True,
        )
        yield server.url


def _stay_up(console: Console, url: str) -> None:
    """Keep the dashboard up until Ctrl+C, when someone is at a terminal to press it."""
    if not sys.stdin.isatty():
        console.print(f"\n(stdin is not a terminal: the dashboard {url} stops now)", soft_wrap=True)
        return
    console.print(
        f"\nthe dashboard stays up at {url}/ until Ctrl+C (which stops everything)",
        soft_wrap=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print()


def _run_jobs(
    console: Console, client: Pollen, receiver: CallbackReceiver, extra: int, secret: str
) -> int:
    submitted = [
        (
            label,
            client.submit(
                provider,
                request,
                callback_url=f"{receiver.url}/webhook",
                events=["partial", "completed"] if index == 0 else None,
            ),
        )
        for index, (label, provider, request) in enumerate(_jobs(extra))
    ]
    started = time.monotonic()
    with Live(console=console, refresh_per_second=8) as live:
        while True:
            jobs = [(label, client.get(job_id)) for label, job_id in submitted]
            live.update(_table(jobs, started))
            if all(job.terminal for _, job in jobs):
                break
            if time.monotonic() - started > TIMEOUT:
                console.print("[red]jobs did not finish in time[/red]")
                return 1
            time.sleep(0.1)
    if not console.is_terminal:  # Live ends its last frame with a newline only on a terminal
        console.line()
    expected = len(submitted) + jobs[0][1].expected_results  # + the partial events of job 1
    deadline = time.monotonic() + 10
    # the callbacks still on their way, and the copies of results still being stored
    while (len(receiver.received()) < expected or _copying(jobs)) and time.monotonic() < deadline:
        time.sleep(0.1)
        jobs = [(label, client.get(job_id)) for label, job_id in submitted]
    _report(console, jobs, receiver, secret)
    ok = sum(1 for _, job in jobs if job.status.value == "succeeded")
    console.print(
        f"\n{len(jobs)} jobs: {ok} succeeded, {len(jobs) - ok} failed; "
        f"{len(receiver.received())} callbacks received"
    )
    return 0
