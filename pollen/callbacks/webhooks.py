"""Standard Webhooks signatures (https://www.standardwebhooks.com) for completion callbacks.

A delivery carries three headers: ``webhook-id`` (the message id, the same on every retry),
``webhook-timestamp`` (integer unix seconds of this attempt) and ``webhook-signature``: one
``v1,<base64 HMAC-SHA256>`` per secret, space-separated, over ``f"{id}.{timestamp}.{body}"``.
Several secrets sign at once while an endpoint rotates its secret.

Signing uses the spec authors' ``standardwebhooks`` package. :func:`verify` is written out here
because the package's ``verify`` reads the wall clock with a fixed five-minute tolerance and
raises foreign errors on malformed signature lists; receivers may use either.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from secrets import token_bytes

from standardwebhooks.webhooks import Webhook

from pollen.errors import PollenError
from pollen.webhook_keys import SECRET_PREFIX, secret_key

NEW_KEY_BYTES = 32
DEFAULT_TOLERANCE = 300


class WebhookVerificationError(PollenError):
    """A webhook's headers or signature did not verify."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(NEW_KEY_BYTES)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 signature>`` of one message; the body must be UTF-8 (JSON always is)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("webhook body must be UTF-8") from exc
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return Webhook(secret_key(secret)).sign(msg_id, when, text)


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery, signed with every secret (more than one while rotating)."""
    if isinstance(secrets, str) or not secrets:
        raise ValueError("headers() needs a non-empty sequence of secrets")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: int | None = None,
) -> None:
    """Check a delivery's headers against ``secret``; WebhookVerificationError if they fail."""
    secret_key(secret)  # a bad secret is the receiver's bug: ValueError, not a failed check
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    timestamp = _timestamp(stamp, tolerance, int(time.time()) if now is None else now)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookVerificationError("webhook body is not UTF-8") from exc
    expected = base64.b64decode(sign(secret, msg_id, timestamp, body).partition(",")[2])
    if not any(hmac.compare_digest(expected, given) for given in _v1_signatures(signatures)):
        raise WebhookVerificationError(
            "no matching signature (wrong secret, or the id, timestamp or body changed)"
        )


def _timestamp(value: str, tolerance: int, now: int) -> int:
    if not value.isascii() or not value.isdigit():
        raise WebhookVerificationError(f"webhook-timestamp is not integer seconds: {value!r}")
    timestamp = int(value)
    if timestamp < now - tolerance:
        raise WebhookVerificationError(f"webhook timestamp too old ({now - timestamp}s ago)")
    if timestamp > now + tolerance:
        raise WebhookVerificationError(f"webhook timestamp too new ({timestamp - now}s ahead)")
    return timestamp


def _v1_signatures(value: str) -> list[bytes]:
    """The decodable ``v1`` signatures of a header; other versions and garbage are skipped."""
    found = []
    for entry in value.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found
