"""``POST /feedback``: labels for earlier predictions, stored first-write-wins in ``ground_truth``.

The same label sent again is idempotent (200, counted ``unchanged``); a different label for a
prediction already labelled is refused (409 naming the item) and kept in ``label_revisions``;
an admin applies it with ``POST /feedback?correct=true`` (audited, ``applied`` true)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response

from airloop.models.schema import MAX_REPORTED_ERRORS, RecordValidationError
from airloop.serving import protocol
from airloop.serving.auth import request_caller
from airloop.serving.deps import ConfigDep, MetricsDep, SettingsDep
from airloop.serving.handlers import feedback_rows, store_feedback
from airloop.serving.openapi import CORRECT_PARAMETER, TENANT_PARAMETER, body
from airloop.serving.responses import ErrorResponse, FeedbackAnswer, _json, error_responses
from airloop.serving.schema import parse_feedback_body, request_tenant

log = logging.getLogger(__name__)

router = APIRouter()


@router.post(
    protocol.FEEDBACK,
    responses={200: {"model": FeedbackAnswer, "description": "The labels were stored (or were already)"},
               409: {"model": ErrorResponse, "description": "A different label of an already-labelled prediction "
                                                           "(each named; kept as a revision, not applied)."},
               **error_responses(400, 401, 403, 413, 422, 503)},
    openapi_extra=body("feedback", "One label, or several as {\"items\": [...]}.")
    | {"parameters": [TENANT_PARAMETER, CORRECT_PARAMETER]},
)
async def feedback(request: Request, config: ConfigDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    """Labels for earlier predictions: ``{"request_id", "label", "label_ts"?}`` or
    ``{"items": [...]}``, stored first-write-wins in ``ground_truth`` under (tenant, this
    pipeline, request id) — the ``X-Tenant`` tenant, else the pipeline's (503 when the store is
    down). ``?correct=true`` (admin token): a different label replaces the stored one, audited."""
    caller = request_caller(request)
    try:
        correct = _correct_flag(request.query_params.get("correct"), caller.admin)
        tenant = request_tenant(request, config.tenant)
        items = parse_feedback_body(await request.body(), config)
    except RecordValidationError as err:
        return _json({"detail": err.errors}, err.status_code)
    rows = feedback_rows(items, tenant, config.name, datetime.now(timezone.utc))
    try:
        outcome = await store_feedback(settings.monitoring_db_uri, rows, metrics, caller.actor, correct)
    except (sa.exc.SQLAlchemyError, OSError) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        log.warning("feedback not stored, monitoring store unavailable: %s", reason)
        return _json(
            {"detail": f"monitoring database unavailable; the feedback was not stored, retry later ({reason})"},
            503, {"Retry-After": "5"},
        )
    counts = {"written": outcome.written, "unchanged": outcome.unchanged, "corrected": outcome.corrected}
    if outcome.conflicts:
        detail = [{"item": c["index"], "field": "label", "request_id": c["request_id"],
                   "message": f"request id {c['request_id']!r} is already labelled {c['stored']}; the different "
                              f"label {c['sent']} is kept as a revision, not applied (labels are first-write-wins; "
                              "an admin applies a correction with POST /feedback?correct=true)"}
                  for c in outcome.conflicts[:MAX_REPORTED_ERRORS]]
        return _json({"detail": detail, "conflicts": len(outcome.conflicts), **counts}, 409)
    return _json(counts)


def _correct_flag(value: str | None, admin: bool) -> bool:
    """The ``correct`` query parameter: false by default; true only with the admin token (403)."""
    if value is None:
        return False
    flag = value.strip().lower()
    if flag not in ("true", "false", "1", "0"):
        raise RecordValidationError([{"item": None, "field": "correct",
                                      "message": f"correct must be true or false, got {value!r:.40}"}])
    if flag in ("true", "1") and not admin:
        raise RecordValidationError([{"item": None, "field": "correct",
                                      "message": "correct=true needs the admin token (header Authorization: "
                                                 "Bearer <admin token>)"}], 403)
    return flag in ("true", "1")
