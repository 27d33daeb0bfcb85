"""Reliable fetch on a Redis broker: no message is ever only in a worker's memory.

kombu's Redis transport takes a message with ``BRPOP`` and writes it into its ``unacked`` hash
afterwards, from the worker's memory. A worker SIGKILLed in between (the reply read, or still
in the socket) loses the message: Redis no longer has it, and with the plain ``send_task``
contract no job record names it either. Under a burst this is a window of a fraction of a
millisecond per message, and kills during a burst hit it.

Here the consuming channel takes a message with one Lua script
(``pollen/store/lua/take_message.lua``) that pops it and writes kombu's own unacked record in
the same step; kombu's QoS then skips its own write of that record (one round trip per
message fewer than kombu's ``BRPOP`` + ``MULTI``). A message is always in a queue or in the
unacked hash, where pollen's claims and orphan scan (:mod:`pollen.store.orphans`) and kombu's
visibility-timeout restore find it.

A script cannot block, so an idle channel waits between takes with
``BLMOVE q q RIGHT RIGHT`` on the submit queue (:data:`WAIT_SECONDS` at most): it moves a
message from the queue's tail back onto its tail, so it never removes one, yet it returns the
moment a message arrives. The channel then takes with the script again. Messages on the other
queues (polls, deliveries: scheduled well ahead, or resumed by the reconciler) are taken within
:data:`WAIT_SECONDS`. Everything else runs kombu's code unchanged; a channel with a
``global_keyprefix`` keeps kombu's ``BRPOP``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from pollen.store.scripts import source

log = logging.getLogger(__name__)

#: the script that takes a message, in ``pollen/store/lua/``
SCRIPT = "take_message"
#: the longest an idle channel waits before it looks at every queue again (seconds)
WAIT_SECONDS = 0.1
_MARK = "_pollen_reliable_fetch"
_TAKE, _WAIT, _SLEEP = "EVALSHA", "BLMOVE", "BLPOP"
_SLEEP_KEY = "pollen:fetch:never"  #: a key nothing writes: BLPOP on it is a pause


class _Script:
    text = ""  # read by install(), never at import
    sha = ""


class _Wake:
    """The queue an idle channel waits on (the submit queue, set by the worker at start)."""

    queue: str | None = None


def wake_on(queue: str) -> None:
    """Make idle channels wake the moment ``queue`` gets a message."""
    _Wake.queue = queue


def _wake_key(channel: Any, keys: list[str]) -> str:
    if _Wake.queue is not None:
        key = channel._q_for_pri(_Wake.queue, 0)
        if key in keys:
            return str(key)
    return keys[0]


def _start(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def brpop_start(channel: Any, timeout: float | None = None) -> Any:
        if channel.global_keyprefix or getattr(channel, "_pollen_off", False):
            return original(channel, timeout)
        if not getattr(channel.handlers.get("BRPOP"), _MARK, False):
            # a channel made before install() keeps kombu's reader in its handlers: point it
            # at the patched one, which reads what this sends
            channel.handlers["BRPOP"] = channel._brpop_read
        queues = channel._queue_cycle.consume(len(channel.active_queues))
        if not queues:
            return None
        keys = [channel._q_for_pri(q, pri) for pri in channel.priority_steps for q in queues]
        connection: Any = channel.client.connection
        channel._in_poll = connection
        channel._brpop_sent_at = time.monotonic()
        if getattr(channel, "_pollen_idle", False):
            channel._pollen_sent = _WAIT
            if getattr(channel, "_pollen_sleep", False):  # no BLMOVE (Redis < 6.2): a pause
                connection.send_command(_SLEEP, _SLEEP_KEY, WAIT_SECONDS)
            else:
                wake = _wake_key(channel, keys)
                connection.send_command(_WAIT, wake, wake, "RIGHT", "RIGHT", WAIT_SECONDS)
            return None
        unacked = [channel.unacked_key, channel.unacked_index_key]
        args = [len(keys) + 2, *unacked, *keys, time.time()]
        loaded = getattr(channel, "_pollen_loaded_on", None) is connection
        if loaded:
            channel._pollen_sent = _TAKE
            connection.send_command(_TAKE, _Script.sha, *args)
        else:  # a new connection (or a flushed script cache): send the text once
            channel._pollen_sent = "EVAL"
            channel._pollen_loaded_on = connection
            connection.send_command("EVAL", _Script.text, *args)
        return None

    setattr(brpop_start, _MARK, True)
    return brpop_start


def _read(original: Callable[..., Any]) -> Callable[..., Any]:
    from queue import Empty

    from kombu.utils.json import loads
    from redis.exceptions import NoScriptError, ResponseError

    @functools.wraps(original)
    def brpop_read(channel: Any, **options: Any) -> Any:
        sent = getattr(channel, "_pollen_sent", None)
        if sent is None:
            return original(channel, **options)
        try:
            try:
                reply = channel.client.parse_response(channel.client.connection, sent, **options)
            except channel.connection_errors:
                channel.client.connection.disconnect()
                raise
            except NoScriptError:  # the server lost its script cache: send the text next time
                channel._pollen_loaded_on = None
                raise Empty() from None
            except ResponseError as exc:
                _refused(channel, sent, exc)
                raise Empty() from None
            if sent == _WAIT:  # woken (or timed out): take with the script next
                channel._pollen_idle = False
                raise Empty()
            if not reply:
                channel._pollen_idle = True
                raise Empty()
            channel._pollen_idle = False
            key, item, tag = reply
            if tag:
                _recorded(channel.qos).add(_text(tag))
            dest = _text(key).rsplit(channel.sep, 1)[0]
            channel._queue_cycle.rotate(dest)
            channel.connection._deliver(loads(_text(item)), dest)  # type: ignore[no-untyped-call]
            if tag:
                _unrecord(channel.qos, _text(tag))
            return True
        finally:
            channel._pollen_sent = None
            channel._in_poll = None
            channel._flush_brpop_reauth()

    setattr(brpop_read, _MARK, True)
    return brpop_read


def _refused(channel: Any, sent: str, exc: Exception) -> None:
    """The server refused ``BLMOVE`` (Redis < 6.2): an idle channel pauses instead of waiting
    on the submit queue; refused that pause too (Redis < 6.0 has no fractional timeout), the
    channel takes with kombu's ``BRPOP`` (each logged once per channel). A refused script is
    not caught: kombu needs scripts on its broker anyway (its restore's lock is one)."""
    if sent != _WAIT:
        raise exc
    channel._pollen_idle = False
    if not getattr(channel, "_pollen_sleep", False):
        channel._pollen_sleep = True
        log.warning("the broker refused BLMOVE (%s): idle workers look every %ss", exc,
                    WAIT_SECONDS)  # fmt: skip
        return
    channel._pollen_off = True
    log.warning("the broker refused BLPOP too (%s): taking with kombu's BRPOP", exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _recorded(qos: Any) -> set[str]:
    """Delivery tags the script already recorded in the unacked hash (kombu's append skips
    its own write for them)."""
    tags: set[str] | None = getattr(qos, "_pollen_recorded", None)
    if tags is None:
        tags = qos._pollen_recorded = set()
    return tags


def _unrecord(qos: Any, tag: str) -> None:
    """Remove the script's record of a message its consumer took without acknowledgements
    (``no_ack``: kombu's reply consumers, as a worker's mingle or a control call in it):
    kombu's QoS never saw it, nothing would acknowledge it, and kombu would deliver it again
    after the visibility timeout."""
    tags = _recorded(qos)
    if tag in tags:
        tags.discard(tag)
        qos._remove_from_indices(tag).execute()


def _append(original: Callable[..., Any]) -> Callable[..., Any]:
    from kombu.transport import virtual

    @functools.wraps(original)
    def append(qos: Any, message: Any, delivery_tag: Any) -> None:
        tags = getattr(qos, "_pollen_recorded", None)
        if tags and delivery_tag in tags:
            tags.discard(delivery_tag)
            virtual.QoS.append(qos, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        original(qos, message, delivery_tag)

    setattr(append, _MARK, True)
    return append


def install() -> bool:
    """Patch kombu's Redis channel to take messages with the script (once); returns whether it
    is patched."""
    from kombu.transport import redis as kombu_redis

    channel_class, qos_class = kombu_redis.Channel, kombu_redis.QoS
    if getattr(channel_class._brpop_start, _MARK, False):
        return True
    _Script.text = source(SCRIPT)
    _Script.sha = hashlib.sha1(_Script.text.encode()).hexdigest()
    channel_class._brpop_start = _start(channel_class._brpop_start)  # type: ignore[method-assign]
    channel_class._brpop_read = _read(channel_class._brpop_read)  # type: ignore[method-assign]
    qos_class.append = _append(qos_class.append)  # type: ignore[method-assign]
    return True
