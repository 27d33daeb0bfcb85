"""``pollen worker`` with pyinstrument in every prefork child (``python -m bench --profile``).

    python -m bench.profile_worker OUT_DIR worker --concurrency 4 ...

Each pool child starts a profiler when it starts (``worker_process_init``) and, after a task,
at most every ``WRITE_EVERY`` seconds, rewrites ``OUT_DIR/pollen-<pid>.txt`` and ``.html`` with
everything recorded so far (prefork children are not told when they are shut down, so the
profile is kept up to date instead). pollen itself is unchanged: this only connects Celery
signals before handing over to ``pollen.cli``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from celery.signals import task_postrun, worker_process_init
from pyinstrument import Profiler

WRITE_EVERY = 30.0
_state: dict[str, Any] = {}


def _start(**_: Any) -> None:
    profiler = Profiler(interval=0.002)
    profiler.start()
    _state["profiler"] = profiler
    _state["written"] = time.monotonic()


def _after_task(**_: Any) -> None:
    profiler: Profiler | None = _state.get("profiler")
    if profiler is None or time.monotonic() - _state["written"] < WRITE_EVERY:
        return
    profiler.stop()  # the next start() continues the same session
    _write(profiler)
    _state["written"] = time.monotonic()
    profiler.start()


def _write(profiler: Profiler) -> None:
    out = Path(_state["out"])
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"pollen-{os.getpid()}"
    stem.with_suffix(".txt").write_text(profiler.output_text(unicode=False, color=False))
    stem.with_suffix(".html").write_text(profiler.output_html())


def main() -> None:
    _state["out"] = sys.argv.pop(1)
    worker_process_init.connect(_start, weak=False)
    task_postrun.connect(_after_task, weak=False)
    from pollen.cli import main as pollen_main

    pollen_main()


if __name__ == "__main__":
    main()
