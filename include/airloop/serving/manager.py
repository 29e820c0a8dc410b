"""Loads, smoke-tests and hot-swaps the served versions."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from airloop.core import names, store
from airloop.core.pipeline import PipelineConfig
from airloop.core.settings import Settings
from airloop.experiments import definition
from airloop.models.artifact import read_model_version
from airloop.models.schema import RecordSchema
from airloop.models.trust import ModelLoadError
from airloop.registry.client import get_client
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

    def _read_artifacts(self, version: str) -> tuple[Any, RecordSchema, pd.DataFrame]:
        """Read a version's model folder (see :func:`read_model_version`)."""
        return read_model_version(self.client, self.settings, self.model_name, version)

    def load(self, alias: str | None = None, version: str | None = None) -> ServedModel:
        """Resolve, read, verify, load and smoke-test one version (does not swap it in)."""
        mv = self._resolve(alias, version)
        version_str = str(mv.version)
        estimator, schema, example = self._read_artifacts(version_str)
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
            predictor=Predictor(estimator),
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
        """Startup: try to serve the champion; log and stay not-ready on any failure."""
        try:
            self.reload(alias=DEFAULT_ALIAS)
        except ModelLoadError as err:
            if err.outcome == "not_found":
                log.warning("no %s@%s to serve yet: %s", self.model_name, DEFAULT_ALIAS, err)
            else:
                log.error("could not load %s@%s at startup: %s", self.model_name, DEFAULT_ALIAS, err)
