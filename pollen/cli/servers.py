"""The server commands, each running until stopped: worker, simulator, ingress, demo,
dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from pollen.cli.common import fail, load_settings, needs_extra, opt, require_redis
from pollen.install import pip_install

if TYPE_CHECKING:
    from pollen.settings import Settings


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


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", "-c", metavar="N", help="Threads (or processes) per worker (32)."
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            "-P",
            metavar="POOL",
            help="threads (default: the work is I/O; polls batch), prefork (time limits, "
            "crash isolation), solo; gevent or eventlet when installed.",
        ),
    ] = None,
    hostname: Annotated[str, typer.Option("--hostname", "-n", metavar="NAME")] = "pollen@%h",
    queues: Annotated[str | None, typer.Option("--queues", "-Q", metavar="QUEUES")] = None,
    loglevel: Annotated[str | None, typer.Option("--loglevel", "-l", metavar="LEVEL")] = None,
) -> None:
    """Run a Celery worker for pollen's queues (task events on unless POLLEN_TASK_EVENTS=false)."""
    if pool is not None and pool not in _pools():
        raise typer.BadParameter(f"{pool!r} is not one of {', '.join(_pools())}", param_hint="-P")
    _prepare_metrics_dir()
    with needs_extra("worker"):
        import pollen.worker.tasks  # noqa: F401  # what the worker runs needs the extra
        from pollen.worker import signing
        from pollen.worker.app import CONCURRENCY, POOL, build_worker_app

    settings = load_settings()
    storage_usable(settings)
    if reason := signing.refusal(settings.callbacks):
        fail(reason)  # before Celery's own start-up lines
    _broker_known(settings.broker)
    if settings.metrics_port:
        _port_free("0.0.0.0", settings.metrics_port, setting="POLLEN_METRICS_PORT")
    q = settings.queues
    names = queues or ",".join([q.submit, q.poll, q.callbacks])
    pool = pool or POOL
    size = CONCURRENCY if concurrency is None else concurrency
    # the app's configuration names the pool too: Celery reads "-P prefork" as "no -P" and runs
    # the configured pool instead
    celery = build_worker_app(settings, pool, size)
    quiet = ["--quiet"] if settings.log_format == "json" else []  # no banner among JSON lines
    events = ["-E"] if settings.task_events else []  # POLLEN_TASK_EVENTS=false: none
    run_celery(
        celery,
        [*quiet, "worker", "-Q", names, "-c", str(size), "-P", pool, "-n", hostname,
         "-l", loglevel or settings.log_level, *events, "--without-mingle", "--without-gossip"],
    )  # fmt: skip


def run_celery(app: Any, argv: list[str]) -> NoReturn:
    """Run Celery's command line on ``app`` and exit with its code, as ``celery -A`` would.

    ``Celery.start`` drops the code (its worker's ``Unrecoverable error`` would exit 0), so
    this hands the app to Celery's command the way ``start`` does and lets it exit.
    """
    from celery.bin.celery import celery as command

    command.params[0].default = app  # the --app option's value, as Celery.start sets it
    command.main(args=argv, prog_name="celery")  # standalone: exits with the command's code
    raise SystemExit(0)  # not reached: main exits


def storage_usable(settings: Settings) -> None:
    """Re-hosting to S3 needs boto3 (the storage extra): say so before the worker starts."""
    import importlib.util

    url = settings.storage.url or ""
    if url.startswith("s3://") and importlib.util.find_spec("boto3") is None:
        fail(f"POLLEN_STORAGE__URL={url} needs boto3: {pip_install('storage')}")


def _broker_known(url: str) -> None:
    """The broker URL's scheme must be a transport Celery has: one line, not kombu's
    traceback at start."""
    from kombu.transport import resolve_transport

    scheme = url.partition("://")[0]
    try:
        resolve_transport(scheme)
    except (KeyError, ImportError) as exc:
        fail(f"POLLEN_BROKER_URL: Celery has no broker transport {scheme!r} ({exc})")


def _port_free(host: str, port: int, setting: str = "") -> None:
    """A server command's address must be free: one line, not uvicorn's start-up failure."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            where = f" ({setting})" if setting else ""
            fail(f"cannot listen on {host}:{port}{where}: {exc.strerror or exc}")


def simulator(
    host: Annotated[str, opt("HOST", "Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, opt("PORT", "Port to listen on.")] = 8765,
    duration_min: Annotated[float, opt("SECONDS", "Shortest generation.", min=0)] = 1.0,
    duration_max: Annotated[float, opt("SECONDS", "Longest generation.", min=0)] = 3.0,
    rate_5xx: Annotated[float, opt("RATE", "Share of requests answered 5xx.", min=0, max=1)] = 0.0,
    rate_429: Annotated[float, opt("RATE", "Share answered 429.", min=0, max=1)] = 0.0,
    rate_malformed: Annotated[
        float, opt("RATE", "Share answered with a malformed body.", min=0, max=1)
    ] = 0.0,
    api_key: Annotated[str, opt("KEY", "The bearer token it accepts.")] = "sim-key",
    max_running: Annotated[
        int | None,
        opt("N", "Most tasks one key runs at once; creates past it answer as each provider "
            "does (Runware, useapi.net: 429; CometAPI: THROTTLED).", min=1),
    ] = None,
    key: Annotated[
        list[str] | None,
        opt("KEY[=CAP]", "Another accepted key (a provider account), with its own cap; "
            "repeatable."),
    ] = None,
) -> None:  # fmt: skip
    """Run the provider simulator (Runware, useapi.net and CometAPI dialects)."""
    with needs_extra("simulator"):
        from pollen.simulator import SimulatorConfig, run

    try:
        config = SimulatorConfig(
            api_key=api_key,
            duration_min=duration_min,
            duration_max=duration_max,
            rate_5xx=rate_5xx,
            rate_429=rate_429,
            rate_malformed=rate_malformed,
            max_running_per_key=max_running,
            keys=dict(_key_cap(each) for each in key or []),
        )
    except ValueError as exc:  # pydantic's ValidationError is one
        fail(f"invalid simulator options: {exc}", code=2)
    run(config, host, port)


def _key_cap(text: str) -> tuple[str, int | None]:
    """``KEY`` or ``KEY=CAP`` of ``--key``."""
    name, equals, cap = text.partition("=")
    if not name or (equals and not cap.isdigit()) or (equals and int(cap) < 1):
        fail(f"--key {text!r}: give KEY or KEY=CAP (CAP a whole number >= 1)", code=2)
    return name, int(cap) if equals else None


def ingress(
    host: Annotated[str, opt("HOST", "Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, opt("PORT", "Port to listen on.", min=1, max=65535)] = 8088,
) -> None:
    """Take provider pushes and poll the pushed jobs at once (set POLLEN_INGRESS__PUBLIC_URL
    on the workers to the URL providers reach this on)."""
    with needs_extra("ingress"):
        import uvicorn

        from pollen.ingress.app import build_app
    from pollen.settings import shutdown_grace

    settings = load_settings()
    _port_free(host, port)
    typer.echo(
        f"pollen ingress on http://{host}:{port}/push/<provider>/<token>; the workers ask "
        "providers to push here when their POLLEN_INGRESS__PUBLIC_URL points at it",
        err=True,
    )
    # no access log: a push's path holds the job's token (the app logs pushes, redacted)
    grace = shutdown_grace(settings.ingress.redis_timeout)
    uvicorn.run(build_app(settings), host=host, port=port, log_level="info", access_log=False,
                proxy_headers=True, timeout_graceful_shutdown=grace)  # fmt: skip


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
    with needs_extra("local"):
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
            fail("give --basic-auth or --no-auth, not both", 2)
        return None
    if given is None:
        fail(
            "the dashboard needs credentials: --basic-auth user:password or "
            "POLLEN_DASHBOARD__BASIC_AUTH (--no-auth to run without, for local use only)",
            2,
        )
    try:
        return Credentials(*parse_basic_auth(given))
    except ValueError as exc:
        fail(f"--basic-auth: {exc}", 2)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard(
    port: Annotated[int | None, opt("PORT", "Port (default 5556).", min=1, max=65535)] = None,
    host: Annotated[str | None, opt("HOST", "Address (default 127.0.0.1).")] = None,
    basic_auth: Annotated[
        str | None,
        opt("USER:PASSWORD", "Credentials to ask for (or POLLEN_DASHBOARD__BASIC_AUTH)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Run without credentials (local use only).")
    ] = False,
) -> None:
    """Serve the jobs dashboard: jobs, results, callbacks, an overview (needs credentials)."""
    with needs_extra("dashboard"):
        from pollen.dashboard.server import serve

    settings = load_settings()
    credentials = _dashboard_credentials(basic_auth, no_auth, settings)
    where = host or settings.dashboard.host
    listen = port or settings.dashboard.port
    if credentials is None and not _loopback(where):
        fail(f"--no-auth serves only on a loopback address (127.0.0.1, ::1), not {where}", 2)
    require_redis(settings)
    _port_free(where, listen)
    auth = "no auth" if credentials is None else f"basic auth, user {credentials.user}"
    typer.echo(f"pollen dashboard on http://{where}:{listen}/ ({auth}); Ctrl+C stops it", err=True)
    serve(settings, credentials, where, listen)
