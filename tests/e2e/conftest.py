"""Each end-to-end module gets its own airloop state (data, MLflow store, monitoring store, Optuna
storage): modules share the claims_fraud pipeline and must not see each other's champions,
ledgers or traffic. The Airflow metadata database stays shared (runs are told apart by DAG)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest



@pytest.fixture(scope="module")
def settings(request):
    """Settings of this module's own state folder (environment restored afterwards)."""
    from airloop import store
    from airloop.config import get_settings
    from airloop.sandbox import STATE_VARS, state_environ

    state = Path(tempfile.mkdtemp(prefix=f"airloop-e2e-{request.module.__name__.rsplit('.', 1)[-1]}-"))
    saved = {k: os.environ.get(k) for k in STATE_VARS}
    os.environ.update(state_environ(state))
    (state / "mlflow").mkdir(parents=True)
    get_settings.cache_clear()
    store.get_engine.cache_clear()
    yield get_settings()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    store.get_engine.cache_clear()


@pytest.fixture(scope="module")
def claims_config(settings):
    """The demo pipeline, loaded with this module's settings."""
    from airloop.config import load_pipeline_config

    return load_pipeline_config("claims_fraud", settings)
