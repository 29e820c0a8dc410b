"""``POST /predict``: one record or a batch, micro-batched with concurrent requests."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask

from airloop.core.names import CLIENT_ERROR
from airloop.models.schema import RecordValidationError
from airloop.serving import protocol
from airloop.serving.auth import request_caller
from airloop.serving.deps import PredictContextDep
from airloop.serving.handlers import (
    active_test,
    is_shadow,
    log_failed_prediction,
    predict_answer,
    shadow_score,
    wants_key_header,
)
from airloop.serving.openapi import REPLAY_INTERVAL_PARAMETER, REQUEST_KEY_PARAMETER, TENANT_PARAMETER, body
from airloop.serving.predict import PredictJob, PredictResponse, prepare_job
from airloop.serving.responses import _json, error_responses, fast_json, not_ready
from airloop.serving.runtime import ActiveTest, NonFiniteOutput, ServedModel
from airloop.serving.window import check_event_ts, replay_interval
from airloop.serving.schema import (
    PredictRequest,
    out_of_domain_errors,
    parse_predict_request,
    request_key_header,
    request_tenant,
)

log = logging.getLogger(__name__)

REPLAY_HEADER = protocol.REPLAY_INTERVAL_HEADER.lower()

router = APIRouter()


@router.post(
    protocol.PREDICT,
    responses={200: {"model": PredictResponse, "description": "The predictions"},
               **error_responses(400, 401, 403, 413, 422, 500, 503)},
    openapi_extra=body("predict", "One record, or a batch of records with optional request ids and event times.")
    | {"parameters": [TENANT_PARAMETER, REQUEST_KEY_PARAMETER, REPLAY_INTERVAL_PARAMETER]},
)
async def predict(request: Request, ctx: PredictContextDep) -> Response:
    """Predict one record or ``{"records": [...], "request_ids"?: [...], "event_ts"?: [...]}``.

    A request the model fails on answers 500 and logs one ``error`` row (a model error), unless
    its records lie outside the served version's domain: then the failure is the request's (422
    naming those fields, one ``client_error`` row, see :func:`client_failure`)."""
    manager, batcher, metrics = ctx.manager, ctx.batcher, ctx.metrics
    model = manager.current
    if model is None:
        return not_ready(manager)
    tests = manager.tests
    pipeline = manager.config.name
    started = time.perf_counter()
    parsed: PredictRequest | None = None
    tenant = manager.config.tenant
    active: ActiveTest | None = None
    job: PredictJob | None = None
    background = None
    try:
        with batcher.incoming():  # a forming batch waits for this request (see airloop.serving.batching)
            tenant = request_tenant(request, manager.config.tenant)
            active = active_test(tests, tenant)
            parsed = parse_predict_request(await request.body())
            replay = replay_interval(request.headers.get(REPLAY_HEADER), request_caller(request).admin)
            if parsed.event_ts is not None:
                check_event_ts(parsed.event_ts, datetime.now(timezone.utc), ctx.event_window, replay)
            header_key = request_key_header(request) if wants_key_header(active) else None
            job = prepare_job(model, active, parsed, tenant, started, header_key)
        # the connection: a forming batch waits for connections just answered (see airloop.serving.batching)
        predictions, _ = await batcher.submit(job, job.size, request.scope.get("client"))
        if is_shadow(active):
            background = BackgroundTask(shadow_score, active, parsed, job.request_ids, tenant, pipeline=pipeline,
                                        score=ctx.score, metrics=metrics, shadow_logger=ctx.shadow_logger)
    except RecordValidationError as err:
        metrics.prediction_errors.labels("client").inc()
        return _json({"detail": err.errors}, err.status_code)
    except Exception as err:
        errors = client_failure(model, job) if job is not None else []
        if errors:
            log.warning("prediction failed on records outside the domain of %s v%s: %s: %s",
                        model.name, model.version, type(err).__name__, err)
            metrics.prediction_errors.labels("client").inc()
            log_failed_prediction(ctx.prediction_logger, model, pipeline, tenant, parsed, started, err,
                                  status=CLIENT_ERROR)
            return _json({"detail": errors}, 422)
        metrics.prediction_errors.labels("model").inc()
        log_failed_prediction(ctx.prediction_logger, model, pipeline, tenant, parsed, started, err)
        if isinstance(err, NonFiniteOutput):  # NaN/inf: the model's failure, never sent as JSON
            log.error("prediction of %s v%s is not finite: %s", model.name, model.version, err)
            return _json({"detail": f"prediction failed: {err}"}, 500)
        log.exception("prediction failed (model %s v%s)", model.name, model.version)
        return _json({"detail": "prediction failed"}, 500)
    return fast_json(predict_answer(metrics, model, predictions, active), background=background)


def client_failure(model: ServedModel, job: PredictJob) -> list[dict[str, Any]]:
    """The 422 errors of a request the model failed on because of its records: one per record
    and feature outside the version's domain (:func:`airloop.serving.schema.out_of_domain_errors`);
    empty when every record is inside it (then the failure is the model's)."""
    domain = model.schema.domain
    if domain is None:
        return []
    errors = out_of_domain_errors(domain, [model.schema.as_dict(row) for row in job.validated])
    for error in errors:
        error["message"] = f"the model cannot predict this record: {error['message']}"
    return errors
