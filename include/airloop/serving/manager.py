"""Loads, smoke-tests and hot-swaps the served versions."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from airloop.core import names, store
from airloop.core.pipeline import PipelineConfig, load_pipeline_config
from airloop.core.settings import ConfigError, Settings
from airloop.experiments import definition
from airloop.models.artifact import ModelFiles, read_model_files
from airloop.models.trust import ModelLoadError
from airloop.registry.client import get_client
from airloop.registry.reconcile import reconcile_at_startup
from airloop.serving.metrics import ServingMetrics
from airloop.serving.runtime import DEFAULT_ALIAS, ActiveTest, Predictor, ServedModel, smoke_test

log = logging.getLogger(__name__)


#: How long app startup waits for the first model load before serving anyway (not ready).
STARTUP_LOAD_WAIT_S = 30.0


class ModelManager:
    """Holds the served model of one app; loads new versions beside it and swaps atomically.

    Also holds the active A/B and shadow tests (by tenant) with their loaded challengers; they
    are replaced together by :meth:`refresh_tests`.
    """

    def __init__(self, settings: Settings, config: PipelineConfig, metrics: ServingMetrics) -> None:
        """Nothing is contacted here; the MLflow client is created on first use."""
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.model_name = config.model_name
        self._current: ServedModel | None = None
        self._client: Any = None
        self._reload_lock = threading.Lock()
        self._tests: dict[str, ActiveTest] = {}
        self._tests_lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def current(self) -> ServedModel | None:
        """The model answering requests (read once per request)."""
        return self._current

    @property
    def tests(self) -> dict[str, ActiveTest]:
        """The active tests by tenant (read once per request; never mutated, only replaced)."""
        return self._tests

    @property
    def client(self) -> Any:
        """The MlflowClient of the settings' stores (:func:`airloop.registry.client.get_client`)."""
        if self._client is None:
            self._client = get_client(self.settings)
        return self._client

    def _resolve(self, alias: str | None, version: str | None) -> Any:
        """The ModelVersion for an alias or a version number."""
        from mlflow.exceptions import MlflowException

        target = f"{self.model_name}@{alias}" if alias else f"{self.model_name}/{version}"
        try:
            if alias:
                return self.client.get_model_version_by_alias(self.model_name, alias)
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in err.message.lower():
                raise ModelLoadError(
                    f"models:/{target} not found: {err.message}", outcome="not_found", status_code=404
                ) from err
            raise ModelLoadError(
                f"model registry unavailable: {err.message}", outcome="unavailable", status_code=503
            ) from err
        except Exception as err:
            raise ModelLoadError(
                f"model registry unavailable: {type(err).__name__}: {err}", outcome="unavailable", status_code=503
            ) from err

    def _run_metrics(self, run_id: str | None) -> dict[str, float]:
        """Metrics of the version's source run ({} when unknown or unreachable)."""
        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except Exception as err:  # metadata only; never block a load on it
            log.warning("cannot read metrics of run %s: %s", run_id, err)
            return {}

    def _read_artifacts(self, version: str) -> ModelFiles:
        """Read a version's model folder (see :func:`read_model_files`)."""
        return read_model_files(self.client, self.settings, self.model_name, version)

    def load(self, alias: str | None = None, version: str | None = None) -> ServedModel:
        """Resolve, read, verify, load and smoke-test one version (does not swap it in)."""
        mv = self._resolve(alias, version)
        version_str = str(mv.version)
        files = self._read_artifacts(version_str)
        estimator, schema, example = files.estimator, files.schema, files.input_example
        model = ServedModel(
            name=self.model_name,
            version=version_str,
            alias=alias,
            aliases=tuple(getattr(mv, "aliases", None) or ()),
            run_id=mv.run_id,
            source=str(mv.source),
            loaded_at=datetime.now(timezone.utc),
            metrics=self._run_metrics(mv.run_id),
            tags=dict(mv.tags or {}),
            schema=schema,
            predictor=Predictor(estimator, files.decision),  # the version's threshold labels binary predictions
            input_example=example,
        )
        smoke_test(model)
        return model

    def reload(self, alias: str | None = None, version: str | None = None) -> tuple[ServedModel, ServedModel | None]:
        """Load a version beside the current one and swap it in; return ``(new, previous)``.

        Raises :class:`ModelLoadError` (the current model keeps serving) on any failure, or with
        outcome ``busy`` when another load is in progress.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ModelLoadError("another model load is in progress", outcome="busy", status_code=409)
        try:
            try:
                candidate = self.load(alias=alias, version=version)
            except ModelLoadError as err:
                self.last_error = str(err)
                raise
            except Exception as err:
                self.last_error = f"{type(err).__name__}: {err}"
                raise ModelLoadError(
                    f"unexpected error while loading: {self.last_error}", outcome="error", status_code=500
                ) from err
            previous = self._current
            self._current = candidate  # the swap: one reference assignment
            self.last_error = None
            self.metrics.set_model(candidate)
        finally:
            self._reload_lock.release()
        log.info(
            "serving %s version %s (alias %s), previously %s",
            candidate.name, candidate.version, candidate.alias, previous.version if previous else None,
        )
        return candidate, previous

    def refresh_tests(self) -> dict[str, Any]:
        """Read the pipeline's running tests from the monitoring store, load each challenger
        (smoke-tested; versions already loaded are reused) and swap the table of active tests in.

        Returns ``{"tests": [...], "errors": {test_id: message}}``: a test whose challenger cannot
        be loaded (or that does not fit the pipeline) is reported and not routed; the others are.
        Raises :class:`ModelLoadError` (``unavailable``, 503) when the store cannot be read, and
        ``busy`` while another refresh runs; the previous tests then stay active.
        """
        if not self._tests_lock.acquire(blocking=False):
            raise ModelLoadError("another A/B test refresh is in progress", outcome="busy", status_code=409)
        try:
            try:
                running = definition.running_tests(store.get_engine(self.settings.monitoring_db_uri), self.config.name)
            except Exception as err:
                raise ModelLoadError(f"monitoring store unavailable: {type(err).__name__}: {err}".splitlines()[0],
                                     outcome="unavailable", status_code=503) from err
            loaded = {a.test.challenger_version: a.challenger for a in self._tests.values()}
            active: dict[str, ActiveTest] = {}
            errors: dict[str, str] = {}
            for test in running:
                try:
                    definition.check_test(self.config, test)
                    model = loaded.get(test.challenger_version) or self.load(version=test.challenger_version)
                except (definition.ABTestError, ModelLoadError) as err:
                    errors[test.test_id] = str(err)
                    log.error("A/B test %s not routed: %s", test.test_id, err)
                    continue
                loaded[test.challenger_version] = model
                variant = names.SHADOW if test.mode == "shadow" else names.CHALLENGER
                active[test.tenant] = ActiveTest(test, replace(model, alias=None, variant=variant))
            self._tests = active  # the swap: one reference assignment
        finally:
            self._tests_lock.release()
        log.info("A/B tests active: %s", {t: a.test.test_id for t, a in active.items()} or "none")
        return {"tests": [a.describe() for a in active.values()], "errors": errors}

    def load_initial(self) -> None:
        """Startup: repair half-done moves so the champion alias is the ledger's
        (:func:`airloop.registry.reconcile.reconcile_at_startup`), then try to serve it; log and
        stay not-ready on any failure (an unreachable ledger: the alias as it is)."""
        try:
            repaired = reconcile_at_startup(self.config, self.settings, client=self.client)
            if repaired and repaired["repairs"]:
                log.warning("start-up reconcile of %s repaired %s", self.model_name, repaired["repairs"])
        except Exception as err:  # noqa: BLE001 - serving starts on the registry's alias
            log.error("start-up reconcile of %s failed (serving the alias as it is): %s", self.model_name, err)
        try:
            self.reload(alias=DEFAULT_ALIAS)
        except ModelLoadError as err:
            if err.outcome == "not_found":
                log.warning("no %s@%s to serve yet: %s", self.model_name, DEFAULT_ALIAS, err)
            else:
                log.error("could not load %s@%s at startup: %s", self.model_name, DEFAULT_ALIAS, err)


# --------------------------------------------------------------------------------------------
# Pipelines added after the process started
# --------------------------------------------------------------------------------------------


_NAME = re.compile(r"^[a-z][a-z0-9_]{1,62}$")


def new_pipeline_config(settings: Settings, tenant: str, pipeline: str) -> PipelineConfig:
    """The config of a pipeline this process does not serve yet, from its file in the pipelines
    folder (``<pipelines_dir>/<pipeline>.yaml`` whose tenant is ``tenant``).

    Raises :class:`ModelLoadError` ``unknown_pipeline`` (404) when there is no such file (or it
    belongs to another tenant), ``invalid_pipeline`` (422) when the file does not validate.
    """
    if not (_NAME.match(pipeline) and _NAME.match(tenant)):
        raise ModelLoadError(f"serving has no pipeline {tenant}/{pipeline}", outcome="unknown_pipeline",
                             status_code=404)
    path = settings.pipelines_dir / f"{pipeline}.yaml"
    if not path.is_file():
        raise ModelLoadError(f"serving has no pipeline {tenant}/{pipeline}: no file {path.name} in "
                             f"{settings.pipelines_dir} (the serving process reads the pipelines folder it was "
                             "started with)",
                             outcome="unknown_pipeline", status_code=404)
    try:
        config = load_pipeline_config(path, settings)
    except ConfigError as err:
        raise ModelLoadError(f"serving cannot load pipeline {pipeline}: {err}", outcome="invalid_pipeline",
                             status_code=422) from err
    if config.name != pipeline or config.tenant != tenant:
        raise ModelLoadError(f"serving has no pipeline {tenant}/{pipeline}: {path} defines {config.tenant}/"
                             f"{config.name}", outcome="unknown_pipeline", status_code=404)
    return config


#: Builds one pipeline's app: ``airloop.serving.app.create_app(settings, pipeline, **options)``.
AppFactory = Callable[..., Any]


class PipelineMounts:
    """The pipelines one serving process has learnt about since it started (what ``POST
    <tenant route>/reload`` of a new pipeline file does; the process keeps one per outermost router).

    :meth:`mount` builds the pipeline's app with the factory, runs its startup (loggers, the
    champion's load) in a task of the event loop that lasts until the process shuts down (the
    task is cancelled then and the app's shutdown drains its prediction log), and inserts the
    app at its tenant route in front of the router's other routes: from then on the pipeline
    answers like the ones mounted at startup.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task] = {}
        self.apps: dict[str, Any] = {}

    @staticmethod
    def of(router: Any) -> "PipelineMounts":
        """The mounts of ``router`` (the ASGI scope's outermost ``router``), created on first use."""
        mounts = getattr(router, "airloop_pipeline_mounts", None)
        if mounts is None:  # routers are unhashable: the mounts live on the router itself
            mounts = router.airloop_pipeline_mounts = PipelineMounts()
        return mounts

    async def mount(self, router: Any, config: PipelineConfig, factory: AppFactory, settings: Settings,
                    **options: Any) -> Any:
        """Serve ``config`` in this process (once; a concurrent or repeated call returns the same
        app) and return its app, started."""
        from starlette.routing import Mount

        from airloop.serving.protocol import tenant_route

        route = tenant_route(config)
        async with self._lock:
            if route in self.apps:
                return self.apps[route]
            app = factory(settings, config.name, **options)
            started: asyncio.Future = asyncio.get_running_loop().create_future()
            self._tasks[route] = asyncio.create_task(self._run(app, started), name=f"airloop-mount-{config.name}")
            try:
                await started  # the app's startup (raises what it raised)
            except Exception:
                self._tasks.pop(route, None)
                raise
            router.routes.insert(0, Mount(route, app=app))
            self.apps[route] = app
        log.info("serving pipeline %s at %s (its file appeared after the process started)", config.name, route)
        return app

    @staticmethod
    async def _run(app: Any, started: asyncio.Future) -> None:
        try:
            async with app.router.lifespan_context(app):
                started.set_result(None)
                await asyncio.Event().wait()  # until the process shuts down (the task is cancelled)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if not started.done():
                started.set_exception(err)
            else:
                log.exception("pipeline app %s failed", app.title)
