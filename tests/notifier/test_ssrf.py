"""The SSRF guard: every refused address class, URL validation, and pinning after DNS (no Redis)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import httpx
import pytest

from jobqueue.settings import Settings
from notifier.delivery import PinnedTransport
from jobqueue.ssrf import CallbackRefused, address_refusal, resolve_vetted, validate_callback_url
from tests.notifier.helpers import Receiver, make_tls_context, new_secret

REFUSED = {
    # IPv4
    "0.0.0.0": "unspecified",
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "169.254.169.254": "link-local",  # cloud metadata endpoints
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",  # broadcast
    "192.0.2.10": "private",  # TEST-NET-1 documentation range
    "198.18.0.1": "private",  # benchmarking range
    # IPv6
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "2001:db8::1": "private",  # documentation
    # IPv4 inside IPv6: judged by the IPv4 address
    "::ffff:127.0.0.1": "loopback, embedded in",
    "::ffff:10.1.2.3": "private, embedded in",
    "::ffff:169.254.169.254": "link-local, embedded in",
    "2002:7f00:1::": "loopback, embedded in",  # 6to4 of 127.0.0.1
    "2002:a00:1::": "private, embedded in",  # 6to4 of 10.0.0.1
    "64:ff9b::7f00:1": "loopback, embedded in",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe": "link-local, embedded in",  # NAT64 of 169.254.169.254
}
ALLOWED = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "reason"), sorted(REFUSED.items()))
def test_refused_address_classes(address: str, reason: str):
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None and refusal.startswith(reason), refusal


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str):
    assert address_refusal(ipaddress.ip_address(address)) is None


def settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example.com/x", "must start with https://"),
        ("ftp://hooks.example.com/x", "must start with https://"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://user@hooks.example.com/x", "credentials"),
        ("https://hooks.example.com/" + "a" * 2100, "longer than 2048"),
        ("", "non-empty"),
        ("https:///nohost", "no host"),
        ("https://hooks.example.com/a b", "whitespace"),
        ("https://hooks.example.com\\@evil.example/", "backslashes"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("https://[::ffff:127.0.0.1]/x", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://10.0.0.5/x", "private"),
        ("https://2130706433/x", "127.0.0.1"),  # decimal IPv4 a resolver accepts
        ("https://0x7f.1/x", "127.0.0.1"),
        ("https://localhost/x", "internal name"),
        ("https://api.localhost/x", "internal name"),
        ("https://redis.default.svc.cluster.local/x", "internal name"),
        ("https://metadata.google.internal/x", "internal name"),
        ("https://redis:6379/x", "not a fully qualified name"),
    ],
)
def test_validate_callback_url_refusals(url: str, message: str):
    with pytest.raises(ValueError, match=message.replace("\\", "\\\\").replace(".", r"\.")):
        validate_callback_url(url, settings())


def test_validate_callback_url_accepts_and_options():
    good = "https://hooks.example.com:8443/asyncinfer?x=1"
    assert validate_callback_url(good, settings()) == good
    assert validate_callback_url("http://hooks.example.com/x", settings(webhook_allow_http=True))
    assert validate_callback_url("https://127.0.0.1:9000/x", settings(webhook_allow_private=True))
    assert validate_callback_url("https://redis:6379/x", settings(webhook_allow_private=True))
    allow = settings(webhook_allowed_hosts="hooks.example.com, *.partner.example")
    assert validate_callback_url("https://HOOKS.example.com/x", allow)
    assert validate_callback_url("https://a.b.partner.example/x", allow)
    for refused in ("https://other.example.com/x", "https://partner.example/x", "https://evilpartner.example/x"):
        with pytest.raises(ValueError, match="WEBHOOK_ALLOWED_HOSTS"):
            validate_callback_url(refused, allow)


def fake_resolver(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


def test_every_resolved_address_is_checked():
    resolver = fake_resolver({"mixed.example": ["93.184.216.34", "10.0.0.1"], "public.example": ["93.184.216.34"]})
    with pytest.raises(CallbackRefused, match="10.0.0.1"):
        asyncio.run(resolve_vetted("mixed.example", 443, False, resolver))
    assert asyncio.run(resolve_vetted("public.example", 443, False, resolver)) == [ipaddress.ip_address("93.184.216.34")]
    assert len(asyncio.run(resolve_vetted("mixed.example", 443, True, resolver))) == 2


class RecordingTransport(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return httpx.Response(204)


def test_pinned_transport_connects_to_the_vetted_ip_with_the_original_host_and_sni():
    inner = RecordingTransport()
    transport = PinnedTransport(False, fake_resolver({"hooks.example.com": ["93.184.216.34"]}), inner)

    async def go() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post("https://hooks.example.com/x?y=1", content=b"{}")).status_code == 204

    asyncio.run(go())
    (sent,) = inner.seen
    assert sent.url.host == "93.184.216.34" and sent.url.path == "/x" and sent.url.query == b"y=1"
    assert sent.headers["host"] == "hooks.example.com"
    assert sent.extensions["sni_hostname"] == "hooks.example.com"


def test_pinned_transport_refuses_a_name_that_rebinds_to_loopback():
    inner = RecordingTransport()
    transport = PinnedTransport(False, fake_resolver({"rebind.example": ["127.0.0.1"]}), inner)

    async def go() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.post("https://rebind.example/x", content=b"{}")

    with pytest.raises(CallbackRefused, match="rebind.example resolves to 127.0.0.1 \\(loopback\\)"):
        asyncio.run(go())
    assert inner.seen == []


def test_pinned_transport_really_connects_to_the_resolved_ip():
    # a name nobody can resolve reaches the receiver on 127.0.0.1 because the transport pins it
    receiver = Receiver(new_secret())
    transport = PinnedTransport(True, fake_resolver({"hooks.invalid": ["127.0.0.1"]}))

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.post(f"http://hooks.invalid:{receiver.port}/hook", content=b"{}")

    try:
        assert asyncio.run(go()).status_code == 401  # unsigned: the receiver refuses it, but it got there
        assert receiver.requests[0].headers["host"] == f"hooks.invalid:{receiver.port}"
    finally:
        receiver.stop()


def test_pinned_transport_tls_verifies_the_certificate_for_the_name_not_the_ip(tmp_path: Path):
    server_tls, client_tls = make_tls_context(tmp_path, "hooks.test")
    receiver = Receiver(new_secret(), tls=server_tls)
    resolver = fake_resolver({"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})

    async def post(host: str) -> httpx.Response:
        inner = httpx.AsyncHTTPTransport(verify=client_tls, trust_env=False)
        async with httpx.AsyncClient(transport=PinnedTransport(True, resolver, inner)) as client:
            return await client.post(f"https://{host}:{receiver.port}/hook", content=b"{}")

    try:
        assert asyncio.run(post("hooks.test")).status_code == 401  # TLS to 127.0.0.1 verified as hooks.test
        assert receiver.sni_names == ["hooks.test"]
        with pytest.raises(httpx.ConnectError, match="certificate"):
            asyncio.run(post("other.test"))  # same IP, certificate not for that name: refused
    finally:
        receiver.stop()
