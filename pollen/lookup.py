"""Name lookups with a time limit: ``getaddrinfo`` has none of its own.

A resolver that never answers holds ``getaddrinfo`` for its own timeouts, times its retries,
times the search domains. :class:`Lookup` runs each lookup of a name on a daemon thread and
waits for it at most the caller's timeout, so a delivery or a fetch gets its answer or a
:class:`LookupFailed` within its budget, never a stuck thread of its own.

Why threads and not a DNS library: ``getaddrinfo`` is what every other connection of the
process uses (``/etc/hosts``, nsswitch, the search domains and options of ``resolv.conf``), so
an answer here is the one the rest of the system would get; a library that speaks DNS itself
would skip some of those.

At most ``threads`` lookups run at once per :class:`Lookup`: a thread whose caller gave up
stays until the resolver itself gives up, and while every thread is taken a new lookup fails
at once instead of starting another one. An IP literal is looked up inline (no DNS).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

#: how many lookups one process runs at once (threads whose callers gave up count too)
MAX_LOOKUPS = 16

AddrInfo = list[tuple[Any, ...]]


class LookupFailed(OSError):
    """A lookup that did not answer within its timeout, or could not start (all threads busy).
    Callers turn it into a retry, like any other DNS failure (``socket.gaierror``)."""


class Lookup:
    """``getaddrinfo`` bounded in time and in threads (see the module docstring).

    ``getaddrinfo``: the function to call (default ``socket.getaddrinfo``, looked up at call
    time); tests inject one that blocks.
    """

    def __init__(self, threads: int = MAX_LOOKUPS, getaddrinfo: Any = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.threads = threads
        self._getaddrinfo = getaddrinfo
        self._lock = threading.Lock()
        self._running = 0

    def __call__(self, host: str, port: int, *, timeout: float) -> AddrInfo:
        """The TCP addresses of ``host``; LookupFailed after ``timeout`` seconds, other
        OSErrors (``socket.gaierror``) and UnicodeError as ``getaddrinfo`` raises them."""
        if _is_ip(host):
            return self._call(host, port)
        with self._lock:
            if self._running >= self.threads:
                raise LookupFailed(
                    f"DNS lookup of {host} not started: {self.threads} lookups are already "
                    "waiting for a resolver that does not answer"
                )
            self._running += 1
        answer: Future[AddrInfo] = Future()
        thread = threading.Thread(
            target=self._run, args=(answer, host, port), name="pollen-lookup", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # the process may start no more threads
            with self._lock:
                self._running -= 1
            raise LookupFailed(f"DNS lookup of {host} not started: {exc}") from exc
        try:
            return answer.result(timeout)
        except FutureTimeout:
            raise LookupFailed(f"DNS lookup of {host} did not answer within {timeout:g}s") from None

    def running(self) -> int:
        """How many lookup threads are running now."""
        with self._lock:
            return self._running

    def _run(self, answer: Future[AddrInfo], host: str, port: int) -> None:
        try:
            answer.set_result(self._call(host, port))
        except BaseException as exc:  # handed to the caller, if it still waits
            answer.set_exception(exc)
        finally:
            with self._lock:
                self._running -= 1

    def _call(self, host: str, port: int) -> AddrInfo:
        getaddrinfo = self._getaddrinfo or socket.getaddrinfo
        infos: AddrInfo = getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        return infos


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
