"""What the command modules share: one-line failures, the settings, a producer client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from pollen.install import pip_install

if TYPE_CHECKING:
    from pollen.client import Pollen
    from pollen.settings import Settings

T = TypeVar("T")


def opt(metavar: str, help: str, **kwargs: Any) -> Any:
    return typer.Option(metavar=metavar, help=help, **kwargs)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    """The settings; an invalid environment is one line naming each bad variable."""

    from pollen.errors import InvalidSettings
    from pollen.settings import load

    try:
        return load()
    except InvalidSettings as exc:
        fail(str(exc))


@contextmanager
def connected() -> Iterator[Pollen]:
    """A producer client, after a quick PING: an unreachable Redis is one clear line within
    about a second, before the client would try it for its whole window (5 s by default)."""
    from pollen import Pollen

    settings = load_settings()
    require_redis(settings)
    with Pollen(settings) as client:
        yield client


def require_redis(settings: Settings) -> None:
    """Exit 1 with one line unless the store answers a PING within seconds."""
    from pollen.settings import redact
    from pollen.store.connection import master
    from pollen.worker.health import check_reachable

    check = check_reachable(settings.redis_url, "redis", master(settings))
    if not check.ok:
        reason = check.detail.removeprefix("unreachable: ")
        fail(f"Redis at {redact(settings.redis_url)} is unreachable ({reason})")


def about_a_job(use: Callable[[Pollen], T]) -> T:
    """Run ``use`` with a producer client; an unknown job id is a clear error and exit 1."""
    from pollen import JobNotFound

    with connected() as client:
        try:
            return use(client)
        except JobNotFound as exc:
            fail(str(exc))


@contextmanager
def needs_extra(name: str) -> Iterator[None]:
    """Imports of a command that needs pollen's ``name`` extra: a missing package is a one-line
    hint, not a traceback (``pip install pollen-jobs`` is the producer only)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.partition(".")[0] == "pollen":
            raise
        fail(f"this command needs {exc.name.partition('.')[0]}: {pip_install(name)}")
