"""One webhook delivery attempt: POST once to a vetted, pinned address and classify the answer.

The URL's host is resolved once with :meth:`AddressPolicy.resolve` (every answer vetted) and
the request goes to the first vetted IP (:func:`pollen.addresses.pinned_request`), so a DNS
answer cannot change between the check and the connect. The lookup and the request share the
attempt's timeout: a resolver that never answers ends the attempt (a retry) when it is up. The
original ``host[:port]`` travels in the ``Host`` header, and for https the original name is the
TLS SNI (httpcore's ``sni_hostname`` request extension), so the certificate is still verified
against the real name.

The request is built here, not from the client's defaults: the client's headers, cookies and
auth never reach a callback receiver. Redirects are never followed; at most
:data:`MAX_RESPONSE_BYTES` of the answer are read and then dropped.

Results (:data:`AttemptResult`)::

    delivered   2xx
    gone        410: the receiver asks never to be called again (stop for this endpoint)
    retry       429/503 (retry_after from Retry-After), 3xx, other 4xx/5xx, timeout,
                connection or DNS failure (a lookup with no answer within the timeout too)
    failed      refused by the address policy, or a URL httpx cannot send: not retryable
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import httpx

from pollen.addresses import AddressPolicy, UnsafeCallbackURL, pinned_request
from pollen.lookup import LookupFailed
from pollen.providers.http import parse_retry_after

AttemptResult = Literal["delivered", "retry", "gone", "failed"]

MAX_RESPONSE_BYTES = 64 * 1024
MAX_LOCATION_CHARS = 200
USER_AGENT = "pollen-webhooks/0.1"


@dataclass(frozen=True)
class Attempt:
    """What one POST to a callback URL did."""

    at: float
    status_code: int | None
    latency_ms: float
    error: str | None
    retry_after: float | None
    outcome: AttemptResult

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the job's delivery log in Redis)."""
        return asdict(self)


def post(
    http: httpx.Client,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    policy: AddressPolicy,
    clock: Callable[[], float] = time.time,
) -> Attempt:
    """POST ``body`` to ``url`` once; never raises for HTTP, transport or policy failures."""
    at = clock()
    started = time.monotonic()

    def attempt(
        outcome: AttemptResult,
        error: str | None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> Attempt:
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        return Attempt(at, status_code, latency_ms, error, retry_after, outcome)

    try:
        sent = {"user-agent": USER_AGENT, **headers}
        request = pinned_request(url, body, sent, timeout=timeout, policy=policy)
    except UnsafeCallbackURL as exc:
        return attempt("failed", str(exc))
    except httpx.InvalidURL as exc:
        return attempt("failed", f"callback URL cannot be sent: {exc}")
    except LookupFailed as exc:  # no answer within the timeout, or no lookup thread free
        return attempt("retry", str(exc))
    except OSError as exc:
        return attempt("retry", f"DNS lookup failed: {exc}")
    try:
        status_code, response_headers = _send(http, request)
    except httpx.TimeoutException as exc:
        return attempt("retry", f"timed out after {timeout:g}s ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        return attempt("retry", f"{type(exc).__name__}: {exc}")
    outcome, error, retry_after = classify(status_code, response_headers, now=at)
    return attempt(outcome, error, status_code, retry_after)


def classify(
    status_code: int, headers: Mapping[str, str], *, now: float | None = None
) -> tuple[AttemptResult, str | None, float | None]:
    """The result, error text and retry_after (seconds) of one HTTP answer."""
    if 200 <= status_code < 300:
        return "delivered", None, None
    if status_code == 410:
        return "gone", "HTTP 410 Gone: the receiver asked not to be called again", None
    if status_code in (429, 503):
        return "retry", f"HTTP {status_code}", parse_retry_after(headers.get("retry-after"), now)
    if 300 <= status_code < 400:
        location = headers.get("location")
        target = f"to {location[:MAX_LOCATION_CHARS]}" if location else "without a Location"
        return "retry", f"redirect not followed (HTTP {status_code} {target})", None
    return "retry", f"HTTP {status_code}", None


def _send(http: httpx.Client, request: httpx.Request) -> tuple[int, httpx.Headers]:
    """Send without redirects or client auth; read at most MAX_RESPONSE_BYTES and drop them."""
    response = http.send(request, stream=True, follow_redirects=False, auth=None)
    try:
        read = 0
        for chunk in response.iter_raw(16 * 1024):
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES:
                break
    finally:
        response.close()
    return response.status_code, response.headers
