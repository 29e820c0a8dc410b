"""HTTP routes of the serving API: translate HTTP and delegate."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import (
    ValidationError,
)
from starlette.background import BackgroundTask

from airloop.core import names, store
from airloop.core.settings import Settings
from airloop.experiments import routing
from airloop.models.schema import RecordValidationError
from airloop.models.scoring import score_function
from airloop.models.trust import ModelLoadError
from airloop.serving.auth import _admin_denied
from airloop.serving.batching import MicroBatcher
from airloop.serving.manager import ModelManager
from airloop.serving.metrics import ServingMetrics
from airloop.serving.predict import (
    INLINE_BATCH_RECORDS,
    BatchingConfig,
    PredictJob,
    error_row,
    predict_jobs,
    prediction_rows,
    prepare_job,
)
from airloop.serving.predlog import PredictionLogger
from airloop.serving.responses import _json
from airloop.serving.runtime import ActiveTest
from airloop.serving.schema import (
    PredictRequest,
    ReloadRequest,
    parse_feedback_body,
    parse_predict_request,
    request_key_header,
    request_tenant,
)

log = logging.getLogger(__name__)


def write_feedback(uri: str, rows: list[dict[str, Any]]) -> int:
    """Upsert ``ground_truth`` rows (a label sent again overwrites the earlier one)."""
    return store.upsert(store.get_engine(uri), store.ground_truth, rows)


def _not_ready(manager: ModelManager) -> JSONResponse:
    reason = manager.last_error or f"no model loaded for {manager.model_name}"
    return _json({"status": "not ready", "detail": reason}, 503)


def _add_routes(
    app: FastAPI,
    manager: ModelManager,
    metrics: ServingMetrics,
    settings: Settings,
    prediction_logger: PredictionLogger | None = None,
    shadow_logger: PredictionLogger | None = None,
    ab_tests: bool = False,
    batching: BatchingConfig | None = None,
) -> None:
    """Register the endpoints on ``app`` (predictions are logged to ``prediction_logger``, shadow
    predictions to ``shadow_logger``; ``ab_tests`` enables ``POST /abtest/refresh``; concurrent
    ``/predict`` requests are micro-batched by ``app.state.batcher`` as ``batching`` says)."""
    batching = batching or BatchingConfig()
    pipeline = manager.config.name
    score = score_function(manager.config)

    def log_rows(rows: list[dict[str, Any]]) -> None:
        if prediction_logger is not None:
            prediction_logger.log(rows)

    def run_batch(jobs: list[PredictJob]) -> list[Any]:
        """The batcher's ``run``: predict, then enqueue the batch's log rows with one call."""
        metrics.batch_requests.observe(len(jobs))
        metrics.batch_records.observe(sum(job.size for job in jobs))
        outcomes = predict_jobs(jobs, pipeline, score, metrics)
        log_rows([row for outcome in outcomes if not isinstance(outcome, BaseException) for row in outcome[1]])
        return outcomes

    batcher: MicroBatcher[PredictJob] = MicroBatcher(
        run_batch, max_wait_s=batching.max_wait_s, max_records=batching.max_records,
        offload_records=INLINE_BATCH_RECORDS,
    )
    app.state.batcher = batcher

    def shadow_score(active: ActiveTest, parsed: PredictRequest, request_ids: list[str], tenant: str) -> None:
        """Shadow mode, after the response: the challenger scores the request's records; its rows
        (or one error row) go to ``shadow_predictions``. Never raises."""
        challenger = active.challenger
        started = time.perf_counter()
        now = datetime.now(timezone.utc)
        try:
            try:
                validated, items = challenger.predict_validated(parsed.records)
                rows = prediction_rows(challenger, pipeline, tenant, validated, items, request_ids, parsed.event_ts,
                                       now, (time.perf_counter() - started) * 1000.0, score)
            except Exception as err:
                log.warning("shadow test %s: challenger v%s failed: %s", active.test.test_id, challenger.version, err)
                rows = [error_row(challenger, pipeline, tenant, parsed, now, (time.perf_counter() - started) * 1000.0,
                                  err)]
            metrics.ab_records.labels(names.SHADOW).inc(len(rows))
            if shadow_logger is not None:
                shadow_logger.log(rows)
        except Exception:  # the response is already sent; nothing may escape into the server
            log.exception("shadow test %s: could not log the challenger's rows", active.test.test_id)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """Predict one record or ``{"records": [...], "request_ids"?: [...], "event_ts"?: [...]}``."""
        model = manager.current
        if model is None:
            return _not_ready(manager)
        tests = manager.tests
        started = time.perf_counter()
        parsed: PredictRequest | None = None
        tenant = manager.config.tenant
        active: ActiveTest | None = None
        background = None
        try:
            with batcher.incoming():  # a forming batch waits for this request (see airloop.serving.batching)
                tenant = request_tenant(request, manager.config.tenant)
                active = tests.get(tenant) if tests else None
                parsed = parse_predict_request(await request.body())
                header_key = None
                if active is not None and active.test.mode == "ab" and active.test.key_field == routing.KEY_HEADER:
                    header_key = request_key_header(request)
                job = prepare_job(model, active, parsed, tenant, started, header_key)
            predictions, _ = await batcher.submit(job, job.size)
            if active is not None and active.test.mode == "shadow":
                background = BackgroundTask(shadow_score, active, parsed, job.request_ids, tenant)
        except RecordValidationError as err:
            return _json({"detail": err.errors}, err.status_code)
        except Exception as err:
            log.exception("prediction failed (model %s v%s)", model.name, model.version)
            latency_ms = (time.perf_counter() - started) * 1000.0
            log_rows([error_row(model, pipeline, tenant, parsed, datetime.now(timezone.utc), latency_ms, err)])
            return _json({"detail": "prediction failed"}, 500)
        metrics.records.inc(len(predictions))
        body: dict[str, Any] = {"model": model.ref(), "predictions": predictions}
        if active is not None and active.test.mode == "ab":
            body["abtest"] = active.test.test_id
        return _json(body, background=background)

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        """Labels for earlier predictions: ``{"request_id", "label", "label_ts"?}`` or
        ``{"items": [...]}``, upserted into ``ground_truth`` (503 when the store is down)."""
        try:
            tenant = request_tenant(request, manager.config.tenant)
            items = parse_feedback_body(await request.body(), manager.config)
        except RecordValidationError as err:
            return _json({"detail": err.errors}, err.status_code)
        received_at = datetime.now(timezone.utc)
        rows = [
            {
                "request_id": item["request_id"],
                "tenant": tenant,
                "pipeline": pipeline,
                "label": json.dumps(item["label"]),
                "label_ts": item["label_ts"] or received_at,
                "received_at": received_at,
            }
            for item in items
        ]
        try:
            written = await run_in_threadpool(write_feedback, settings.monitoring_db_uri, rows)
        except (sa.exc.SQLAlchemyError, OSError) as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            log.warning("feedback not stored, monitoring store unavailable: %s", reason)
            return _json(
                {"detail": f"monitoring database unavailable; the feedback was not stored, retry later ({reason})"},
                503, {"Retry-After": "5"},
            )
        metrics.feedback_labels.inc(written)
        return _json({"written": written})

    @app.get("/health")
    async def health() -> Response:
        """Process liveness (always 200)."""
        model = manager.current
        logged = None
        if prediction_logger is not None:
            stats = prediction_logger.stats()
            logged = {"db_up": stats.db_up, "queue_depth": stats.queue_depth, "spool_files": stats.spool_files,
                      "last_error": stats.last_error}
        return _json({
            "status": "ok",
            "pipeline": manager.config.name,
            "model_loaded": model is not None,
            "model_version": model.version if model else None,
            "last_error": manager.last_error,
            "prediction_log": logged,
        })

    @app.get("/ready")
    async def ready() -> Response:
        """200 when a model is loaded, else 503."""
        model = manager.current
        if model is None:
            return _not_ready(manager)
        return _json({"status": "ready", "model": model.ref()})

    @app.get("/model")
    async def model_info() -> Response:
        """The loaded version: name, version, alias, run, metrics, tags, inputs."""
        model = manager.current
        if model is None:
            return _not_ready(manager)
        return _json(model.describe())

    @app.post("/reload")
    async def reload(request: Request) -> Response:
        """Load another version (admin token), smoke-test it and swap it in."""
        denied = _admin_denied(request, settings.admin_token, "reload", metrics.reloads)
        if denied is not None:
            return denied
        raw = await request.body()
        try:
            alias, version = ReloadRequest.model_validate_json(raw or b"{}").target()
        except (ValidationError, ValueError) as err:
            metrics.reloads.labels("invalid").inc()
            if isinstance(err, ValidationError):
                errors = err.errors(include_url=False)
            else:
                errors = [{"loc": (), "msg": str(err)}]
            detail = [{"field": ".".join(map(str, e["loc"])) or None, "message": e["msg"]} for e in errors]
            return _json({"detail": detail}, 422)
        try:
            new, previous = await run_in_threadpool(manager.reload, alias, version)
        except ModelLoadError as err:
            metrics.reloads.labels(err.outcome).inc()
            current = manager.current
            log.warning("reload to %s refused: %s", alias or f"version {version}", err)
            return _json(
                {"detail": str(err), "outcome": err.outcome, "serving": current.ref() if current else None},
                err.status_code,
            )
        metrics.reloads.labels("success").inc()
        return _json({"model": new.describe(), "previous_version": previous.version if previous else None})

    @app.get("/abtest")
    async def abtest_info() -> Response:
        """The active A/B and shadow tests (one per tenant) and the champion serving beside them."""
        model = manager.current
        tests = []
        for active in manager.tests.values():
            info = active.describe()
            if model is not None and model.version != active.test.champion_version:
                info["warning"] = (f"serving champion v{model.version}, the test compares v{active.test.champion_version}:"
                                   " its champion rows are not counted")
            tests.append(info)
        return _json({"enabled": ab_tests, "champion": model.ref() if model else None, "tests": tests})

    @app.post("/abtest/refresh")
    async def abtest_refresh(request: Request) -> Response:
        """Re-read the running tests from the monitoring store (admin token) and route by them."""
        denied = _admin_denied(request, settings.admin_token, "A/B test refresh", metrics.abtest_refreshes)
        if denied is not None:
            return denied
        if not ab_tests:
            metrics.abtest_refreshes.labels("disabled").inc()
            return _json({"detail": "A/B tests are disabled in this process (prediction logging is off)"}, 409)
        try:
            outcome = await run_in_threadpool(manager.refresh_tests)
        except ModelLoadError as err:
            metrics.abtest_refreshes.labels(err.outcome).inc()
            return _json({"detail": str(err), "outcome": err.outcome}, err.status_code)
        failed = bool(outcome["errors"])
        metrics.abtest_refreshes.labels("partial" if failed else "success").inc()
        return _json(outcome, 409 if failed else 200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this app's registry."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
