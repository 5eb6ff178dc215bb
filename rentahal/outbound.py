"""The outbound address policy: which URLs the broker may call (model workers now, federation
peers later). An address is checked when it is registered and again when it is connected to,
so a name that later resolves somewhere else (DNS rebinding) is still refused.

- http and https only, with no user name or password, query or fragment in the address;
- link-local, cloud metadata, unspecified, multicast, broadcast and reserved addresses are
  always refused;
- loopback, private, shared (CGNAT) and other non-global addresses are refused unless an
  operator lists their network in RENTAHAL_OUTBOUND_ALLOWED_NETWORKS (OUTBOUND_ALLOWED_NETWORKS);
- an address is judged by what it connects to: legacy IPv4 spellings (2130706433,
  0x7f000001, 0177.0.0.1, 127.1), IPv4 inside IPv6 (mapped, compatible, NAT64, 6to4, Teredo),
  a trailing dot and IDNA are decoded first, and a host name passes only if every address it
  resolves to does.

Redirects are never followed (the clients pass `allow_redirects=False`), so an allowed server
cannot hand a call on to a refused one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import re
import socket
from collections.abc import Iterable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = frozenset({"http", "https"})
# Instance-metadata services hand out cloud credentials; no setting makes them reachable.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, Azure, GCP, OpenStack, Oracle, DigitalOcean
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud Classic
    )
)
METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"})
# "This network" (0.0.0.0/8) is never a destination; Linux connects 0.x.y.z to the local host.
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
BROADCAST = ipaddress.ip_address("255.255.255.255")
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
# Letters, digits, hyphens and (for Docker service names) underscores, in dot-separated labels.
HOST_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")
# One part of a legacy numeric IPv4 address as inet_aton reads it: hex, octal or decimal.
NUMERIC_PART = re.compile(r"0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*")


class ForbiddenAddress(ValueError):
    """An outbound address the policy refuses; the message says why, for an operator."""


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where a URL connects: an IP address (`address` set) or a host name to resolve."""

    host: str
    port: int
    address: IPAddress | None = None


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Return the operator's networks in which non-global addresses are allowed."""
    return list(parsed_networks(tuple(settings.RENTAHAL_OUTBOUND_ALLOWED_NETWORKS)))


@functools.lru_cache(maxsize=8)
def parsed_networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse the setting once per value: it is read on every model call."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(f"OUTBOUND_ALLOWED_NETWORKS: {entry!r} is not a network ({exc})") from None
    return tuple(networks)


@register()
def check_allowed_networks(app_configs, **kwargs):
    """Refuse to start with an OUTBOUND_ALLOWED_NETWORKS entry that is not a network, rather
    than fail every model call later (this module is loaded with pools.models)."""
    try:
        allowed_networks()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="rentahal.E020", hint='Give CIDRs separated by commas, e.g. "127.0.0.0/8,::1/128".')]
    return []


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries, the one a connection really reaches."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    # IPv4-compatible (::a.b.c.d, deprecated): 96 zero bits, then the IPv4 address; :: and ::1 are not.
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


def refusal_for(address: IPAddress, networks: Iterable | None = None) -> str | None:
    """Return why the policy refuses to connect to `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return f"{address} names a local interface (zone id)"
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = refusal_for(inner, networks)
            return f"{address} reaches {inner}: {reason}" if reason else None
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    always = (
        (address.is_link_local, "a link-local"),
        (address.is_unspecified, "an unspecified"),
        (address.version == 4 and address in THIS_NETWORK, 'a "this network"'),
        (address.is_multicast, "a multicast"),
        (address == BROADCAST, "a broadcast"),
    )
    for is_kind, kind in always:
        if is_kind:
            return f"{address} is {kind} address"
    if address.is_global:
        return None
    if not address.is_loopback and address.is_reserved:
        return f"{address} is a reserved address"
    if any(address in network for network in (allowed_networks() if networks is None else networks)):
        return None
    kind = "loopback" if address.is_loopback else "shared (CGNAT)" if address in SHARED_ADDRESS_SPACE else "private"
    return f"{address} is a {kind} address; list its network in OUTBOUND_ALLOWED_NETWORKS to allow it"


def legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Return the address a legacy numeric spelling (2130706433, 0x7f000001, 0177.0.0.1,
    127.1) stands for, as inet_aton reads it; None when the host is not numeric."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(NUMERIC_PART.fullmatch(part) for part in parts):
        return None
    values = [int(part, 0) if not re.fullmatch(r"0[0-7]+", part) else int(part, 8) for part in parts]
    # The last part fills every byte the earlier parts leave.
    last_bits = 32 - 8 * (len(values) - 1)
    if any(value > 255 for value in values[:-1]) or values[-1] >= 1 << last_bits:
        raise ForbiddenAddress(f"{host} is a numeric host that is no IPv4 address")
    number = 0
    for value in values[:-1]:
        number = number << 8 | value
    return ipaddress.IPv4Address(number << last_bits | values[-1])


def parse_destination(url: str) -> Destination:
    """Return where the URL connects, refusing a scheme, user info or host the policy forbids.

    The URL is parsed by yarl, as aiohttp parses it, so both see the same host.
    """
    try:
        parsed = URL(url)
        port = parsed.port
    except ValueError as exc:
        raise ForbiddenAddress(f"{url} is not a valid URL: {exc}") from None
    if parsed.scheme not in SCHEMES:
        raise ForbiddenAddress(f"only http and https addresses are allowed, not {parsed.scheme or 'one without a scheme'}")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise ForbiddenAddress("an address cannot carry a user name or password; give the server's API key instead")
    if parsed.raw_query_string or parsed.raw_fragment:
        raise ForbiddenAddress("an address cannot have a query or fragment")
    host = (parsed.raw_host or "").lower()
    if not host:
        raise ForbiddenAddress(f"{url} has no host")
    if "%" in host:
        raise ForbiddenAddress(f"{parsed.host} names a local interface (zone id)")
    host = host[:-1] if host.endswith(".") else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = legacy_ipv4(host)
    if address is not None:
        if str(address) != host and address.version == 4:
            reason = refusal_for(address)
            raise ForbiddenAddress(f"{host} is {address} spelled another way" + (f", and {reason}" if reason else f"; write {address}"))
        return Destination(host, port, address)
    if not HOST_NAME.fullmatch(host):
        raise ForbiddenAddress(f"{parsed.host} is not a valid host name")
    if host in METADATA_NAMES:
        raise ForbiddenAddress(f"{host} is a cloud metadata service")
    return Destination(host, port)


def check_url(url: str) -> Destination:
    """Refuse the URL unless its form and, for an IP address, the address pass the policy.

    No name is resolved: a connection resolves names through `GuardedResolver`. The verdict
    depends only on the URL and the allowed networks, so it is kept per pair: every model
    call checks its URL, and parsing and judging it anew took about fifteen times as long
    as looking the verdict up (yarl's parse, then a dozen `ipaddress` network tests).
    """
    outcome = judged_url(url, tuple(settings.RENTAHAL_OUTBOUND_ALLOWED_NETWORKS))
    if isinstance(outcome, ForbiddenAddress):
        raise ForbiddenAddress(*outcome.args)
    return outcome


@functools.lru_cache(maxsize=1024)
def judged_url(url: str, networks: tuple[str, ...]) -> "Destination | ForbiddenAddress":
    try:
        return judge_url(url)
    except ForbiddenAddress as refusal:
        return refusal


def judge_url(url: str) -> Destination:
    destination = parse_destination(url)
    if destination.address is not None:
        reason = refusal_for(destination.address)
        if reason:
            raise ForbiddenAddress(reason)
    return destination


def check_resolved(host: str, addresses: Iterable[str]) -> None:
    """Refuse unless every address the host resolved to passes the policy."""
    networks = allowed_networks()
    for text in addresses:
        reason = refusal_for(ipaddress.ip_address(text), networks)
        if reason:
            raise ForbiddenAddress(f"{host} resolves to a refused address: {reason}")


def check_url_resolving(url: str) -> Destination:
    """Refuse the URL unless it and every address its host resolves to pass the policy.

    A name that does not resolve now is let through: it is checked again when connected to.
    """
    destination = check_url(url)
    if destination.address is None:
        with contextlib.suppress(socket.gaierror, UnicodeError):
            infos = socket.getaddrinfo(destination.host, destination.port, type=socket.SOCK_STREAM)
            check_resolved(destination.host, [info[4][0] for info in infos])
    return destination


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name when any address it resolves to breaks the policy.

    aiohttp does not consult a resolver for an IP-address host; `check_url` covers those
    before each call, and an address cannot rebind.
    """

    def __init__(self) -> None:
        self.resolver = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host.rstrip(".").lower() in METADATA_NAMES:
            raise ForbiddenAddress(f"{host} is a cloud metadata service")
        results = await self.resolver.resolve(host, port, family)
        check_resolved(host, [result["host"] for result in results])
        return results

    async def close(self) -> None:
        await self.resolver.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCP connector whose every name lookup goes through `GuardedResolver`."""

    def __init__(self, **options) -> None:
        super().__init__(resolver=GuardedResolver(), **options)


def guarded_session(**connector_options) -> aiohttp.ClientSession:
    """Return an aiohttp session that connects only where the policy allows."""
    return aiohttp.ClientSession(connector=GuardedConnector(**connector_options))
