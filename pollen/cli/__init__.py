"""The ``pollen`` command line: run workers, the simulator and the demo; submit and inspect jobs.

The commands live by audience: :mod:`pollen.cli.jobs` (submit and inspect jobs),
:mod:`pollen.cli.servers` (worker, simulator, ingress, demo, dashboard) and
:mod:`pollen.cli.admin` (health, stats, config, schema). This module lists them in the order the
help shows them, and makes every mistake one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from pollen.cli import admin, jobs, servers

# Typer hands these overrides a Context and Parameters of the click it vendors and does not
# export (``typer.Context`` is a subclass): they are typed ``Any`` here.


def _plain_params(params: list[Any]) -> list[Any]:
    """Flags show no ``<bool>`` type in help (they take no value), nor arguments a ``<str>``
    beside their name (``JOB``, ``PAYLOAD`` say what they take)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, TyperArgument):
            param.display_type_rich = _no_type  # type: ignore[method-assign]
    return params


def _no_type(ctx: Any) -> None:
    return None


class _Command(TyperCommand):
    """Help that reads naturally: ``pollen status JOB`` (not ``{job_id}``), flags without a type."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces += param.get_usage_pieces(ctx)
        return pieces


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


app = typer.Typer(
    help="pollen: submit long-running generative-AI jobs, poll them, keep the results.",
    no_args_is_help=True,
    add_completion=False,
    cls=_Group,
)
callbacks = typer.Typer(help="Inspect and re-send a job's callback deliveries.", cls=_Group)

#: (the app or a group, the command's name, its function), in the order ``--help`` lists them
COMMANDS: list[tuple[typer.Typer, str, Callable[..., None]]] = [
    (app, "worker", servers.worker),
    (app, "submit", jobs.submit),
    (app, "wait", jobs.wait_for),
    (app, "status", jobs.status),
    (app, "cancel", jobs.cancel),
    (app, "result", jobs.result),
    (app, "details", jobs.details),
    (app, "simulator", servers.simulator),
    (app, "ingress", servers.ingress),
    (app, "demo", servers.demo),
    (app, "dashboard", servers.dashboard),
    (app, "health", admin.health),
    (app, "stats", admin.stats),
    (app, "jobs", jobs.jobs),
    (app, "rejected", jobs.rejected),
    (app, "config", admin.config),
    (app, "secret", admin.secret),
    (app, "schema", admin.schema),
    (callbacks, "list", jobs.callbacks_list),
    (callbacks, "replay", jobs.callbacks_replay),
]
for where, name, function in COMMANDS:
    where.command(name, cls=_Command)(function)
app.add_typer(callbacks, name="callbacks")


def _usage_error(exc: typer.TyperException) -> int:
    """A usage mistake as one line (Click's own is a usage line, a hint and a boxed message)."""
    message = " ".join(exc.format_message().split())
    if not message:  # no arguments at all: the help is already printed
        return exc.exit_code
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.secho(f"error: {message}{hint}", fg=typer.colors.RED, err=True)
    return exc.exit_code


def _reason(exc: Exception) -> str:
    """``exc`` in one line; when the store's Sentinels name no master (raised, or the cause
    of a StoreUnavailable), which Sentinels and master, not redis-py's kilobytes of reprs."""
    from pollen.settings import get_settings
    from pollen.store.connection import NO_MASTER, reason

    cause = exc if isinstance(exc, NO_MASTER) else exc.__cause__
    if not isinstance(cause, NO_MASTER):
        return str(exc)
    prefix = "" if cause is exc else "Redis is unreachable: "
    return prefix + reason(cause, get_settings().redis_url)


def main() -> None:
    """Run the CLI. A mistake is one line on stderr: usage errors exit 2; an unreachable Redis,
    a refused store write or any other error of pollen's exit 1."""
    from pollen.errors import PollenError
    from pollen.store.connection import UNREACHABLE

    try:
        # "pollen" in usage lines also under `python -m pollen.cli`; a typer.Exit returns its code
        code = app(prog_name="pollen", standalone_mode=False)
    except typer.TyperException as exc:  # what typer's (vendored) click raises: usage errors
        code = _usage_error(exc)
    except typer.Abort:
        typer.secho("error: aborted", fg=typer.colors.RED, err=True)
        code = 1
    except UNREACHABLE as exc:
        typer.secho(f"error: Redis is unreachable: {_reason(exc)}", fg=typer.colors.RED, err=True)
        code = 1
    except PollenError as exc:
        typer.secho(f"error: {_reason(exc)}", fg=typer.colors.RED, err=True)
        code = 1
    raise SystemExit(code if isinstance(code, int) else 0)
