"""Admin routes (``Authorization: Bearer <AIRLOOP_ADMIN_TOKEN>``, see
:func:`airloop.serving.auth.require_admin`): ``POST /reload`` and ``POST /abtest/refresh``.

A pipeline whose file was added to the pipelines folder after the process started has no app
mounted at its tenant route, so its requests reach the default pipeline's app (mounted at ``/``):
``POST /t/<tenant>/<pipeline>/reload`` there starts serving it (what deploy calls; no restart),
any other request for it is a 404 that says which pipeline serving does not know."""

from __future__ import annotations

import importlib
import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from airloop.models.trust import ModelLoadError
from airloop.serving import protocol
from airloop.serving.auth import require_admin
from airloop.serving.deps import AbTestsDep, ManagerDep, MetricsDep, SettingsDep
from airloop.serving.handlers import refresh_tests, reload_model
from airloop.serving.manager import ModelManager, PipelineMounts, new_pipeline_config
from airloop.serving.metrics import ServingMetrics
from airloop.serving.openapi import body
from airloop.serving.responses import ReloadAnswer, RefreshAnswer, _json, error_responses, field_errors
from airloop.serving.runtime import DEFAULT_ALIAS
from airloop.serving.schema import ReloadRequest

log = logging.getLogger(__name__)

router = APIRouter()


@router.post(
    protocol.RELOAD, dependencies=[Depends(require_admin("reload", lambda m: m.reloads))],
    responses={200: {"model": ReloadAnswer, "description": "The version now served"},
               **error_responses(400, 401, 403, 404, 409, 413, 422, 500, 503)},
    openapi_extra=body("reload", "An alias or a version (an empty body or {}: the champion).", required=False),
)
async def reload(request: Request, manager: ManagerDep, metrics: MetricsDep) -> Response:
    """Load another version (admin token), smoke-test it and swap it in."""
    return await _reload(await request.body(), manager, metrics)


async def _reload(raw: bytes, manager: ModelManager, metrics: ServingMetrics, *,
                  loaded_at_start: bool = False) -> Response:
    """The ``/reload`` answer; ``loaded_at_start``: the app has just started, its startup already
    loaded the champion (a request for the champion is answered with it, not loaded twice)."""
    try:
        alias, version = ReloadRequest.model_validate_json(raw or b"{}").target()
    except (ValidationError, ValueError) as err:
        metrics.reloads.labels("invalid").inc()
        return _json({"detail": field_errors(err)}, 422)
    current = manager.current
    if loaded_at_start and current is not None and alias == DEFAULT_ALIAS and current.alias == alias:
        metrics.reloads.labels("success").inc()
        return _json({"model": current.describe(), "previous_version": None})
    try:
        new, previous = await reload_model(manager, metrics, alias, version)
    except ModelLoadError as err:
        current = manager.current
        log.warning("%s: reload to %s refused: %s", manager.model_name, alias or f"version {version}", err)
        return _json(
            {"detail": str(err), "outcome": err.outcome, "serving": current.ref() if current else None},
            err.status_code,
        )
    return _json({"model": new.describe(), "previous_version": previous.version if previous else None})


@router.post("/t/{tenant}/{pipeline}" + protocol.RELOAD, include_in_schema=False,
             dependencies=[Depends(require_admin("reload", lambda m: m.reloads))])
async def reload_new_pipeline(tenant: str, pipeline: str, request: Request, settings: SettingsDep,
                              metrics: MetricsDep) -> Response:
    """``POST <tenant route>/reload`` of a pipeline this process does not serve (no app is mounted
    at its route, so the request reached the default pipeline's app): when its file is now in the
    pipelines folder, start serving it (:class:`PipelineMounts`: mounted at its route, champion
    loaded) and answer the reload from it; else 404 naming the pipeline and the folder."""
    raw = await request.body()
    try:
        config = new_pipeline_config(settings, tenant, pipeline)
        # the composition root is above the routers (it includes them): looked up, not imported
        factory = getattr(request.app.state, "app_factory", None) or importlib.import_module(
            "airloop.serving.app").create_app
        state = request.app.state
        app = await PipelineMounts.of(request.scope["router"]).mount(
            request.scope["router"], config, factory, settings,
            log_predictions=state.prediction_logger is not None, ab_tests=state.ab_tests)
    except ModelLoadError as err:
        metrics.reloads.labels(err.outcome).inc()
        log.warning("reload of %s/%s refused: %s", tenant, pipeline, err)
        return _json({"detail": str(err), "outcome": err.outcome, "serving": None}, err.status_code)
    except Exception as err:  # the new app failed to start
        metrics.reloads.labels("error").inc()
        log.exception("pipeline %s/%s could not be started", tenant, pipeline)
        return _json({"detail": f"serving could not start pipeline {tenant}/{pipeline}: {type(err).__name__}: {err}",
                      "outcome": "error", "serving": None}, 500)
    return await _reload(raw, app.state.manager, app.state.metrics, loaded_at_start=True)


@router.api_route("/t/{tenant}/{pipeline}/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                  include_in_schema=False)
async def unknown_pipeline(tenant: str, pipeline: str, rest: str) -> Response:
    """Any other request for a pipeline this process does not serve: 404 saying so."""
    return _json({"detail": f"serving has no pipeline {tenant}/{pipeline} (a pipeline file added after serving "
                            f"started is picked up by POST /t/{tenant}/{pipeline}{protocol.RELOAD} with the admin "
                            "token, which deploy does)", "outcome": "unknown_pipeline"}, 404)


@router.post(protocol.ABTEST_REFRESH,
             dependencies=[Depends(require_admin("A/B test refresh", lambda m: m.abtest_refreshes))],
             responses={200: {"model": RefreshAnswer, "description": "The tests now routed"},
                        409: {"description": "A/B tests are disabled, or a test could not be loaded "
                                             "(the answer lists it under errors)",
                              "content": {"application/json": {"schema": {"anyOf": [
                                  {"$ref": "#/components/schemas/RefreshAnswer"},
                                  {"$ref": "#/components/schemas/ErrorResponse"}]}}}},
                        **error_responses(401, 403, 413, 500, 503)})
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
