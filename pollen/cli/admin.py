"""The admin commands, for whoever runs pollen: health, stats, config, secret, schema."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pollen.cli.common import connected, fail, load_settings, print_json

if TYPE_CHECKING:
    from pollen.settings import Settings
    from pollen.store.admission import ProviderQueue


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


#: what ``pollen stats --by`` can break the counts down by
BREAKDOWNS = ("tenant",)


def stats(
    by: Annotated[str | None, typer.Option(metavar="WHAT", help="Break down by: tenant.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Jobs by state, in-flight and overdue jobs, the oldest in-flight job, dead letters, the
    slots of capped provider accounts; with --by tenant, each tenant's jobs and cost."""
    if by is not None and by not in BREAKDOWNS:
        fail(f"--by {by!r}: give one of {', '.join(BREAKDOWNS)}", 2)
    if by == "tenant":
        _tenant_stats(as_json)
        return
    import time

    from pollen.capacity import Capacity
    from pollen.store import stats as store_stats

    with connected() as client:
        current = store_stats.collect(client.store)
        caps = Capacity.of(client.settings).capped_caps()
        queues = client.store.run(store_stats.accounts(caps, time.time()))
    if as_json:
        print_json(current.as_dict() | {"accounts": [_queue_json(q) for q in queues]})
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
    for queue in queues:
        for account in queue.accounts:
            lowered = f" (lowered from {account.cap})" if account.lowered_to is not None else ""
            typer.echo(
                f"slots {queue.provider}/{account.account}: {account.in_use} of "
                f"{account.effective_cap} in use{lowered}"
            )
        typer.echo(f"waiting for {queue.provider}: {queue.total_waiting}")


def _queue_json(queue: ProviderQueue) -> dict[str, Any]:
    accounts = [asdict(a) | {"effective_cap": a.effective_cap} for a in queue.accounts]
    return {"provider": queue.provider, "accounts": accounts, "waiting": queue.waiting}


def _tenant_stats(as_json: bool) -> None:
    """``pollen stats --by tenant``."""
    from pollen.providers import REGISTRY
    from pollen.store import stats as store_stats

    with connected() as client:
        tenants = client.store.run(store_stats.tenants(sorted(REGISTRY)))
    if as_json:
        print_json({"tenants": [t.as_dict() for t in tenants]})
        return
    row = "{:32}  {:>8}  {:>8}  {:>8}  {:>9}  {}"
    typer.echo(row.format("TENANT", "QUEUED", "WAITING", "RUNNING", "FINISHED", "COST"))
    for t in tenants:
        cost = round(t.cost, 6)
        typer.echo(row.format(t.tenant, t.queued, t.waiting, t.running, t.finished, cost))
    if not tenants:
        typer.echo("(no jobs)")


SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN")


def _shown(value: Any, secret: bool) -> str:
    """A setting's value as ``pollen config`` prints it: secrets masked, URLs redacted."""
    from pydantic import BaseModel, SecretStr

    from pollen.settings import redact

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
        "POLLEN_RESULT_BACKEND": settings.backend_default,
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
