"""The format of a webhook signing secret: ``whsec_`` + base64 of 24..64 bytes.

Checked where a job's own ``callback_secret`` is accepted (:mod:`pollen.models`) and used where
a delivery is signed (:mod:`pollen.callbacks.webhooks`).
"""

from __future__ import annotations

import base64
import binascii

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret (prefix optional); ValueError if it is unusable."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not base64 (expected 'whsec_<base64>')") from exc
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"webhook secret decodes to {len(key)} bytes; it must be "
            f"{MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes"
        )
    return key
