"""Multi-tenant serving: every pipeline under ``/t/<tenant>/<pipeline>/…``, each tenant with its
own token.

One serving process hosts every valid pipeline file (:func:`create_gateway`, what
``python -m airloop.cli serve`` runs): each pipeline's app (:func:`airloop.serving.create_app`)
is mounted at its tenant route, and the default pipeline also answers at the root (``/predict``)
as before. Tenant isolation:

* **tokens** — ``AIRLOOP_TENANT_TOKENS`` (``tenant=token,…``; ``make init`` generates one per
  tenant of the pipeline files into ``.airloop/secrets.env``). A pipeline whose tenant has a
  token answers ``/predict``, ``/feedback``, ``/model`` and ``/abtest`` only with
  ``Authorization: Bearer <that tenant's token>`` (or the admin token, which the deploy step
  uses); another tenant's token gets 403, none 401. ``/health``, ``/ready`` and ``/metrics`` stay
  open for probes and Prometheus; ``/reload`` keeps needing the admin token.
* **rows** — a pipeline's predictions and labels are logged under its tenant; a request may not
  claim another tenant with ``X-Tenant`` (403), only the deploy smoke test's own segment.
* **models and experiments** — non-default tenants' registered models and MLflow experiments are
  named after the tenant (:attr:`airloop.config.PipelineConfig.model_name`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from airloop.config import PipelineConfig, Settings, get_settings, load_all_pipelines

from airloop.deploy import SMOKE_TENANT

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})


def tenant_route(config: PipelineConfig) -> str:
    """The URL prefix of a pipeline in the serving process: ``/t/<tenant>/<pipeline>``."""
    return f"/t/{config.tenant}/{config.name}"


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


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
        self.allowed = [t.encode() for t in (token, admin_token) if t]
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
        if path not in OPEN_PATHS and path != "/reload" and self.protected:
            token = _bearer(headers)
            if token is None:
                await _deny(send, 401, f"tenant {self.config.tenant}: bearer token required")
                return
            if not any(secrets.compare_digest(token.encode(), allowed) for allowed in self.allowed):
                await _deny(send, 403, f"this token is not valid for tenant {self.config.tenant}")
                return
        claimed = _header(headers, b"x-tenant")
        if self.config.tenant != "default" and claimed and claimed not in (self.config.tenant, SMOKE_TENANT):
            await _deny(send, 403, f"X-Tenant {claimed[:100]!r} does not match this route's tenant "
                                   f"{self.config.tenant!r}")
            return
        await self.app(scope, receive, send)


def add_tenant_guard(app: Any, config: PipelineConfig, settings: Settings) -> None:
    """Install :class:`TenantGuard` on one pipeline's serving app (done by ``create_app``)."""
    app.add_middleware(TenantGuard, config=config, token=settings.tenant_tokens.get(config.tenant),
                       admin_token=settings.admin_token)


def create_gateway(settings: Settings | None = None, log_predictions: bool = True) -> Any:
    """The serving process of every valid pipeline file (see the module docstring)."""
    from fastapi import FastAPI
    from starlette.routing import Mount

    from airloop.serving import create_app

    settings = settings or get_settings()
    configs, errors = load_all_pipelines(settings)
    apps = {c.name: create_app(settings, c.name, log_predictions=log_predictions) for c in configs}

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:  # start (load the champion of) every pipeline
            for app in apps.values():
                await stack.enter_async_context(app.router.lifespan_context(app))
            yield

    routes = [Mount(tenant_route(c), app=apps[c.name]) for c in configs]
    if settings.default_pipeline in apps:
        routes.append(Mount("/", app=apps[settings.default_pipeline]))
    gateway = FastAPI(title="airloop serving", routes=routes, lifespan=lifespan, docs_url=None, redoc_url=None)
    gateway.state.apps = apps
    gateway.state.config_errors = errors
    return gateway
