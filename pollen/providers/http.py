"""Sending one provider request and mapping transport failures onto pollen's error tree.

This is the only place where httpx exceptions and generic HTTP statuses (429, 5xx) become
pollen errors; dialects map their own 4xx bodies in ``parse_*``.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from pollen.errors import (
    ProviderNotConfigured,
    ProviderProtocolError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)

MAX_RETRY_AFTER = 3600.0

#: ``(provider, kind, seconds)`` of every request :func:`send` made
Observer = Callable[[str, str, float], None]


def _unobserved(provider: str, kind: str, seconds: float) -> None:
    pass


_observer: list[Observer] = [_unobserved]


def observe_requests(observer: Observer) -> None:
    """Report every provider request's response time to ``observer`` (the worker installs its
    Prometheus histogram here, so producers never import the metrics)."""
    _observer[0] = observer


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when - (now if now is not None else time.time())
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _unsendable(exc: httpx.LocalProtocolError) -> str:
    """What went wrong, without the offending value (a header value may be an API key)."""
    text = str(exc)
    if "header" in text.lower():
        return (
            "the request has a header value HTTP does not allow (an empty API key, or one with "
            "spaces or a line break?); not sent, not retried"
        )
    return f"the request could not be sent as built ({text.split(' b', 1)[0]}); not retried"


def send(
    http: httpx.Client, request: httpx.Request, *, provider: str = "", kind: str = ""
) -> httpx.Response:
    """Send, read the body, and raise retryable errors for 429, 5xx and transport failures.

    A request httpx refuses to send (``LocalProtocolError``: e.g. a header value with a line
    break) is a configuration or programming error, terminal at once: retrying cannot help.

    ``provider`` and ``kind`` (submit/status) label the response-time histogram.
    """
    started = time.perf_counter()
    try:
        response = http.send(request)
    except httpx.LocalProtocolError as exc:  # before TransportError: ours, not an outage
        raise ProviderNotConfigured(_unsendable(exc), code="unsendableRequest") from exc
    except httpx.TimeoutException as exc:
        raise ProviderUnavailable(f"provider timed out: {exc!r}", code="timeout") from exc
    except httpx.TransportError as exc:
        raise ProviderUnavailable(f"provider unreachable: {exc!r}", code="connection") from exc
    except httpx.DecodingError as exc:
        raise ProviderProtocolError(
            f"provider body could not be decoded: {exc!r}", code="malformedResponse"
        ) from exc
    except httpx.RequestError as exc:
        raise ProviderUnavailable(f"provider request failed: {exc!r}", code="request") from exc
    finally:
        _observer[0](provider, kind, time.perf_counter() - started)
    if response.status_code == 429:
        raise RateLimited(
            f"provider rate limit (HTTP 429): {response.text[:200]}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    if response.status_code >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if response.status_code == 503 and retry_after is not None:
            raise RateLimited(
                f"provider unavailable (HTTP 503): {response.text[:200]}",
                retry_after=retry_after,
                status=503,
            )
        raise ProviderUnavailable(
            f"provider error (HTTP {response.status_code}): {response.text[:200]}",
            code=f"http{response.status_code}",
            status=response.status_code,
        )
    return response


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON body, or ProviderProtocolError for garbage.

    A 401/403 whose body is not JSON (a gateway's HTML page) is still a refusal: retrying a bad
    key until the deadline would only hide it.
    """
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if response.status_code in (401, 403):
            raise ProviderRejected(
                f"provider refused the credentials (HTTP {response.status_code}): "
                f"{response.text[:120]!r}",
                code=f"http{response.status_code}",
                status=response.status_code,
            ) from exc
        raise ProviderProtocolError(
            f"provider answered HTTP {response.status_code} with a body that is not JSON: "
            f"{response.text[:120]!r}",
            code="malformedResponse",
            status=response.status_code,
        ) from exc
