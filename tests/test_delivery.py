"""One webhook delivery attempt (:mod:`pollen.callbacks.delivery`) against real local servers.

Receivers listen on 127.0.0.1 and count every TCP connection they accept, so "refused by the
policy" is proved as "the listener saw nothing", not as "post() said so". Where a test needs a
name that resolves somewhere particular, ``socket.getaddrinfo`` is faked for that one name.
"""

from __future__ import annotations

import email.utils
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from pollen.addresses import AddressPolicy, pinned_request
from pollen.callbacks.delivery import MAX_RESPONSE_BYTES, Attempt, classify, post

LOOPBACK = AddressPolicy(["127.0.0.0/8"])
DEFAULT = AddressPolicy()
BODY = b'{"event": "job.completed", "job_id": "j1"}'
HEADERS = {"webhook-id": "msg_1", "content-type": "application/json"}
NOW = 1_700_000_000.0


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records requests and counts connections.

    ``respond(handler)`` writes the answer; the default answers ``status`` with ``headers``.
    """

    def __init__(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        respond: Callable[[BaseHTTPRequestHandler], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.status, self.headers = status, headers or {}
        self.respond = respond or self._answer
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.release = threading.Event()  # ends any handler that is waiting
        self.lock = threading.Lock()
        self.server = self._server(tls)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def _server(self, tls: ssl.SSLContext | None) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": _lower(self.headers.items()), "body": body}
                    )
                receiver.respond(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                conn, addr = super().get_request()
                with receiver.lock:
                    receiver.connections += 1
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                return conn, addr

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up early (timeouts, bounded reads) are expected

        return Server(("127.0.0.1", 0), Handler)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(self.status)
        for name, value in self.headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _lower(items: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the module, as a worker has one (post() pools nothing: Connection: close)."""
    with httpx.Client(trust_env=False) as client:
        yield client


def deliver(
    http: httpx.Client,
    url: str,
    *,
    policy: AddressPolicy = LOOPBACK,
    timeout: float = 2.0,
    headers: dict[str, str] | None = None,
) -> Attempt:
    return post(
        http, url, BODY, headers or HEADERS, timeout=timeout, policy=policy, clock=lambda: NOW
    )


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """getaddrinfo answers ``answers`` for those names (real lookups otherwise); logs names."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        if host not in answers:
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port))
            for ip in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


# --------------------------------------------------------------------------- outcomes


def test_2xx_is_delivered_with_body_and_headers(http: httpx.Client) -> None:
    with Receiver(204) as receiver:
        attempt = deliver(http, f"{receiver.url}/hooks/pollen?x=1")
    assert attempt.outcome == "delivered"
    assert (attempt.status_code, attempt.error, attempt.retry_after) == (204, None, None)
    assert attempt.at == NOW
    assert 0 < attempt.latency_ms < 2000
    [request] = receiver.requests
    assert request["path"] == "/hooks/pollen?x=1"
    assert request["body"] == BODY
    assert request["headers"]["webhook-id"] == "msg_1"
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["host"] == f"127.0.0.1:{receiver.port}"


@pytest.mark.parametrize(
    ("status", "outcome", "error"),
    [
        (500, "retry", "HTTP 500"),
        (502, "retry", "HTTP 502"),
        (400, "retry", "HTTP 400"),
        (404, "retry", "HTTP 404"),
        (410, "gone", "HTTP 410 Gone"),
    ],
)
def test_error_statuses(http: httpx.Client, status: int, outcome: str, error: str) -> None:
    with Receiver(status) as receiver:
        attempt = deliver(http, receiver.url)
    assert (attempt.outcome, attempt.status_code) == (outcome, status)
    assert attempt.error is not None
    assert attempt.error.startswith(error)
    assert attempt.retry_after is None
    assert len(receiver.requests) == 1


def test_429_honours_retry_after_seconds(http: httpx.Client) -> None:
    with Receiver(429, {"Retry-After": "7"}) as receiver:
        attempt = deliver(http, receiver.url)
    assert (attempt.outcome, attempt.status_code, attempt.retry_after) == ("retry", 429, 7.0)


def test_503_honours_retry_after_date_against_the_clock(http: httpx.Client) -> None:
    when = email.utils.formatdate(NOW + 90, usegmt=True)
    with Receiver(503, {"Retry-After": when}) as receiver:
        attempt = deliver(http, receiver.url)
    assert (attempt.outcome, attempt.retry_after) == ("retry", 90.0)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(http: httpx.Client, status: int) -> None:
    with Receiver() as target, Receiver(status, {"Location": f"{target.url}/moved"}) as hop:
        attempt = deliver(http, f"{hop.url}/hook")
    assert attempt.outcome == "retry"
    assert attempt.status_code == status
    assert attempt.error == f"redirect not followed (HTTP {status} to {target.url}/moved)"
    assert len(hop.requests) == 1
    assert (target.requests, target.connections) == ([], 0)


def test_slow_receiver_times_out(http: httpx.Client) -> None:
    def stall(handler: BaseHTTPRequestHandler) -> None:
        receiver.release.wait(10)

    with Receiver(respond=stall) as receiver:
        started = time.monotonic()
        attempt = deliver(http, receiver.url, timeout=0.3)
        elapsed = time.monotonic() - started
    assert attempt.outcome == "retry"
    assert attempt.status_code is None
    assert attempt.error == "timed out after 0.3s (ReadTimeout)"
    assert 280 <= attempt.latency_ms <= 1500
    assert elapsed < 2
    assert len(receiver.requests) == 1


def test_connection_refused_is_retried(http: httpx.Client) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    attempt = deliver(http, f"http://127.0.0.1:{port}/")
    assert attempt.outcome == "retry"
    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("ConnectError")


def test_dns_failure_is_retried(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    attempt = deliver(http, "https://hooks.example.com/x", policy=DEFAULT)
    assert attempt.outcome == "retry"
    assert attempt.error is not None
    assert attempt.error.startswith("DNS lookup failed")
    assert "Temporary failure" in attempt.error


def test_response_body_read_is_bounded(http: httpx.Client) -> None:
    total = 64 * 1024 * 1024
    written: list[int] = []
    finished = threading.Event()

    def flood(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-length", str(total))
        handler.end_headers()
        sent = 0
        try:
            chunk = b"x" * (256 * 1024)
            while sent < total:
                handler.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            written.append(sent)
            finished.set()

    with Receiver(respond=flood) as receiver:
        attempt = deliver(http, receiver.url)
        assert finished.wait(5)
    assert (attempt.outcome, attempt.status_code) == ("delivered", 200)
    # The receiver could not push the whole body: pollen hung up after MAX_RESPONSE_BYTES
    # (what it did manage to write sits in socket buffers).
    assert written[0] < total // 2
    assert MAX_RESPONSE_BYTES == 64 * 1024


# --------------------------------------------------------------------------- the SSRF property


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:{port}/", "http://localhost:{port}/", "http://2130706433:{port}/"],
)
def test_loopback_listener_gets_nothing_without_an_allowlist(http: httpx.Client, url: str) -> None:
    with Receiver() as receiver:
        attempt = deliver(http, url.format(port=receiver.port), policy=DEFAULT)
    assert attempt.outcome == "failed"
    assert attempt.status_code is None
    assert attempt.error is not None
    assert "loopback" in attempt.error
    assert (receiver.requests, receiver.connections) == ([], 0)


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/", "http://2130706433:{port}/"])
def test_same_urls_are_delivered_when_loopback_is_allowlisted(http: httpx.Client, url: str) -> None:
    """The control for the test above: these URLs do reach the listener when allowed."""
    with Receiver() as receiver:
        attempt = deliver(http, url.format(port=receiver.port), policy=LOOPBACK)
    assert attempt.outcome == "delivered"
    assert receiver.connections == 1


class NoUrlCheck(AddressPolicy):
    """A policy whose submission check passes everything, so only resolve() guards."""

    def check_url(self, url: str) -> str:
        return url


def test_localhost_is_refused_at_connect_time_too(http: httpx.Client) -> None:
    """Even past check_url (a URL accepted under an older policy), resolve() refuses."""
    with Receiver() as receiver:
        attempt = deliver(http, f"http://localhost:{receiver.port}/", policy=NoUrlCheck())
    assert attempt.outcome == "failed"
    assert (
        attempt.error
        == "callback host 'localhost' resolves to 127.0.0.1, which is refused: loopback; to "
        "allow it, add its network to POLLEN_CALLBACKS__ALLOW_CIDRS"
    )
    assert (receiver.requests, receiver.connections) == ([], 0)


@pytest.mark.parametrize(
    "answer", [["127.0.0.1"], ["93.184.215.14", "127.0.0.1"], ["169.254.169.254"]]
)
def test_public_name_resolving_to_internal_addresses_is_refused(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> None:
    with Receiver() as receiver:
        fake_dns(monkeypatch, {"hooks.example.com": answer})
        attempt = deliver(http, f"http://hooks.example.com:{receiver.port}/", policy=DEFAULT)
    assert attempt.outcome == "failed"
    assert attempt.error is not None
    assert "'hooks.example.com' resolves to" in attempt.error
    assert (receiver.requests, receiver.connections) == ([], 0)


def test_name_is_resolved_once_and_the_address_pinned(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Receiver() as receiver:
        asked = fake_dns(monkeypatch, {"hooks.example.com": ["127.0.0.1"]})
        attempt = deliver(http, f"http://hooks.example.com:{receiver.port}/cb?job=j1")
    assert attempt.outcome == "delivered"
    assert asked.count("hooks.example.com") == 1  # httpx connected to the IP, not the name
    [request] = receiver.requests
    assert request["headers"]["host"] == f"hooks.example.com:{receiver.port}"
    assert request["path"] == "/cb?job=j1"


def test_host_header_without_explicit_port(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"hooks.example.com": ["127.0.0.1"]})
    request = pinned_request(
        "http://hooks.example.com/x", BODY, {"Host": "evil"}, timeout=1, policy=LOOPBACK
    )
    assert request.headers.get_list("host") == ["hooks.example.com"]
    assert str(request.url) == "http://127.0.0.1/x"
    assert "sni_hostname" not in request.extensions


def test_ipv6_address_is_bracketed(monkeypatch: pytest.MonkeyPatch) -> None:
    def six(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800:21f::1", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", six)
    request = pinned_request(
        "https://hooks.example.com:8443/x", BODY, HEADERS, timeout=1, policy=DEFAULT
    )
    assert str(request.url) == "https://[2606:2800:21f::1]:8443/x"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


def test_client_defaults_do_not_reach_the_receiver() -> None:
    secret = {"Authorization": "Bearer provider-key", "X-Api-Key": "k"}
    with (
        httpx.Client(trust_env=False, headers=secret, cookies={"session": "s"}) as http,
        Receiver() as receiver,
    ):
        attempt = deliver(http, receiver.url)
    assert attempt.outcome == "delivered"
    sent = set(receiver.requests[0]["headers"])
    assert not sent & {"authorization", "x-api-key", "cookie"}
    assert "webhook-id" in sent


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "http://user:pw@example.com/", "http://0177.0.0.1/"]
)
def test_policy_refusals_are_failed_not_retried(http: httpx.Client, url: str) -> None:
    attempt = deliver(http, url, policy=DEFAULT)
    assert attempt.outcome == "failed"
    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("callback")


# --------------------------------------------------------------------------- https (SNI)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.example.com (its own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=hooks.example.com",
            "-addext",
            "subjectAltName=DNS:hooks.example.com",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def tls_receiver(certificate: tuple[Path, Path], names: list[str | None]) -> Receiver:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)

    def record(sock: Any, name: str | None, ctx: Any) -> None:
        names.append(name)

    context.sni_callback = record
    return Receiver(tls=context)


@pytest.mark.parametrize(
    ("name", "delivered"), [("hooks.example.com", True), ("other.test", False)]
)
def test_https_pins_the_address_and_verifies_the_real_name(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, name: str, delivered: bool
) -> None:
    names: list[str | None] = []
    verify = ssl.create_default_context(cafile=str(certificate[0]))
    with (
        httpx.Client(trust_env=False, verify=verify) as http,
        tls_receiver(certificate, names) as receiver,
    ):
        fake_dns(monkeypatch, {name: ["127.0.0.1"]})
        attempt = deliver(http, f"https://{name}:{receiver.port}/tls")
    assert names == [name]  # SNI carried the real name, not 127.0.0.1
    if delivered:
        assert (attempt.outcome, attempt.status_code) == ("delivered", 200)
        assert receiver.requests[0]["headers"]["host"] == f"{name}:{receiver.port}"
    else:
        assert attempt.outcome == "retry"
        assert attempt.error is not None
        assert "CERTIFICATE_VERIFY_FAILED" in attempt.error
        assert receiver.requests == []


# --------------------------------------------------------------------------- records


def test_attempt_round_trips_through_json() -> None:
    attempt = Attempt(NOW, 429, 12.5, "HTTP 429", 7.0, "retry")
    stored = json.dumps(attempt.to_dict())
    assert json.loads(stored) == {
        "at": NOW,
        "status_code": 429,
        "latency_ms": 12.5,
        "error": "HTTP 429",
        "retry_after": 7.0,
        "outcome": "retry",
    }
    assert Attempt(**json.loads(stored)) == attempt


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {}, ("delivered", None, None)),
        (299, {}, ("delivered", None, None)),
        (301, {}, ("retry", "redirect not followed (HTTP 301 without a Location)", None)),
        (503, {}, ("retry", "HTTP 503", None)),
        (503, {"retry-after": "garbage"}, ("retry", "HTTP 503", None)),
        (500, {"retry-after": "9"}, ("retry", "HTTP 500", None)),
        (429, {"retry-after": "1e9"}, ("retry", "HTTP 429", 3600.0)),
    ],
)
def test_classify(status: int, headers: dict[str, str], expected: tuple[Any, ...]) -> None:
    assert classify(status, headers, now=NOW) == expected


def test_long_location_is_truncated() -> None:
    _, error, _ = classify(302, {"location": "http://x/" + "a" * 5000})
    assert error is not None
    assert len(error) < 260
