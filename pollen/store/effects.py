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

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis

from pollen.errors import StoreUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class Cmd:
    """One Redis command: a method of redis-py's client (so replies get redis-py's types).
    ``tolerant``: an error reply comes back as the reply (a ``redis.ResponseError``) instead of
    failing the batch, for a command whose refusal the operation can live with."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    tolerant: bool = False


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


def tolerant(method: str, *args: Any, **kwargs: Any) -> Cmd:
    """A command whose error reply is returned, not raised (:class:`Cmd`)."""
    return Cmd(method, args, kwargs, tolerant=True)


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
    method = getattr(client, item.method)
    if not item.tolerant:
        return method(*item.args, **item.kwargs)
    try:
        reply = method(*item.args, **item.kwargs)
    except redis.ReadOnlyError:
        raise
    except redis.ResponseError as exc:  # a synchronous client's refusal
        return exc
    return _tolerated(reply) if inspect.isawaitable(reply) else reply


async def _tolerated(reply: Awaitable[Any]) -> Any:
    """An asyncio client's reply to a tolerant command: its error reply as the reply."""
    try:
        return await reply
    except redis.ReadOnlyError:
        raise
    except redis.ResponseError as exc:
        return exc


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


#: the longest a batch is sent again while Redis answers READONLY (a managed Redis whose DNS
#: name still leads to the old primary, now a replica), unless the client's own window is shorter
READONLY_WINDOW = 15.0


def _replies(batch: Batch, replies: list[Any]) -> list[Any]:
    """The replies of a batch run with ``raise_on_error=False``: the first error reply of a
    command that is not :attr:`Cmd.tolerant` is raised (as redis-py would), the others kept."""
    for item, reply in zip(batch, replies, strict=True):
        if isinstance(reply, Exception) and not (
            isinstance(item, Cmd) and item.tolerant and not isinstance(reply, redis.ReadOnlyError)
        ):
            raise reply
    return replies


def _readonly_delays(client: Any) -> Iterator[float]:
    """The pauses before each new attempt of a batch refused with READONLY, within
    :data:`READONLY_WINDOW` or the client's own window (a producer's is shorter)."""
    window = getattr(client.get_retry(), "window", None)
    budget = min(READONLY_WINDOW, window.seconds) if window is not None else READONLY_WINDOW
    until = time.monotonic() + budget
    failures = 0
    while (left := until - time.monotonic()) > 0:
        yield min(0.05 * 2.0 ** min(failures, 5), 1.0, left)
        failures += 1


def _execute_once(client: Any, scripts: Mapping[str, Any], batch: Batch) -> list[Any]:
    if len(batch) == 1:
        return [_one(client, scripts, batch[0])]
    pipe = client.pipeline(transaction=False)
    _queue(pipe, scripts, batch)
    return _replies(batch, list(pipe.execute(raise_on_error=False)))


def execute(client: Any, scripts: Mapping[str, Any], batch: Batch) -> list[Any]:
    """One batch in one round trip on a ``redis.Redis`` client; the replies.

    A batch refused with READONLY ran no write (a replica refuses every one): the client's
    connections are dropped and the whole batch is sent again on new ones, which resolve the
    address again and load the scripts on the server they reach (redis-py's own retry would
    resend a pipeline without its scripts to a new primary that has none)."""
    if not batch:
        return []
    delays = _readonly_delays(client)
    while True:
        try:
            return _execute_once(client, scripts, batch)
        except redis.ReadOnlyError:
            delay = next(delays, None)
            if delay is None:
                raise
            client.connection_pool.disconnect()
            time.sleep(delay)


async def _aexecute_once(client: Any, scripts: Mapping[str, Any], batch: Batch) -> list[Any]:
    if len(batch) == 1:
        return [await _one(client, scripts, batch[0])]
    async with client.pipeline(transaction=False) as pipe:
        _queue(pipe, scripts, batch)
        return _replies(batch, list(await pipe.execute(raise_on_error=False)))


async def aexecute(client: Any, scripts: Mapping[str, Any], batch: Batch) -> list[Any]:
    """:func:`execute` on a ``redis.asyncio.Redis`` client."""
    if not batch:
        return []
    delays = _readonly_delays(client)
    while True:
        try:
            return await _aexecute_once(client, scripts, batch)
        except redis.ReadOnlyError:
            delay = next(delays, None)
            if delay is None:
                raise
            await client.connection_pool.disconnect()
            await asyncio.sleep(delay)


@contextmanager
def guard() -> Iterator[None]:
    """Map Redis failures onto pollen's error tree (a full Redis is a clear error)."""
    try:
        yield
    except redis.ResponseError as exc:
        if "OOM" in str(exc) or "READONLY" in str(exc):
            raise StoreUnavailable(f"Redis refused the write: {exc}") from exc
        if str(exc).startswith("unknown command"):  # a Sentinel's port, or not a Redis
            raise StoreUnavailable(
                f"the server does not run Redis commands ({exc}); if it is a Sentinel, use a "
                "sentinel:// URL and POLLEN_SENTINEL_MASTER"
            ) from exc
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # redis-py's "No master found for 'm' : <every Sentinel client's repr>": the first part
        raise StoreUnavailable(f"Redis is unreachable: {str(exc).split(' : <', 1)[0]}") from exc


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
