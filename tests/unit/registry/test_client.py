"""The MLflow client helpers on a real embedded store (SQLite in the test's folder): the experiment
kind tag of the MLflow 3 UI, params logged once (retries never fail on a changed value), trial runs."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from airloop.core.settings import load_settings
from airloop.registry import client as registry


@pytest.fixture
def local(tmp_path, claims_config):
    settings = load_settings({"AIRLOOP_HOME": str(tmp_path), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    return settings, MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def test_experiment_opens_as_a_model_training_experiment(local, claims_config):
    settings, client = local
    experiment_id = registry.ensure_experiment(client, claims_config, settings)
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["airloop.pipeline"] == claims_config.name
    # an experiment created before (without the tag, or marked GenAI) is tagged on the next use
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    assert registry.ensure_experiment(client, claims_config, settings) == experiment_id
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_kind_tag_is_the_one_the_installed_ui_reads():
    """The key and value are the MLflow UI's own (its bundle ships with the mlflow package)."""
    from pathlib import Path

    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    main = next(bundle.glob("main.*.js")).read_text(errors="ignore")
    assert f'"{registry.EXPERIMENT_KIND_TAG}"' in main
    assert f'CUSTOM_MODEL_DEVELOPMENT="{registry.EXPERIMENT_KIND_ML}"' in main
    assert 'MACHINE_LEARNING="machine_learning"' in main and '"workflowType"' in main


def test_ui_links_open_the_model_training_view(local, monkeypatch):
    """MLflow 3.17's UI picks the GenAI or the model-training view from the sidebar switch
    (``workflowType`` in the URL, else the browser's memory, default GenAI), not from the kind tag."""
    settings, _ = local
    monkeypatch.setenv("MLFLOW_PORT", "5123")  # a local store: the UI `make up` serves on it
    assert registry.ui_url(settings, "3") == "http://127.0.0.1:5123/#/experiments/3?workflowType=machine_learning"
    server = settings.model_copy(update={"mlflow_tracking_uri": "http://mlflow:5000/"})
    assert registry.ui_url(server, "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_params_are_logged_once_and_a_changed_value_never_fails(local):
    _, client = local
    run_id = client.create_run(client.create_experiment("p")).info.run_id
    assert registry.log_params_once(client, run_id, {"estimator": "random_forest", "max_depth": 7, "C": 0.5}) == {}
    assert client.get_run(run_id).data.params == {"estimator": "random_forest", "max_depth": "7", "C": "0.5"}
    # a retry with the same values: nothing to do
    assert registry.log_params_once(client, run_id, {"estimator": "random_forest", "max_depth": 7}) == {}
    # another value: kept as first logged, reported, no MlflowException
    conflicts = registry.log_params_once(client, run_id, {"max_depth": 9, "min_samples_leaf": 3})
    assert conflicts == {"max_depth": ("7", "9")}
    assert client.get_run(run_id).data.params["max_depth"] == "7"
    assert client.get_run(run_id).data.params["min_samples_leaf"] == "3"  # the new key is logged
    # long values fit MLflow's limit, and a retry of a long value matches what was stored
    assert registry.log_params_once(client, run_id, {"space": "x" * 7000}) == {}
    assert client.get_run(run_id).data.params["space"] == "x" * registry.MAX_PARAM_VALUE
    assert registry.log_params_once(client, run_id, {"space": "x" * 7000}) == {}
    # more than one batch (MLflow takes 100 params per call)
    assert registry.log_params_once(client, run_id, {f"p{i}": i for i in range(150)}) == {}
    assert len(client.get_run(run_id).data.params) == 5 + 150


def test_trial_runs_carry_their_hyperparameters_as_params(local):
    _, client = local
    experiment_id = client.create_experiment("t")
    parent = client.create_run(experiment_id).info.run_id
    run_id = registry.log_trial_run(client, experiment_id, parent, "k@2026-01-01", 3, "hist_gradient_boosting",
                                    {"learning_rate": 0.05, "max_iter": 120, "note": "y" * 7000},
                                    [0.8, 0.9], "COMPLETE", 1.5)
    run = client.get_run(run_id)
    assert run.data.params == {"estimator": "hist_gradient_boosting", "trial_number": "3", "learning_rate": "0.05",
                               "max_iter": "120", "note": "y" * registry.MAX_PARAM_VALUE}
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["cv_score"] == pytest.approx(0.85)
