"""``python -m bench``: run a benchmark scenario (see ``bench/README.md``)."""

import sys

try:
    from bench.cli import main
except ModuleNotFoundError as exc:  # pollen installed without the benchmark's dependencies
    sys.exit(
        f"python -m bench: the module {exc.name!r} is missing; the benchmark needs the dev "
        "extras: pip install -e '.[dev]' (tasks/test installs them into .venv)"
    )

raise SystemExit(main())
