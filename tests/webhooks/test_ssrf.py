"""SSRF guard for webhook URLs: pure unit tests, no database and no real DNS or network."""

from __future__ import annotations

import socket

import pytest

from app.webhooks.ssrf import Target, UnsafeURL, check_syntax, resolve

ALLOWED = ("127.0.0.1", "::1", "localhost", "10.1.0.0/16")

# Fake DNS: every lookup goes through socket.getaddrinfo (asyncio's loop.getaddrinfo calls it in
# a worker thread); names not listed here fail as NXDOMAIN, so a test can never reach real DNS.
DNS: dict[str, list[str]] = {
    "example.com": ["93.184.216.34"],
    "v6.example.com": ["2606:4700::1111", "93.184.216.34"],
    "multi.example.com": ["93.184.216.34", "93.184.216.35", "93.184.216.34"],
    "mixed.example.com": ["93.184.216.34", "10.0.0.5"],
    "mixed6.example.com": ["2606:4700::1111", "::ffff:127.0.0.1"],
    "private.example.com": ["10.0.0.5"],
    "metadata.example.com": ["169.254.169.254"],
    "internal.example.com": ["10.1.0.5"],
    "localhost": ["127.0.0.1", "::1"],
}


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lookups: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        host = host.decode() if isinstance(host, bytes) else host
        lookups.append(host)
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                 "", (a, port) if ":" not in a else (a, port, 0, 0)) for a in DNS[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


async def refused(url: str, allowed: tuple[str, ...] = ALLOWED) -> str:
    with pytest.raises(UnsafeURL) as info:
        await resolve(url, allowed)
    return info.value.reason


# --- syntax -----------------------------------------------------------------------------------

def test_unsafe_url_is_a_value_error_with_reason() -> None:
    err = UnsafeURL("nope")
    assert isinstance(err, ValueError) and err.reason == "nope" and str(err) == "nope"


@pytest.mark.parametrize("url", ["http://example.com/hook", "http://93.184.216.34/hook", "HTTP://example.com/"])
async def test_plain_http_refused_for_hosts_not_allow_listed(url: str) -> None:
    assert await refused(url) == "plain http is only allowed for allow-listed hosts; use https"
    with pytest.raises(UnsafeURL):
        check_syntax(url, ALLOWED)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com:70/_x",
                                 "javascript:alert(1)", "ws://example.com/"])
def test_other_schemes_refused(url: str) -> None:
    with pytest.raises(UnsafeURL) as info:
        check_syntax(url, ALLOWED)
    assert "not allowed" in info.value.reason or "absolute" in info.value.reason


def test_scheme_named_in_reason() -> None:
    with pytest.raises(UnsafeURL, match="scheme 'gopher' is not allowed; use https"):
        check_syntax("gopher://example.com/", ALLOWED)


@pytest.mark.parametrize("url", ["https://user:pass@example.com/", "https://user@example.com/",
                                 "https://:pw@example.com/", "http://evil.com\\@localhost/"])
def test_userinfo_refused(url: str) -> None:
    with pytest.raises(UnsafeURL, match="credentials in the URL are not allowed"):
        check_syntax(url, ALLOWED)


@pytest.mark.parametrize(("url", "reason"), [
    ("example.com/hook", "absolute"),
    ("//example.com/hook", "absolute"),
    ("/hook", "absolute"),
    ("https:///hook", "absolute"),
    ("https://:443/hook", "no host"),
    ("https://example.com/hook#frag", "fragment"),
    ("https://example.com/hook#", "fragment"),
    ("https://example.com:99999/", "invalid port"),
    ("https://example.com:0/", "invalid port"),
    ("https://example.com:abc/", "invalid port"),
    ("https://exa mple.com/", "whitespace"),
    ("https://example.com/\nhook", "whitespace"),
    ("https://[not-an-ip]/", "malformed"),
    ("https://example.com/" + "a" * 2030, "longer than 2048"),
])
def test_malformed_urls_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL) as info:
        check_syntax(url, ALLOWED)
    assert reason in info.value.reason


def test_check_syntax_accepts_good_urls_without_resolving(fake_dns: list[str]) -> None:
    check_syntax("https://example.com/hook?a=1", ALLOWED)
    check_syntax("https://does-not-exist.invalid/hook", ALLOWED)
    check_syntax("http://LOCALHOST.:8080/hook", ALLOWED)
    check_syntax("https://example.com/" + "a" * 2000, ALLOWED)
    assert fake_dns == []


# --- refused addresses --------------------------------------------------------------------------

@pytest.mark.parametrize(("ip", "kind"), [
    ("127.0.0.1", "loopback"), ("127.5.5.5", "loopback"), ("::1", "loopback"),
    ("10.0.0.5", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "shared (carrier-grade NAT)"), ("100.127.255.254", "shared (carrier-grade NAT)"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("::7f00:1", "reserved"),
    ("192.0.2.1", "non-public"), ("198.18.0.1", "reserved"), ("192.0.0.192", "reserved"), ("2001:db8::1", "non-public"),
    # IPv6 forms that really reach an IPv4 address
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("::ffff:0.0.0.0", "unspecified"),
    ("2002:7f00:1::", "loopback"), ("2002:a00:1::1", "private"),  # 6to4
    ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a00:1", "private"),  # NAT64
    # cloud metadata endpoints, named as such rather than just link-local / private / shared
    ("169.254.169.254", "cloud metadata"), ("169.254.170.2", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"), ("100.100.100.200", "cloud metadata"),
    ("::ffff:169.254.169.254", "cloud metadata"),
])
async def test_non_public_ip_literals_refused(ip: str, kind: str) -> None:
    host = f"[{ip}]" if ":" in ip else ip
    assert await refused(f"https://{host}/hook", ()) == f"host is a {kind} address ({ip})"


async def test_names_resolving_to_non_public_addresses_refused() -> None:
    assert await refused("https://private.example.com/") == "resolves to a private address"
    assert await refused("https://metadata.example.com/") == "resolves to a cloud metadata address"


async def test_every_resolved_address_must_be_safe() -> None:
    """DNS rebinding: one public and one private answer is refused, whatever the order."""
    assert await refused("https://mixed.example.com/") == "resolves to a private address"
    assert await refused("https://mixed6.example.com/", ()) == "resolves to a loopback address"


async def test_unresolvable_host_refused() -> None:
    assert await refused("https://nope.invalid/hook") == "host does not resolve: nope.invalid"


async def test_resolution_is_redone_on_every_call(fake_dns: list[str]) -> None:
    await resolve("https://example.com/", ALLOWED)
    await resolve("https://example.com/", ALLOWED)
    assert fake_dns == ["example.com", "example.com"]


# --- allow-list ---------------------------------------------------------------------------------

async def test_allow_list_by_ip() -> None:
    target = await resolve("http://127.0.0.1:8080/hook", ALLOWED)
    assert target.address == "127.0.0.1"
    assert (await resolve("http://[::1]:8080/hook", ALLOWED)).address == "::1"
    assert await refused("http://127.0.0.2/hook") == "plain http is only allowed for allow-listed hosts; use https"
    assert await refused("https://127.0.0.2/hook") == "host is a loopback address (127.0.0.2)"


async def test_allow_list_by_cidr() -> None:
    assert (await resolve("http://10.1.2.3/hook", ALLOWED)).address == "10.1.2.3"
    assert (await resolve("https://10.1.255.255/hook", ALLOWED)).address == "10.1.255.255"
    assert await refused("https://10.2.0.1/hook") == "host is a private address (10.2.0.1)"


async def test_allow_list_by_hostname_allows_whatever_it_resolves_to() -> None:
    target = await resolve("http://localhost:8000/hook", ALLOWED)
    assert (target.address, target.url) == ("127.0.0.1", "http://127.0.0.1:8000/hook")
    # case-insensitive, trailing dot ignored, on both sides; blanks in the setting are ignored
    target = await resolve("http://LocalHost.:8000/hook", (" LOCALHOST. ", ""))
    assert (target.address, target.host_header) == ("127.0.0.1", "localhost:8000")


async def test_name_resolving_into_allow_listed_network_needs_https() -> None:
    target = await resolve("https://internal.example.com/hook", ALLOWED)
    assert target.address == "10.1.0.5"
    assert await refused("http://internal.example.com/hook") == (
        "plain http is only allowed for allow-listed hosts; use https")


async def test_allow_listed_ip_covers_its_ipv4_mapped_form() -> None:
    assert (await resolve("https://[::ffff:10.1.0.9]/", ALLOWED)).address == "::ffff:10.1.0.9"


# --- targets ------------------------------------------------------------------------------------

async def test_public_ipv4_literal() -> None:
    assert await resolve("https://93.184.216.34/hook?x=1", ()) == Target(
        url="https://93.184.216.34/hook?x=1", host_header="93.184.216.34", sni_hostname=None,
        address="93.184.216.34")


async def test_public_ipv6_literal_keeps_brackets() -> None:
    assert await resolve("https://[2606:4700::1111]:8443/hook", ()) == Target(
        url="https://[2606:4700::1111]:8443/hook", host_header="[2606:4700::1111]:8443", sni_hostname=None,
        address="2606:4700::1111")


async def test_name_rewritten_to_checked_ip_with_sni_and_host_header() -> None:
    assert await resolve("https://Example.COM.:8443/a/b?c=d&e=f", ()) == Target(
        url="https://93.184.216.34:8443/a/b?c=d&e=f", host_header="example.com:8443",
        sni_hostname="example.com", address="93.184.216.34")


async def test_no_port_in_host_header_unless_explicit() -> None:
    target = await resolve("https://example.com/hook", ())
    assert (target.url, target.host_header) == ("https://93.184.216.34/hook", "example.com")


async def test_first_resolved_address_used_ipv6_in_brackets() -> None:
    target = await resolve("https://v6.example.com/hook", ())
    assert (target.url, target.address, target.sni_hostname) == (
        "https://[2606:4700::1111]/hook", "2606:4700::1111", "v6.example.com")
    assert (await resolve("https://multi.example.com/", ())).address == "93.184.216.34"


async def test_no_sni_for_plain_http() -> None:
    target = await resolve("http://localhost/hook", ALLOWED)
    assert target == Target(url="http://127.0.0.1/hook", host_header="localhost", sni_hostname=None,
                            address="127.0.0.1")
