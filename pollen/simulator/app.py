"""The Starlette application that serves every dialect plus the admin routes."""

from __future__ import annotations

from starlette.applications import Starlette

from pollen.simulator import admin, comet, media, runware, useapi
from pollen.simulator.config import SimulatorConfig
from pollen.simulator.core import Simulator


def build_app(sim: Simulator) -> Starlette:
    """An app serving ``sim`` (keep ``sim`` to inspect or change the live state in-process)."""
    routes = [
        *admin.routes(sim),
        *runware.routes(sim),
        *useapi.routes(sim),
        *comet.routes(sim),
        *media.routes(sim),
    ]
    app = Starlette(routes=routes)
    app.state.simulator = sim
    return app


def build_simulator_app(config: SimulatorConfig) -> Starlette:
    """A fresh simulator app (its runtime is at ``app.state.simulator``)."""
    return build_app(Simulator(config))
