"""Per-job push tokens: the last part of the URL a provider pushes to (``pollen ingress``).

A token is ``<job id, base64url>.<random part>``: the ingress finds the job from the token
alone and accepts a push only if the whole token equals the one stored with that job (the
random part, 144 bits from :mod:`secrets`, is what makes it unguessable). The job id in it is
no secret; it only saves a lookup key per job.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from pollen.models import JOB_ID_PATTERN

#: bytes of randomness in a token's secret part
RANDOM_BYTES = 18
_JOB_ID = re.compile(JOB_ID_PATTERN.removeprefix("^").removesuffix("$"))
#: longest token the ingress looks at (a 128-character job id and the random part)
MAX_TOKEN_LENGTH = 200


def new_token(job_id: str) -> str:
    """A fresh push token for ``job_id``."""
    return f"{_encode(job_id)}.{secrets.token_urlsafe(RANDOM_BYTES)}"


def job_of(token: str) -> str | None:
    """The job id a token names, or None for anything that is not a token's shape."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    encoded, secret = token.split(".")
    if not encoded or len(secret) < RANDOM_BYTES:
        return None
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        job_id = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        decoded = job_id.decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    return decoded if _JOB_ID.fullmatch(decoded) else None


def push_url(public_url: str, provider: str, token: str) -> str:
    """Where ``provider`` pushes about the job of ``token``."""
    return f"{public_url.rstrip('/')}/push/{provider}/{token}"


def redact(token: str) -> str:
    """``token`` with its secret part hidden (for the audit trail and logs)."""
    encoded, dot, _ = token.partition(".")
    return f"{encoded}.***" if dot else "***"


def _encode(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode("utf-8")).decode("ascii").rstrip("=")
