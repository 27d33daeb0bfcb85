"""``python -m bench``: run a benchmark scenario (see ``bench/README.md``)."""

from bench.cli import main

raise SystemExit(main())
