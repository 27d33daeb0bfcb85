"""The ``pollen`` command line: run workers, the simulator and the demo; submit and inspect jobs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import typer
from typer._click.core import Context, Parameter  # typer vendors click
from typer._click.exceptions import ClickException
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

if TYPE_CHECKING:
    from pollen.client import Pollen
    from pollen.models import Job
    from pollen.settings import Settings

T = TypeVar("T")


def _plain_params(params: list[Parameter]) -> list[Parameter]:
    """Flags show no ``<bool>`` type in help (they take no value), nor arguments a ``<str>``
    beside their name (``JOB``, ``PAYLOAD`` say what they take)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, TyperArgument):
            param.display_type_rich = _no_type  # type: ignore[method-assign]
    return params


def _no_type(ctx: Context) -> None:
    return None


class _Command(TyperCommand):
    """Help that reads naturally: ``pollen status JOB`` (not ``{job_id}``), flags without a type."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces += param.get_usage_pieces(ctx)
        return pieces


class _Group(TyperGroup):
    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain_params(super().get_params(ctx))


app = typer.Typer(
    help="pollen: submit long-running generative-AI jobs, poll them, keep the results.",
    no_args_is_help=True,
    add_completion=False,
    cls=_Group,
)
command = partial(app.command, cls=_Command)
JobId = Annotated[str, typer.Argument(metavar="JOB", help="The job id.", show_default=False)]


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``****``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}"))


def _settings() -> Settings:
    """The settings; an invalid environment is one line naming each bad variable."""
    from pydantic import ValidationError

    from pollen.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"POLLEN_{'__'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"]
            for e in exc.errors()
            # a default computed from a bad value only repeats that value's error
            if e["type"] != "default_factory_not_called"
        )
        _fail(f"invalid settings: {problems}")


@contextmanager
def _client() -> Iterator[Pollen]:
    """A producer client, after a quick PING: an unreachable Redis is an error in seconds,
    not after the client's ~20 s of reconnect retries."""
    from pollen import Pollen

    settings = _settings()
    _reachable(settings)
    with Pollen(settings) as client:
        yield client


def _reachable(settings: Settings) -> None:
    """Exit 1 with one line unless the store answers a PING within seconds."""
    from pollen.worker.health import check_reachable

    check = check_reachable(settings.redis_url, "redis")
    if not check.ok:
        reason = check.detail.removeprefix("unreachable: ")
        _fail(f"Redis at {redact(settings.redis_url)} is unreachable ({reason})")


def _about_a_job(use: Callable[[Pollen], T]) -> T:
    """Run ``use`` with a producer client; an unknown job id is a clear error and exit 1."""
    from pollen import JobNotFound

    with _client() as client:
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
    if source == "-":
        text = sys.stdin.read()
    elif source.startswith("@"):
        try:
            text = Path(source[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read {source[1:]}: {getattr(exc, 'strerror', None) or exc}")
    else:
        text = source
    try:
        return json.loads(text)
    except ValueError as exc:
        hint = ""
        if source.endswith(".json") or Path(source).is_file():
            hint = f" (to read the file, write @{source})"
        _fail(f"job payload is not valid JSON: {exc}{hint}")


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _progress(job: Job) -> str:
    line = f"{job.id} {job.status.value} results {len(job.results)}/{job.expected_results}"
    if job.progress is not None:
        line += f" progress {job.progress * 100:.0f}%"
    return line


def _follow(client: Pollen, job_id: str, timeout: float) -> Job:
    """``client.wait`` with progress on stderr: one updating line on a terminal, else one
    plain line per change. Exit 3 (one line) if the job is still running at ``timeout``."""
    from pollen import JobNotFound, WaitTimeout

    live = sys.stderr.isatty()
    shown = ""

    def show(job: Job) -> None:
        nonlocal shown
        line = _progress(job)
        if line != shown:
            sys.stderr.write(f"\r\x1b[K{line}" if live else f"{line}\n")
            sys.stderr.flush()
            shown = line

    try:
        return client.wait(job_id, timeout, on_change=show)
    except JobNotFound as exc:
        _fail(str(exc))
    except WaitTimeout as exc:
        _fail(str(exc), 3)
    finally:
        if live and shown:
            sys.stderr.write("\n")


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


POOLS = ("threads", "prefork", "solo")
OPTIONAL_POOLS = ("gevent", "eventlet")  #: offered when the package is installed


def _pools() -> list[str]:
    from importlib.util import find_spec

    return [*POOLS, *(name for name in OPTIONAL_POOLS if find_spec(name) is not None)]


@command()
def worker(
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", "-c", metavar="N", help="Threads (or processes) per worker."),
    ] = 32,
    pool: Annotated[
        str,
        typer.Option(
            "--pool",
            "-P",
            metavar="POOL",
            help="threads (default: the work is I/O; polls batch), prefork (time limits, "
            "crash isolation), solo; gevent or eventlet when installed.",
        ),
    ] = "threads",
    hostname: Annotated[str, typer.Option("--hostname", "-n", metavar="NAME")] = "pollen@%h",
    queues: Annotated[str | None, typer.Option("--queues", "-Q", metavar="QUEUES")] = None,
    loglevel: Annotated[str | None, typer.Option("--loglevel", "-l", metavar="LEVEL")] = None,
) -> None:
    """Run a Celery worker for pollen's queues (task events on, for Flower)."""
    if pool not in _pools():
        raise typer.BadParameter(f"{pool!r} is not one of {', '.join(_pools())}", param_hint="-P")
    _prepare_metrics_dir()
    with _extra("worker"):
        import pollen.worker.tasks  # noqa: F401  # what the worker runs needs the extra
        from pollen.worker.app import build_worker_app

    settings = _settings()
    _storage_usable(settings)
    q = settings.queues
    names = queues or ",".join([q.submit, q.poll, q.callbacks])
    celery = build_worker_app(settings)
    quiet = ["--quiet"] if settings.log_format == "json" else []  # no banner among JSON lines
    celery.start(
        [*quiet, "worker", "-Q", names, "-c", str(concurrency), "-P", pool, "-n", hostname,
         "-l", loglevel or settings.log_level, "-E", "--without-mingle", "--without-gossip"]
    )  # fmt: skip


@command()
def submit(
    payload: Annotated[
        str,
        typer.Argument(
            metavar="PAYLOAD", help="Job JSON, @file.json, or - for stdin.", show_default=False
        ),
    ],
    wait: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="Wait up to this long, showing progress."),
    ] = None,
) -> None:
    """Enqueue a job (see schema/job-request.schema.json) and print its id.

    With --wait, print the finished job as JSON; exit 1 if it did not succeed, 3 if still running.
    """
    from pollen import InvalidJob

    job = _load_payload(payload)
    with _client() as client:
        try:
            job_id = client.submit_payload(job)
        except InvalidJob as exc:
            _fail(str(exc), 2)
        typer.echo(job_id)
        if wait is not None:
            finished = _follow(client, job_id, wait)
            _print_json(_with_iso(finished.model_dump(mode="json", exclude={"request"})))
            if finished.status.value != "succeeded":
                raise typer.Exit(1)


@command("wait")
def wait_for(
    job_id: JobId,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Give up (exit 3) after this long.")
    ] = 600.0,
) -> None:
    """Wait for a job to end, showing its progress; then print its status line.

    Exit 0 if it succeeded, 1 if it failed, timed out or was cancelled, 3 if still running.
    """
    with _client() as client:
        job = _follow(client, job_id, timeout)
    typer.echo(_status_line(job, ""))
    if job.status.value != "succeeded":
        raise typer.Exit(1)


def _status_line(job: Job, last_error: str) -> str:
    detail = f" ({job.error.code}: {job.error.message})" if job.error else ""
    retrying = f" last error: {last_error}" if last_error and not job.terminal else ""
    return (
        f"{job.id} {job.status.value}{detail} polls={job.polls} "
        f"results={len(job.results)}/{job.expected_results} errors={len(job.errors)}{retrying}"
    )


@command()
def status(job_id: JobId) -> None:
    """Print a job's status, polls and results so far (and the last error while retrying)."""
    job, fields = _about_a_job(
        lambda client: (client.get(job_id), client.store.lifecycle.raw(job_id))
    )
    typer.echo(_status_line(job, fields.get("last_error", "")))


@command()
def cancel(
    job_id: JobId,
    reason: Annotated[
        str, _opt("TEXT", "Why; kept as the job's error message.")
    ] = "cancelled from the command line",
) -> None:
    """Cancel a job: it stops being polled, the provider is asked to cancel its task where it
    documents a call for that, and the completion callback says `cancelled`. A job that has
    already finished stays as it is (exit 0 either way)."""
    outcome = _about_a_job(lambda client: client.cancel(job_id, reason=reason))
    typer.echo(outcome.message)


TIMESTAMPS = ("created_at", "submitted_at", "finished_at", "updated_at", "deadline_at")


def _with_iso(record: dict[str, Any]) -> dict[str, Any]:
    """Add ``<name>_iso`` (ISO 8601, UTC) beside each epoch timestamp, results' included."""
    out = dict(record)
    for name in (*TIMESTAMPS, "next_poll_at", "seen_at"):
        if isinstance(out.get(name), int | float):
            out[f"{name}_iso"] = _iso(out[name])
    for group in ("results", "errors"):
        if isinstance(out.get(group), list):
            out[group] = [_with_iso(item) for item in out[group]]
    return out


@command()
def result(
    job_id: JobId,
    raw: Annotated[bool, typer.Option("--raw", help="Include the provider's raw items.")] = False,
) -> None:
    """Print the stored job as JSON: status, results, errors, timings (epoch and ISO 8601)."""
    job = _about_a_job(lambda client: client.get(job_id))
    no_raw = {"__all__": {"raw"}}
    exclude: Any = None if raw else {"results": no_raw, "errors": no_raw}
    _print_json(_with_iso(job.model_dump(mode="json", exclude=exclude)))


@command()
def details(
    job_id: JobId,
    provider: Annotated[
        bool, typer.Option("--provider", help="Ask the provider's own getTaskDetails.")
    ] = False,
) -> None:
    """Print the audit record: the request pollen sent and the provider's response envelope."""
    from pollen.providers.audit import provider_task_details

    def record(client: Pollen) -> dict[str, Any]:
        if provider:
            return provider_task_details(client.settings, client.get(job_id))
        return client.task_details(job_id)

    _print_json(_about_a_job(record))


callbacks_app = typer.Typer(help="Inspect and re-send a job's callback deliveries.", cls=_Group)
app.add_typer(callbacks_app, name="callbacks")


@callbacks_app.command("list", cls=_Command)
def callbacks_list(job_id: JobId) -> None:
    """List the job's deliveries (webhook-id, event, state) and every attempt made.

    Each attempt: its time (ISO 8601), outcome, HTTP status, latency and error.
    """
    deliveries = _about_a_job(lambda client: client.callbacks(job_id))
    for item in deliveries:
        typer.echo(f"{item['webhook_id']}  {item['event']:<9} {item['state']:<9} {item['target']}")
        for attempt in item["attempts"]:
            code = attempt.get("status_code") or "-"
            at = _iso(attempt["at"]) if attempt.get("at") else "-"
            said = attempt.get("error")
            error = f"  {said}" if said and said != f"HTTP {code}" else ""
            typer.echo(
                f"    {at}  {attempt['outcome']:<9} HTTP {code}  "
                f"{attempt['latency_ms']:.0f} ms{error}"
            )


@callbacks_app.command("replay", cls=_Command)
def callbacks_replay(
    job_id: JobId,
    delivery: Annotated[
        str | None, typer.Option(metavar="WEBHOOK_ID", help="Only this webhook-id.")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Also deliveries that were delivered.")
    ] = False,
) -> None:
    """Send the job's dead (or gone) deliveries again, with the same webhook-id."""
    replayed = _about_a_job(
        lambda client: client.replay_callbacks(job_id, delivery=delivery, everything=everything)
    )
    if delivery is not None and not replayed:
        _fail(f"job {job_id} has no delivery {delivery} (see `pollen callbacks list {job_id}`)")
    typer.echo(f"replayed {len(replayed)} deliveries" + "".join(f"\n  {d}" for d in replayed))


def _storage_usable(settings: Settings) -> None:
    """Re-hosting to S3 needs boto3 (the storage extra): say so before the worker starts."""
    import importlib.util

    url = settings.storage.url or ""
    if url.startswith("s3://") and importlib.util.find_spec("boto3") is None:
        _fail(f"POLLEN_STORAGE__URL={url} needs boto3: pip install 'pollen[storage]'")


def _port_free(host: str, port: int) -> None:
    """A server command's address must be free: one line, not uvicorn's start-up failure."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _opt(metavar: str, help: str, **kwargs: Any) -> Any:
    return typer.Option(metavar=metavar, help=help, **kwargs)


@command()
def simulator(
    host: Annotated[str, _opt("HOST", "Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, _opt("PORT", "Port to listen on.")] = 8765,
    duration_min: Annotated[float, _opt("SECONDS", "Shortest generation.", min=0)] = 1.0,
    duration_max: Annotated[float, _opt("SECONDS", "Longest generation.", min=0)] = 3.0,
    rate_5xx: Annotated[float, _opt("RATE", "Share of requests answered 5xx.", min=0, max=1)] = 0.0,
    rate_429: Annotated[float, _opt("RATE", "Share answered 429.", min=0, max=1)] = 0.0,
    rate_malformed: Annotated[
        float, _opt("RATE", "Share answered with a malformed body.", min=0, max=1)
    ] = 0.0,
    api_key: Annotated[str, _opt("KEY", "The bearer token it accepts.")] = "sim-key",
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


@command()
def ingress(
    host: Annotated[str, _opt("HOST", "Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, _opt("PORT", "Port to listen on.", min=1, max=65535)] = 8088,
) -> None:
    """Take provider pushes and poll the pushed jobs at once (set POLLEN_INGRESS__PUBLIC_URL
    on the workers to the URL providers reach this on)."""
    with _extra("ingress"):
        import uvicorn

        from pollen.ingress.app import build_app

    settings = _settings()
    _port_free(host, port)
    typer.echo(
        f"pollen ingress on http://{host}:{port}/push/<provider>/<token>; the workers ask "
        "providers to push here when their POLLEN_INGRESS__PUBLIC_URL points at it",
        err=True,
    )
    # no access log: a push's path holds the job's token (the app logs pushes, redacted)
    uvicorn.run(build_app(settings), host=host, port=port, log_level="info", access_log=False,
                proxy_headers=True)  # fmt: skip


@command()
def demo(
    jobs: Annotated[
        int, typer.Option(metavar="N", min=0, help="Extra single-image jobs to add.")
    ] = 2,
    no_dashboard: Annotated[
        bool, typer.Option("--no-dashboard", help="Do not run the jobs dashboard beside it.")
    ] = False,
) -> None:
    """Run everything locally: Redis, simulator, a worker, a few jobs; show progress and results.

    The jobs dashboard runs beside them; on a terminal it stays up after the report until
    Ctrl+C.
    """
    with _extra("local"):
        from pollen.local.demo import run_demo

    raise typer.Exit(run_demo(extra_jobs=jobs, dashboard=not no_dashboard))


def _dashboard_credentials(basic_auth: str | None, no_auth: bool, settings: Settings) -> Any:
    """The dashboard's credentials from ``--basic-auth`` or the settings; None with
    ``--no-auth``. Missing or malformed ones are one line and exit 2."""
    from pollen.dashboard.security import Credentials
    from pollen.settings import parse_basic_auth

    configured = settings.dashboard.basic_auth
    given = basic_auth or (configured.get_secret_value() if configured else None)
    if no_auth:
        if basic_auth:
            _fail("give --basic-auth or --no-auth, not both", 2)
        return None
    if given is None:
        _fail(
            "the dashboard needs credentials: --basic-auth user:password or "
            "POLLEN_DASHBOARD__BASIC_AUTH (--no-auth to run without, for local use only)",
            2,
        )
    try:
        return Credentials(*parse_basic_auth(given))
    except ValueError as exc:
        _fail(f"--basic-auth: {exc}", 2)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@command()
def dashboard(
    port: Annotated[int | None, _opt("PORT", "Port (default 5556).", min=1, max=65535)] = None,
    host: Annotated[str | None, _opt("HOST", "Address (default 127.0.0.1).")] = None,
    basic_auth: Annotated[
        str | None,
        _opt("USER:PASSWORD", "Credentials to ask for (or POLLEN_DASHBOARD__BASIC_AUTH)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Run without credentials (local use only).")
    ] = False,
) -> None:
    """Serve the jobs dashboard: jobs, results, callbacks, an overview (needs credentials)."""
    with _extra("dashboard"):
        from pollen.dashboard.server import serve

    settings = _settings()
    credentials = _dashboard_credentials(basic_auth, no_auth, settings)
    where = host or settings.dashboard.host
    listen = port or settings.dashboard.port
    if credentials is None and not _loopback(where):
        _fail(f"--no-auth serves only on a loopback address (127.0.0.1, ::1), not {where}", 2)
    _reachable(settings)
    _port_free(where, listen)
    auth = "no auth" if credentials is None else f"basic auth, user {credentials.user}"
    typer.echo(f"pollen dashboard on http://{where}:{listen}/ ({auth}); Ctrl+C stops it", err=True)
    serve(settings, credentials, where, listen)


@command()
def health(
    local: Annotated[
        bool,
        typer.Option("--local", help="Probe this pod's worker (heartbeat file), not the fleet."),
    ] = False,
) -> None:
    """Exit non-zero when Redis is unreachable or no worker is alive."""
    from pollen.worker.health import run_checks

    checks = run_checks(_settings(), local=local)
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        typer.echo(f"{mark} {check.name}: {check.detail}")
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


@command()
def stats(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Jobs by state, in-flight and overdue jobs, the oldest in-flight job, dead letters."""
    from pollen.store.stats import collect

    with _client() as client:
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


AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(value: str | None, option: str) -> float | None:
    """A time given as an age (``90s``, ``30m``, ``1h``, ``2d``: that long ago) or an ISO 8601
    date-time (UTC unless it names a zone); a mistake is one line and exit 2."""
    from datetime import UTC, datetime

    if value is None:
        return None
    text = value.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in AGO:
        return time.time() - float(text[:-1]) * AGO[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"{option} {value!r}: give an age like 30m, 1h, 2d or an ISO 8601 date-time", 2)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--metadata {item!r}: give KEY=VALUE", 2)
        pairs[key] = value
    return pairs


@command()
def jobs(
    status: Annotated[list[str] | None, _opt("STATUS", "Only this status (repeatable).")] = None,
    provider: Annotated[
        list[str] | None, _opt("PROVIDER", "Only this provider (repeatable).")
    ] = None,
    since: Annotated[
        str | None, _opt("WHEN", "Created at or after: an age (30m, 1h, 2d) or ISO time.")
    ] = None,
    until: Annotated[
        str | None, _opt("WHEN", "Created at or before: an age or an ISO time.")
    ] = None,
    metadata: Annotated[
        list[str] | None, _opt("KEY=VALUE", "Metadata the job carries (repeatable).")
    ] = None,
    limit: Annotated[int, _opt("N", "Jobs per page (1-1000).")] = 20,
    cursor: Annotated[
        str | None, _opt("CURSOR", "Where the previous page ended (it prints the option).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List jobs, newest first, one page at a time; filters combine."""
    from pollen import InvalidJob

    since_at, until_at = _when(since, "--since"), _when(until, "--until")
    pairs = _pairs(metadata or [])
    with _client() as client:
        try:
            page = client.jobs(
                status=status, provider=provider, metadata=pairs or None, since=since_at,
                until=until_at, limit=limit, cursor=cursor,
            )  # fmt: skip
        except InvalidJob as exc:
            _fail(str(exc), 2)
    if as_json:
        _print_json(
            {
                "jobs": [_with_iso(job.model_dump(mode="json", exclude={"request"}))
                         for job in page.jobs],
                "next_cursor": page.next_cursor,
            }
        )  # fmt: skip
        return
    typer.echo(f"{'JOB':36}  {'STATUS':10}  {'PROVIDER':14}  {'CREATED (UTC)':20}  RESULTS  POLLS")
    for job in page.jobs:
        results = f"{len(job.results)}/{job.expected_results}"
        typer.echo(
            f"{job.id:36}  {job.status.value:10}  {job.provider:14}  {_iso(job.created_at):20}  "
            f"{results:7}  {job.polls}"
        )
    if not page.jobs:
        typer.echo("(no jobs)")
    if page.next_cursor:
        typer.echo(f"more: add --cursor {page.next_cursor}", err=True)


SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN")


def _shown(value: Any, secret: bool) -> str:
    """A setting's value as ``pollen config`` prints it: secrets masked, URLs redacted."""
    from pydantic import BaseModel, SecretStr

    def plain(item: Any) -> Any:
        if isinstance(item, SecretStr):
            item, secret_item = item.get_secret_value(), True
        else:
            secret_item = secret and isinstance(item, str)
        if secret_item:
            return "********" if item else ""
        if isinstance(item, str):
            return redact(item)
        if isinstance(item, list | tuple):
            return [plain(i) for i in item]
        if isinstance(item, dict):
            return {k: plain(v) for k, v in item.items()}
        if isinstance(item, BaseModel):
            return plain(item.model_dump())
        if isinstance(item, Path):
            return str(item)
        return item

    shown = plain(value)
    if shown is None:
        return "(not set)"
    return shown if isinstance(shown, str) else json.dumps(shown)


def _effective(settings: Settings, env: str) -> Any:
    """The value ``settings`` uses for ``env`` (the broker and result backend resolved)."""
    if env == "POLLEN_BROKER_URL":
        return settings.broker
    if env == "POLLEN_RESULT_BACKEND":
        return settings.backend
    value: Any = settings
    for name in env.removeprefix("POLLEN_").lower().split("__"):
        value = getattr(value, name)
    return value


@command()
def config() -> None:
    """Print every POLLEN_* setting with its effective value (secrets and URL passwords masked)."""
    import os

    from pollen.settings import environment_variables

    settings = _settings()
    fallbacks = {
        "POLLEN_BROKER_URL": "POLLEN_REDIS_URL",
        "POLLEN_RESULT_BACKEND": "POLLEN_BROKER_URL",
    }
    for env, _, description in environment_variables():
        secret = any(word in env for word in SECRET_WORDS)
        shown = _shown(_effective(settings, env), secret)
        if env not in os.environ:
            shown += f" (default: {fallbacks[env]})" if env in fallbacks else " (default)"
        typer.echo(f"{env}={shown}\n    {description}")


@command()
def schema(
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the checked-in schema is stale.")
    ] = False,
) -> None:
    """Write (or --check) the job-request JSON Schema from the pydantic models.

    It goes into the package and, in a source checkout, to schema/job-request.schema.json.
    """
    from pollen import schema as published

    if check:
        if stale := published.stale():
            _fail(f"stale (run `pollen schema`): {', '.join(map(str, stale))}")
        typer.echo("schema is current")
        return
    for path in published.write():
        typer.echo(f"wrote {path}")


def _usage_error(exc: ClickException) -> int:
    """A usage mistake as one line (Click's own is a usage line, a hint and a boxed message)."""
    message = " ".join(exc.format_message().split())
    if not message:  # no arguments at all: the help is already printed
        return exc.exit_code
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.secho(f"error: {message}{hint}", fg=typer.colors.RED, err=True)
    return exc.exit_code


def main() -> None:
    """Run the CLI. A mistake is one line on stderr: usage errors exit 2; an unreachable Redis,
    a refused store write or any other error of pollen's exit 1."""
    from pollen.errors import PollenError
    from pollen.store.connection import UNREACHABLE

    try:
        # "pollen" in usage lines also under `python -m pollen.cli`; a typer.Exit returns its code
        code = app(prog_name="pollen", standalone_mode=False)
    except ClickException as exc:
        code = _usage_error(exc)
    except typer.Abort:
        typer.secho("error: aborted", fg=typer.colors.RED, err=True)
        code = 1
    except UNREACHABLE as exc:
        typer.secho(f"error: Redis is unreachable: {exc}", fg=typer.colors.RED, err=True)
        code = 1
    except PollenError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        code = 1
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
