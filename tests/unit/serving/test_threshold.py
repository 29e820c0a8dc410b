"""A version's decision threshold, from training to the served label.

A calibrated demo model with its tuned threshold is logged the way training logs it (skops, the
decision in the ``MLmodel`` metadata) and registered in a SQLite MLflow store with the decision
tags. The real serving app loads it through the trusted-type rules and answers each record with
its calibrated probabilities, the ``threshold`` and the label ``score >= threshold``, which is
also the logged ``prediction``; OpenAPI documents the field. The registry reader gives the same
threshold; the default gates refuse a model that never flags a positive.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from sklearn.dummy import DummyClassifier

from airloop.core import store
from airloop.core.pipeline import load_pipeline_config, parse_pipeline_config
from airloop.data.features import features_and_target
from airloop.data.simulator import generate_day
from airloop.models.artifact import log_sklearn_model, read_model_files
from airloop.models.schema import request_records, signature_inputs
from airloop.models.scoring import model_scores
from airloop.models.trust import ModelLoadError
from airloop.registry.client import decision_threshold, get_client, register_version
from airloop.registry.gates import evaluate_gates
from airloop.registry.tags import CALIBRATION_TAG, THRESHOLD_TAG, decision_tags
from airloop.serving.app import create_app
from airloop.serving.runtime import Predictor
from airloop.training.decision import fit_decided
from airloop.training.evaluation import holdout_metrics
from airloop.training.search import build_model, split_holdout
from tests.unit.serving.test_app import REPO_ROOT, TENANT_AUTH, _settings


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("threshold")
    settings = _settings(tmp, f"sqlite:///{tmp / 'mlflow.db'}", AIRLOOP_PIPELINE="claims_fraud",
                         AIRLOOP_MLFLOW_ARTIFACT_ROOT=str(tmp / "artifacts"))
    config = load_pipeline_config("claims_fraud", settings)
    frame = pd.concat([generate_day(date(2026, 1, 1) + timedelta(days=d)) for d in range(10)], ignore_index=True)
    frame = frame.sort_values("claim_ts").reset_index(drop=True)
    train, holdout = split_holdout(config, frame, "2026-01-11")
    training = config.training.model_copy(update={"calibration": "sigmoid"})
    decided = fit_decided(config.model_copy(update={"training": training}), train,
                          {"family": "hist_gradient_boosting", "params": {"max_iter": 60}})
    X_train, _ = features_and_target(config, train)
    client = get_client(settings)
    experiment = client.create_experiment(config.experiment_name, artifact_location=str(tmp / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_sklearn_model(config, decided.model, X_train, decision=decided.decision,
                                 pip_requirements=["scikit-learn"])
    version = register_version(client, config.model_name, info.model_uri, run.info.run_id, "claims_fraud@t1",
                               {"airloop.pipeline": config.name, **decision_tags(decided.decision)})
    client.set_registered_model_alias(config.model_name, "champion", version.version)
    return settings, config, decided, holdout, str(version.version)


def test_the_artefact_and_the_tags_carry_the_decision(registered):
    settings, config, decided, _, version = registered
    client = get_client(settings)
    files = read_model_files(client, settings, config.model_name, version)  # skops, trusted types only
    assert files.decision == decided.decision and files.threshold == decided.decision["threshold"]
    assert type(files.estimator.named_steps["model"]).__name__ == "CalibratedClassifierCV"
    tags = client.get_model_version(config.model_name, version).tags
    assert tags[CALIBRATION_TAG] == "sigmoid" and float(tags[THRESHOLD_TAG]) == decided.decision["threshold"]
    assert decision_threshold(client, config, version) == decided.decision["threshold"]


def test_serving_answers_the_threshold_and_the_thresholded_label(registered):
    settings, config, decided, holdout, version = registered
    threshold = decided.decision["threshold"]
    X, _ = features_and_target(config, holdout)
    scores = model_scores(config, decided.model, X)
    pick = np.r_[np.flatnonzero(scores >= threshold)[:5], np.flatnonzero(scores < threshold)[:5]]
    assert len(pick) == 10 and (scores[pick] < 0.5).any()  # some flagged rows score below 0.5
    records = request_records(signature_inputs(config), holdout[list(config.features)].iloc[pick])
    ids = [f"t{i}" for i in range(len(pick))]
    app = create_app(settings)
    with TestClient(app, headers=TENANT_AUTH) as http:
        answer = http.post("/predict", json={"records": records, "request_ids": ids})
        assert answer.status_code == 200, answer.text
        described = http.get("/model").json()
        openapi = http.get("/openapi.json").json()
        assert app.state.prediction_logger.flush(timeout=60)
    items = answer.json()["predictions"]
    assert [item["threshold"] for item in items] == [threshold] * len(pick)
    served = np.array([item["probabilities"]["1"] for item in items])
    assert np.allclose(served, scores[pick])  # the calibrated scores
    assert [item["prediction"] for item in items] == [1 if s >= threshold else 0 for s in served]
    assert described["decision"]["threshold"] == threshold and described["version"] == version
    engine = store.get_engine(settings.monitoring_db_uri)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.select(store.predictions.c.request_id, store.predictions.c.prediction)
                                 .where(store.predictions.c.request_id.in_(ids))).all())
    assert [json.loads(rows[i]) for i in ids] == [item["prediction"] for item in items]
    item_schema = openapi["components"]["schemas"]["PredictionItem"]
    assert "threshold" in item_schema["properties"]


def test_a_threshold_needs_a_binary_classifier(registered):
    _, _, decided, _, _ = registered
    with pytest.raises(ModelLoadError, match="positive class"):
        Predictor(decided.model, decided.decision | {"positive_class": "yes"})


def test_the_default_gates_refuse_a_model_that_never_flags_a_positive(registered, claims_config):
    _, config, decided, holdout, _ = registered
    frame = pd.concat([generate_day(date(2026, 1, 1) + timedelta(days=d)) for d in range(4)], ignore_index=True)
    X, y = features_and_target(config, frame)
    never = build_model(config, "logistic_regression", {}).set_params(model=DummyClassifier(strategy="prior"))
    metrics = holdout_metrics(config, never.fit(X, y), holdout, None) | {"latency_p95_ms": 1.0}
    assert metrics["positive_predictions"] == 0 and metrics["roc_auc"] == 0.5
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    raw["promotion"] = {"thresholds": {}, "min_training_rows": 0}  # no threshold configured at all
    for cfg in (claims_config, parse_pipeline_config(raw)):
        for env in cfg.promotion.path():
            decision = evaluate_gates(cfg, metrics, None, environment=env, train_rows=10_000)
            assert not decision.promote, env.name
            assert "flags_positives: predicts no positive" in decision.reason
    good = holdout_metrics(config, decided.model, holdout, decided.decision["threshold"]) | {"latency_p95_ms": 1.0}
    check = next(c for c in evaluate_gates(config, good, None, train_rows=10_000).checks if c.name == "flags_positives")
    assert check.passed and good["recall"] > 0
