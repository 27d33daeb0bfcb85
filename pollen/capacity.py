"""Who may run how much at once: provider accounts with caps, tenants with shares.

Providers sell capacity as concurrent tasks per account. A provider is *capped* when one of
its accounts has ``max_in_flight``: its jobs then take a slot of an account before their
create request goes out, and wait in pollen's admission queue while every slot is held
(:mod:`pollen.store.admission` keeps the queue and the slots; :mod:`pollen.worker.admission`
admits). A provider without caps sends every job at once, as before.

Pure configuration: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from pollen.providers import REGISTRY
from pollen.settings import (
    AccountSettings,
    ProviderAccounts,
    Settings,
    TenantSettings,
    pick_account,
)

#: the slots of an account without ``max_in_flight`` in a capped provider: no cap of its own
UNCAPPED = 1_000_000


def provider_settings(settings: Settings, provider: str) -> ProviderAccounts:
    """The settings group of a registered provider (``runware``, ``useapi``, ``comet``)."""
    group = REGISTRY[provider].credentials[0][0]
    found = getattr(settings, group)
    assert isinstance(found, ProviderAccounts)
    return found


@dataclass(frozen=True)
class Capacity:
    """Every provider's accounts and every tenant's share, from settings."""

    accounts: Mapping[str, tuple[AccountSettings, ...]]  #: provider -> its accounts, in order
    tenants: Mapping[str, TenantSettings]

    @classmethod
    def of(cls, settings: Settings) -> Capacity:
        return cls(
            accounts={
                name: tuple(provider_settings(settings, name).resolved()) for name in REGISTRY
            },
            tenants=dict(settings.tenants),
        )

    @cached_property
    def capped_providers(self) -> frozenset[str]:
        """The providers whose jobs wait for a slot (one account or more has a cap)."""
        return frozenset(
            provider
            for provider, accounts in self.accounts.items()
            if any(a.max_in_flight is not None for a in accounts)
        )

    def capped(self, provider: str) -> bool:
        return provider in self.capped_providers

    def caps(self, provider: str) -> list[tuple[str, int]]:
        """(account, slots) of a provider's accounts; an account without a cap of its own
        counts as :data:`UNCAPPED`."""
        return [(a.name, a.max_in_flight or UNCAPPED) for a in self.accounts[provider]]

    def admitting(self, provider: str) -> list[tuple[str, int]]:
        """:meth:`caps` of the accounts with a key: where admission may put a job (an account
        without a key would fail every job it took, and free its slot for the next one)."""
        usable = {a.name for a in self.accounts[provider] if a.has_key}
        return [(name, cap) for name, cap in self.caps(provider) if name in usable]

    def capped_caps(self) -> dict[str, list[tuple[str, int]]]:
        """provider -> :meth:`caps`, for each capped provider, by name."""
        return {provider: self.caps(provider) for provider in sorted(self.capped_providers)}

    def account(self, provider: str, name: str | None) -> AccountSettings:
        """The account a job's provider task belongs to (the first one when it names none,
        or one that is no longer configured)."""
        return pick_account(self.accounts[provider], name)

    def shares(self) -> dict[str, tuple[float, int]]:
        """tenant -> (weight, cap; 0 for none), for the tenants the settings name."""
        return {
            name: (tenant.weight, tenant.max_in_flight or 0)
            for name, tenant in self.tenants.items()
        }
