"""The airloop lifecycle API, mounted on the Airflow API server at ``/airloop`` (see
``plugins/airloop_plugin.py``): audit, lineage, comparison, promotion and rollback over HTTP.

Every endpoint needs ``Authorization: Bearer <AIRLOOP_ADMIN_TOKEN>`` (403 when no token is
configured: the API is never open); only its documentation, ``/airloop/docs`` and
``/airloop/openapi.json`` (:mod:`airloop.serving.docs`), answers without it. Handlers are plain
functions (FastAPI runs them in a worker thread) that call :mod:`airloop.registry.lifecycle`;
nothing heavy is imported until a request comes.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/api/v1"


class PromoteBody(BaseModel):
    """``POST …/promote``."""

    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=1)]
    environment: str
    reason: Annotated[str, Field(min_length=3, max_length=1000)]
    force: bool = False
    requested_by: Annotated[str, Field(max_length=100)] | None = None


class RollbackBody(BaseModel):
    """``POST …/rollback``."""

    model_config = ConfigDict(extra="forbid")
    environment: str | None = None
    target: Annotated[str, Field(pattern=r"^(previous|[0-9]+)$")] = "previous"
    reason: Annotated[str, Field(min_length=3, max_length=1000)]
    requested_by: Annotated[str, Field(max_length=100)] | None = None


def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer admin token (``AIRLOOP_ADMIN_TOKEN``), compared in constant time."""
    from airloop.core.security import check_admin_token
    from airloop.core.settings import get_settings

    denied = check_admin_token(authorization, get_settings().admin_token)
    if denied == 403:
        raise HTTPException(403, "the airloop API is disabled: no AIRLOOP_ADMIN_TOKEN configured")
    if denied is not None:
        raise HTTPException(401, "invalid or missing bearer token", headers={"WWW-Authenticate": "Bearer"})


def _context(pipeline: str):
    """(config, settings, engine) of ``pipeline``; 404 for an unknown pipeline."""
    from airloop.core import store
    from airloop.core.pipeline import load_pipeline_config
    from airloop.core.settings import ConfigError, get_settings

    settings = get_settings()
    if not pipeline.replace("_", "").isalnum():
        raise HTTPException(404, f"unknown pipeline {pipeline!r}")
    try:
        config = load_pipeline_config(pipeline, settings)
    except ConfigError as err:
        raise HTTPException(404, str(err).splitlines()[0]) from None
    return config, settings, store.get_engine(settings.monitoring_db_uri)


def _call(fn, *args, **kwargs) -> Any:
    """Run a lifecycle call; map its errors to HTTP answers."""
    from airloop.registry.audit import LifecycleError

    try:
        return fn(*args, **kwargs)
    except LifecycleError as err:
        raise HTTPException(409, str(err)) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


def _actor(requested_by: str | None) -> str:
    return f"api:{requested_by}" if requested_by else "api"


def create_api_app() -> FastAPI:
    """The FastAPI sub-application (mounted by the plugin, or served on its own in tests)."""
    from airloop.serving.docs import mount_offline_docs

    app = FastAPI(title="airloop lifecycle API", dependencies=[Depends(require_token)], docs_url=None, redoc_url=None)

    @app.get(f"{API_PREFIX}/pipelines/{{pipeline}}/environments")
    def environments(pipeline: str) -> dict[str, Any]:
        """Each environment's gates and the version it holds now."""
        from airloop.registry import audit as lifecycle
        from airloop.registry import client as registry

        config, settings, _ = _context(pipeline)
        current = lifecycle.current_versions(registry.get_client(settings), config)
        return {"pipeline": config.name, "environments": [
            env.model_dump() | {"version": current[env.name]} for env in config.promotion.path()]}

    @app.get(f"{API_PREFIX}/pipelines/{{pipeline}}/environments/{{environment}}/at")
    def served_at(pipeline: str, environment: str, time: datetime,
                  clock: Literal["recorded", "business"] = "recorded") -> dict[str, Any]:
        """Which version served ``environment`` at ``time``, who moved it there and why."""
        from airloop.registry import audit as lifecycle

        config, _, engine = _context(pipeline)
        at = time if time.tzinfo else time.replace(tzinfo=timezone.utc)
        return _call(lifecycle.served_at, engine, config, environment, at, business=clock == "business")

    @app.get(f"{API_PREFIX}/pipelines/{{pipeline}}/ledger")
    def ledger(pipeline: str, environment: str | None = None, version: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> dict[str, Any]:
        """The promotion ledger (oldest first; the newest ``limit`` rows)."""
        from airloop.registry import audit as lifecycle

        config, _, engine = _context(pipeline)
        rows = _call(lifecycle.history, engine, config, environment, version)[-limit:]
        return {"pipeline": config.name, "rows": [lifecycle._jsonable(r) for r in rows]}

    @app.get(f"{API_PREFIX}/pipelines/{{pipeline}}/versions/{{version}}/lineage")
    def lineage(pipeline: str, version: Annotated[int, PathParam(ge=1)]) -> dict[str, Any]:
        """Data interval and fingerprint, validation, study, code version, replaced champion, ledger."""
        from airloop.registry import audit as lifecycle

        config, settings, _ = _context(pipeline)
        return _call(lifecycle.lineage, config, settings, str(version))

    @app.get(f"{API_PREFIX}/pipelines/{{pipeline}}/compare")
    def compare(pipeline: str, a: Annotated[int, Query(ge=1)], b: Annotated[int, Query(ge=1)],
                log_artifact: bool = True) -> dict[str, Any]:
        """Two versions side by side (also logged as an MLflow artifact on ``b``'s run)."""
        from airloop.registry import audit as lifecycle

        config, settings, _ = _context(pipeline)
        return _call(lifecycle.compare_versions, config, settings, a, b, log_artifact=log_artifact)

    @app.post(f"{API_PREFIX}/pipelines/{{pipeline}}/promote")
    def promote(pipeline: str, body: PromoteBody) -> dict[str, Any]:
        """Gated promotion into an environment; into the serving one, serving reloads."""
        from airloop.registry import lifecycle
        from airloop.serving.client import DeployError
        from airloop.tasks import lifecycle as stages

        config, settings, _ = _context(pipeline)
        result = _call(lifecycle.promote_version, config, settings, str(body.version), body.environment,
                       actor=_actor(body.requested_by), reason=body.reason, force=body.force)
        if result["promoted"] and config.promotion.environment(result["environment"]).serving:
            try:
                result["deploy"] = stages.deploy(config, result, None, _endpoint(), settings,
                                                 actor=_actor(body.requested_by), run_context={})
            except DeployError as err:
                raise HTTPException(502, f"promoted, but the deploy failed and was rolled back: {err}") from None
        return result

    @app.post(f"{API_PREFIX}/pipelines/{{pipeline}}/rollback")
    def rollback(pipeline: str, body: RollbackBody) -> dict[str, Any]:
        """One step back (or to a version that served before); serving reloads."""
        from airloop.tasks import lifecycle

        config, settings, _ = _context(pipeline)
        return _call(lifecycle.rollback_and_reload, config, settings, body.environment, body.target,
                     actor=_actor(body.requested_by), reason=body.reason, endpoint=_endpoint())

    # /docs (Swagger UI from swagger_ui_bundle, no CDN) and /openapi.json: open, read-only
    mount_offline_docs(app)
    return app


def _endpoint():
    """The serving endpoint (connection ``airloop_serving``, else the settings)."""
    from airloop_provider.hooks import ServingHook

    return ServingHook().endpoint
