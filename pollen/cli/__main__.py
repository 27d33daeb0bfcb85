"""``python -m pollen.cli``: the same as the ``pollen`` command."""

from pollen.cli import main

main()
