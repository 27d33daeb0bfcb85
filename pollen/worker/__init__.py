"""The worker: pollen's Celery app (:mod:`.app`), thin tasks (:mod:`.tasks`) over plain steps
(:mod:`.steps`), per-process resources (:mod:`.runtime`), the periodic round and reconciler
(:mod:`.periodic`, :mod:`.reconciler`), health, metrics and logs.

``celery -A pollen.worker worker`` finds the app here; it is built on first access, so
importing this package reads no settings.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from pollen.worker.app import default_app

        return default_app()
    raise AttributeError(f"module 'pollen.worker' has no attribute {name!r}")
