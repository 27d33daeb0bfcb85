"""The callback SSRF guard (:mod:`pollen.addresses`): submission-time URL checks,
address rules, the allowlist, and connect-time resolution (with ``socket.getaddrinfo`` faked
where a test needs a particular DNS answer).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from pollen.addresses import (
    CALLBACKS_SETTING,
    STORAGE_SETTING,
    AddressPolicy,
    UnsafeCallbackURL,
    unsafe_reason,
)
from pollen.errors import InvalidJob

DEFAULT = AddressPolicy()

# (url, words the refusal must contain)
HOSTILE: list[tuple[str, str]] = [
    # loopback, every spelling
    ("http://127.0.0.1/", "127.0.0.1 refused: loopback"),
    ("http://127.0.0.1:6379/", "loopback"),
    ("http://2130706433/", "127.0.0.1 refused: loopback"),
    ("http://0x7f000001/", "127.0.0.1 refused: loopback"),
    ("http://0177.0.0.1/", "127.0.0.1 refused: loopback"),
    ("http://127.1/", "127.0.0.1 refused: loopback"),
    ("http://0x7f.0.0.1/", "127.0.0.1 refused: loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/", "127.0.0.1 refused"),
    ("http://[::1]/", "::1 refused: loopback"),
    ("http://[0:0:0:0:0:0:0:1]:8080/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped 127.0.0.1, which is loopback"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped 127.0.0.1"),
    ("http://[::127.0.0.1]/", "IPv4-compatible 127.0.0.1"),
    ("http://[::ffff:0:a00:1]/", "IPv4-translated 10.0.0.1, which is private"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 169.254.169.254, which is link-local"),
    ("http://[2002:c0a8:101::1]/", "6to4 192.168.1.1, which is private"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "Teredo client 127.0.0.1"),
    ("http://localhost/", "loopback name"),
    ("http://LOCALHOST:8080/", "loopback name"),
    ("http://localhost./", "loopback name"),
    ("http://api.localhost/", "loopback name"),
    # unspecified / this network
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "0.0.0.0 refused: unspecified"),
    ("http://[::]/", ":: refused: unspecified"),
    # private, CGNAT, link-local, metadata
    ("http://10.1.2.3/", "private (RFC 1918)"),
    ("http://172.31.255.255/", "private (RFC 1918)"),
    ("http://192.168.0.1/", "private (RFC 1918)"),
    ("http://0xc0a80001/", "192.168.0.1 refused: private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://100.100.100.200/", "CGNAT"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://2852039166/", "169.254.169.254 refused: link-local"),
    ("http://[fd00:ec2::254]/", "unique local"),
    ("http://[fc00::1]/", "unique local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://metadata.google.internal/computeMetadata/v1/", "internal-only name"),
    ("http://metadata/", "internal-only name"),
    ("http://instance-data/", "internal-only name"),
    ("http://printer.local/", "internal-only name"),
    ("http://redis:6379/", "internal-only name"),
    # multicast, reserved, broadcast, documentation, benchmarking
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.2.10/", "documentation"),
    ("http://203.0.113.5/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://192.0.0.192/", "IETF protocol assignments"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[100::1]/", "discard-only"),
    ("http://[4000::1]/", "not globally routable"),
    # malformed numeric hosts a URL parser would still treat as IPv4
    ("http://1.2.3.999/", "numeric but not a valid IPv4"),
    ("http://1.2.3.4.5/", "numeric but not a valid IPv4"),
    ("http://08.0.0.1/", "numeric but not a valid IPv4"),
    ("http://evil.example.123/", "numeric but not a valid IPv4"),
    # shape: userinfo, scheme, host, port, length, characters
    ("http://user:pass@example.com/", "credentials"),
    ("http://example.com@127.0.0.1/", "credentials"),
    ("http://@example.com/", "credentials"),
    ("ftp://example.com/file", "scheme must be http or https, not 'ftp'"),
    ("javascript:alert(1)", "not 'javascript'"),
    ("file:///etc/passwd", "not 'file'"),
    ("gopher://127.0.0.1:6379/_INFO", "not 'gopher'"),
    ("example.com/hook", "not ''"),
    ("//example.com/hook", "not ''"),
    ("http:///hook", "no host"),
    ("http://:8080/hook", "no host"),
    ("http://example.com:0/", "port must be 1..65535"),
    ("http://example.com:65536/", "port must be 1..65535"),
    ("http://example.com:-1/", "port must be 1..65535"),
    ("http://example.com:http/", "port must be 1..65535"),
    ("http://[::1]:99999/", "port must be 1..65535"),
    ("http://example.com/" + "a" * 2030, "longer than 2048"),
    ("http://example.com\\@127.0.0.1/", "'\\'"),
    ("http://exa mple.com/", "whitespace"),
    ("http://example.com/\n", "control characters"),
    (" http://example.com/", "whitespace"),
    ("http://%6c%6fcalhost/", "percent-encoded"),
    ("http://exa$mple.com/", "not a valid name"),
    ("http://[127.0.0.1]/", "malformed"),
    ("http://[v1.fe80::1]/", "not an IPv6 address"),
    ("http://[::1/", "malformed"),
    ("", "non-empty string"),
]

GOOD = [
    "https://example.com/hooks/pollen",
    "http://example.com:8080/x?y=1#frag",
    "HTTPS://Hooks.Example.COM./path",
    "https://a-b_c.example.co.uk/",
    "http://example.com:/default-port",
    "https://b\u00fccher.de/webhook",
    "https://8.8.8.8/hook",
    "http://134744072/",  # 8.8.8.8 in decimal: odd but public
    "https://[2606:4700:4700::1111]:8443/hook",
    "https://[::ffff:8.8.8.8]/",  # IPv4-mapped, judged by the public IPv4 inside
    "https://[64:ff9b::808:808]/",  # NAT64 of a public address (IPv6-only clusters)
    "https://[2002:808:808::1]/",  # 6to4 of a public address
    "https://example.com/" + "a" * (2048 - len("https://example.com/")),
]


@pytest.mark.parametrize(("url", "why"), HOSTILE)
def test_hostile_urls_are_refused_at_submission(url: str, why: str) -> None:
    with pytest.raises(UnsafeCallbackURL) as caught:
        DEFAULT.check_url(url)
    assert why in str(caught.value)


def test_the_hostile_table_is_broad() -> None:
    assert len(HOSTILE) >= 25
    assert len({url for url, _ in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("url", GOOD)
def test_good_urls_are_returned_unchanged(url: str) -> None:
    assert DEFAULT.check_url(url) == url


def test_refusal_is_an_invalid_job() -> None:
    with pytest.raises(InvalidJob):
        DEFAULT.check_url("http://127.0.0.1/")
    assert issubclass(UnsafeCallbackURL, ValueError)


def test_check_url_does_no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("DNS lookup at submission time")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket, "gethostbyname", no_dns)
    assert DEFAULT.check_url("https://hooks.example.com/x") == "https://hooks.example.com/x"


# --------------------------------------------------------------------------- allowlist

LOOPBACK = AddressPolicy(["127.0.0.0/8"])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://LocalHost:8080/x",
        "http://dev.localhost/x",
        "http://2130706433/x",
        "http://127.1/x",
    ],
)
def test_loopback_allowlist_re_enables_loopback(url: str) -> None:
    assert LOOPBACK.check_url(url) == url
    with pytest.raises(UnsafeCallbackURL):
        DEFAULT.check_url(url)


@pytest.mark.parametrize(
    "url", ["http://[::1]/x", "http://[::ffff:127.0.0.1]/x", "http://10.0.0.1/x"]
)
def test_loopback_v4_allowlist_does_not_cover_other_forms(url: str) -> None:
    with pytest.raises(UnsafeCallbackURL):
        LOOPBACK.check_url(url)


def test_ipv6_loopback_needs_its_own_entry() -> None:
    v6 = AddressPolicy(["::1/128"])
    assert v6.check_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert v6.check_url("http://localhost/x") == "http://localhost/x"
    with pytest.raises(UnsafeCallbackURL):
        v6.check_url("http://127.0.0.1/x")


def test_mapped_form_is_allowed_only_when_listed_as_connected() -> None:
    mapped = AddressPolicy(["::ffff:127.0.0.0/104"])
    mapped.check_ip("::ffff:127.0.0.1")
    with pytest.raises(UnsafeCallbackURL):
        mapped.check_ip("127.0.0.1")


def test_any_allowlist_admits_internal_names_but_not_loopback_names() -> None:
    corp = AddressPolicy(["10.20.0.0/16"])
    assert corp.check_url("http://hooks.corp.internal/x") == "http://hooks.corp.internal/x"
    assert corp.check_url("http://receiver:8080/x") == "http://receiver:8080/x"
    corp.check_ip("10.20.3.4")
    with pytest.raises(UnsafeCallbackURL):
        corp.check_ip("10.21.0.1")
    with pytest.raises(UnsafeCallbackURL, match="loopback name"):
        corp.check_url("http://localhost/x")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1/", "callback address 127.0.0.1 refused: loopback; to allow it, add "
         "its network to POLLEN_CALLBACKS__ALLOW_CIDRS"),
        ("http://[::ffff:10.0.0.1]/", "which is private (RFC 1918); to allow it, add its "
         "network to POLLEN_CALLBACKS__ALLOW_CIDRS"),
        ("http://localhost/", "callback host 'localhost' is a loopback name; to allow it, add "
         "127.0.0.0/8 to POLLEN_CALLBACKS__ALLOW_CIDRS"),
        ("http://receiver:8080/", "single-label); to allow it, add the network it lives in to "
         "POLLEN_CALLBACKS__ALLOW_CIDRS"),
    ],
)  # fmt: skip
def test_a_refusal_the_allowlist_could_lift_names_its_setting(url: str, says: str) -> None:
    with pytest.raises(UnsafeCallbackURL) as caught:
        DEFAULT.check_url(url)
    assert str(caught.value).endswith(says)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "http://user:pw@example.com/", "http://example.com:99999/"]
)
def test_a_refusal_no_allowlist_could_lift_does_not_name_it(url: str) -> None:
    with pytest.raises(UnsafeCallbackURL) as caught:
        DEFAULT.check_url(url)
    assert "ALLOW_CIDRS" not in str(caught.value)


def test_each_policy_names_its_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"files.example.com": ["10.1.2.3"]})
    fetch = AddressPolicy(setting=STORAGE_SETTING)
    with pytest.raises(UnsafeCallbackURL) as caught:
        fetch.resolve("files.example.com", 443)
    assert str(caught.value) == (
        "callback host 'files.example.com' resolves to 10.1.2.3, which is refused: private "
        "(RFC 1918); to allow it, add its network to POLLEN_STORAGE__ALLOW_CIDRS"
    )
    assert CALLBACKS_SETTING not in str(caught.value)


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "300.0.0.0/8", "localhost", "::1/129", ""])
def test_bad_allowlist_entries_raise(cidr: str) -> None:
    with pytest.raises(ValueError, match="bad allowlist CIDR"):
        AddressPolicy([cidr])


def test_a_single_string_is_not_an_allowlist() -> None:
    with pytest.raises(TypeError):
        AddressPolicy("127.0.0.0/8")


# --------------------------------------------------------------------------- check_ip


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        ipaddress.ip_address("93.184.215.14"),
    ],
)
def test_public_unicast_passes(ip: str) -> None:
    DEFAULT.check_ip(ip)
    assert unsafe_reason(ipaddress.ip_address(ip)) is None


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("127.0.0.53", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("fe80::1%eth0", "link-local"),
        ("::ffff:169.254.169.254", "IPv4-mapped 169.254.169.254"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("255.255.255.255", "broadcast"),
        ("not-an-ip", "not an IP address"),
    ],
)
def test_check_ip_refuses_with_the_reason(ip: str, why: str) -> None:
    with pytest.raises(UnsafeCallbackURL) as caught:
        DEFAULT.check_ip(ip)
    assert why in str(caught.value)
    assert str(caught.value).startswith("callback address ")


# --------------------------------------------------------------------------- resolve


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Answer getaddrinfo for the given names; record every name asked."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        if host not in answers:
            return real(host, port, *args, **kwargs)
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (ip, port, 0, 0) if ":" in ip else (ip, port),
            )
            for ip in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_resolve_returns_every_vetted_address(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(
        monkeypatch, {"hooks.example.com": ["93.184.215.14", "2606:2800:21f::1", "93.184.215.14"]}
    )
    assert DEFAULT.resolve("hooks.example.com", 443) == ["93.184.215.14", "2606:2800:21f::1"]
    assert asked == ["hooks.example.com"]


@pytest.mark.parametrize(
    "answer",
    [["93.184.215.14", "127.0.0.1"], ["10.0.0.5"], ["2606:2800:21f::1", "::ffff:169.254.169.254"]],
)
def test_resolve_refuses_if_any_answer_is_unsafe(
    monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> None:
    fake_dns(monkeypatch, {"rebind.example.com": answer})
    with pytest.raises(UnsafeCallbackURL, match=r"'rebind\.example\.com' resolves to .* refused: "):
        DEFAULT.resolve("rebind.example.com", 80)


def test_resolve_real_localhost() -> None:
    with pytest.raises(UnsafeCallbackURL, match="loopback"):
        DEFAULT.resolve("localhost", 80)
    assert AddressPolicy(["127.0.0.0/8", "::1/128"]).resolve("localhost", 80)


def test_resolve_accepts_numeric_forms_and_still_checks_them() -> None:
    assert LOOPBACK.resolve("2130706433", 80) == ["127.0.0.1"]
    assert LOOPBACK.resolve("[127.0.0.1]", 80) == ["127.0.0.1"]
    with pytest.raises(UnsafeCallbackURL, match="loopback"):
        DEFAULT.resolve("2130706433", 80)


def test_resolve_lets_dns_failure_through_as_oserror(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    with pytest.raises(OSError, match="not known"):
        DEFAULT.resolve("nowhere.example.com", 80)


def test_resolve_refuses_names_the_resolver_cannot_encode() -> None:
    with pytest.raises(UnsafeCallbackURL, match="not a valid name"):
        DEFAULT.resolve("a" * 64 + ".example.com", 80)
