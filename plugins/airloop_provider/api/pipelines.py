"""Routes of pipelines and their versions: the list, the model card, versions, lineage,
comparisons and validation results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam

from airloop_provider.api.auth import Reader, UserDep, can_read
from airloop_provider.api.errors import call
from airloop_provider.api.models import PipelineCard, PipelineList, VersionDetail, VersionList

router = APIRouter(prefix="/pipelines", tags=["pipelines"])
VersionPath = Annotated[int, PathParam(ge=1, description="registered model version")]


@router.get("", response_model=PipelineList)
def pipelines(principal: UserDep) -> dict[str, Any]:
    """Every pipeline the caller may read, with its DAG ids and the champion of each environment."""
    from airloop.core.settings import get_settings
    from airloop.tasks import overview

    return {"pipelines": overview.pipelines_overview(get_settings(), include=lambda c: can_read(principal, c))}


@router.get("/{pipeline}", response_model=PipelineCard)
def card(ctx: Reader) -> dict[str, Any]:
    """The model card: champion and holdout metrics per environment, live metrics, last training,
    last drift check, open alerts, running A/B tests, links."""
    from airloop.tasks import overview

    return call(overview.pipeline_card, ctx.config, ctx.settings, ctx.engine)


@router.get("/{pipeline}/versions", response_model=VersionList)
def versions(ctx: Reader) -> dict[str, Any]:
    """Every registered version, newest first: metrics, aliases, environments, lineage, links."""
    from airloop.tasks import overview

    return {"pipeline": ctx.config.name, "versions": call(overview.versions, ctx.config, ctx.settings)}


@router.get("/{pipeline}/versions/{version}", response_model=VersionDetail,
            responses={404: {"description": "no such pipeline or version"}})
def version(ctx: Reader, version: VersionPath) -> dict[str, Any]:
    """One version: metrics, lineage, params, ledger rows and links."""
    from airloop.tasks import overview

    return call(overview.version_detail, ctx.config, ctx.settings, version)


@router.get("/{pipeline}/versions/{version}/validation",
            responses={200: {"content": {"application/json": {}, "text/html": {}},
                             "description": "the GX validation result (JSON) or its HTML report"},
                       404: {"description": "no such version, or no validation result logged"}})
def validation(ctx: Reader, version: VersionPath,
               format: Annotated[Literal["json", "html"], Query(description="result JSON or HTML report")] = "json",
               ) -> Response:
    """The data validation result of the run that trained ``version`` (read from its MLflow run)."""
    from airloop.tasks import overview

    content, media = call(overview.validation_result, ctx.config, ctx.settings, version, format)
    return Response(content, media_type=media)


@router.get("/{pipeline}/versions/{version}/lineage", responses={404: {"description": "no such version"}})
def lineage(ctx: Reader, version: VersionPath) -> dict[str, Any]:
    """Data interval and fingerprint, validation, study, code version, replaced champion, ledger."""
    from airloop.registry import audit

    return call(audit.lineage, ctx.config, ctx.settings, str(version), lifecycle_status=404)


@router.get("/{pipeline}/compare", responses={404: {"description": "no such version"}})
def compare(ctx: Reader, a: Annotated[int, Query(ge=1)], b: Annotated[int, Query(ge=1)],
            log_artifact: bool = True) -> dict[str, Any]:
    """Two versions side by side: quality metrics with ``b - a`` and the better version by the
    metric's orientation; counts and latency under ``figures``, unranked (also logged as an MLflow
    artifact on ``b``'s run)."""
    from airloop.registry import audit

    return call(audit.compare_versions, ctx.config, ctx.settings, a, b, log_artifact=log_artifact,
                lifecycle_status=404)
