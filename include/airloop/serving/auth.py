"""Serving authentication: tenant tokens and the admin-token dependency."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request
from prometheus_client import Counter

from airloop.core.pipeline import PipelineConfig
from airloop.core.security import check_admin_token, header_bearer, token_matches
from airloop.core.settings import Settings
from airloop.serving import protocol
from airloop.serving.deps import MetricsDep, SettingsDep
from airloop.serving.metrics import ServingMetrics
from airloop.serving.protocol import SMOKE_TENANT, tenant_route

OPEN_PATHS = protocol.OPEN_ROUTES


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1").strip()
    return None


async def _deny(send: Any, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class TenantGuard:
    """ASGI middleware of one pipeline's app: strips its ``/t/<tenant>/<pipeline>`` prefix (so the
    app answers at the root and at its tenant route) and enforces the tenant's token and tenant."""

    def __init__(self, app: Any, config: PipelineConfig, token: str | None, admin_token: str | None) -> None:
        self.app, self.config = app, config
        self.prefix = tenant_route(config)
        self.allowed = [t for t in (token, admin_token) if t]
        self.protected = token is not None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == self.prefix or path.startswith(self.prefix + "/"):
            scope = dict(scope, path=path[len(self.prefix):] or "/",
                         root_path=scope.get("root_path", "") + self.prefix)
            path = scope["path"]
        headers = scope.get("headers", [])
        if path not in OPEN_PATHS and path != protocol.RELOAD and self.protected:
            token = header_bearer(headers)
            if token is None:
                await _deny(send, 401, f"tenant {self.config.tenant}: bearer token required")
                return
            if not any(token_matches(token, allowed) for allowed in self.allowed):
                await _deny(send, 403, f"this token is not valid for tenant {self.config.tenant}")
                return
        claimed = _header(headers, protocol.TENANT_HEADER.lower().encode())
        if self.config.tenant != "default" and claimed and claimed not in (self.config.tenant, SMOKE_TENANT):
            await _deny(send, 403, f"X-Tenant {claimed[:100]!r} does not match this route's tenant "
                                   f"{self.config.tenant!r}")
            return
        await self.app(scope, receive, send)


def add_tenant_guard(app: Any, config: PipelineConfig, settings: Settings) -> None:
    """Install :class:`TenantGuard` on one pipeline's serving app (done by ``create_app``)."""
    app.add_middleware(TenantGuard, config=config, token=settings.tenant_tokens.get(config.tenant),
                       admin_token=settings.admin_token)


def _admin_denial(request: Request, admin_token: str | None, action: str, outcomes: Counter) -> HTTPException | None:
    """The 401/403 answer when ``request`` lacks the admin token (see :func:`check_admin_token`),
    counted in ``outcomes`` as ``unauthorized`` / ``forbidden``; None when the token is right."""
    denied = check_admin_token(request.headers.get("authorization"), admin_token)
    if denied is None:
        return None
    outcomes.labels("forbidden" if denied == 403 else "unauthorized").inc()
    message = f"{action} is disabled: no admin token configured" if denied == 403 else "invalid or missing bearer token"
    return HTTPException(denied, message, {"WWW-Authenticate": "Bearer"} if denied == 401 else None)


def require_admin(action: str, outcomes: Callable[[ServingMetrics], Counter]) -> Callable[..., Awaitable[None]]:
    """A route dependency admitting only ``Authorization: Bearer <AIRLOOP_ADMIN_TOKEN>``: else 401
    (``WWW-Authenticate: Bearer``) or 403 when no admin token is configured, ``{"detail": ...}``
    naming ``action``, counted in the counter ``outcomes`` picks from the app's metrics."""

    async def admin_only(request: Request, settings: SettingsDep, metrics: MetricsDep) -> None:
        denied = _admin_denial(request, settings.admin_token, action, outcomes(metrics))
        if denied is not None:
            raise denied

    return admin_only
