"""Each end-to-end module gets its own airloop state (data, MLflow store, monitoring store, Optuna
storage): modules share the claims_fraud pipeline and must not see each other's champions,
ledgers or traffic. The Airflow metadata database stays shared (runs are told apart by DAG)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import ServerThread, free_port, serving_headers  # noqa: F401 - serving_headers: the e2e tests' tokens


@pytest.fixture(scope="module")
def settings(request):
    """Settings of this module's own state folder (environment restored afterwards)."""
    from airloop.core import store
    from airloop.core.settings import get_settings
    from airloop.ops.sandbox import STATE_VARS, restore_environ, state_environ

    state = Path(tempfile.mkdtemp(prefix=f"airloop-e2e-{request.module.__name__.rsplit('.', 1)[-1]}-"))
    saved = {k: os.environ.get(k) for k in STATE_VARS}
    os.environ.update(state_environ(state))
    (state / "mlflow").mkdir(parents=True)
    get_settings.cache_clear()
    store.get_engine.cache_clear()
    yield get_settings()
    restore_environ(saved)
    get_settings.cache_clear()
    store.get_engine.cache_clear()


@pytest.fixture(scope="module")
def claims_config(settings):
    """The demo pipeline, loaded with this module's settings."""
    from airloop.core.pipeline import load_pipeline_config

    return load_pipeline_config("claims_fraud", settings)


@contextmanager
def served_to_tasks(app, settings):
    """``app`` on a real port, which DAG tasks reach through the ``airloop_serving`` connection
    (the variable is restored afterwards); yields the server, its ``.app`` the app."""
    port = free_port()
    previous = os.environ.get("AIRFLOW_CONN_AIRLOOP_SERVING")
    os.environ["AIRFLOW_CONN_AIRLOOP_SERVING"] = f"http://:{settings.admin_token}@127.0.0.1:{port}"
    try:
        with ServerThread(app, port) as server:
            server.app = app
            yield server
    finally:
        if previous is None:
            os.environ.pop("AIRFLOW_CONN_AIRLOOP_SERVING", None)
        else:
            os.environ["AIRFLOW_CONN_AIRLOOP_SERVING"] = previous


@pytest.fixture(scope="module")
def serving(settings):
    """The serving app on a real port; DAG tasks reach it through the ``airloop_serving`` connection."""
    from airloop.serving.app import create_app

    with served_to_tasks(create_app(settings), settings) as server:
        yield server


def load_dag(file: str, dag_id: str):
    """One DAG of ``dags/<file>``, parsed the way the DAG processor does."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.path.join(os.environ["AIRFLOW_HOME"], "dags", file))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


@pytest.fixture(scope="module")
def training_dag(airflow_db):
    return load_dag("airloop_training.py", "claims_fraud__train")


def run_dag(dag, as_of: str, conf: dict | None = None):
    """``dag.test`` of a manual run as of ``as_of`` with the form's ``conf``."""
    logical = datetime.fromisoformat(as_of).replace(tzinfo=timezone.utc)
    return dag.test(logical_date=logical, run_conf={"as_of": as_of, **(conf or {})})


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
            for ti in dag_run.get_task_instances()}
