"""Refuses what a foreign web page can make a browser send to this API without asking first.

A CORS "simple" request (a form post, or `fetch` with a text/plain body) reaches the server without a
preflight. With authentication off (the local default) that is enough to submit jobs, pause models or
retry dead letters from any page the developer opens. So, before routing (hot path included):

- a state-changing request (POST, PUT, PATCH, DELETE) or a WebSocket handshake whose `Origin` is not
  this server's own, or whose `Sec-Fetch-Site` is `cross-site`, is refused (403; a WebSocket is closed
  with 1008 before it is accepted). No `Origin` at all (curl, the SDK, other servers) stays allowed: a
  browser always sends one on these requests, and the console is served from the API itself.
- a body declared as anything but `application/json` is refused with 415 (the OIP routes under `/v2/`
  take their binary type `application/octet-stream` too). A request without `Content-Type` is parsed as
  before: the origin check is what stops a browser's typeless body.

GET and HEAD pass untouched, so reads pay nothing; the rest pay one pass over the request headers.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import json_response

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = frozenset({"application/json"})
OIP_PREFIX = "/v2/"
OIP_TYPES = JSON_TYPES | {"application/octet-stream"}  # docs/oip.md: JSON, or JSON header + binary tensors
WS_POLICY_VIOLATION = 1008
JSON_EXACT = b"application/json"  # what nearly every request sends: accepted without parsing


def media_type(content_type: str) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return content_type.split(";", 1)[0].strip().lower()


def origin_host(origin: str) -> str | None:
    """The `host[:port]` of an Origin header value; None for `null` or anything without a scheme."""
    scheme, sep, rest = origin.partition("://")
    return rest.rstrip("/").lower() if sep and scheme and rest else None


def own_hosts(scope: Scope) -> set[str]:
    """The names this server is reached by: `Host`, and `X-Forwarded-Host` behind a proxy."""
    hosts = set()
    for name, value in scope["headers"]:
        if name in (b"host", b"x-forwarded-host"):
            hosts.add(value.decode("latin-1").split(",")[0].strip().lower())
    return hosts - {""}


def refusal(scope: Scope) -> tuple[int, str] | None:
    """(status, reason) when the request must not reach the app, else None."""
    origin = fetch_site = content_type = None
    for name, value in scope["headers"]:  # one pass comparing names only: this runs on every submit
        if name == b"content-type":
            content_type = value
        elif name == b"origin":
            origin = value
        elif name == b"sec-fetch-site":
            fetch_site = value
    if fetch_site is not None and fetch_site.strip().lower() == b"cross-site":
        return 403, "cross-site request refused (Sec-Fetch-Site: cross-site)"
    if origin is not None:
        text = origin.decode("latin-1").strip()
        if origin_host(text) not in own_hosts(scope):
            return 403, f"request from a foreign Origin ({text[:100]}) refused: only this server's own pages may change state"
    if content_type is not None and content_type != JSON_EXACT and scope["type"] == "http":
        accepted = OIP_TYPES if scope["path"].startswith(OIP_PREFIX) else JSON_TYPES
        declared = content_type.decode("latin-1")
        if media_type(declared) not in accepted:
            names = " or ".join(sorted(accepted))
            return 415, f"Content-Type {declared[:100]!r} is not supported: send the body as {names}"
    return None


class CrossSiteGuard:
    """The ASGI layer applying `refusal` to state-changing requests and WebSocket handshakes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind == "http" and scope["method"] in STATE_CHANGING) or kind == "websocket":
            refused = refusal(scope)
            if refused is not None:
                status, reason = refused
                if kind == "websocket":  # closing before accept: the server answers the handshake with 403
                    await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": reason})
                    return
                body = {"error": reason} if scope["path"].startswith(OIP_PREFIX) else {"detail": reason}
                return await json_response(body, status)(scope, receive, send)
        await self.app(scope, receive, send)
