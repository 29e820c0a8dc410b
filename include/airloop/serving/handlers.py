"""What the serving endpoints do, as plain functions (no FastAPI): the routes of
:mod:`airloop.serving.routes` parse the request, call these and build the response.

The predict path itself (jobs, micro-batched model calls, log rows) is :mod:`airloop.serving.predict`;
this module wires it to the batcher, the loggers and the metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from functools import partial
from typing import Any

from fastapi.concurrency import run_in_threadpool

from airloop.core import names, store
from airloop.experiments import routing
from airloop.models.trust import ModelLoadError
from airloop.monitoring.labels import LabelWrite, write_labels
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
)
from airloop.serving.predlog import PredictionLogger
from airloop.serving.runtime import ActiveTest, ServedModel
from airloop.serving.schema import PredictRequest

log = logging.getLogger(__name__)

#: How one prediction item becomes its logged ``score`` (:func:`airloop.models.scoring.score_function`).
Score = Callable[[dict[str, Any]], float | None]


# --------------------------------------------------------------------------------------------
# POST /predict
# --------------------------------------------------------------------------------------------


def log_rows(logger: PredictionLogger | None, rows: list[dict[str, Any]]) -> None:
    """Enqueue ``rows`` on the prediction log (nothing when logging is off)."""
    if logger is not None:
        logger.log(rows)


def run_batch(jobs: list[PredictJob], *, pipeline: str, score: Score, metrics: ServingMetrics,
              prediction_logger: PredictionLogger | None) -> list[Any]:
    """The batcher's ``run``: predict, then enqueue the batch's log rows with one call."""
    metrics.batch_requests.observe(len(jobs))
    metrics.batch_records.observe(sum(job.size for job in jobs))
    outcomes = predict_jobs(jobs, pipeline, score, metrics, log_rows=prediction_logger is not None)
    log_rows(prediction_logger,
             [row for outcome in outcomes if not isinstance(outcome, BaseException) for row in outcome[1]])
    return outcomes


def make_batcher(pipeline: str, score: Score, metrics: ServingMetrics, prediction_logger: PredictionLogger | None,
                 batching: BatchingConfig) -> MicroBatcher[PredictJob]:
    """The micro-batcher of one app's ``/predict`` requests (see :mod:`airloop.serving.batching`)."""
    run = partial(run_batch, pipeline=pipeline, score=score, metrics=metrics, prediction_logger=prediction_logger)
    return MicroBatcher(run, max_wait_s=batching.max_wait_s, max_records=batching.max_records,
                        offload_records=INLINE_BATCH_RECORDS)


def active_test(tests: Mapping[str, ActiveTest], tenant: str) -> ActiveTest | None:
    """The A/B or shadow test running for ``tenant`` (None: the champion answers alone)."""
    return tests.get(tenant) if tests else None


def wants_key_header(active: ActiveTest | None) -> bool:
    """Whether ``active`` is an A/B test routing by the ``X-Request-Key`` header."""
    return active is not None and active.test.mode == "ab" and active.test.key_field == routing.KEY_HEADER


def is_shadow(active: ActiveTest | None) -> bool:
    """Whether ``active`` is a shadow test (the challenger scores after the response)."""
    return active is not None and active.test.mode == "shadow"


def shadow_score(active: ActiveTest, parsed: PredictRequest, request_ids: list[str], tenant: str, *,
                 pipeline: str, score: Score, metrics: ServingMetrics, shadow_logger: PredictionLogger | None) -> None:
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


def log_failed_prediction(logger: PredictionLogger | None, model: ServedModel, pipeline: str, tenant: str,
                          parsed: PredictRequest | None, started: float, err: BaseException,
                          status: str = names.MODEL_ERROR) -> None:
    """Log the one error row (``status``: ``error``, or ``client_error``) of a request whose prediction failed."""
    latency_ms = (time.perf_counter() - started) * 1000.0
    log_rows(logger, [error_row(model, pipeline, tenant, parsed, datetime.now(timezone.utc), latency_ms, err,
                                status)])


def predict_answer(metrics: ServingMetrics, model: ServedModel, predictions: list[dict[str, Any]],
                   active: ActiveTest | None) -> dict[str, Any]:
    """Count the answered records; the ``/predict`` answer (``abtest`` names an A/B test)."""
    metrics.records.inc(len(predictions))
    body: dict[str, Any] = {"model": model.ref(), "predictions": predictions}
    if active is not None and active.test.mode == "ab":
        body["abtest"] = active.test.test_id
    return body


# --------------------------------------------------------------------------------------------
# POST /feedback
# --------------------------------------------------------------------------------------------


def feedback_rows(items: list[dict[str, Any]], tenant: str, pipeline: str,
                  received_at: datetime) -> list[dict[str, Any]]:
    """The ``ground_truth`` rows of parsed feedback ``items`` (``label_ts`` defaults to ``received_at``),
    under the request's tenant and the app's pipeline: the key is (tenant, pipeline, request id)."""
    return [
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


def write_feedback(uri: str, rows: list[dict[str, Any]], actor: str, correct: bool = False) -> LabelWrite:
    """Store ``ground_truth`` rows first-write-wins (:func:`airloop.monitoring.labels.write_labels`):
    keyed by (tenant, pipeline, request id); the same label again changes nothing, a different one
    is refused and kept as a revision, or applied as an audited correction with ``correct``."""
    return write_labels(store.get_engine(uri), rows, actor=actor, correct=correct)


async def store_feedback(uri: str, rows: list[dict[str, Any]], metrics: ServingMetrics, actor: str,
                         correct: bool = False) -> LabelWrite:
    """Write ``rows`` in a worker thread and count the labels stored; the store's errors propagate."""
    outcome = await run_in_threadpool(write_feedback, uri, rows, actor, correct)
    metrics.feedback_labels.inc(outcome.written + outcome.corrected)
    return outcome


# --------------------------------------------------------------------------------------------
# GET /health, GET /abtest
# --------------------------------------------------------------------------------------------


def health_status(manager: ModelManager, prediction_logger: PredictionLogger | None) -> dict[str, Any]:
    """Liveness: the pipeline, the loaded version, the last load error and the prediction log's state."""
    model = manager.current
    logged = None
    if prediction_logger is not None:
        stats = prediction_logger.stats()
        logged = {"db_up": stats.db_up, "queue_depth": stats.queue_depth, "spool_files": stats.spool_files,
                  "last_error": stats.last_error}
    return {
        "status": "ok",
        "pipeline": manager.config.name,
        "model_loaded": model is not None,
        "model_version": model.version if model else None,
        "last_error": manager.last_error,
        "prediction_log": logged,
    }


def abtest_status(manager: ModelManager, enabled: bool) -> dict[str, Any]:
    """The active tests (one per tenant) and the champion serving beside them."""
    model = manager.current
    tests = []
    for active in manager.tests.values():
        info = active.describe()
        if model is not None and model.version != active.test.champion_version:
            info["warning"] = (f"serving champion v{model.version}, the test compares v{active.test.champion_version}:"
                               " its champion rows are not counted")
        tests.append(info)
    return {"enabled": enabled, "champion": model.ref() if model else None, "tests": tests}


# --------------------------------------------------------------------------------------------
# POST /reload, POST /abtest/refresh
# --------------------------------------------------------------------------------------------


async def reload_model(manager: ModelManager, metrics: ServingMetrics, alias: str | None,
                       version: str | None) -> tuple[ServedModel, ServedModel | None]:
    """Load, smoke-test and swap in another version (worker thread); count the outcome in
    ``airloop_serving_reloads``. Raises :class:`ModelLoadError` when refused (the old one keeps serving)."""
    try:
        new, previous = await run_in_threadpool(manager.reload, alias, version)
    except ModelLoadError as err:
        metrics.reloads.labels(err.outcome).inc()
        raise
    metrics.reloads.labels("success").inc()
    return new, previous


async def refresh_tests(manager: ModelManager, metrics: ServingMetrics) -> dict[str, Any]:
    """Re-read the running tests (worker thread); count the outcome in
    ``airloop_serving_abtest_refreshes`` (``partial`` when a test failed). Raises :class:`ModelLoadError`."""
    try:
        outcome = await run_in_threadpool(manager.refresh_tests)
    except ModelLoadError as err:
        metrics.abtest_refreshes.labels(err.outcome).inc()
        raise
    metrics.abtest_refreshes.labels("partial" if outcome["errors"] else "success").inc()
    return outcome
