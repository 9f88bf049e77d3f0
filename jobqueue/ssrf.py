"""Where webhooks may go: callback URL validation (at submit time) and the address guard applied after
DNS resolution (at delivery time). Pure functions; no I/O except `resolve_vetted`'s DNS lookup."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx

from jobqueue.settings import Settings

# Browsers and most proxies handle 2,000-ish characters; a callback needs far fewer, and the URL is
# stored in every job record.
MAX_CALLBACK_URL_LENGTH = 2048
# Carrier-grade NAT: not global, yet Python's `is_private` says False for it.
CGNAT_NETWORK = ipaddress.ip_network("100.64.0.0/10")
# NAT64 (RFC 6052): the last 32 bits are an IPv4 address a translator will connect to.
NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")
# Names that only resolve inside a cluster or a LAN (Kubernetes services, mDNS, split-horizon zones).
INTERNAL_NAME_SUFFIXES = (".localhost", ".local", ".internal", ".cluster.local", ".svc", ".lan", ".home.arpa", ".intranet")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


class CallbackRefused(ValueError):
    """A callback URL or its resolved address is not one webhooks may be sent to (a permanent failure)."""


def allowed_hosts(settings: Settings) -> tuple[str, ...]:
    """WEBHOOK_ALLOWED_HOSTS as lower-case names; an entry `*.example.com` allows its subdomains."""
    return tuple(h.strip().lower().rstrip(".") for h in settings.webhook_allowed_hosts.split(",") if h.strip())


def host_allowed(host: str, allow_list: Sequence[str]) -> bool:
    """Whether `host` matches an allow-list entry exactly, or as a subdomain of a `*.` entry."""
    host = host.lower().rstrip(".")
    for entry in allow_list:
        if entry.startswith("*.") and host.endswith(entry[1:]) and host != entry[2:]:
            return True
        if host == entry:
            return True
    return False


def address_refusal(ip: IPAddress) -> str | None:
    """Why webhooks may not go to `ip` (e.g. "loopback"), or None when it is a public unicast address.

    Addresses that embed an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, 6to4 2002::/16, NAT64 64:ff9b::/96)
    are judged by the IPv4 address the packets finally reach.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64_NETWORK:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            reason = address_refusal(embedded)
            return None if reason is None else f"{reason}, embedded in {ip}"
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT_NETWORK, "carrier-grade NAT (100.64.0.0/10)"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"), "unique local (fc00::/7)"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "not globally routable"),
    )
    return next((reason for refused, reason in checks if refused), None)


def _ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, including the forms `inet_aton` accepts and a
    resolver would too (`2130706433`, `0x7f.1`, `127.1`), so they cannot slip past as "names"."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def validate_callback_url(url: str, settings: Settings) -> str:
    """Check a submitted callback URL; returns it unchanged, or raises ValueError saying what is wrong.

    https only (http with WEBHOOK_ALLOW_HTTP); no user:password@; at most MAX_CALLBACK_URL_LENGTH
    characters; the host in WEBHOOK_ALLOWED_HOSTS when that is set; no IP literal or in-cluster name
    that is loopback/private/... unless WEBHOOK_ALLOW_PRIVATE. Names are not resolved here (no DNS on the
    submit path): the notifier checks the resolved addresses at every delivery.
    """
    if not isinstance(url, str) or not url:
        raise CallbackRefused("callback_url must be a non-empty string")
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        raise CallbackRefused(f"callback_url is longer than {MAX_CALLBACK_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\\" for ch in url):
        # parsers disagree about these (WHATWG reads "\" as "/"): refuse rather than guess
        raise CallbackRefused("callback_url must not contain whitespace, control characters or backslashes")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise CallbackRefused(f"callback_url is not a valid URL: {exc}") from None
    schemes = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parsed.scheme not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise CallbackRefused(f"callback_url must start with {allowed} (WEBHOOK_ALLOW_HTTP allows http://)")
    if parsed.userinfo:
        raise CallbackRefused("callback_url must not contain credentials (user:password@)")
    host = parsed.host.lower().rstrip(".")
    if not host:
        raise CallbackRefused("callback_url has no host")
    allow_list = allowed_hosts(settings)
    if allow_list and not host_allowed(host, allow_list):
        raise CallbackRefused(f"callback_url host {host!r} is not in WEBHOOK_ALLOWED_HOSTS")
    if not settings.webhook_allow_private:
        ip = _ip_literal(host)
        if ip is not None:
            reason = address_refusal(ip)
            if reason:
                raise CallbackRefused(f"callback_url address {ip} is not allowed ({reason}); WEBHOOK_ALLOW_PRIVATE allows it")
        elif host == "localhost" or host.endswith(INTERNAL_NAME_SUFFIXES):
            raise CallbackRefused(f"callback_url host {host!r} is an internal name (WEBHOOK_ALLOW_PRIVATE allows it)")
        elif "." not in host:
            # a single label resolves through the pod's DNS search path to in-cluster services
            raise CallbackRefused(f"callback_url host {host!r} is not a fully qualified name")
    return url


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host:port (IPv4 and IPv6), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_vetted(host: str, port: int, allow_private: bool, resolver: Resolver = system_resolver) -> list[IPAddress]:
    """Resolve `host` and check EVERY address (one bad address refuses the lot: a name that mixes public
    and internal addresses is an attack, not a misconfiguration). Returns the addresses to connect to.
    Raises CallbackRefused, or OSError when the name does not resolve."""
    literal = _ip_literal(host)
    addresses = [literal] if literal is not None else [ipaddress.ip_address(a.split("%")[0]) for a in await resolver(host, port)]
    if not addresses:
        raise OSError(f"{host} resolved to no address")
    if not allow_private:
        for ip in addresses:
            reason = address_refusal(ip)
            if reason:
                raise CallbackRefused(f"refused: {host} resolves to {ip} ({reason}); WEBHOOK_ALLOW_PRIVATE allows it")
    return addresses
