"""The admin commands, for whoever runs pollen: health, stats, config, secret, schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pollen.cli.common import connected, fail, load_settings, print_json, redact

if TYPE_CHECKING:
    from pollen.settings import Settings


def health(
    local: Annotated[
        bool,
        typer.Option("--local", help="Probe this pod's worker (heartbeat file), not the fleet."),
    ] = False,
) -> None:
    """Exit non-zero when Redis is unreachable or no worker is alive."""
    from pollen.worker.health import run_checks

    checks = run_checks(load_settings(), local=local)
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        typer.echo(f"{mark} {check.name}: {check.detail}")
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def stats(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Jobs by state, in-flight and overdue jobs, the oldest in-flight job, dead letters."""
    from pollen.store.stats import collect

    with connected() as client:
        current = collect(client.store)
    if as_json:
        print_json(current.as_dict())
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


def config() -> None:
    """Print every POLLEN_* setting with its effective value (secrets and URL passwords masked)."""
    import os

    from pollen.settings import environment_variables

    settings = load_settings()
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


def secret() -> None:
    """Print a new webhook signing secret (whsec_...) for POLLEN_CALLBACKS__SECRETS."""
    from pollen.callbacks.webhooks import new_secret

    typer.echo(new_secret())


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
            fail(f"stale (run `pollen schema`): {', '.join(map(str, stale))}")
        typer.echo("schema is current")
        return
    for path in published.write():
        typer.echo(f"wrote {path}")
