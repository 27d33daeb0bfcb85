"""DNS lookups bounded by the attempt's timeout (:mod:`pollen.lookup`), in a delivery attempt
and a result fetch, against real local receivers.

The resolver is injected here: a ``getaddrinfo`` that answers after a delay, or blocks until
the test lets it go. The fault suite runs a real worker whose resolver never answers
(``tests/faults/test_dns.py``).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pollen.addresses import AddressPolicy
from pollen.callbacks.delivery import Attempt, post
from pollen.errors import CopyUnavailable
from pollen.lookup import Lookup, LookupFailed
from pollen.storage.fetch import fetch
from tests.test_delivery import BODY, HEADERS, Receiver

#: how much later than its timeout an attempt may end on a loaded machine, seconds
MARGIN = 0.5
HOST = "hooks.example.com"


class Resolver:
    """A ``getaddrinfo`` that answers 127.0.0.1 after ``delay`` seconds, or blocks until
    :meth:`release` when ``delay`` is None; it counts the lookups that are under way."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.released = threading.Event()
        self.waiting = 0
        self.lock = threading.Lock()

    def __call__(self, host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        with self.lock:
            self.waiting += 1
        try:
            self.released.wait(self.delay)
        finally:
            with self.lock:
                self.waiting -= 1
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def never() -> Iterator[Resolver]:
    """A resolver that does not answer until the test ends."""
    resolver = Resolver(None)
    yield resolver
    resolver.release()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False) as client:
        yield client


def policy(resolver: Callable[..., Any], threads: int = 4) -> AddressPolicy:
    return AddressPolicy(["127.0.0.0/8"], lookup=Lookup(threads, getaddrinfo=resolver))


def timed_post(
    http: httpx.Client, url: str, timeout: float, resolver: Resolver
) -> tuple[Attempt, float]:
    """One delivery attempt through ``resolver``, and how long it took."""
    started = time.monotonic()
    attempt = post(http, url, BODY, HEADERS, timeout=timeout, policy=policy(resolver))
    return attempt, time.monotonic() - started


def test_a_lookup_that_answers_within_its_timeout_is_delivered(http: httpx.Client) -> None:
    with Receiver() as receiver:
        url = f"http://{HOST}:{receiver.port}/cb"
        attempt, elapsed = timed_post(http, url, 1.0, Resolver(0.4))
    assert attempt.outcome == "delivered", attempt
    assert 0.4 <= elapsed < 1.0
    assert receiver.requests[0]["headers"]["host"] == f"{HOST}:{receiver.port}"


def test_a_lookup_that_never_answers_ends_the_attempt_at_its_timeout(
    http: httpx.Client, never: Resolver
) -> None:
    with Receiver() as receiver:
        url = f"http://{HOST}:{receiver.port}/cb"
        attempt, elapsed = timed_post(http, url, 0.6, never)
    assert attempt.outcome == "retry"
    assert attempt.error == f"DNS lookup of {HOST} did not answer within 0.6s"
    assert 0.6 <= elapsed < 0.6 + MARGIN
    assert 600 <= attempt.latency_ms < (0.6 + MARGIN) * 1000
    assert receiver.connections == 0


def test_lookup_and_request_share_one_timeout(http: httpx.Client) -> None:
    """A slow lookup leaves the request only the rest: the attempt ends at its timeout, not
    at the lookup's time plus a whole timeout."""

    def stall(handler: Any) -> None:
        receiver.release.wait(10)

    with Receiver(respond=stall) as receiver:
        url = f"http://{HOST}:{receiver.port}/cb"
        attempt, elapsed = timed_post(http, url, 1.0, Resolver(0.5))
    assert attempt.outcome == "retry"
    assert attempt.error == "timed out after 1s (ReadTimeout)"
    assert 1.0 <= elapsed < 1.0 + MARGIN
    assert len(receiver.requests) == 1


def test_a_full_pool_fails_at_once_and_frees_its_threads_when_dns_answers(
    never: Resolver,
) -> None:
    lookup = Lookup(2, getaddrinfo=never)
    threads = threading.active_count()
    for _ in range(2):
        with pytest.raises(LookupFailed, match=r"did not answer within 0\.1s"):
            lookup(HOST, 80, timeout=0.1)
    assert lookup.running() == 2 and never.waiting == 2
    started = time.monotonic()
    with pytest.raises(LookupFailed, match="not started: 2 lookups are already waiting"):
        lookup(HOST, 80, timeout=5.0)
    assert time.monotonic() - started < 0.1  # refused at once, not after its timeout
    assert threading.active_count() == threads + 2  # no third thread
    never.release()
    deadline = time.monotonic() + 5
    while lookup.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lookup.running() == 0
    assert lookup(HOST, 80, timeout=1.0)[0][4] == ("127.0.0.1", 80)  # a slot again


def test_lookup_errors_and_ip_literals() -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(socket.gaierror, match="not known"):
        Lookup(getaddrinfo=failing)("nowhere.example.com", 80, timeout=1.0)
    blocked = Lookup(1, getaddrinfo=Resolver(None))
    with pytest.raises(LookupFailed):
        blocked(HOST, 80, timeout=0.05)
    # an IP literal needs no DNS and no thread: it is answered with every thread busy
    assert Lookup(1)("127.0.0.1", 80, timeout=1.0)[0][4] == ("127.0.0.1", 80)
    with pytest.raises(ValueError, match="at least 1"):
        Lookup(0)


def test_a_result_fetch_whose_lookup_never_answers_is_retried_later(
    http: httpx.Client, never: Resolver
) -> None:
    url = f"http://{HOST}:9/file.png"
    started = time.monotonic()
    with pytest.raises(CopyUnavailable, match=rf"DNS lookup of {HOST} did not answer within 0\.5s"):
        fetch(http, url, io.BytesIO(), policy=policy(never), max_bytes=1024, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 0.5 + MARGIN
