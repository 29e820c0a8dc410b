"""Admin routes (``Authorization: Bearer <AIRLOOP_ADMIN_TOKEN>``, see
:func:`airloop.serving.auth.require_admin`): ``POST /reload`` and ``POST /abtest/refresh``."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from airloop.models.trust import ModelLoadError
from airloop.serving import protocol
from airloop.serving.auth import require_admin
from airloop.serving.deps import AbTestsDep, ManagerDep, MetricsDep
from airloop.serving.handlers import refresh_tests, reload_model
from airloop.serving.responses import _json, field_errors
from airloop.serving.schema import ReloadRequest

log = logging.getLogger(__name__)

router = APIRouter()


@router.post(protocol.RELOAD, dependencies=[Depends(require_admin("reload", lambda m: m.reloads))])
async def reload(request: Request, manager: ManagerDep, metrics: MetricsDep) -> Response:
    """Load another version (admin token), smoke-test it and swap it in."""
    raw = await request.body()
    try:
        alias, version = ReloadRequest.model_validate_json(raw or b"{}").target()
    except (ValidationError, ValueError) as err:
        metrics.reloads.labels("invalid").inc()
        return _json({"detail": field_errors(err)}, 422)
    try:
        new, previous = await reload_model(manager, metrics, alias, version)
    except ModelLoadError as err:
        current = manager.current
        log.warning("reload to %s refused: %s", alias or f"version {version}", err)
        return _json(
            {"detail": str(err), "outcome": err.outcome, "serving": current.ref() if current else None},
            err.status_code,
        )
    return _json({"model": new.describe(), "previous_version": previous.version if previous else None})


@router.post(protocol.ABTEST_REFRESH,
             dependencies=[Depends(require_admin("A/B test refresh", lambda m: m.abtest_refreshes))])
async def abtest_refresh(manager: ManagerDep, metrics: MetricsDep, ab_tests: AbTestsDep) -> Response:
    """Re-read the running tests from the monitoring store (admin token) and route by them."""
    if not ab_tests:
        metrics.abtest_refreshes.labels("disabled").inc()
        return _json({"detail": "A/B tests are disabled in this process (prediction logging is off)"}, 409)
    try:
        outcome = await refresh_tests(manager, metrics)
    except ModelLoadError as err:
        return _json({"detail": str(err), "outcome": err.outcome}, err.status_code)
    return _json(outcome, 409 if outcome["errors"] else 200)
