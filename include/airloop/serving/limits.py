"""Request-body limit of the serving API: a pure ASGI middleware.

A body larger than ``AIRLOOP_SERVING_MAX_BODY_BYTES`` (default 8 MiB; 0 turns the limit off) is
answered ``413`` before the app sees it: at once when ``Content-Length`` says so, else as soon as
the streamed (chunked) body passes the limit — the rest is never read, so an oversized body costs
neither parse time nor more memory than the limit. The answer names the limit and the variable that sets it.
"""

from __future__ import annotations

import json
from typing import Any

from airloop.core.settings import AIRLOOP_SERVING_MAX_BODY_BYTES


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyLimitMiddleware:
    """Answer ``413`` to a request whose body exceeds ``max_bytes`` (``None``: the environment's
    ``AIRLOOP_SERVING_MAX_BODY_BYTES``)."""

    def __init__(self, app: Any, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = AIRLOOP_SERVING_MAX_BODY_BYTES.get() if max_bytes is None else max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._answer(send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await self._answer(send, 413, self._message(int(declared)))
                return
        if scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        # Read the body here, up to the limit, so that the app never sees an oversized one (a
        # route's own error handling must not turn a client's 413 into a logged model error).
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._answer(send, 413, self._message(None))
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    def _message(self, size: int | None) -> str:
        got = f"{size:,} bytes" if size is not None else "more"
        return (f"request body too large: {got}, the limit is {self.max_bytes:,} bytes "
                f"({AIRLOOP_SERVING_MAX_BODY_BYTES.name}); send fewer records per request")

    @staticmethod
    async def _answer(send: Any, status: int, detail: str) -> None:
        body = json.dumps({"detail": [{"record": None, "field": "body", "message": detail}]}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
