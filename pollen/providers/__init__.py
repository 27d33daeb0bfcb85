"""Provider dialects and their registry. Adding a provider: one module and one line here."""

from __future__ import annotations

from pollen.providers.base import Provider, Snapshot, Submission
from pollen.providers.comet import CometRunway
from pollen.providers.runware import Runware
from pollen.providers.useapi import UseapiRunway
from pollen.settings import Settings

REGISTRY: dict[str, type[Provider]] = {
    Runware.name: Runware,
    UseapiRunway.name: UseapiRunway,
    CometRunway.name: CometRunway,
}


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One instance of every registered dialect, configured from settings."""
    return {name: cls(settings) for name, cls in REGISTRY.items()}


__all__ = ["REGISTRY", "Provider", "Snapshot", "Submission", "build_providers"]
