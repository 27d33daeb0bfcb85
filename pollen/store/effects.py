"""Store operations as plain generators, run by a synchronous or an asyncio Redis client.

Every read and write of the store is written once, with no I/O: an operation is a generator
that yields a batch of Redis commands (:class:`Cmd`) and script calls (:class:`Lua`),
receives their replies (one round trip per batch), and returns its answer. :func:`run` drives
it on ``redis.Redis`` (:class:`pollen.store.sync.Store`), :func:`arun` on
``redis.asyncio.Redis`` (:class:`pollen.store.aio.AsyncStore`): two thin I/O faces, one
implementation of what is read, written and concluded (the approach of sans-I/O libraries
such as h11, and of httpx's shared sync/async models). This is the one way the store calls
its Lua scripts.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis

from pollen.errors import StoreUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class Cmd:
    """One Redis command: a method of redis-py's client (so replies get redis-py's types)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lua:
    """One call of a store script (``pollen/store/lua/<name>.lua``)."""

    name: str
    keys: list[str]
    args: list[Any]


Batch = list[Cmd | Lua]
#: an operation: yields batches, receives each batch's replies, returns its answer
Op = Generator[Batch, list[Any], T]


class Runner(Protocol):
    """What runs an operation on one client (:meth:`pollen.store.sync.Store.run`)."""

    def __call__(self, op: Op[T]) -> T: ...


def cmd(method: str, *args: Any, **kwargs: Any) -> Cmd:
    return Cmd(method, args, kwargs)


def single(item: Cmd | Lua) -> Op[Any]:
    """One command or script call as an operation: its reply."""
    [reply] = yield [item]
    return reply


def dumps(value: Any) -> str:
    """Canonical JSON, as the store keeps non-string values."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def flatten(fields: dict[str, Any]) -> list[str]:
    """A hash's fields as the flat list Redis takes; non-strings as canonical JSON."""
    flat: list[str] = []
    for name, value in fields.items():
        flat += [name, value if isinstance(value, str) else dumps(value)]
    return flat


def pairs(flat: list[Any]) -> dict[str, Any]:
    """A flat ``[name, value, ...]`` list (as a script returns a hash) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _one(client: Any, scripts: Mapping[str, Any], item: Cmd | Lua) -> Any:
    """A batch of one goes straight to the client: one round trip, no pipeline (a script
    by its sha, loaded on first use), which keeps the per-batch poll path as lean as a direct
    call."""
    if isinstance(item, Lua):
        return scripts[item.name](keys=item.keys, args=item.args, client=client)
    return getattr(client, item.method)(*item.args, **item.kwargs)


def _queue(pipe: Any, scripts: Mapping[str, Any], batch: Batch) -> None:
    for item in batch:
        if isinstance(item, Lua):
            # what redis-py's Script does with a pipeline, for sync and asyncio alike: the
            # pipeline loads the script on first use, then calls it by its sha
            script = scripts[item.name]
            pipe.scripts.add(script)
            pipe.evalsha(script.sha, len(item.keys), *item.keys, *item.args)
        else:
            getattr(pipe, item.method)(*item.args, **item.kwargs)


def execute(client: Any, scripts: Mapping[str, Any], batch: Batch) -> list[Any]:
    """One batch in one round trip on a ``redis.Redis`` client; the replies."""
    if not batch:
        return []
    if len(batch) == 1:
        return [_one(client, scripts, batch[0])]
    pipe = client.pipeline(transaction=False)
    _queue(pipe, scripts, batch)
    return list(pipe.execute())


async def aexecute(client: Any, scripts: Mapping[str, Any], batch: Batch) -> list[Any]:
    """:func:`execute` on a ``redis.asyncio.Redis`` client."""
    if not batch:
        return []
    if len(batch) == 1:
        return [await _one(client, scripts, batch[0])]
    async with client.pipeline(transaction=False) as pipe:
        _queue(pipe, scripts, batch)
        return list(await pipe.execute())


@contextmanager
def guard() -> Iterator[None]:
    """Map Redis failures onto pollen's error tree (a full Redis is a clear error)."""
    try:
        yield
    except redis.ResponseError as exc:
        if "OOM" in str(exc) or "READONLY" in str(exc):
            raise StoreUnavailable(f"Redis refused the write: {exc}") from exc
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc


def run(client: Any, scripts: Mapping[str, Any], op: Op[T]) -> T:
    """Drive ``op`` on a ``redis.Redis`` client (``scripts``: its registered store scripts)."""
    try:
        batch = next(op)
        while True:
            batch = op.send(execute(client, scripts, batch))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def perform(client: Any, scripts: Mapping[str, Any], op: Op[T]) -> T:
    """:func:`run` with Redis failures mapped onto pollen's error tree (:func:`guard`): what
    each synchronous face of the store (the job store, the outbox, the copies) runs."""
    with guard():
        return run(client, scripts, op)


async def arun(client: Any, scripts: Mapping[str, Any], op: Op[T]) -> T:
    """Drive ``op`` on a ``redis.asyncio.Redis`` client (``scripts``: its async scripts)."""
    try:
        batch = next(op)
        while True:
            batch = op.send(await aexecute(client, scripts, batch))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
