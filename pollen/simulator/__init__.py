"""Provider simulator: a real HTTP server imitating Runware, useapi.net Runway and CometAPI.

Public API: :class:`SimulatorConfig`, :func:`create_app`, :class:`SimulatorServer`, :func:`run`.
"""

from pollen.simulator.app import create_app
from pollen.simulator.config import SimulatorConfig
from pollen.simulator.server import SimulatorServer, run

__all__ = ["SimulatorConfig", "SimulatorServer", "create_app", "run"]
