"""A provider front for fault injection: a forwarding proxy in front of the simulator.

The fleets of the fault suite talk to the provider through the gate. It forwards every request
unchanged and answers with the simulator's answer, but it also

* counts the polls (``getResponse`` items) of every provider task, so a test can tell how
  often the provider was asked about one job — a second poll chain shows up as extra polls;
* holds a chosen task's polls (a provider that stalls for that one job only, which the
  simulator's global fault queue cannot do) and, while it holds one, calls back with the port
  the request came from, so the test can find and kill the very pool process that is waiting;
* holds the next create requests the same way (:meth:`ProviderGate.hold_creates`): a worker
  killed while its create is on the wire, whose create the provider still receives.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

UPSTREAM_TIMEOUT = 60.0
FORWARDED_HEADERS = ("authorization", "content-type", "accept")
ANSWER_HEADERS = ("content-type", "retry-after")


@dataclass(frozen=True)
class Held:
    """One provider request the gate is holding."""

    task_uuid: str
    client_port: int  #: the requester's local port (find its process with psutil)
    at: float


@dataclass
class _Hold:
    times: int | None  #: holds left; None: every poll of the task
    seconds: float  #: the longest one request is held
    then: Callable[[Held], None] | None
    released: threading.Event = field(default_factory=threading.Event)


#: the key of the hold on create requests (no task UUID is this)
CREATES = "<creates>"


def _tasks(body: bytes, create: bool) -> list[str]:
    """Task UUIDs of a Runware request body's items: the creates (``...Inference``) or the
    polls (``getResponse``)."""
    try:
        items = json.loads(body)
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    return [
        str(item["taskUUID"])
        for item in items
        if isinstance(item, dict)
        and "taskUUID" in item
        and (
            str(item.get("taskType", "")).endswith("Inference")
            if create
            else item.get("taskType") == "getResponse"
        )
    ]


def poll_tasks(body: bytes) -> list[str]:
    """Task UUIDs of the ``getResponse`` items of a Runware request body."""
    return _tasks(body, create=False)


class ProviderGate:
    """Forwards to ``upstream``; see the module docstring. Use as a context manager."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._polls: Counter[str] = Counter()
        self._holds: dict[str, _Hold] = {}
        self.held: list[Held] = []
        self.errors: list[str] = []
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                gate._handle(self, "POST")

            def do_GET(self) -> None:
                gate._handle(self, "GET")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- control ---------------------------------------------------------------------------

    def hold(
        self,
        task_uuid: str,
        *,
        times: int | None = 1,
        seconds: float = 5.0,
        then: Callable[[Held], None] | None = None,
    ) -> None:
        """Hold the next ``times`` polls of ``task_uuid`` (None: all of them) for up to
        ``seconds`` each (or until :meth:`release`), calling ``then(held)`` as each one starts
        waiting; then forward it as usual."""
        with self._lock:
            self._holds[task_uuid] = _Hold(times, seconds, then)

    def hold_creates(
        self,
        *,
        times: int | None = 1,
        seconds: float = 5.0,
        then: Callable[[Held], None] | None = None,
    ) -> None:
        """Hold the next ``times`` create requests (of any task) as :meth:`hold` holds polls;
        ``Held.task_uuid`` is the request's first task. ``release(CREATES)`` stops it."""
        self.hold(CREATES, times=times, seconds=seconds, then=then)

    def release(self, task_uuid: str) -> None:
        """Stop holding ``task_uuid``: requests held now go on at once."""
        with self._lock:
            rule = self._holds.pop(task_uuid, None)
        if rule is not None:
            rule.released.set()

    def polls(self, task_uuid: str) -> int:
        """How many times the provider was asked about ``task_uuid``."""
        with self._lock:
            return self._polls[task_uuid]

    def held_for(self, task_uuid: str) -> list[Held]:
        with self._lock:
            return [h for h in self.held if h.task_uuid == task_uuid]

    def reset(self) -> None:
        with self._lock:
            rules = list(self._holds.values())
            self._holds.clear()
            self._polls.clear()
            self.held.clear()
            self.errors.clear()
        for rule in rules:
            rule.released.set()

    # --- serving ---------------------------------------------------------------------------

    def _take_hold(self, tasks: list[str], creates: list[str]) -> tuple[str, _Hold] | None:
        with self._lock:
            for task in tasks:
                self._polls[task] += 1
            keys = [(task, task) for task in tasks]
            keys += [(CREATES, creates[0])] if creates else []
            for key, task in keys:
                rule = self._holds.get(key)
                if rule is None or rule.times == 0:  # used up: kept until released
                    continue
                if rule.times is not None:
                    rule.times -= 1
                return task, rule
        return None

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        body = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        taken = self._take_hold(poll_tasks(body), _tasks(body, create=True))
        if taken is not None:
            task, rule = taken
            held = Held(task, int(handler.client_address[1]), time.time())
            with self._lock:
                self.held.append(held)
            if rule.then is not None:
                try:
                    rule.then(held)
                except Exception as exc:  # a test helper failed: keep serving, report it
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            rule.released.wait(rule.seconds)
        try:
            status, headers, answer = self._forward(handler, method, body)
        except OSError as exc:
            status, headers, answer = 502, {"content-type": "text/plain"}, str(exc).encode()
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("content-length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            handler.close_connection = True  # the requester is gone (killed, or timed out)

    def _forward(
        self, handler: BaseHTTPRequestHandler, method: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=UPSTREAM_TIMEOUT
        )
        try:
            headers = {
                name: value
                for name in FORWARDED_HEADERS
                if (value := handler.headers.get(name)) is not None
            }
            connection.request(method, handler.path, body=body or None, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            kept = {name: value for name in ANSWER_HEADERS if (value := response.getheader(name))}
            return response.status, kept, answer
        finally:
            connection.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.reset()
        self.server.shutdown()
        self.server.server_close()
