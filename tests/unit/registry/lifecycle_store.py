"""A real lifecycle store for the registry and task tests (not a test module).

One per test module: a SQLite MLflow tracking store and registry, one real scikit-learn model
logged into it (skops, as training logs it), and the monitoring store on SQLite. Every test takes
a pipeline of its own (:meth:`LifecycleStore.pipeline`: ``claims_fraud``'s file under a fresh
name), so its registered model, aliases and ledger rows are its own while the slow parts (the
MLflow schema, the model) are shared. A version is a training run with its holdout metrics and a
registered version whose source is the logged model's folder, so serving can load it.

Settings come from an explicit environment (``tests.unit.serving.test_app._settings``): nothing
reads the developer's state, secrets or ``.env``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from airloop.core import store
from airloop.core.pipeline import PipelineConfig, load_pipeline_config
from airloop.core.settings import Settings
from airloop.data.simulator import generate_day
from tests.unit.serving.test_app import PIPELINE, _log_version, _preprocessor, _settings


@dataclass
class LifecyclePipeline:
    """One test's pipeline: its config and registered model in the shared store."""

    config: PipelineConfig
    experiment_id: str
    store: "LifecycleStore"

    @property
    def name(self) -> str:
        return self.config.model_name

    def add_version(self, roc_auc: float = 0.80, train_rows: int | None = 6000, *, tags: dict[str, str] | None = None,
                    params: dict[str, str] | None = None, run_tags: dict[str, str] | None = None,
                    **holdout: float) -> str:
        """Register a new version (the shared real model) whose training run logged ``holdout_<metric>``
        metrics, ``train_rows``, ``params`` and ``run_tags``; return its version number."""
        client = self.store.client
        run = client.create_run(self.experiment_id, tags={"airloop.kind": "training", **(run_tags or {})})
        now = int(time.time() * 1000)
        metrics = [Metric(f"holdout_{k}", float(v), now, 0) for k, v in {"roc_auc": roc_auc, **holdout}.items()]
        if train_rows is not None:
            metrics.append(Metric("train_rows", float(train_rows), now, 0))
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in (params or {}).items()])
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(self.name, source=self.store.model_dir, run_id=run.info.run_id, tags=tags)
        return str(mv.version)

    def alias(self, alias: str) -> str | None:
        """The version ``alias`` points at now (``None``: unset)."""
        from airloop.registry.client import alias_version

        found = alias_version(self.store.client, self.name, alias)
        return str(found.version) if found is not None else None

    def tag(self, version: str, key: str) -> str | None:
        return self.store.client.get_model_version(self.name, version).tags.get(key)

    def ledger(self) -> list[dict]:
        from airloop.registry.ledger import ledger_rows

        return ledger_rows(self.store.engine, self.config.name)


@dataclass
class LifecycleStore:
    """The module's MLflow store, monitoring store and the real model every version serves."""

    tmp: Path
    uri: str
    settings: Settings
    client: MlflowClient
    engine: sa.Engine
    model_dir: str
    base: PipelineConfig
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    def pipeline(self, renamed: bool = True) -> LifecyclePipeline:
        """A fresh pipeline (``claims_fraud``'s definition under a new name) with its registered model;
        ``renamed=False``: ``claims_fraud`` itself (once per store), for a serving app that loads its file."""
        config = self.base.model_copy(update={"name": f"lc{next(self._names)}_{PIPELINE}"}) if renamed else self.base
        self.client.create_registered_model(config.model_name)
        experiment_id = self.client.create_experiment(config.experiment_name,
                                                      artifact_location=str(self.tmp / "artifacts" / config.name))
        return LifecyclePipeline(config, experiment_id, self)


def make_lifecycle_store(tmp: Path, **extra_env: str) -> LifecycleStore:
    """Build the store in ``tmp`` (see the module docstring)."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = _settings(tmp, uri, AIRLOOP_MONITORING_DB_URI=f"sqlite:///{tmp / 'monitoring.db'}", **extra_env)
    base = load_pipeline_config(PIPELINE, settings)
    frame = generate_day(date(2026, 1, 5))
    X, y = frame[list(base.features)], frame[base.target]
    model = Pipeline([("pre", _preprocessor(base)), ("model", LogisticRegression(max_iter=300))]).fit(X, y)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("airloop/model-source",
                                             artifact_location=str(tmp / "artifacts" / "source"))
    client.create_registered_model("model_source")
    _log_version(client, uri, experiment_id, model, X, registered_name="model_source")
    model_dir = client.get_model_version_download_uri("model_source", "1")
    assert Path(model_dir).is_dir(), model_dir
    return LifecycleStore(tmp, uri, settings, client, store.get_engine(settings.monitoring_db_uri), model_dir, base)


@pytest.fixture(scope="module")
def lifecycle_store(tmp_path_factory: pytest.TempPathFactory) -> LifecycleStore:
    """The module's real lifecycle store (import this fixture into a test module to use it)."""
    return make_lifecycle_store(tmp_path_factory.mktemp("lifecycle"))


@pytest.fixture
def pipe(lifecycle_store: LifecycleStore) -> LifecyclePipeline:
    """A pipeline of this test's own in the module's store."""
    return lifecycle_store.pipeline()
