"""Where pollen keeps its own copies of results' files (re-hosting, ``POLLEN_STORAGE__URL``).

A backend stores one object under a key and says the URL that serves it:

- ``file:///a/directory`` (:mod:`pollen.storage.local`): files in a local directory, the
  embedded default; the URL is ``file://…`` or ``public_url`` + key.
- ``s3://bucket/prefix`` (:mod:`pollen.storage.s3`): any S3-compatible store through boto3
  (``pip install 'pollen-jobs[storage]'``).

The key of a copy is ``<prefix>/<job id>/<generation id><extension>``: copying the same
result twice writes the same object, so a repeated copy is harmless. A copy is stored as the
media type its host declared only when that is an image, video or audio type pollen knows
(never HTML or SVG), else as ``application/octet-stream``. Backends raise
:class:`pollen.errors.CopyUnavailable` when the storage fails (the copy is tried again).
"""

from __future__ import annotations

import re
from typing import IO, Protocol
from urllib.parse import unquote, urlsplit

from pollen.settings import StorageSettings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: what a stored file may be served as: media, never a page or a script (a hostile result
#: host must not get HTML or SVG served from your bucket or CDN); anything else is stored as
#: application/octet-stream with no extension
MEDIA_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
}
OPAQUE = "application/octet-stream"


class Storage(Protocol):
    """One place copies go."""

    def put(self, key: str, data: IO[bytes], *, size: int, content_type: str) -> str:
        """Store ``data`` (``size`` bytes, read from the start) under ``key``, replacing any
        object there; the URL that serves it."""
        ...


def media_type(content_type: str) -> str:
    """The type a copy is stored and served as: the host's if it is a known media type, else
    ``application/octet-stream``."""
    declared = content_type.partition(";")[0].strip().lower()
    return declared if declared in MEDIA_TYPES else OPAQUE


def object_key(job_id: str, generation: str, content_type: str) -> str:
    """``<job id>/<generation id><extension>``, the extension from the stored media type (none
    for other types). Unsafe characters become ``_`` (keys are also file names)."""
    suffix = MEDIA_TYPES.get(media_type(content_type), "")
    return f"{_UNSAFE.sub('_', job_id)}/{_UNSAFE.sub('_', generation)}{suffix}"


def public(base: str, key: str) -> str:
    """``key``'s URL under a public base URL (a CDN, a web server over the directory)."""
    return f"{base.rstrip('/')}/{key}"


def open_storage(settings: StorageSettings) -> Storage | None:
    """The backend ``settings.url`` names, or None when re-hosting is off."""
    if settings.url is None:
        return None
    parts = urlsplit(settings.url)
    if parts.scheme == "file":
        from pollen.storage.local import LocalStorage

        return LocalStorage(unquote(parts.path), public_url=settings.public_url)
    from pollen.storage.s3 import S3Storage

    return S3Storage.from_settings(settings)
