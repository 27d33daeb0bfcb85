"""Which destinations pollen may send to (the SSRF guard), and requests pinned to them.

A producer chooses the callback URL, and a provider the URL of a result file; pollen's workers
send to them from inside the cluster, so a URL pointing at Redis, the cloud metadata service or
an admin port must be refused. Two checks, both through one :class:`AddressPolicy`:

- :meth:`AddressPolicy.check_url` at submission: scheme, shape, and IP literals in every form
  the OS or a browser accepts (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``,
  ``[::ffff:127.0.0.1]``). No DNS here.
- :meth:`AddressPolicy.resolve` at connect time: every address a name resolves to must pass
  :meth:`AddressPolicy.check_ip`; :func:`pinned_request` then connects to one of those exact
  addresses, so a DNS answer cannot change between check and connect. The lookup has the
  request's timeout (:class:`pollen.lookup.Lookup`), and the request only what it left.

An address passes if it is globally routable public unicast, or inside an allowlisted CIDR.
IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, SIIT, NAT64 64:ff9b::/96,
6to4, Teredo) are judged by the IPv4 inside them. The allowlist is matched against the address
as connected and only that: allowing ``127.0.0.0/8`` does not allow ``::ffff:127.0.0.1``; list
``::ffff:127.0.0.0/104`` as well if that form must pass.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import httpx

from pollen.errors import InvalidJob
from pollen.lookup import Lookup

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
#: how long :meth:`AddressPolicy.resolve` waits for an answer unless told, seconds
LOOKUP_TIMEOUT = 10.0
#: the least a request is given after a slow lookup, seconds
MIN_REQUEST_TIMEOUT = 0.001
SCHEMES = frozenset({"http", "https"})

_V4_BLOCKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified ('this network', 0.0.0.0/8)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT, RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (includes cloud metadata 169.254.169.254)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (includes broadcast 255.255.255.255)"),
)
_V6_BLOCKS: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001:2::/48", "benchmarking (RFC 5180)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_V4_TABLE = tuple((ipaddress.IPv4Network(net), why) for net, why in _V4_BLOCKS)
_V6_TABLE = tuple((ipaddress.IPv6Network(net), why) for net, why in _V6_BLOCKS)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACKS = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))

# Names that only mean something inside a machine or a private network.
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_LOOPBACK_SUFFIXES = (".localhost",)
_INTERNAL_NAMES = ("metadata", "instance-data")
_INTERNAL_SUFFIXES = (".internal", ".local", ".localdomain", ".home.arpa", ".intranet", ".lan")

# A label that makes the whole host an IPv4 address to a URL parser (WHATWG "ends in a number").
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


#: the settings that hold the allow-lists, named in each refusal an allow-list could lift
CALLBACKS_SETTING = "POLLEN_CALLBACKS__ALLOW_CIDRS"
STORAGE_SETTING = "POLLEN_STORAGE__ALLOW_CIDRS"


class UnsafeCallbackURL(InvalidJob):
    """A callback URL or address pollen refuses to send to (SSRF guard)."""


class AddressPolicy:
    """Allowed callback destinations: public unicast addresses plus allowlisted CIDRs."""

    def __init__(
        self,
        allow: Sequence[str] = (),
        *,
        setting: str = CALLBACKS_SETTING,
        lookup: Lookup | None = None,
    ) -> None:
        if isinstance(allow, str):
            raise TypeError("allow must be a sequence of CIDR strings, not one string")
        self.allow: tuple[IPNetwork, ...] = tuple(_network(cidr) for cidr in allow)
        #: the environment variable that holds ``allow``, named in the refusals it could lift
        self.setting = setting
        #: how names are looked up (bounded in time and threads; share one per process)
        self.lookup = lookup or Lookup()

    def __repr__(self) -> str:
        return f"AddressPolicy(allow={[str(net) for net in self.allow]!r})"

    def allows(self, ip: IPAddress) -> bool:
        """True if ``ip`` (as connected) is inside an allowlisted CIDR."""
        return any(ip in net for net in self.allow)

    def check_ip(self, ip: str | IPAddress) -> None:
        """Raise UnsafeCallbackURL unless ``ip`` is public unicast or allowlisted."""
        address = _address(ip)
        reason = self._refusal(address)
        if reason is not None:
            raise UnsafeCallbackURL(f"callback address {address} refused: {reason}{self._lift()}")

    def check_url(self, url: str) -> str:
        """Return ``url`` unchanged if pollen may POST to it; UnsafeCallbackURL otherwise.

        Checks the URL's shape and any IP literal host; no DNS (see :meth:`resolve`).
        """
        host, bracketed = _split(url)
        if bracketed:
            self.check_ip(_bracketed_ip(host))
            return url
        ascii_host = _ascii_host(host)
        literal = _ipv4_literal(ascii_host)
        if literal is not None:
            self.check_ip(literal)
        else:
            self._check_name(ascii_host)
        return url

    def resolve(self, host: str, port: int, *, timeout: float = LOOKUP_TIMEOUT) -> list[str]:
        """Every address ``host`` resolves to, each vetted; refuses if any one is unsafe.

        ``socket.gaierror`` and :class:`~pollen.lookup.LookupFailed` (no answer within
        ``timeout`` seconds), both OSErrors, propagate: a name that does not resolve now may
        later.
        """
        host = host.removeprefix("[").removesuffix("]")
        try:
            infos = self.lookup(host, port, timeout=timeout)
        except UnicodeError:  # the idna codec refused the name (empty or over-long label)
            raise UnsafeCallbackURL(f"callback host {host!r} is not a valid name") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise socket.gaierror(f"{host!r} resolved to no addresses")
        for address in addresses:
            reason = self._refusal(_address(address))
            if reason is not None:
                raise UnsafeCallbackURL(
                    f"callback host {host!r} resolves to {address}, which is refused: "
                    f"{reason}{self._lift()}"
                )
        return addresses

    def _lift(self, network: str = "its network") -> str:
        """How to allow a refused destination: what to add to which setting."""
        return f"; to allow it, add {network} to {self.setting}"

    def _refusal(self, ip: IPAddress) -> str | None:
        return None if self.allows(ip) else unsafe_reason(ip)

    def _check_name(self, host: str) -> None:
        name = host.removesuffix(".")
        if _is_loopback_name(name):
            if not any(self.allows(ip) for ip in _LOOPBACKS):
                raise UnsafeCallbackURL(
                    f"callback host {host!r} is a loopback name{self._lift('127.0.0.0/8')}"
                )
        elif _is_internal_name(name) and not self.allow:
            raise UnsafeCallbackURL(
                f"callback host {host!r} is an internal-only name (metadata, *.internal, "
                f"*.local, single-label){self._lift('the network it lives in')}"
            )


def unsafe_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not public unicast, or None if it is (the allowlist is not consulted)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_reason(ip)
    embedded = list(_embedded_ipv4(ip))
    for label, inner in embedded:
        reason = _v4_reason(inner)
        if reason is not None:
            return f"it embeds {label} {inner}, which is {reason}"
    if embedded:
        return None
    for net, why in _V6_TABLE:
        if ip in net:
            return why
    if ip not in _GLOBAL_UNICAST_V6 or not ip.is_global:
        return "not globally routable unicast"
    return None


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for net, why in _V4_TABLE:
        if ip in net:
            return why
    return None if ip.is_global else "not globally routable"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> Iterator[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries (none for plain IPv6)."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        yield "IPv4-mapped", ip.ipv4_mapped
    elif ip in _TRANSLATED:
        yield "IPv4-translated", low32
    elif ip in _NAT64:
        yield "NAT64", low32
    elif ip in _COMPATIBLE and int(ip) > 1:
        yield "IPv4-compatible", low32
    elif ip.sixtofour is not None:
        yield "6to4", ip.sixtofour
    elif ip.teredo is not None:
        server, client = ip.teredo
        yield "Teredo server", server
        yield "Teredo client", client


def _network(cidr: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(cidr.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"bad allowlist CIDR {cidr!r}: {exc}") from None


def _address(ip: str | IPAddress) -> IPAddress:
    if not isinstance(ip, str):
        return ip
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        raise UnsafeCallbackURL(f"callback address {ip!r} is not an IP address") from None


def _split(url: str) -> tuple[str, bool]:
    """The host of an acceptable-looking URL and whether it was bracketed (IPv6)."""
    if not isinstance(url, str) or not url:
        raise UnsafeCallbackURL("callback URL must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeCallbackURL(f"callback URL is longer than {MAX_URL_LENGTH} characters")
    if _FORBIDDEN_CHARS.search(url):
        raise UnsafeCallbackURL("callback URL contains whitespace, control characters or '\\'")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeCallbackURL(f"callback URL is malformed: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise UnsafeCallbackURL(f"callback URL scheme must be http or https, not {parts.scheme!r}")
    if "@" in parts.netloc:
        raise UnsafeCallbackURL("callback URL must not carry credentials (user:pass@)")
    host, bracketed, port = _netloc(parts.netloc)
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise UnsafeCallbackURL(f"callback URL port must be 1..65535, not {port!r}")
    if not host:
        raise UnsafeCallbackURL("callback URL has no host")
    return (host if bracketed else host.lower()), bracketed


def _netloc(netloc: str) -> tuple[str, bool, str]:
    """Host, whether it was bracketed, and port text ('' for the scheme's default)."""
    if not netloc.startswith("["):
        host, _, port = netloc.partition(":")  # a second ':' stays in port and fails its check
        return host, False, port
    host, closed, rest = netloc[1:].partition("]")
    if not closed or (rest and not rest.startswith(":")):
        raise UnsafeCallbackURL(f"callback URL host {netloc!r} is malformed")
    return host, True, rest[1:]


def _bracketed_ip(host: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(unquote(host))
    except ValueError:
        raise UnsafeCallbackURL(f"callback host [{host}] is not an IPv6 address") from None


def _ascii_host(host: str) -> str:
    """The host as a URL parser would connect to it: IDNA-mapped, lower case ASCII."""
    if "%" in host:
        raise UnsafeCallbackURL(f"callback host {host!r} must not be percent-encoded")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise UnsafeCallbackURL(f"callback host {host!r} is not a valid name") from None
    if not _HOST_NAME.fullmatch(host.removesuffix(".")):
        raise UnsafeCallbackURL(f"callback host {host!r} is not a valid name")
    return host


def _ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host means in any legacy form, None for a real name."""
    labels = host.removesuffix(".").split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    try:
        if len(labels) <= 4 and all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
            return ipaddress.IPv4Address(socket.inet_aton(host.removesuffix(".")))
    except OSError:
        pass
    raise UnsafeCallbackURL(f"callback host {host!r} is numeric but not a valid IPv4 address")


def _is_loopback_name(name: str) -> bool:
    return name in _LOOPBACK_NAMES or name.endswith(_LOOPBACK_SUFFIXES)


def _is_internal_name(name: str) -> bool:
    return "." not in name or name in _INTERNAL_NAMES or name.endswith(_INTERNAL_SUFFIXES)


def pinned_request(
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    *,
    timeout: float,
    policy: AddressPolicy,
    method: str = "POST",
) -> httpx.Request:
    """A POST (or ``method``) to the first vetted address of ``url``'s host, carrying the
    original Host/SNI (callbacks POST through it; re-hosting fetches result files with GET).

    Only ``headers`` (names lower-cased) travel, plus Host and ``Connection: close``: no
    client defaults. Raises UnsafeCallbackURL (policy), httpx.InvalidURL, or OSError (DNS).
    The lookup may take up to ``timeout`` seconds; the request's timeouts are what it left.
    """
    policy.check_url(url)
    target = httpx.URL(url)
    host = target.raw_host.decode("ascii")
    port = target.port or (443 if target.scheme == "https" else 80)
    started = time.monotonic()
    address = policy.resolve(host, port, timeout=timeout)[0]
    left = max(timeout - (time.monotonic() - started), MIN_REQUEST_TIMEOUT)
    extensions: dict[str, Any] = {"timeout": httpx.Timeout(left).as_dict()}
    if target.scheme == "https":
        extensions["sni_hostname"] = host
    sent_headers = {k.lower(): v for k, v in headers.items()}
    # The Host header names the original host; Connection: close keeps a connection opened
    # for one SNI name out of the pool, where it could be reused for another name on that IP.
    sent_headers |= {"host": target.netloc.decode("ascii"), "connection": "close"}
    return httpx.Request(
        method,
        target.copy_with(host=address),
        content=body,
        headers=sent_headers,
        extensions=extensions,
    )
