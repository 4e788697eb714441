"""ASGI middleware of the web server: Host checks, request body limits, server timing."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Sequence

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from .errors import megabytes


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, what: str, limit: int):
        super().__init__(413, f"{what} exceeds the limit of {megabytes(limit)}")


class BodyLimit:
    """ASGI middleware: refuse request bodies above a limit (uploads get a larger one), by the
    declared Content-Length at once, else while the body streams in. An upload's form
    wrapping gets `upload_margin` bytes beyond the file's own limit."""

    def __init__(self, app: ASGIApp, json_limit: int, upload_limit: int,
                 upload_margin: int = 64 * 1024):
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit
        self.upload_margin = upload_margin

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") == "/api/images":
            what, shown, limit = "the upload", self.upload_limit, \
                self.upload_limit + self.upload_margin
        else:
            what, shown, limit = "the request body", self.json_limit, self.json_limit
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    response = JSONResponse(
                        {"error": f"{what} ({megabytes(declared)}) exceeds the limit of "
                                  f"{megabytes(shown)}"}, status_code=413)
                    return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(what, shown)
            return message

        return await self.app(scope, limited, send)


class ServerTiming:
    """ASGI middleware: a `Server-Timing: app;dur=<ms>` header on every response (the time
    from the request's arrival to the response's first byte, serialisation included)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def timed(message):
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - start) * 1000
                timing = (b"server-timing", f"app;dur={took:.2f}".encode())
                message = {**message, "headers": [*message.get("headers", []), timing]}
            await send(message)

        return await self.app(scope, receive, timed)


# A Host header (RFC 9110 uri-host [":" port]): a registered name or IPv4 address, or an IPv6
# address in brackets; nothing else (no user info, path, second bracket or stray characters)
_HOST_HEADER = re.compile(r"^(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))"
                          r"(?::(?P<port>[0-9]{1,5}))?$")


def host_name(header: str) -> str:
    """The host in a Host header, parsed whole, without port, brackets or trailing dot, in
    lower case: 'LocalHost:8000' -> 'localhost', '[::1]:8000' -> '::1'. Anything that is not
    exactly a host and an optional port ('[::1]evil.com', '[::1]:80@evil.com', a bare IPv6
    address, a port over 65535) gives '', which no server answers to."""
    match = _HOST_HEADER.match(header.strip().lower())
    if match is None or int(match.group("port") or 0) > 65535:
        return ""
    if match.group("ipv6") is not None:
        try:
            return ipaddress.IPv6Address(match.group("ipv6")).compressed
        except ValueError:
            return ""
    return allowed_name(match.group("name"))


def allowed_name(name: str) -> str:
    """An allowed host name as `host_name` gives it: lower case, no trailing dot, an IP address
    in its canonical form ('::1', '127.0.0.1'); brackets around an IPv6 address are optional."""
    value = name.strip().lower()
    value = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return value.rstrip(".")


class HostCheck:
    """ASGI middleware: answer 400 unless the Host header names this server (one of
    `allowed`, ports ignored; "*" allows any). A web page elsewhere can point its own domain
    at 127.0.0.1 (DNS rebinding) and so reach a local server, but its requests still carry
    that domain as Host; and no answer builds a URL from a Host it did not accept."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]):
        self.app = app
        self.any = "*" in allowed
        self.allowed = {allowed_name(h) for h in allowed if h != "*"} - {""}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.any:
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                       if k == b"host"), "")
        if host_name(header) in self.allowed:  # '' (not a host) never is
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        shown = header[:100] if header else "(none)"
        response = JSONResponse(
            {"error": f"this server does not answer to the host name {shown!r}; it answers to "
                      f"{', '.join(sorted(self.allowed))} (start it with --allowed-host NAME "
                      "to add a name)"}, status_code=400)
        return await response(scope, receive, send)
