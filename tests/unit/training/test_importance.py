"""Global importances per version (airloop.training.importance): permutation importance of the raw
features on the holdout, logged to the training run and read back by model version from a real
(SQLite) MLflow store."""

from __future__ import annotations

import json
import os
import time
from datetime import date, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from airloop.data.features import features_and_target
from airloop.data.simulator import generate_day
from airloop.training.importance import (
    IMPORTANCE_DIR,
    IMPORTANCE_FILE,
    IMPORTANCE_PLOT,
    MAX_ROWS,
    N_REPEATS,
    importance_line,
    load_importances,
    log_importances,
    permutation_importances,
)
from airloop.training.search import build_model


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.concat([generate_day(date(2026, 1, 5) + timedelta(days=i)) for i in range(4)], ignore_index=True)


def test_the_feature_the_label_depends_on_ranks_first(claims_config, frame):
    """A label made of one feature: that feature carries all the importance; every raw feature is
    reported once, sorted by decreasing mean drop of the training metric."""
    data = frame.copy()
    data[claims_config.target] = (data["days_to_report"] > data["days_to_report"].median()).astype(int)
    train, holdout = data.iloc[:1200], data.iloc[1200:]
    X, y = features_and_target(claims_config, train)
    model = build_model(claims_config, "hist_gradient_boosting", {"max_iter": 30}).fit(X, y)
    record = permutation_importances(claims_config, model, holdout, n_repeats=3, max_rows=400)
    assert record["metric"] == claims_config.training.metric == "roc_auc"
    assert record["rows"] == 400 and record["n_repeats"] == 3 and record["baseline"] > 0.95
    names = [f["feature"] for f in record["features"]]
    assert sorted(names) == sorted(claims_config.features)
    assert names[0] == "days_to_report" and record["features"][0]["importance_mean"] > 0.3
    assert all(abs(f["importance_mean"]) < 0.05 for f in record["features"][1:])
    means = [f["importance_mean"] for f in record["features"]]
    assert means == sorted(means, reverse=True)
    # seeded: the same figures again
    assert permutation_importances(claims_config, model, holdout, n_repeats=3, max_rows=400)["features"] == \
        record["features"]
    assert importance_line(record).startswith("permutation importance (roc_auc, 400 holdout rows, 3 repeats")
    assert "days_to_report 0." in importance_line(record)
    with pytest.raises(ValueError, match="at least 1"):
        permutation_importances(claims_config, model, holdout, n_repeats=0)
    with pytest.raises(ValueError, match="no holdout rows"):
        permutation_importances(claims_config, model, holdout.iloc[:0])


def test_logged_per_version_and_read_back(claims_config, frame, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("imp", artifact_location=str(tmp_path / "artifacts"))
    X, y = features_and_target(claims_config, frame.iloc[:1200])
    model = build_model(claims_config, "logistic_regression", {"C": 1.0}).fit(X, y)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            record = log_importances(claims_config, model, frame.iloc[1200:], n_repeats=2)
        with mlflow.start_run(experiment_id=experiment) as bare:
            pass
    finally:
        mlflow.set_tracking_uri(previous)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, IMPORTANCE_DIR)}
    assert logged == {f"{IMPORTANCE_DIR}/{IMPORTANCE_FILE}", f"{IMPORTANCE_DIR}/{IMPORTANCE_PLOT}"}
    png = Path(client.download_artifacts(run.info.run_id, f"{IMPORTANCE_DIR}/{IMPORTANCE_PLOT}", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client.create_registered_model("imp_model")
    v1 = client.create_model_version("imp_model", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    v2 = client.create_model_version("imp_model", source=f"runs:/{bare.info.run_id}/model", run_id=bare.info.run_id)
    assert load_importances(client, "imp_model", v1.version) == json.loads(json.dumps(record))
    assert load_importances(client, "imp_model", v2.version) is None  # trained before importances were logged


def test_cheap_on_the_claims_fraud_pipeline(claims_config):
    """The demo's holdout (7 days, ~3000 rows, capped at MAX_ROWS) with the search space's largest
    forest: the figure the brief asks for is printed."""
    days = [generate_day(date(2026, 2, 1) + timedelta(days=i)) for i in range(35)]
    train, holdout = pd.concat(days[:28], ignore_index=True), pd.concat(days[28:], ignore_index=True)
    X, y = features_and_target(claims_config, train)
    seconds = {}
    for family, params in (("random_forest", {"n_estimators": 200, "max_depth": 12, "min_samples_leaf": 1}),
                           ("hist_gradient_boosting", {"max_iter": 300, "max_leaf_nodes": 48}),
                           ("logistic_regression", {"C": 1.0})):
        model = build_model(claims_config, family, params).fit(X, y)
        started = time.perf_counter()
        record = permutation_importances(claims_config, model, holdout)
        seconds[family] = time.perf_counter() - started
        assert record["rows"] == min(MAX_ROWS, len(holdout))
    print(f"\npermutation importance on {len(holdout)} holdout rows (capped at {MAX_ROWS}), {N_REPEATS} repeats: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    assert max(seconds.values()) < 120


def test_the_evaluate_stage_logs_them_for_the_registered_version(tmp_path: Path, caplog):
    """tasks.training.evaluate on simulator data, then register: the version's importances are read
    back through the registry (the run it was registered from)."""
    from airloop.core.pipeline import load_pipeline_config, resolve_source_path
    from airloop.core.settings import load_settings
    from airloop.data.simulator import write_history
    from airloop.tasks import training as stages

    root = Path(__file__).resolve().parents[3]
    settings = load_settings({"AIRLOOP_HOME": str(root), "AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                              "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                              "AIRLOOP_MONITORING_DB_URI": f"sqlite:///{tmp_path / 'monitoring.db'}"})
    config = load_pipeline_config("claims_fraud", settings)
    config = config.model_copy(update={"training": config.training.model_copy(update={
        "n_trials": 2, "n_workers": 1, "cv_folds": 2, "holdout_days": 7, "window_days": 21,
        "search_space": {"logistic_regression": config.training.search_space["logistic_regression"]}})})
    write_history(resolve_source_path(config, settings), start=date(2026, 1, 1), days=21,
                  pattern=config.source.partition)
    context = {"dag_id": "claims_fraud__train", "dag_run_id": "manual__importance", "as_of": "2026-01-22"}
    snapshot = stages.extract(config, "2026-01-22", settings)
    validation = stages.validate(config, snapshot, settings)
    plan = stages.prepare_training(config, snapshot, validation, settings, context)
    stages.train_worker(config, snapshot, plan, 0, settings)
    with caplog.at_level("INFO", logger="airloop"):
        evaluation = stages.evaluate(config, snapshot, plan, settings)
    assert any(r.getMessage().startswith("permutation importance (roc_auc, ") for r in caplog.records)
    registration = stages.register(config, snapshot, validation, plan, evaluation, settings, context)
    record = load_importances(MlflowClient(tracking_uri=settings.mlflow_tracking_uri), config.model_name,
                              registration["version"])
    assert record is not None and sorted(f["feature"] for f in record["features"]) == sorted(config.features)
    assert record["rows"] <= MAX_ROWS and record["n_repeats"] == N_REPEATS
