"""The ``pollen`` command line: run workers, the simulator and the demo; submit and inspect jobs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from pollen.client import Pollen

T = TypeVar("T")

app = typer.Typer(
    help="pollen: submit long-running generative-AI jobs, poll them, keep the results.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _about_a_job(use: Callable[[Pollen], T]) -> T:
    """Run ``use`` with a producer client; an unknown job id is a clear error and exit 1."""
    from pollen import JobNotFound, Pollen

    with Pollen() as client:
        try:
            return use(client)
        except JobNotFound as exc:
            _fail(str(exc))


@contextmanager
def _extra(name: str) -> Iterator[None]:
    """Imports of a command that needs pollen's ``name`` extra: a missing package is a one-line
    hint, not a traceback (``pip install pollen`` is the producer only)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.partition(".")[0] == "pollen":
            raise
        _fail(f"this command needs {exc.name.partition('.')[0]}: pip install 'pollen[{name}]'")


def _load_payload(source: str) -> Any:
    text = sys.stdin.read() if source == "-" else source
    if source.startswith("@"):
        text = Path(source[1:]).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        _fail(f"job payload is not valid JSON: {exc}")


def _prepare_metrics_dir() -> None:
    """Give this worker an empty PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported:
    every pool process then writes its samples there and the exporter serves their sum."""
    import os
    import shutil
    import tempfile

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="pollen-metrics-")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


@app.command()
def worker(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Threads (or processes) per worker.")
    ] = 32,
    pool: Annotated[
        str,
        typer.Option(
            help="threads (default: the work is I/O; polls batch), prefork (time limits, "
            "crash isolation), or solo"
        ),
    ] = "threads",
    hostname: Annotated[str, typer.Option("--hostname", "-n")] = "pollen@%h",
    queues: Annotated[str | None, typer.Option("--queues", "-Q")] = None,
    loglevel: Annotated[str | None, typer.Option("--loglevel", "-l")] = None,
) -> None:
    """Run a Celery worker for pollen's queues (task events on, for Flower)."""
    _prepare_metrics_dir()
    from pollen.settings import get_settings

    with _extra("worker"):
        import pollen.worker.tasks  # noqa: F401  # what the worker runs needs the extra
        from pollen.worker.app import build_worker_app

    settings = get_settings()
    q = settings.queues
    names = queues or ",".join([q.submit, q.poll, q.callbacks])
    celery = build_worker_app(settings)
    quiet = ["--quiet"] if settings.log_format == "json" else []  # no banner among JSON lines
    celery.start(
        [*quiet, "worker", "-Q", names, "-c", str(concurrency), "-P", pool, "-n", hostname,
         "-l", loglevel or settings.log_level, "-E", "--without-mingle", "--without-gossip"]
    )  # fmt: skip


@app.command()
def submit(
    payload: Annotated[str, typer.Argument(help="Job JSON, @file.json, or - for stdin.")],
    wait: Annotated[float | None, typer.Option(help="Wait up to this many seconds.")] = None,
) -> None:
    """Enqueue a job (see schema/job-request.schema.json) and print its id."""
    from pollen import InvalidJob, Pollen, WaitTimeout

    with Pollen() as client:
        try:
            job_id = client.submit_payload(_load_payload(payload))
        except InvalidJob as exc:
            _fail(str(exc), 2)
        typer.echo(job_id)
        if wait is not None:
            try:
                _print_json(client.wait(job_id, wait).model_dump(mode="json", exclude={"request"}))
            except WaitTimeout as exc:
                _fail(str(exc), 3)


@app.command()
def status(job_id: str) -> None:
    """Print a job's status, polls and results so far."""
    job = _about_a_job(lambda client: client.get(job_id))
    detail = f" ({job.error.code}: {job.error.message})" if job.error else ""
    typer.echo(
        f"{job.id} {job.status.value}{detail} polls={job.polls} "
        f"results={len(job.results)}/{job.expected_results} errors={len(job.errors)}"
    )


@app.command()
def result(
    job_id: str,
    raw: Annotated[bool, typer.Option(help="Include the provider's raw items.")] = False,
) -> None:
    """Print the stored job as JSON: status, results, errors, timings."""
    job = _about_a_job(lambda client: client.get(job_id))
    no_raw = {"__all__": {"raw"}}
    exclude: Any = None if raw else {"results": no_raw, "errors": no_raw}
    _print_json(job.model_dump(mode="json", exclude=exclude))


@app.command()
def details(
    job_id: str,
    provider: Annotated[bool, typer.Option(help="Ask the provider's own getTaskDetails.")] = False,
) -> None:
    """Print the audit record: the request pollen sent and the provider's response envelope."""
    from pollen.providers.audit import provider_task_details

    def record(client: Pollen) -> dict[str, Any]:
        if provider:
            return provider_task_details(client.settings, client.get(job_id))
        return client.task_details(job_id)

    _print_json(_about_a_job(record))


callbacks_app = typer.Typer(help="Inspect and re-send a job's callback deliveries.")
app.add_typer(callbacks_app, name="callbacks")


@callbacks_app.command("list")
def callbacks_list(job_id: str) -> None:
    """Every delivery of the job (webhook-id, event, state) and every attempt made."""
    deliveries = _about_a_job(lambda client: client.callbacks(job_id))
    for item in deliveries:
        typer.echo(f"{item['webhook_id']}  {item['event']:<9} {item['state']:<9} {item['target']}")
        for attempt in item["attempts"]:
            code = attempt.get("status_code") or "-"
            error = f"  {attempt['error']}" if attempt.get("error") else ""
            typer.echo(
                f"    {attempt['outcome']:<9} HTTP {code}  {attempt['latency_ms']:.0f} ms{error}"
            )


@callbacks_app.command("replay")
def callbacks_replay(
    job_id: str,
    delivery: Annotated[str | None, typer.Option(help="Only this webhook-id.")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Also deliveries that were delivered.")
    ] = False,
) -> None:
    """Send the job's dead (or gone) deliveries again, with the same webhook-id."""
    replayed = _about_a_job(
        lambda client: client.replay_callbacks(job_id, delivery=delivery, everything=everything)
    )
    typer.echo(f"replayed {len(replayed)} deliveries" + "".join(f"\n  {d}" for d in replayed))


@app.command()
def simulator(
    host: str = "127.0.0.1",
    port: int = 8765,
    duration_min: float = 1.0,
    duration_max: float = 3.0,
    rate_5xx: float = 0.0,
    rate_429: float = 0.0,
    rate_malformed: float = 0.0,
    api_key: str = "sim-key",
) -> None:
    """Run the provider simulator (Runware, useapi.net and CometAPI dialects)."""
    with _extra("simulator"):
        from pollen.simulator import SimulatorConfig, run

    config = SimulatorConfig(
        api_key=api_key,
        duration_min=duration_min,
        duration_max=duration_max,
        rate_5xx=rate_5xx,
        rate_429=rate_429,
        rate_malformed=rate_malformed,
    )
    run(config, host, port)


@app.command()
def demo(
    jobs: Annotated[int, typer.Option(help="Extra single-image jobs to add.")] = 2,
) -> None:
    """Run everything locally: Redis, simulator, a worker, a few jobs; show progress and results."""
    with _extra("local"):
        from pollen.local.demo import run_demo

    raise typer.Exit(run_demo(extra_jobs=jobs))


@app.command()
def health(
    local: Annotated[
        bool, typer.Option(help="Probe this pod's worker (heartbeat file) instead of the fleet.")
    ] = False,
) -> None:
    """Exit non-zero when Redis is unreachable or no worker is alive."""
    from pollen.settings import get_settings
    from pollen.worker.health import run_checks

    checks = run_checks(get_settings(), local=local)
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        typer.echo(f"{mark} {check.name}: {check.detail}")
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


@app.command()
def stats(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Jobs by state, in-flight and overdue jobs, the oldest in-flight job, dead letters."""
    from pollen import Pollen
    from pollen.store.stats import collect

    with Pollen() as client:
        current = collect(client.store)
    if as_json:
        _print_json(current.as_dict())
        return
    states = ", ".join(f"{k}={v}" for k, v in current.by_status.items()) or "none yet"
    typer.echo(f"jobs by state: {states}")
    typer.echo(f"in flight: {current.inflight} (overdue: {current.overdue})")
    if current.oldest_job:
        typer.echo(
            f"oldest in flight: {current.oldest_job} ({current.oldest_status}, "
            f"{current.oldest_age:.0f}s old)"
        )
    typer.echo(f"callbacks in dead letter: {current.dead_letters}")


@app.command()
def config() -> None:
    """Print every POLLEN_* setting with its effective value (secrets masked)."""
    import os

    from pollen.settings import environment_variables, get_settings

    get_settings()  # fail here, with pydantic's message, if the environment is invalid
    for env, default, description in environment_variables():
        value = os.environ.get(env)
        if value is not None and ("KEY" in env or "SECRET" in env):
            value = "********"
        shown = value if value is not None else f"{default} (default)"
        typer.echo(f"{env}={shown}\n    {description}")


@app.command()
def schema(
    check: Annotated[bool, typer.Option(help="Fail if the checked-in schema is stale.")] = False,
) -> None:
    """Write (or --check) the job-request JSON Schema from the pydantic models: the copy in the
    package and, in a source checkout, schema/job-request.schema.json."""
    from pollen import schema as published

    if check:
        if stale := published.stale():
            _fail(f"stale (run `pollen schema`): {', '.join(map(str, stale))}")
        typer.echo("schema is current")
        return
    for path in published.write():
        typer.echo(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
