"""Model serving: a FastAPI app that answers predictions with the registry's champion model.

Run it with ``uvicorn --factory airloop.serving.app:create_app``. One app serves one pipeline (default
``Settings.default_pipeline``); its registered model ``models:/<name>@champion`` is loaded at
startup from the MLflow registry named in :class:`~airloop.core.settings.Settings`, through an explicit
:class:`mlflow.MlflowClient` (no global MLflow state is touched, so several apps can live in one
process).

Loading is deliberately strict, because deserialising a model is code execution in disguise:

* only models stored in the **skops** format are served (pickle/cloudpickle are refused);
* the types a skops file needs beyond skops' defaults are vetted here: only *classes* from the
  ``sklearn`` and ``numpy`` packages are trusted. The allow-list stored in the model's own MLmodel
  file is ignored, since a crafted model could whitelist anything there. (This is why the model
  file is loaded with :func:`skops.io.load` after the vetting, not with
  ``mlflow.sklearn.load_model``: that function trusts the MLmodel's list and also requires the
  process-wide ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``, which would open pickle loading too.)
* every request record is validated against the model's MLflow signature with a pydantic model
  built once per loaded version (unknown fields are refused, non-required columns may be null);
* a new version (``POST /reload``) is loaded beside the serving one, smoke-tested on its stored
  input example through the very same request path, and only then swapped in by one reference
  assignment; on failure the old version keeps serving.

Concurrent ``/predict`` requests are micro-batched (:mod:`airloop.serving.batching`): each request is
parsed, validated (its own 422) and routed on its own, then waits at most
``AIRLOOP_SERVING_BATCH_WAIT_MS`` (default 2 ms; not at all when no other request is on its way)
to share **one** predict call per served version with the requests around it, up to
``AIRLOOP_SERVING_BATCH_MAX_RECORDS`` records (default 1024; 1 turns batching off). A
scikit-learn pipeline's call costs nearly the same for 1 row as for 100 (per-call input
validation in every step), so this is what makes concurrent single-record traffic cheap. Each
request still gets exactly its own predictions, request ids, latency, variant and log rows; a
batch holds one model snapshot per request (a reload never mixes versions inside an answer); when
a shared call fails, each request is predicted alone, so only the one that makes the model fail
answers 500 (or, for an A/B challenger, falls back to the champion).

Every prediction is logged to the monitoring store (``predictions`` table, one row per record,
plus one ``error`` row per request whose prediction failed with a 5xx) by a
:class:`~airloop.serving.predlog.PredictionLogger`: the request only enqueues; a background writer writes
batches and spools them to ``<state_dir>/spool/<pipeline>`` while the database is unavailable. The
writer runs in a process of its own (:mod:`airloop.serving.predlog_process`, off the serving
process's GIL) unless ``AIRLOOP_PREDLOG_PROCESS=0`` (then a thread of this process).
Labels come back through ``POST /feedback`` into ``ground_truth`` (first write wins; a different
later label is a 409 kept in ``label_revisions``, or an admin's audited correction), joined by request id.

A/B tests and shadow mode (:mod:`airloop.experiments.definition`): the running tests of the pipeline are read
from the monitoring store at startup and on ``POST /abtest/refresh`` (never per request); each
test's challenger version is loaded and smoke-tested beside the champion, and the table of active
tests (one per tenant) is swapped in by one reference assignment. In an A/B test each record is
routed by :func:`airloop.experiments.routing.assign_variant` on its request key (``key_field``: the request id,
the ``X-Request-Key`` header or a feature of the record), answered by that variant, and logged with
``variant`` and the version that answered; the answer items carry ``variant`` and
``model_version``. A challenger that fails on its records never fails the request: the champion
answers them (logged as variant ``fallback``) and one ``error`` row is logged for the challenger.
In shadow mode the champion answers; the challenger scores the same records after the response is
sent (a background task) and its rows go to ``shadow_predictions`` through a second logger.

Endpoints: ``POST /predict``, ``POST /feedback``, ``GET /health``, ``GET /ready``, ``GET /model``,
``POST /reload`` and ``POST /abtest/refresh`` (both ``Authorization: Bearer
<AIRLOOP_ADMIN_TOKEN>``), ``GET /abtest`` and ``GET /metrics`` (Prometheus, one registry per app);
``GET /docs`` and ``GET /openapi.json`` (:mod:`airloop.serving.docs`, offline Swagger UI). Every
route but ``/health``, ``/ready`` and ``/metrics`` needs the tenant's or the admin token unless
``AIRLOOP_SERVING_OPEN_ROUTES`` opens it (:mod:`airloop.serving.auth`); labels are
first-write-wins (``POST /feedback``); ``event_ts`` must lie in a window around now
(:mod:`airloop.serving.window`).
"""

from __future__ import annotations

import gc
import logging
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI

from airloop.core import store
from airloop.core.pipeline import load_pipeline_config
from airloop.core.settings import AIRLOOP_PREDLOG_PROCESS, AIRLOOP_SERVING_GC_FREEZE, Settings, get_settings
from airloop.models.scoring import score_function
from airloop.models.trust import ModelLoadError
from airloop.serving.auth import add_tenant_guard
from airloop.serving.docs import mount_offline_docs
from airloop.serving.handlers import make_batcher
from airloop.serving.limits import BodyLimitMiddleware
from airloop.serving.manager import STARTUP_LOAD_WAIT_S, ModelManager
from airloop.serving.metrics import ServingMetrics, _RequestCounter
from airloop.serving.openapi import install_openapi
from airloop.serving.predict import BatchingConfig
from airloop.serving.predlog import PredictionLogCollector, PredictionLogger, spool_dir_for
from airloop.serving.predlog_process import ProcessPredictionLogger
from airloop.serving.routes import ROUTERS
from airloop.serving.window import EventWindow

log = logging.getLogger(__name__)


#: Environment variable: "0" keeps the startup heap out of :func:`gc.freeze` (see :func:`create_app`).
GC_FREEZE_ENV = AIRLOOP_SERVING_GC_FREEZE.name


#: How long app shutdown waits for the prediction log to drain (the rest is spooled).
SHUTDOWN_FLUSH_S = 10.0


def create_app(
    settings: Settings | None = None, pipeline: str | None = None, log_predictions: bool = True,
    ab_tests: bool | None = None, batching: BatchingConfig | None = None,
) -> FastAPI:
    """Build the serving app for ``pipeline`` (default ``settings.default_pipeline``).

    The champion is loaded during the app's startup (lifespan), in a worker thread; startup waits
    up to :data:`STARTUP_LOAD_WAIT_S` for it and then serves regardless (``/ready`` says 503 until
    a model is loaded; ``POST /reload`` can load one later). A wrong pipeline name raises
    :class:`~airloop.core.settings.ConfigError` immediately.

    With ``log_predictions`` (default) every prediction is logged to ``settings.monitoring_db_uri``
    through a :class:`~airloop.serving.predlog.PredictionLogger` (``app.state.prediction_logger``),
    started with the app and drained on shutdown; the store may be down at startup.

    ``ab_tests`` (default: as ``log_predictions``; a test without logged rows cannot be evaluated)
    makes the app read the running A/B and shadow tests at startup, after the champion, and on
    ``POST /abtest/refresh``; shadow rows go through ``app.state.shadow_logger``.

    Once the champion is loaded, the startup heap (a few hundred thousand objects of pandas,
    scikit-learn, MLflow, FastAPI and the model) is moved out of the garbage collector's reach with
    :func:`gc.freeze` (after a :func:`gc.collect`, so only live objects are frozen): otherwise every
    full collection, triggered every few seconds by log rows surviving in the logger's queue, walks
    all of it and stalls every request for tens to hundreds of milliseconds (the p99).
    ``AIRLOOP_SERVING_GC_FREEZE=0`` turns this off.

    Concurrent ``/predict`` requests share model calls (``batching``, default
    :meth:`BatchingConfig.from_env`): each is validated on its own, then waits at most
    ``max_wait_s`` for others, and gets exactly its own predictions, request ids, latency and log rows.
    """
    settings = settings or get_settings()
    config = load_pipeline_config(pipeline or settings.default_pipeline, settings)
    batching = batching or BatchingConfig.from_env()
    metrics = ServingMetrics()
    manager = ModelManager(settings, config, metrics)
    metrics.model_version.labels(manager.model_name).set(0)
    ab_tests = log_predictions if ab_tests is None else ab_tests
    prediction_logger = shadow_logger = None
    if log_predictions:
        spool = spool_dir_for(settings.state_dir, config.name)
        logger_class = PredictionLogger if AIRLOOP_PREDLOG_PROCESS.get() == "0" else ProcessPredictionLogger
        prediction_logger = logger_class.for_uri(
            settings.monitoring_db_uri, spool, autostart=False, name=f"airloop-predlog-{config.name}",
        )
        metrics.registry.register(PredictionLogCollector(prediction_logger))
        shadow_logger = logger_class.for_uri(
            settings.monitoring_db_uri, spool / "shadow", table=store.shadow_predictions, autostart=False,
            name=f"airloop-shadowlog-{config.name}",
        )
        metrics.registry.register(PredictionLogCollector(shadow_logger, prefix="airloop_shadowlog"))
    loggers = [lg for lg in (prediction_logger, shadow_logger) if lg is not None]

    def initial_load() -> None:
        manager.load_initial()
        if ab_tests:
            try:
                manager.refresh_tests()
            except ModelLoadError as err:
                log.warning("A/B tests not read at startup (POST /abtest/refresh later): %s", err)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for logger in loggers:
            logger.start()
        loader = threading.Thread(target=initial_load, name="airloop-initial-load", daemon=True)
        loader.start()
        await anyio.to_thread.run_sync(loader.join, STARTUP_LOAD_WAIT_S)
        if loader.is_alive():
            log.warning("model still loading after %.0fs; serving without a model meanwhile", STARTUP_LOAD_WAIT_S)
        elif AIRLOOP_SERVING_GC_FREEZE.get() != "0":
            gc.collect()
            gc.freeze()  # the startup heap (libraries, the model): full collections no longer walk it
        try:
            yield
        finally:
            await app.state.batcher.aclose()
            for logger in loggers:
                await anyio.to_thread.run_sync(logger.close, SHUTDOWN_FLUSH_S)

    app = FastAPI(
        title=f"airloop serving: {config.name}",
        description=config.description,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.manager = manager
    app.state.app_factory = create_app  # the admin reload mounts pipelines added after start
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.config = config
    app.state.prediction_logger = prediction_logger
    app.state.shadow_logger = shadow_logger
    app.state.ab_tests = ab_tests  # enables POST /abtest/refresh
    app.state.score = score = score_function(config)
    app.state.event_window = EventWindow.from_env()  # the event_ts window of /predict
    app.state.batcher = make_batcher(config.name, score, metrics, prediction_logger, batching)
    for router in ROUTERS:  # the per-resource routers of airloop.serving.routes
        app.include_router(router)
    install_openapi(app, config)  # the hand-parsed bodies, with this pipeline's features (airloop.serving.openapi)
    mount_offline_docs(app)  # /docs with Swagger UI from swagger_ui_bundle (no CDN)
    app.add_middleware(_RequestCounter, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware)  # 413 for a body over AIRLOOP_SERVING_MAX_BODY_BYTES, unread

    add_tenant_guard(app, config, settings)  # /t/<tenant>/<pipeline> routes, closed by default, tenant rows
    return app
