"""ASGI middleware of the web server: Host checks, request body limits, server timing."""

from __future__ import annotations

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


def host_name(header: str) -> str:
    """The name in a Host header, without port, brackets or trailing dot, in lower case:
    'LocalHost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    value = header.strip().lower()
    if value.startswith("["):  # an IPv6 literal, with or without a port
        return value[1:value.index("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":")[0]
    return value.rstrip(".")


class HostCheck:
    """ASGI middleware: answer 400 unless the Host header names this server (one of
    `allowed`, ports ignored; "*" allows any). A web page elsewhere can point its own domain
    at 127.0.0.1 (DNS rebinding) and so reach a local server, but its requests still carry
    that domain as Host; and no answer builds a URL from a Host it did not accept."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]):
        self.app = app
        self.any = "*" in allowed
        self.allowed = {host_name(h) for h in allowed if h != "*"}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.any:
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                       if k == b"host"), "")
        if host_name(header) in self.allowed:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        shown = header[:100] if header else "(none)"
        response = JSONResponse(
            {"error": f"this server does not answer to the host name {shown!r}; it answers to "
                      f"{', '.join(sorted(self.allowed))} (start it with --allowed-host NAME "
                      "to add a name)"}, status_code=400)
        return await response(scope, receive, send)
