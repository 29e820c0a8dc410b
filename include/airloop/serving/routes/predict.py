"""``POST /predict``: one record or a batch, micro-batched with concurrent requests."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask

from airloop.models.schema import RecordValidationError
from airloop.serving import protocol
from airloop.serving.deps import PredictContextDep
from airloop.serving.handlers import (
    active_test,
    is_shadow,
    log_failed_prediction,
    predict_answer,
    shadow_score,
    wants_key_header,
)
from airloop.serving.predict import PredictResponse, prepare_job
from airloop.serving.responses import _json, not_ready
from airloop.serving.runtime import ActiveTest
from airloop.serving.schema import PredictRequest, parse_predict_request, request_key_header, request_tenant

log = logging.getLogger(__name__)

router = APIRouter()


@router.post(protocol.PREDICT, responses={200: {"model": PredictResponse, "description": "The predictions"}})
async def predict(request: Request, ctx: PredictContextDep) -> Response:
    """Predict one record or ``{"records": [...], "request_ids"?: [...], "event_ts"?: [...]}``."""
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
    background = None
    try:
        with batcher.incoming():  # a forming batch waits for this request (see airloop.serving.batching)
            tenant = request_tenant(request, manager.config.tenant)
            active = active_test(tests, tenant)
            parsed = parse_predict_request(await request.body())
            header_key = request_key_header(request) if wants_key_header(active) else None
            job = prepare_job(model, active, parsed, tenant, started, header_key)
        predictions, _ = await batcher.submit(job, job.size)
        if is_shadow(active):
            background = BackgroundTask(shadow_score, active, parsed, job.request_ids, tenant, pipeline=pipeline,
                                        score=ctx.score, metrics=metrics, shadow_logger=ctx.shadow_logger)
    except RecordValidationError as err:
        return _json({"detail": err.errors}, err.status_code)
    except Exception as err:
        log.exception("prediction failed (model %s v%s)", model.name, model.version)
        log_failed_prediction(ctx.prediction_logger, model, pipeline, tenant, parsed, started, err)
        return _json({"detail": "prediction failed"}, 500)
    return _json(predict_answer(metrics, model, predictions, active), background=background)
