"""Copies as files in a local directory (``POLLEN_STORAGE__URL=file:///a/directory``).

A file is written beside its final name and renamed over it, so a reader never sees half a
file and a repeated copy replaces the object whole. The content type is recorded with the
copy (``StoredCopy.content_type``), not on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from pollen.errors import CopyUnavailable
from pollen.storage import public


class LocalStorage:
    """A directory; the stored URL is ``file://<path>``, or ``public_url`` + key."""

    def __init__(self, root: str | Path, *, public_url: str | None = None) -> None:
        self.root = Path(root)
        self.public_url = public_url

    def put(self, key: str, data: IO[bytes], *, size: int, content_type: str) -> str:
        del size, content_type  # a file has its size; its type is kept with the copy
        target = self.root / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=target.parent, prefix=f".{target.name}.", delete=False
            ) as out:
                try:
                    shutil.copyfileobj(data, out, 1024 * 1024)
                    out.flush()
                    os.fsync(out.fileno())
                except BaseException:
                    os.unlink(out.name)
                    raise
            os.chmod(out.name, 0o644)  # a web server over the directory may serve it
            os.replace(out.name, target)
        except OSError as exc:
            raise CopyUnavailable(f"storage {self.root} refused the write: {exc}") from exc
        return public(self.public_url, key) if self.public_url else target.as_uri()
