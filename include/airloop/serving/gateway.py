"""Multi-tenant serving: every pipeline under ``/t/<tenant>/<pipeline>/…``, each tenant with its
own token.

One serving process hosts every valid pipeline file (:func:`create_gateway`, what
``python -m airloop.cli serve`` runs): each pipeline's app (:func:`airloop.serving.app.create_app`)
is mounted at its tenant route, and the default pipeline also answers at the root (``/predict``)
as before. Tenant isolation:

* **tokens** — ``AIRLOOP_TENANT_TOKENS`` (``tenant=token,…``; ``make init`` generates one per
  tenant of the pipeline files, ``default`` included, into ``.airloop/secrets.env``). Every
  pipeline answers ``/predict``, ``/feedback``, ``/explain``, ``/model`` and ``/abtest`` only with
  ``Authorization: Bearer <its tenant's token>`` or the admin token (which the deploy step and
  replays use), unless ``AIRLOOP_SERVING_OPEN_ROUTES`` opens a route; another tenant's token gets
  403, none 401 (:mod:`airloop.serving.auth`). ``/health``, ``/ready`` and ``/metrics`` stay
  open for probes and Prometheus; ``/reload`` keeps needing the admin token. The gateway itself
  answers ``/docs`` and ``/openapi.json`` (the default pipeline's API, read-only documentation)
  without a token; ``<tenant route>/docs`` are behind that tenant's token.
* **rows** — a pipeline's predictions and labels are logged under its tenant; ``X-Tenant`` is
  honoured only with that tenant's token or the admin token (403), and on a non-default tenant's
  route only for its own tenant or the deploy smoke test's segment.
* **models and experiments** — non-default tenants' registered models and MLflow experiments are
  named after the tenant (:attr:`airloop.core.pipeline.PipelineConfig.model_name`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from airloop.core.pipeline import load_all_pipelines
from airloop.core.settings import Settings, get_settings
from airloop.serving.app import create_app
from airloop.serving.docs import mount_offline_docs
from airloop.serving.protocol import tenant_route


def create_gateway(settings: Settings | None = None, log_predictions: bool = True) -> Any:
    """The serving process of every valid pipeline file (see the module docstring)."""
    from fastapi import FastAPI
    from starlette.routing import Mount

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
    # /docs and /openapi.json of the default pipeline, answered here (open, like /health): its app's
    # own copies sit behind the tenant guard; the other pipelines' are at <tenant route>/docs
    default = apps.get(settings.default_pipeline)
    mount_offline_docs(gateway, default.title if default else None, schema_of=default)
    gateway.state.apps = apps
    gateway.state.config_errors = errors
    return gateway
