"""Settings of the provider simulator (validated, patchable at runtime)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

CapMode = Literal["refuse", "throttle"]
CAP_MODES: dict[str, CapMode] = {"runware": "refuse", "useapi": "refuse", "comet": "throttle"}


class SimulatorConfig(BaseModel):
    """Behaviour of the simulator.

    Durations are seconds per generation when a request does not script its own; the ``rate_*``
    fields are probabilities (0..1) of a random fault on every provider request.
    ``rate_limit`` (if set) is a global limit of provider requests accepted in any one-second
    window, over every dialect; requests beyond it are answered 429 with ``Retry-After:
    retry_after`` and change nothing.

    Accounts: ``api_key`` and every key of ``keys`` are valid credentials (any other answers
    401). A key may run at most its cap of tasks at once: its value in ``keys``, or
    ``max_running_per_key`` (for ``api_key`` and keys mapped to ``null``); unset means no cap.
    A create past the cap is answered as ``cap_mode`` says for its dialect: ``refuse`` (HTTP
    429 with ``Retry-After: retry_after`` and ``cap_bodies[dialect]`` or the dialect's 429
    body; nothing is created) or ``throttle`` (accepted as THROTTLED, started when a slot
    frees; Runway's documented behaviour, so CometAPI's default, also useapi.net's option).
    Runware has no waiting status, so it always refuses.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    api_key: str = Field(default="sim-key", min_length=1)
    duration_min: float = Field(default=1.0, ge=0)
    duration_max: float = Field(default=3.0, ge=0)
    rate_5xx: float = Field(default=0.0, ge=0, le=1)
    rate_429: float = Field(default=0.0, ge=0, le=1)
    rate_malformed: float = Field(default=0.0, ge=0, le=1)
    rate_timeout: float = Field(default=0.0, ge=0, le=1)
    timeout_seconds: float = Field(default=30.0, ge=0)
    retry_after: int = Field(default=1, ge=0)
    rate_limit: int | None = Field(default=None, ge=1)
    comet_not_exist_seconds: float = Field(default=3.0, ge=0)
    #: creates answered one at a time, each this many seconds after the previous answer; a
    #: create whose client leaves while it waits is dropped (0: no pacing; see ``pacing``)
    create_gap: float = Field(default=0.0, ge=0, le=60)
    #: pushes to a task's webhookURL / replyUrl: seconds after the news, share lost, share
    #: sent twice, most seconds added at random (so pushes can arrive out of order)
    push_delay: float = Field(default=0.02, ge=0, le=3600)
    push_loss: float = Field(default=0.0, ge=0, le=1)
    push_duplicate: float = Field(default=0.0, ge=0, le=1)
    push_reorder: float = Field(default=0.0, ge=0, le=3600)
    #: base of result file URLs; unset: this simulator's own ``/media`` route
    media_url: str | None = Field(default=None, max_length=2048)
    seed: int | None = None
    #: extra valid API keys (one per provider account) -> that key's cap (null: the default)
    keys: dict[str, int | None] = Field(default_factory=dict)
    max_running_per_key: int | None = Field(default=None, ge=1)
    #: dialect -> "refuse" | "throttle"; a dialect left out keeps its default (CAP_MODES)
    cap_mode: dict[str, CapMode] = Field(default_factory=dict)
    #: dialect -> JSON body of its over-cap 429 (left out: the dialect's own 429 body)
    cap_bodies: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.duration_min > self.duration_max:
            raise ValueError("duration_min must be <= duration_max")
        return self

    @model_validator(mode="after")
    def _caps_valid(self) -> Self:
        for name, cap in self.keys.items():
            if not name or (cap is not None and cap < 1):
                raise ValueError(f"keys: {name!r} needs a non-empty key and a cap >= 1 or null")
        for field_name in ("cap_mode", "cap_bodies"):
            unknown = sorted(set(getattr(self, field_name)) - set(CAP_MODES))
            if unknown:
                raise ValueError(f"{field_name}: unknown dialects {', '.join(unknown)}")
        if self.cap_mode.get("runware", "refuse") != "refuse":
            raise ValueError("cap_mode: runware has no waiting status, it can only refuse")
        return self

    def key_valid(self, key: str) -> bool:
        return key == self.api_key or key in self.keys

    def cap_of(self, key: str) -> int | None:
        """How many tasks ``key`` may run at once (``None``: no cap)."""
        cap = self.keys.get(key)
        return self.max_running_per_key if cap is None else cap

    def throttles(self, dialect: str) -> bool:
        """Whether ``dialect`` accepts creates past the cap as THROTTLED (else refuses)."""
        return self.cap_mode.get(dialect, CAP_MODES.get(dialect, "refuse")) == "throttle"

    def patched(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """A new, validated config with ``changes`` applied (raises ``ValueError``)."""
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        return type(self).model_validate({**self.model_dump(), **changes})
