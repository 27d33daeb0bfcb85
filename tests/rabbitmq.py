"""A RabbitMQ broker for the tests: Debian's ``rabbitmq-server`` on free ports, its node,
data and Erlang cookie in a temporary directory, no plugins; stopped on exit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from pollen.local.servers import ManagedProcess, free_port

#: where Debian puts the scripts (``/usr/sbin/rabbitmq-server`` wraps them to switch user)
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
INSTALL_HINT = "apt-get install rabbitmq-server (the CI script .ci/run installs it)"


def missing() -> str | None:
    """Why the broker cannot start here, or None."""
    if not (RABBIT_BIN / "rabbitmq-server").exists() or shutil.which("erl") is None:
        return f"Debian's rabbitmq-server is not installed: {INSTALL_HINT}"
    return None


class RabbitServer(ManagedProcess):
    stop_timeout = 30.0

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.env = {
            **os.environ,
            "HOME": str(root),  # the Erlang cookie of this node and of rabbitmqctl
            "RABBITMQ_NODENAME": f"pollen{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_LOGS": str(root / "rabbit.log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(root / "rabbit.pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        (self.root / "plugins").write_text("[].\n")
        with (self.root / "server.out").open("ab") as out:  # a restart appends
            self.proc = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready(timeout=90)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        from kombu.connection import Connection

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: {self.log()[-2000:]}")
            try:
                with Connection(self.url, connect_timeout=1) as connection:  # type: ignore[no-untyped-call]
                    connection.connect()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"RabbitMQ did not start: {self.log()[-2000:]}") from None
                time.sleep(0.3)

    def log(self) -> str:
        parts = [self.root / "server.out", self.root / "rabbit.log"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    def vhost(self, name: str) -> str:
        """The URL of a new virtual host ``name`` (guest may use it): a broker of its own
        for a test's worker, without another RabbitMQ node."""
        grant = ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]
        for args in (["add_vhost", name], grant):
            subprocess.run(
                [str(RABBIT_BIN / "rabbitmqctl"), "-q", *args],
                env=self.env, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{name}"

    def bindings(self) -> set[tuple[str, str, str]]:
        """Every binding (exchange, queue, routing key) but the default exchange's."""
        listed = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "list_bindings", "-q", "--no-table-headers",
             "source_name", "destination_name", "routing_key"],
            env=self.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        rows = [tuple(line.split("\t")) for line in listed.stdout.splitlines() if line]
        return {(row[0], row[1], row[2]) for row in rows if row[0]}

    def queues(self) -> dict[str, dict[str, str]]:
        """Each queue's durability and message counts, by name (``rabbitmqctl list_queues``)."""
        columns = ["name", "durable", "messages", "messages_persistent"]
        listed = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "list_queues", "-q", "--no-table-headers", *columns],
            env=self.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        rows = [
            dict(zip(columns, line.split("\t"), strict=True)) for line in listed.stdout.splitlines()
        ]
        return {row["name"]: row for row in rows if row.get("name")}

    def kill(self) -> None:
        """SIGKILL the node and its script at once (a node lost, no shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, timeout: float | None = None) -> None:
        """The script stops the node on SIGTERM (rabbitmqctl stop); if it does not end in
        time, its whole session (the node with it) is killed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
