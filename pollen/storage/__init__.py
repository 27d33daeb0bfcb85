"""Where pollen keeps its own copies of results' files (re-hosting, ``POLLEN_STORAGE__URL``).

A backend stores one object under a key and says the URL that serves it:

- ``file:///a/directory`` (:mod:`pollen.storage.local`): files in a local directory, the
  embedded default; the URL is ``file://…`` or ``public_url`` + key.
- ``s3://bucket/prefix`` (:mod:`pollen.storage.s3`): any S3-compatible store through boto3
  (``pip install 'pollen[storage]'``).

The key of a copy is ``<prefix>/<job id>/<generation id><extension>``: copying the same
result twice writes the same object, so a repeated copy is harmless. Backends raise
:class:`pollen.errors.CopyUnavailable` when the storage fails (the copy is tried again).
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import PurePosixPath
from typing import IO, Protocol
from urllib.parse import unquote, urlsplit

from pollen.settings import StorageSettings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")


class Storage(Protocol):
    """One place copies go."""

    def put(self, key: str, data: IO[bytes], *, size: int, content_type: str) -> str:
        """Store ``data`` (``size`` bytes, read from the start) under ``key``, replacing any
        object there; the URL that serves it."""
        ...


def object_key(job_id: str, generation: str, url: str, content_type: str) -> str:
    """``<job id>/<generation id><extension>``; the extension from the URL's path, else from
    the content type. Unsafe characters become ``_`` (keys are also file names)."""
    suffix = PurePosixPath(unquote(urlsplit(url).path)).suffix
    if not _EXTENSION.fullmatch(suffix):
        suffix = mimetypes.guess_extension(content_type.partition(";")[0].strip()) or ""
    return f"{_UNSAFE.sub('_', job_id)}/{_UNSAFE.sub('_', generation)}{suffix.lower()}"


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
