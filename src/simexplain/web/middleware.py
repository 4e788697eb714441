"""ASGI middleware of the web server: request body limits and server timing."""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse request bodies above a limit (uploads get a larger one), by the
    declared Content-Length at once, else while the body streams in."""

    def __init__(self, app, json_limit: int, upload_limit: int):
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope.get("path") == "/api/images" else self.json_limit
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    response = JSONResponse(
                        {"error": f"request body of {declared} bytes exceeds the limit of "
                                  f"{limit} bytes"}, status_code=413)
                    return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return await self.app(scope, limited, send)


class ServerTiming:
    """ASGI middleware: a `Server-Timing: app;dur=<ms>` header on every response (the time
    from the request's arrival to the response's first byte, serialisation included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def timed(message):
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - start) * 1000
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", f"app;dur={took:.2f}".encode())]}
            await send(message)

        return await self.app(scope, receive, timed)


