"""Routes of the lifecycle: environments, who served when, the ledger, promotion and rollback."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from airloop_provider.api.auth import PipelineContext, Reader, pipeline_writer
from airloop_provider.api.errors import call, environment_or_404
from airloop_provider.api.models import PromoteBody, RollbackBody, Timeline

router = APIRouter(prefix="/pipelines/{pipeline}", tags=["lifecycle"])


def _actor(ctx: PipelineContext, requested_by: str | None) -> str:
    """``api:<user>`` (a signed-in user), ``api:<requested_by>`` or ``api`` (the admin token)."""
    if not ctx.principal.machine:
        return f"api:{ctx.principal.name}"
    return f"api:{requested_by}" if requested_by else "api"


@router.get("/environments")
def environments(ctx: Reader) -> dict[str, Any]:
    """Each environment's gates and the version it holds now."""
    from airloop.registry import audit
    from airloop.registry import client as registry

    current = audit.current_versions(registry.get_client(ctx.settings), ctx.config)
    return {"pipeline": ctx.config.name, "environments": [
        env.model_dump() | {"version": current[env.name]} for env in ctx.config.promotion.path()]}


@router.get("/environments/{environment}/at")
def served_at(ctx: Reader, environment: str, time: datetime,
              clock: Literal["recorded", "business"] = "recorded") -> dict[str, Any]:
    """Which version served ``environment`` at ``time``, who moved it there and why."""
    from airloop.registry import audit

    environment_or_404(ctx.config, environment)
    at = time if time.tzinfo else time.replace(tzinfo=timezone.utc)
    return call(audit.served_at, ctx.engine, ctx.config, environment, at, business=clock == "business")


@router.get("/ledger", response_model=Timeline)
def ledger(ctx: Reader, environment: str | None = None, version: Annotated[int | None, Query(ge=1)] = None,
           limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> dict[str, Any]:
    """The promotion ledger as a timeline (oldest first; the newest ``limit`` rows)."""
    from airloop.registry import audit
    from airloop.tasks import overview

    if environment is not None:
        environment_or_404(ctx.config, environment, 422)
    if version is None:
        rows = call(overview.ledger_timeline, ctx.engine, ctx.config, environment)
    else:
        rows = [audit._jsonable(r) for r in call(audit.history, ctx.engine, ctx.config, environment, str(version))]
    return {"pipeline": ctx.config.name, "rows": rows[-limit:]}


def _require_version(ctx: PipelineContext, version: int | str) -> None:
    from airloop.tasks import overview

    call(overview.version_detail, ctx.config, ctx.settings, version)


@router.post("/promote", responses={404: {"description": "no such pipeline or version"},
                                    409: {"description": "the move conflicts with the registry's state"},
                                    502: {"description": "promoted, but the deploy failed and was rolled back"}})
def promote(body: PromoteBody, ctx: Annotated[PipelineContext, Depends(pipeline_writer("promote"))]) -> dict[str, Any]:
    """Gated promotion into an environment (POST on the runs of the ``promote`` DAG); into the
    serving one, serving reloads. A failed gate is an answer with ``promoted: false``."""
    from airloop.registry import lifecycle
    from airloop.serving.client import DeployError
    from airloop.tasks import lifecycle as stages

    config, settings = ctx.config, ctx.settings
    environment_or_404(config, body.environment, 422)
    _require_version(ctx, body.version)
    actor = _actor(ctx, body.requested_by)
    result = call(lifecycle.promote_version, config, settings, str(body.version), body.environment,
                  actor=actor, reason=body.reason, force=body.force)
    if result["promoted"] and config.promotion.environment(result["environment"]).serving:
        try:
            result["deploy"] = stages.deploy(config, result, None, _endpoint(), settings, actor=actor, run_context={})
        except DeployError as err:
            raise HTTPException(502, f"promoted, but the deploy failed and was rolled back: {err}") from None
    return result


@router.post("/rollback", responses={404: {"description": "no such pipeline or version"},
                                     409: {"description": "nothing to roll back to"}})
def rollback(body: RollbackBody, ctx: Annotated[PipelineContext, Depends(pipeline_writer("rollback"))]) -> dict[str, Any]:
    """One step back (or to a version that served before; POST on the runs of the ``rollback``
    DAG); serving reloads."""
    from airloop.tasks import lifecycle

    if body.environment is not None:
        environment_or_404(ctx.config, body.environment, 422)
    if body.target != "previous":
        _require_version(ctx, body.target)
    return call(lifecycle.rollback_and_reload, ctx.config, ctx.settings, body.environment, body.target,
                actor=_actor(ctx, body.requested_by), reason=body.reason, endpoint=_endpoint())


def _endpoint():
    """The serving endpoint (connection ``airloop_serving``, else the settings)."""
    from airloop_provider.hooks import ServingHook

    return ServingHook().endpoint
