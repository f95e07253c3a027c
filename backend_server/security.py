"""Authentication and body limits, checked before the application reads a single body byte."""

from __future__ import annotations

import hmac
import json
from typing import Any

PUBLIC_PATHS = frozenset({"/v1/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


class GateMiddleware:
    """Pure ASGI middleware: 401 without the bearer token, 413 for bodies over the limit."""

    def __init__(self, app: Any, token: str | None, max_body: int) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in PUBLIC_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _reject(send, 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
                return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _reject(send, 413, f"the request body is larger than {self.max_body} bytes")
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Any) -> Any:
        """Counts bytes as they arrive, for bodies sent without a Content-Length."""
        seen = 0
        limit = self.max_body

        async def wrapped() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")


async def _reject(send: Any, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
