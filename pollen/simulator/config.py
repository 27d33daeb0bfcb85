"""Settings of the provider simulator (validated, patchable at runtime)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SimulatorConfig(BaseModel):
    """Behaviour of the simulator.

    Durations are seconds per generation when a request does not script its own; the ``rate_*``
    fields are probabilities (0..1) of a random fault on every provider request.
    ``rate_limit`` (if set) is a global limit of provider requests accepted in any one-second
    window, over every dialect; requests beyond it are answered 429 with ``Retry-After:
    retry_after`` and change nothing.
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
    #: pushes to a task's webhookURL / replyUrl: seconds after the news, share lost, share
    #: sent twice, most seconds added at random (so pushes can arrive out of order)
    push_delay: float = Field(default=0.02, ge=0, le=3600)
    push_loss: float = Field(default=0.0, ge=0, le=1)
    push_duplicate: float = Field(default=0.0, ge=0, le=1)
    push_reorder: float = Field(default=0.0, ge=0, le=3600)
    #: base of result file URLs; unset: this simulator's own ``/media`` route
    media_url: str | None = Field(default=None, max_length=2048)
    seed: int | None = None

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.duration_min > self.duration_max:
            raise ValueError("duration_min must be <= duration_max")
        return self

    def patched(self, changes: Mapping[str, Any]) -> SimulatorConfig:
        """A new, validated config with ``changes`` applied (raises ``ValueError``)."""
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        return type(self).model_validate({**self.model_dump(), **changes})
