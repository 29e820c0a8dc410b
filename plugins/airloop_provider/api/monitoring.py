"""Routes of the monitoring store: drift history, monitoring runs, alerts, retrain requests,
A/B tests and the Evidently report of an interval."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from airloop_provider.api.auth import Reader
from airloop_provider.api.errors import call
from airloop_provider.api.models import DriftHistory, Rows

router = APIRouter(prefix="/pipelines/{pipeline}", tags=["monitoring"])
Limit = Annotated[int, Query(ge=1, le=10_000, description="newest rows to return")]


@router.get("/drift", response_model=DriftHistory)
def drift(ctx: Reader, feature: Annotated[str | None, Query(description="one feature, or __prediction__")] = None,
          since: Annotated[datetime | None, Query(description="interval starts from (inclusive)")] = None,
          until: Annotated[datetime | None, Query(description="interval starts before (exclusive)")] = None,
          ) -> dict[str, Any]:
    """Drift history per feature: one point per monitored interval (statistic, threshold, drifted,
    method, rows), from the stored per-interval statistics."""
    from airloop.tasks import overview

    return call(overview.drift_history, ctx.engine, ctx.config, feature, since, until)


@router.get("/monitoring", response_model=Rows)
def monitoring(ctx: Reader, limit: Limit = 100) -> dict[str, Any]:
    """Monitored intervals, newest first: realized and reference performance, volume ratio,
    latency p50/p95, error rate, data quality of the traffic, drift share, model version, report link."""
    from airloop.tasks import overview

    return {"pipeline": ctx.config.name, "rows": call(overview.monitoring_runs, ctx.engine, ctx.config, limit)}


@router.get("/alerts", response_model=Rows)
def alerts(ctx: Reader, status: Annotated[str | None, Query(max_length=20, description="only alerts with this status")] = None,
           limit: Limit = 200) -> dict[str, Any]:
    """Alerts, newest first, with their severity, status and delivery."""
    from airloop.tasks import overview

    return {"pipeline": ctx.config.name, "rows": call(overview.alerts, ctx.engine, ctx.config, status, limit)}


@router.get("/retrains", response_model=Rows)
def retrains(ctx: Reader, limit: Limit = 100) -> dict[str, Any]:
    """Retrain decisions, newest first (requested, or suppressed by the cool-down), with the reason."""
    from airloop.tasks import overview

    return {"pipeline": ctx.config.name, "rows": call(overview.retrain_requests, ctx.engine, ctx.config, limit)}


@router.get("/abtests", response_model=Rows)
def abtests(ctx: Reader) -> dict[str, Any]:
    """A/B and shadow tests, newest first, with their status and latest evaluation's statistics."""
    from airloop.tasks import overview

    return {"pipeline": ctx.config.name, "rows": call(overview.ab_tests, ctx.config, ctx.settings, ctx.engine)}


@router.get("/reports/{interval_start}", response_class=FileResponse,
            responses={200: {"content": {"text/html": {}}, "description": "the Evidently drift report"},
                       404: {"description": "no report stored for this interval"}})
def report(ctx: Reader, interval_start: datetime) -> FileResponse:
    """The Evidently HTML drift report of the interval starting at ``interval_start``."""
    from airloop.tasks import overview

    path = call(overview.report_file, ctx.engine, ctx.config, interval_start, ctx.settings)
    return FileResponse(path, media_type="text/html")
