"""``POST /feedback``: labels for earlier predictions, upserted into ``ground_truth``."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response

from airloop.models.schema import RecordValidationError
from airloop.serving import protocol
from airloop.serving.deps import ConfigDep, MetricsDep, SettingsDep
from airloop.serving.handlers import feedback_rows, store_feedback
from airloop.serving.openapi import TENANT_PARAMETER, body
from airloop.serving.responses import FeedbackAnswer, _json, error_responses
from airloop.serving.schema import parse_feedback_body, request_tenant

log = logging.getLogger(__name__)

router = APIRouter()


@router.post(
    protocol.FEEDBACK,
    responses={200: {"model": FeedbackAnswer, "description": "The labels were stored"},
               **error_responses(400, 401, 403, 409, 413, 422, 503)},
    openapi_extra=body("feedback", "One label, or several as {\"items\": [...]}.") | {"parameters": [TENANT_PARAMETER]},
)
async def feedback(request: Request, config: ConfigDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    """Labels for earlier predictions: ``{"request_id", "label", "label_ts"?}`` or
    ``{"items": [...]}``, upserted into ``ground_truth`` under (tenant, this pipeline, request id)
    — the ``X-Tenant`` tenant, else the pipeline's (503 when the store is down)."""
    try:
        tenant = request_tenant(request, config.tenant)
        items = parse_feedback_body(await request.body(), config)
    except RecordValidationError as err:
        return _json({"detail": err.errors}, err.status_code)
    rows = feedback_rows(items, tenant, config.name, datetime.now(timezone.utc))
    try:
        written = await store_feedback(settings.monitoring_db_uri, rows, metrics)
    except (sa.exc.SQLAlchemyError, OSError) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        log.warning("feedback not stored, monitoring store unavailable: %s", reason)
        return _json(
            {"detail": f"monitoring database unavailable; the feedback was not stored, retry later ({reason})"},
            503, {"Retry-After": "5"},
        )
    return _json({"written": written})
