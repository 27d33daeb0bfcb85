"""A DNS server of the test's own, and a process that uses it instead of the machine's.

:class:`FakeDNS` listens on UDP port 53 of a loopback address of its own (any of 127.0.0.0/8)
and either never answers (reads and drops every query) or answers after ``delay`` seconds:
127.0.0.1 for an A question, no address for any other. :func:`resolving_through` wraps a
command so that it runs in a mount namespace of its own where ``/etc/resolv.conf`` names that
server: glibc reads no environment variable that changes the name server, and the machine's
``/etc/resolv.conf`` is not the test's to edit. Needs root (or CAP_SYS_ADMIN) for the
namespace and port 53; :func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Self

#: what the wrapped process's resolver does: ask once, wait this long (glibc's own timeout)
RESOLV_OPTIONS = "options timeout:30 attempts:1"
A, IN = 1, 1


class FakeDNS:
    """A DNS server on ``(address, 53)``; ``delay`` None: it never answers."""

    def __init__(self, delay: float | None = None) -> None:
        self.delay = delay
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            self.address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.53"
            try:
                self.sock.bind((self.address, 53))
                break
            except OSError as exc:
                last = exc
        else:
            raise last
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def resolv_conf(self, directory: Path) -> Path:
        path = directory / "resolv.conf"
        path.write_text(f"nameserver {self.address}\n{RESOLV_OPTIONS}\n")
        return path

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            if self.delay is not None:
                answer = _answer(query)
                threading.Timer(self.delay, self._send, (answer, peer)).start()

    def _send(self, answer: bytes, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # closed meanwhile
            self.sock.sendto(answer, peer)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _answer(query: bytes) -> bytes:
    """The reply to one question: 127.0.0.1 for an A question, none for another (NODATA)."""
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12 : end + 5]
    qtype = struct.unpack("!H", query[end + 1 : end + 3])[0]
    answers = b""
    if qtype == A:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", A, IN, 0, 4) + socket.inet_aton("127.0.0.1")
    header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def resolving_through(resolv_conf: Path, args: list[str]) -> list[str]:
    """``args`` run with ``resolv_conf`` as /etc/resolv.conf (a private mount namespace)."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, str(resolv_conf), *args]


def unavailable() -> str | None:
    """Why :class:`FakeDNS` and :func:`resolving_through` cannot work here, or None."""
    try:
        probe = subprocess.run(
            resolving_through(Path("/etc/resolv.conf"), ["true"]),
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except OSError as exc:
        return f"no unshare: {exc}"
    if probe.returncode != 0:
        return f"no private mount namespace here: {probe.stderr.strip()}"
    try:
        FakeDNS().sock.close()
    except OSError as exc:
        return f"cannot listen on a loopback port 53: {exc}"
    return None
