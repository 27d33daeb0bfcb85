"""What :mod:`pollen.store.outbox` runs its producer read with (its only use of this module):
:func:`~pollen.store.effects.run` and :func:`~pollen.store.deliveries.deliveries`."""

from pollen.store.deliveries import deliveries
from pollen.store.effects import run

__all__ = ["deliveries", "run"]
