"""The provider simulator in its own process (so it never shares a GIL with the harness).

    python -m bench.simproc --port 8765 --config '{"duration_min": 4, "duration_max": 6}'

Serves until SIGTERM/SIGINT. The config is a JSON ``SimulatorConfig``; change it live with
``PATCH /_sim/config``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from pollen.simulator import SimulatorConfig, SimulatorServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", default="{}", help="SimulatorConfig as JSON")
    args = parser.parse_args(argv)
    config = SimulatorConfig.model_validate_json(args.config)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with SimulatorServer(config, host=args.host, port=args.port):
        while not stop.wait(1.0):
            pass


if __name__ == "__main__":
    main()
