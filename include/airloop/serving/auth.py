"""Serving authentication: closed routes by default, tenant tokens, the admin token, ``X-Tenant``.

Every route of a pipeline's app needs a bearer token except the probes (``/health``, ``/ready``,
``/metrics``; the gateway's ``/docs`` and ``/openapi.json`` are answered above the apps, open):

* ``/predict`` (it logs), ``/feedback``, ``/explain``, ``/model`` and ``/abtest`` take the token of
  the tenant the request is for, or the admin token (accepted everywhere). The operator opens one
  of them explicitly with ``AIRLOOP_SERVING_OPEN_ROUTES=predict,feedback`` (names of
  :data:`~airloop.serving.protocol.GUARDED_ROUTES`); the admin routes (``/reload``,
  ``/abtest/refresh``) cannot be opened and check the admin token themselves (:func:`require_admin`).
* the tenant of a request is its ``X-Tenant`` header, else the route's: a request is answered only
  when its token proves that tenant (the tenant's own token, or the admin token), so no row is
  ever stored under a tenant the caller has not proven. An opened route answers a request without
  a token for the route's own tenant only.
* no token: 401 (``WWW-Authenticate: Bearer``); a token that does not prove the tenant: 403; both
  with a JSON ``detail`` naming the header. Tokens are compared in constant time.

The guard puts the :class:`Caller` it identified into the request's state (:func:`request_caller`):
routes use it for what only the admin may do (``POST /feedback?correct=true``, a replay's
``X-Airloop-Replay-Interval``) and as the actor of a label revision.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from prometheus_client import Counter

from airloop.core.pipeline import PipelineConfig
from airloop.core.security import check_admin_token, header_bearer, token_matches
from airloop.core.settings import AIRLOOP_SERVING_OPEN_ROUTES, ConfigError, Settings
from airloop.serving import protocol
from airloop.serving.deps import MetricsDep, SettingsDep
from airloop.serving.metrics import ServingMetrics
from airloop.serving.protocol import SMOKE_TENANT, tenant_route
from airloop.serving.schema import is_tenant_name

OPEN_PATHS = protocol.OPEN_ROUTES

#: Key of the :class:`Caller` in the request's ASGI ``state``.
CALLER_KEY = "airloop_caller"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request proved to be: the admin, one tenant (its token), or nobody (an opened route)."""

    admin: bool = False
    tenant: str | None = None

    def proves(self, tenant: str) -> bool:
        """Whether this caller may act for ``tenant``."""
        return self.admin or (self.tenant is not None and self.tenant == tenant)

    @property
    def actor(self) -> str:
        """The actor recorded in audit rows: ``admin``, ``tenant:<name>`` or ``anonymous``."""
        return "admin" if self.admin else f"tenant:{self.tenant}" if self.tenant else "anonymous"


ANONYMOUS = Caller()


def identify(token: str | None, admin_token: str | None, tenant_tokens: Mapping[str, str]) -> Caller | None:
    """The :class:`Caller` a bearer ``token`` proves (``ANONYMOUS`` without one); None for a token
    that matches no configured one. Every configured token is compared (constant time each)."""
    if token is None:
        return ANONYMOUS
    admin = bool(admin_token) and token_matches(token, admin_token)
    tenant = None
    for name, expected in tenant_tokens.items():
        if expected and token_matches(token, expected) and tenant is None:
            tenant = name
    if admin:
        return Caller(admin=True)
    return Caller(tenant=tenant) if tenant is not None else None


def open_routes(settings: Settings) -> frozenset[str]:
    """The paths ``settings.serving_open_routes`` opens; ``ConfigError`` naming
    ``AIRLOOP_SERVING_OPEN_ROUTES`` for an unknown or admin route."""
    names = set(settings.serving_open_routes)
    unknown = sorted(names - set(protocol.GUARDED_ROUTES))
    if unknown:
        raise ConfigError(f"{AIRLOOP_SERVING_OPEN_ROUTES.name}: cannot open {unknown}; the routes that can be "
                          f"opened are {sorted(protocol.GUARDED_ROUTES)} (admin routes never are)")
    return frozenset(protocol.GUARDED_ROUTES[name] for name in names)


def request_caller(request: Request) -> Caller:
    """The :class:`Caller` the guard identified (``ANONYMOUS`` outside a guarded app)."""
    return request.scope.get("state", {}).get(CALLER_KEY, ANONYMOUS)


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


def _is_admin_path(path: str) -> bool:
    # /reload and /abtest/refresh, and <tenant route>/reload of a pipeline mounted later (admin.py)
    return path in protocol.ADMIN_ROUTES or (path.startswith("/t/") and path.endswith(protocol.RELOAD))


class TenantGuard:
    """ASGI middleware of one pipeline's app: strips its ``/t/<tenant>/<pipeline>`` prefix (so the
    app answers at the root and at its tenant route) and enforces the rules of the module docstring."""

    def __init__(self, app: Any, config: PipelineConfig, admin_token: str | None,
                 tenant_tokens: Mapping[str, str], opened: frozenset[str]) -> None:
        self.app, self.config = app, config
        self.prefix = tenant_route(config)
        self.admin_token, self.tenant_tokens, self.opened = admin_token, dict(tenant_tokens), opened

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == self.prefix or path.startswith(self.prefix + "/"):
            scope = dict(scope, path=path[len(self.prefix):] or "/",
                         root_path=scope.get("root_path", "") + self.prefix)
            path = scope["path"]
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        token = header_bearer(headers)
        caller = identify(token, self.admin_token, self.tenant_tokens)
        if not _is_admin_path(path):
            denied = self._denial(path, token, caller, _header(headers, protocol.TENANT_HEADER.lower().encode()))
            if denied is not None:
                await _deny(send, *denied)
                return
        scope = dict(scope, state={**scope.get("state", {}), CALLER_KEY: caller or ANONYMOUS})
        await self.app(scope, receive, send)

    def _denial(self, path: str, token: str | None, caller: Caller | None,
                claimed: str | None) -> tuple[int, str] | None:
        """``(status, detail)`` when the request may not reach ``path``, else None."""
        own = self.config.tenant
        valid_claim = bool(claimed) and is_tenant_name(claimed)
        tenant = claimed if valid_claim else own  # a malformed X-Tenant is the route's 422, for its own tenant
        if own != "default" and valid_claim and tenant not in (own, SMOKE_TENANT):
            return 403, f"X-Tenant {tenant[:100]!r} does not match this route's tenant {own!r}"
        if token is None:
            if tenant == own and path in self.opened:
                return None
            if tenant != own:
                return 401, (f"X-Tenant {tenant!r} needs a token that proves it: send 'Authorization: Bearer "
                             f"<token>' with tenant {tenant!r}'s token or the admin token")
            return 401, (f"tenant {own}: bearer token required: send 'Authorization: Bearer <token>' with tenant "
                         f"{own!r}'s token or the admin token ({AIRLOOP_SERVING_OPEN_ROUTES.name} opens a route)")
        if caller is None or not caller.proves(tenant):
            about = f"tenant {tenant!r}" + (" (X-Tenant)" if tenant != own else "")
            return 403, f"the token in the Authorization header is not valid for {about}"
        return None


def add_tenant_guard(app: Any, config: PipelineConfig, settings: Settings) -> None:
    """Install :class:`TenantGuard` on one pipeline's serving app (done by ``create_app``);
    ``ConfigError`` for a wrong ``AIRLOOP_SERVING_OPEN_ROUTES``."""
    app.add_middleware(TenantGuard, config=config, admin_token=settings.admin_token,
                       tenant_tokens=settings.tenant_tokens, opened=open_routes(settings))


def _admin_denial(request: Request, admin_token: str | None, action: str, outcomes: Counter) -> HTTPException | None:
    """The 401/403 answer when ``request`` lacks the admin token (see :func:`check_admin_token`),
    counted in ``outcomes`` as ``unauthorized`` / ``forbidden``; None when the token is right."""
    denied = check_admin_token(request.headers.get("authorization"), admin_token)
    if denied is None:
        return None
    outcomes.labels("forbidden" if denied == 403 else "unauthorized").inc()
    message = (f"{action} is disabled: no admin token configured" if denied == 403
               else "invalid or missing bearer token: send 'Authorization: Bearer <admin token>'")
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
