"""SSRF guard for webhook endpoint URLs.

Webhook URLs are supplied by API callers, who must not be able to make this service call its own
loopback, the private network or a cloud metadata endpoint. URLs are checked at registration and
again at send time, and the request goes to the exact IP that was checked, so a name re-resolving
to a private address later (DNS rebinding) cannot slip through; every address a name resolves to
must be safe. `allowed` entries ("127.0.0.1,::1,localhost,10.1.0.0/16") are IPs, CIDR networks
or hostnames; allow-listed hosts may use plain http and private addresses.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
_net = ipaddress.ip_network
METADATA = frozenset(map(ipaddress.ip_address, (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")))
THIS_NETWORK = _net("0.0.0.0/8")
SHARED = _net("100.64.0.0/10")
PRIVATE = tuple(map(_net, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")))
IPV4_COMPATIBLE = _net("::/96")  # deprecated ::a.b.c.d form
NAT64 = _net("64:ff9b::/96")
# IANA special-purpose blocks that some Python versions' tables call global (192.0.0.192 is a
# cloud metadata address in one provider).
SPECIAL = tuple(map(_net, ("192.0.0.0/24", "198.18.0.0/15", "2001::/23")))


class UnsafeURL(ValueError):
    """A webhook URL that must not be requested; `reason` is a short sentence for an API error."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    url: str  # original URL with the host replaced by the checked IP literal
    host_header: str  # original host, plus ":port" if the URL had an explicit port
    sni_hostname: str | None  # hostname for TLS SNI/certificate checks (https + hostname only)
    address: str  # the checked IP to connect to


@functools.lru_cache(maxsize=32)
def _parse_allowed(allowed: tuple[str, ...]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    networks: list[IPNetwork] = []
    names: set[str] = set()
    for entry in filter(None, (e.strip().lower() for e in allowed)):
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return tuple(networks), frozenset(names)


def _show(ip: IPAddress) -> str:
    """Text form; IPv4-mapped as ::ffff:a.b.c.d (Python < 3.13 prints it in hex)."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address really reaches (mapped, 6to4, NAT64), else `ip` itself."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ip
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour or ip


def _unsafe_kind(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> str | None:
    """None when `ip` may be contacted, else the kind of address it is (for the error)."""
    real = _unwrap(ip)
    if any(ip in n or real in n for n in networks):
        return None
    checks = (("cloud metadata", ip in METADATA or real in METADATA),
              ("unspecified", real.is_unspecified or real in THIS_NETWORK), ("loopback", real.is_loopback),
              ("link-local", real.is_link_local), ("multicast", real.is_multicast),
              ("shared (carrier-grade NAT)", real in SHARED), ("private", any(real in n for n in PRIVATE)),
              ("reserved", real.is_reserved or real in IPV4_COMPATIBLE or any(real in n for n in SPECIAL)),
              ("non-public", not real.is_global))
    return next((kind for kind, hit in checks if hit), None)


def _split(url: str, allowed: tuple[str, ...]) -> tuple[SplitResult, str, IPAddress | None, bool]:
    """Validated parts, host (lowercase, no trailing dot, IDNA), IP if a literal, allow-listed?"""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise UnsafeURL("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UnsafeURL("URL is malformed") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise UnsafeURL("URL must be absolute, e.g. https://example.com/hook")
    if scheme not in ("http", "https"):
        raise UnsafeURL(f"scheme '{scheme}' is not allowed; use https")
    if "@" in parts.netloc:
        raise UnsafeURL("credentials in the URL are not allowed")
    if "#" in url:
        raise UnsafeURL("a fragment (#...) is not allowed in the URL")
    try:
        if parts.port == 0:
            raise ValueError
    except ValueError:
        raise UnsafeURL("URL has an invalid port") from None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("URL has no host")
    networks, names = _parse_allowed(allowed)
    ip: IPAddress | None = None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeURL("URL host is not a valid hostname") from None
    listed = host in names if ip is None else any(ip in n for n in networks)
    if scheme == "http" and not listed:
        raise UnsafeURL("plain http is only allowed for allow-listed hosts; use https")
    return parts, host, ip, listed


def check_syntax(url: str, allowed: tuple[str, ...]) -> None:
    """Raise UnsafeURL unless `url` is well-formed for a webhook (no DNS lookup)."""
    _split(url, allowed)


Lookup = Callable[[str, int], Awaitable[list]]


async def _getaddrinfo(host: str, port: int) -> list:
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                        proto=socket.IPPROTO_TCP)


async def resolve(url: str, allowed: tuple[str, ...], lookup: Lookup | None = None) -> Target:
    """Check `url`, resolve its host and require every address to be safe; target the first.
    `lookup` (host, port) -> getaddrinfo-style answers; the worker passes its cached resolver."""
    parts, host, literal, listed = _split(url, allowed)
    scheme, port = parts.scheme.lower(), parts.port
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await (lookup or _getaddrinfo)(host, port or (443 if scheme == "https" else 80))
        except (OSError, UnicodeError) as exc:
            if isinstance(exc, TimeoutError):  # too slow is not "does not resolve"
                raise
            infos = []
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise UnsafeURL(f"host does not resolve: {host}")
    if not listed:  # an allow-listed name may resolve anywhere
        networks, _ = _parse_allowed(allowed)
        for ip in addresses:
            if kind := _unsafe_kind(ip, networks):
                if literal is not None:
                    raise UnsafeURL(f"host is a {kind} address ({_show(ip)})")
                # the resolved address stays unsaid: API callers must not map internal DNS through errors
                raise UnsafeURL(f"resolves to a {kind} address")
    address = addresses[0]
    suffix = f":{port}" if port is not None else ""
    ip_part = f"[{_show(address)}]" if address.version == 6 else str(address)
    host_part = f"[{_show(literal)}]" if literal is not None and literal.version == 6 else host
    return Target(url=urlunsplit((scheme, f"{ip_part}{suffix}", parts.path, parts.query, "")),
                  host_header=f"{host_part}{suffix}", address=_show(address),
                  sni_hostname=host if scheme == "https" and literal is None else None)
