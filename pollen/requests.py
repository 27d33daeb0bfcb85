"""Typed provider requests, accepted by ``submit`` beside plain dicts.

    from pollen import Pollen
    from pollen.requests import RunwareVideoRequest

    pollen.submit("runware", RunwareVideoRequest(model="klingai:5@3", positivePrompt="a fox"))

Each model types the fields its provider's documents show and lets the provider's other
parameters through (``extra="allow"``). The published JSON Schema
(``schema/job-request.schema.json``) holds all of them.
"""

from __future__ import annotations

from pollen.providers.comet import CometRunwayRequest
from pollen.providers.runware import (
    RunwareImageRequest,
    RunwareInputs,
    RunwareTask,
    RunwareVideoRequest,
)
from pollen.providers.useapi import UseapiRunwayRequest

__all__ = [
    "CometRunwayRequest",
    "RunwareImageRequest",
    "RunwareInputs",
    "RunwareTask",
    "RunwareVideoRequest",
    "UseapiRunwayRequest",
]
