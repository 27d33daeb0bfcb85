"""Webhooks are signed unless a setting says otherwise: a worker start-up check.

A worker without ``POLLEN_CALLBACKS__SECRETS`` would send every webhook without a
``webhook-signature`` header, which a receiver cannot tell from a forgery. Such a worker refuses
to start (one line on stderr, exit 1) unless ``POLLEN_CALLBACKS__ALLOW_UNSIGNED=true``, which is
logged as a warning at every start. ``pollen worker`` and ``celery -A pollen.worker worker`` both
build the worker's blueprint, so both pass :class:`SigningCheck`; ``pollen worker`` also asks
:func:`refusal` before Celery starts, so its refusal is its only line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import bootsteps

from pollen.settings import CallbackSettings, get_settings

log = logging.getLogger(__name__)

REFUSAL = (
    "webhooks would be sent unsigned: set POLLEN_CALLBACKS__SECRETS='[\"whsec_...\"]' "
    "(make one with `pollen secret`), or POLLEN_CALLBACKS__ALLOW_UNSIGNED=true to send them "
    "unsigned"
)
WARNING = (
    "POLLEN_CALLBACKS__ALLOW_UNSIGNED is true and POLLEN_CALLBACKS__SECRETS is empty: webhooks "
    "are sent without a signature, receivers cannot tell them from forgeries"
)


def refusal(callbacks: CallbackSettings) -> str | None:
    """Why a worker with these settings must not start (its webhooks would go unsigned and no
    setting allows that), or None when it may."""
    return None if callbacks.secrets or callbacks.allow_unsigned else REFUSAL


def check(callbacks: CallbackSettings) -> str | None:
    """:func:`refusal`; when unsigned delivery is allowed explicitly, a warning in the log."""
    if reason := refusal(callbacks):
        return reason
    if not callbacks.secrets:
        log.warning(WARNING)
    return None


class SigningCheck(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: refuses to start a worker whose webhooks would go unsigned (one line on
    stderr, exit 1), warns at every start of one allowed to."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        if reason := check(get_settings().callbacks):
            print(f"error: {reason}", file=sys.stderr)
            raise SystemExit(1)
