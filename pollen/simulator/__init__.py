"""Provider simulator: a real HTTP server imitating Runware, useapi.net Runway and CometAPI.

Public API: :class:`SimulatorConfig`, :func:`build_simulator_app`, :class:`SimulatorServer`,
:func:`run`.
"""

from pollen.simulator.app import build_simulator_app
from pollen.simulator.config import SimulatorConfig
from pollen.simulator.server import SimulatorServer, run

__all__ = ["SimulatorConfig", "SimulatorServer", "build_simulator_app", "run"]
