"""The dashboard's protections: basic auth on every route, a CSRF token on every action,
and headers that keep pages out of caches, frames and other origins' reach.

Credentials are compared in constant time (:func:`hmac.compare_digest`). The CSRF token is an
HMAC of a fixed label under a key derived from the credentials, so every replica that shares
them agrees on it and nobody who cannot log in can compute it; without auth (``--no-auth``,
local use) the key is random per process. Actions also refuse a request whose ``Origin``
names another site.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REALM = "pollen dashboard"
#: what a page may load: its own scripts and styles only; result files from any http(s) host
CSP = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' http: https: data:",
        "media-src 'self' http: https:",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin: result links never tell a provider which job page they were on, and forms
    # still send their Origin (no-referrer would make it "null")
    (b"referrer-policy", b"same-origin"),
]


@dataclass(frozen=True)
class Credentials:
    """The one user and password the dashboard accepts."""

    user: str
    password: str = ""

    def match(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials (constant time)."""
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = given.partition(":")
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return same_user and same_password


def csrf_key(credentials: Credentials | None) -> bytes:
    """The key CSRF tokens are made with (see the module doc)."""
    if credentials is None:
        return secrets.token_bytes(32)
    text = f"pollen-dashboard-csrf\0{credentials.user}\0{credentials.password}"
    return hashlib.sha256(text.encode()).digest()


def csrf_token(key: bytes) -> str:
    return hmac.new(key, b"pollen-dashboard-action", hashlib.sha256).hexdigest()


def csrf_ok(key: bytes, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), csrf_token(key).encode())


def same_origin(headers: Headers) -> bool:
    """False when the request says it comes from a page of another origin."""
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = headers.get("host", "")
    return origin.partition("://")[2] == host


class Protect:
    """ASGI middleware: 401 without the credentials (when there are any), and the security
    headers (plus ``Cache-Control: no-store``) on every answer."""

    def __init__(self, app: ASGIApp, credentials: Credentials | None) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"cache-control"]
                message["headers"] = [*headers, *HEADERS, (b"cache-control", b"no-store")]
            await send(message)

        given = Headers(scope=scope).get("authorization")
        if self.credentials and not self.credentials.match(given):
            await _unauthorized(secured)
            return
        await self.app(scope, receive, secured)


async def _unauthorized(send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
                (b"content-type", b"text/plain; charset=utf-8"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"authentication required\n"})
