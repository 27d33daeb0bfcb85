"""Fetching a result's file: streamed, size-limited, hashed, through the address policy.

The result URL comes from a provider's answer, so it is vetted like a callback URL
(:class:`pollen.addresses.AddressPolicy`, with ``POLLEN_STORAGE__ALLOW_CIDRS``): its host is
resolved once, every address checked, and the request pinned to a vetted one
(:func:`pollen.addresses.pinned_request`); the lookup has the fetch's timeout, and a host whose
resolver never answers is a :class:`CopyUnavailable` when it is up. Redirects are followed by
hand, each hop vetted the same way. The body is streamed into ``sink`` while it is counted and
hashed; a ``Content-Length`` over the limit is refused before reading, and counting stops a
body that grows past it.

Errors: :class:`CopyRefused` (refused address, 4xx such as 404/410, too large, too many
redirects: trying again cannot help), :class:`CopyUnavailable` (5xx, 429, 408, timeouts,
connection and DNS failures: tried again on the copy schedule).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import IO
from urllib.parse import urljoin

import httpx

from pollen.addresses import AddressPolicy, UnsafeCallbackURL, pinned_request
from pollen.errors import CopyRefused, CopyUnavailable

MAX_REDIRECTS = 3
CHUNK = 64 * 1024
USER_AGENT = "pollen-rehost/0.1"
#: client errors worth another try
RETRYABLE_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Fetched:
    """What was read: size in bytes, sha256 (hex) and the content type the host said."""

    size: int
    sha256: str
    content_type: str


def fetch(
    http: httpx.Client,
    url: str,
    sink: IO[bytes],
    *,
    policy: AddressPolicy,
    max_bytes: int,
    timeout: float,
) -> Fetched:
    """GET ``url`` into ``sink``; see the module docstring for what it refuses."""
    for _ in range(MAX_REDIRECTS + 1):
        response = _open(http, url, policy, timeout)
        try:
            if response.is_redirect:
                url = urljoin(url, response.headers.get("location", ""))
                continue
            _check_status(response)
            return _read(response, sink, max_bytes)
        except httpx.TimeoutException as exc:
            raise CopyUnavailable(f"result URL timed out after {timeout:g}s while reading") from exc
        except httpx.HTTPError as exc:
            raise CopyUnavailable(f"reading the result URL failed: {exc!r}") from exc
        finally:
            response.close()
    raise CopyRefused(f"result URL redirected more than {MAX_REDIRECTS} times")


def _open(http: httpx.Client, url: str, policy: AddressPolicy, timeout: float) -> httpx.Response:
    try:
        request = pinned_request(
            url, None, {"user-agent": USER_AGENT}, timeout=timeout, policy=policy, method="GET"
        )
    except UnsafeCallbackURL as exc:
        reason = str(exc).removeprefix("callback ")
        raise CopyRefused(f"result URL refused by the address policy: {reason}") from exc
    except httpx.InvalidURL as exc:
        raise CopyRefused(f"result URL cannot be fetched: {exc}") from exc
    except OSError as exc:
        raise CopyUnavailable(f"result URL's host did not resolve: {exc}") from exc
    try:
        return http.send(request, stream=True, follow_redirects=False, auth=None)
    except httpx.TimeoutException as exc:
        raise CopyUnavailable(f"result URL timed out after {timeout:g}s") from exc
    except httpx.HTTPError as exc:
        raise CopyUnavailable(f"result URL unreachable: {exc!r}") from exc


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status >= 500 or status in RETRYABLE_4XX:
        raise CopyUnavailable(f"result URL answered HTTP {status}")
    raise CopyRefused(f"result URL answered HTTP {status} (the provider's file is not there)")


def _read(response: httpx.Response, sink: IO[bytes], max_bytes: int) -> Fetched:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise CopyRefused(f"result file is {declared} bytes, over the {max_bytes}-byte limit")
    digest = hashlib.sha256()
    size = 0
    for chunk in response.iter_bytes(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise CopyRefused(f"result file is over the {max_bytes}-byte limit")
        digest.update(chunk)
        sink.write(chunk)
    content_type = response.headers.get("content-type") or "application/octet-stream"
    return Fetched(size, digest.hexdigest(), content_type)
