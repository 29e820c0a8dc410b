"""Tests of airloop.serving.app against a real SQLite MLflow registry and real sklearn models.

One module-scoped registry holds these versions of ``claims_fraud``:

1. logistic regression pipeline (alias ``champion``)
2. hist gradient boosting pipeline (needs the TreePredictor skops type)
3. a valid model whose ``model.skops`` file was overwritten with garbage afterwards
4. a cloudpickle model (refused: only skops is served)
5. a model whose logged signature/input example lack a column the pipeline needs (smoke fails)
6. a skops model needing ``_operator.neg``, whitelisted in its own MLmodel (refused anyway)
7. a version whose artifact folder does not exist
"""

from __future__ import annotations

import json
import re
import operator
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import infer_signature
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from airloop.core import store
from airloop.core.pipeline import PipelineConfig, load_pipeline_config
from airloop.core.security import check_admin_token
from airloop.core.settings import Settings, load_settings
from airloop.data.simulator import generate_day
from airloop.models.trust import UntrustedModelError, skops_trusted_types, vet_skops_types
from airloop.serving.app import create_app
from airloop.serving.predict import new_request_ids
from airloop.serving.schema import MAX_BATCH_RECORDS, MAX_FEEDBACK_ITEMS
from tests.pg import admin_sql, drop_database, fresh_database, pg_uri

REPO_ROOT = Path(__file__).resolve().parents[3]
PIPELINE = "claims_fraud"
TOKEN = "test-admin-token-3f9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The default tenant's own token (every route but the probes needs a token): what the shared
#: clients send, so the admin routes still see a non-admin caller unless a test sends AUTH.
TENANT_TOKEN = "test-default-tenant-token-51be"
TENANT_AUTH = {"Authorization": f"Bearer {TENANT_TOKEN}"}
#: A replay's interval header (admin token): the historical event times these tests send.
REPLAY_FEB = {"X-Airloop-Replay-Interval": "2026-02-01T00:00:00Z/2026-02-04T00:00:00Z"}


# --------------------------------------------------------------------------------------------
# Fixtures: a real registry with real models
# --------------------------------------------------------------------------------------------


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` while logging, then restore the previous value."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets it again


def _settings(tmp: Path, tracking_uri: str, token: str | None = TOKEN, **extra: str) -> Settings:
    env = {"AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp / "state"), "MLFLOW_TRACKING_URI": tracking_uri}
    env["AIRLOOP_TENANT_TOKENS"] = f"default={TENANT_TOKEN}"
    env.update(extra)
    if token:
        env["AIRLOOP_ADMIN_TOKEN"] = token
    return load_settings(env)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a JSON client sends them (NaN -> null)."""
    return json.loads(frame.to_json(orient="records"))


def _preprocessor(config: PipelineConfig) -> ColumnTransformer:
    numeric = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
    categorical = Pipeline(
        [("impute", SimpleImputer(strategy="most_frequent")), ("onehot", OneHotEncoder(handle_unknown="ignore"))]
    )
    return ColumnTransformer(
        [("num", numeric, config.numeric_features), ("cat", categorical, config.categorical_features)]
    )


@dataclass
class Registry:
    """The module's MLflow store and what was logged into it."""

    tmp: Path
    uri: str
    client: MlflowClient
    config: PipelineConfig
    settings: Settings
    features: list[str]
    lr: Pipeline
    hgb: Pipeline
    test_frame: pd.DataFrame
    artifact_dirs: dict[str, str]


def _log_version(
    registry_client: MlflowClient,
    uri: str,
    experiment_id: str,
    model: Any,
    signature_frame: pd.DataFrame,
    *,
    serialization_format: str = "skops",
    trusted: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    predictions: Any = None,
    registered_name: str = PIPELINE,
) -> Any:
    """Log ``model`` like the training DAG does, and register it as a new version."""
    if serialization_format == "skops" and trusted is None:
        trusted = skops_trusted_types(model)
    with _tracking_uri(uri), mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format=serialization_format,
            signature=infer_signature(
                signature_frame, model.predict(signature_frame) if predictions is None else predictions
            ),
            input_example=signature_frame.head(3),
            skops_trusted_types=trusted,
            pip_requirements=["scikit-learn"],  # skip slow dependency inference
        )
        if metrics:
            mlflow.log_metrics(metrics)
    # MLflow resolves a ``models:/m-...`` source through the *global* tracking URI (a TODO in
    # its SQLAlchemy registry store), so registration also happens inside _tracking_uri().
    with _tracking_uri(uri):
        return registry_client.create_model_version(
            registered_name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id, tags=tags
        )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A SQLite MLflow store with six versions of claims_fraud; version 1 is the champion."""
    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = _settings(tmp, uri)
    config = load_pipeline_config(PIPELINE, settings)
    features = list(config.features)
    # The bad-data day contributes nulls in claim_amount / police_report: optional columns.
    train = pd.concat([generate_day(date(2026, 1, 5)), generate_day(date(2026, 3, 10))], ignore_index=True)
    X, y = train[features], train[config.target]
    assert X["claim_amount"].isna().any() and X["police_report"].isna().any()

    lr = Pipeline([("pre", _preprocessor(config)), ("model", LogisticRegression(max_iter=500))]).fit(X, y)
    hgb = Pipeline(
        [("pre", _preprocessor(config)), ("model", HistGradientBoostingClassifier(max_iter=15, random_state=0))]
    ).fit(X, y)
    # Trained on all features but logged with a signature/example lacking 'region'.
    no_region = X.drop(columns=["region"])
    # A skops-serialisable model that needs a builtin function (not a sklearn/numpy class).
    neg = Pipeline(
        [
            (
                "pre",
                ColumnTransformer(
                    [
                        (
                            "num",
                            Pipeline(
                                [
                                    ("impute", SimpleImputer()),
                                    ("scale", StandardScaler()),
                                    ("neg", FunctionTransformer(operator.neg)),
                                ]
                            ),
                            config.numeric_features,
                        )
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=500)),
        ]
    ).fit(X, y)

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(f"airloop/{PIPELINE}", artifact_location=str(tmp / "artifacts"))
    client.create_registered_model(PIPELINE)
    log = lambda model, frame=X, **kw: _log_version(client, uri, experiment_id, model, frame, **kw)  # noqa: E731
    v1 = log(lr, metrics={"roc_auc": 0.71, "pr_auc": 0.2}, tags={"estimator": "logistic_regression"})
    v2 = log(hgb, metrics={"roc_auc": 0.75}, tags={"estimator": "hist_gradient_boosting"})
    v3 = log(lr)
    v4 = log(lr, serialization_format="cloudpickle")
    v5 = log(lr, frame=no_region, predictions=lr.predict(X))
    v6 = log(neg, trusted=["_operator.neg", "numpy.dtype"])
    v7 = client.create_model_version(PIPELINE, source=str(tmp / "artifacts" / "deleted-model"))
    assert [v.version for v in (v1, v2, v3, v4, v5, v6, v7)] == [1, 2, 3, 4, 5, 6, 7]

    artifact_dirs = {v: client.get_model_version_download_uri(PIPELINE, v) for v in ("1", "2", "3")}
    Path(artifact_dirs["3"], "model.skops").write_bytes(b"this is not a zip file")
    client.set_registered_model_alias(PIPELINE, "champion", "1")

    test_frame = generate_day(date(2026, 2, 2))[features].head(60).copy()
    test_frame.loc[test_frame.index[:5], "claim_amount"] = np.nan
    test_frame.loc[test_frame.index[3:8], "police_report"] = np.nan  # as pandas reads a missing value
    return Registry(tmp, uri, client, config, settings, features, lr, hgb, test_frame, artifact_dirs)


@pytest.fixture(scope="module")
def client(registry: Registry) -> Iterator[TestClient]:
    """A started app serving the champion; tests using it must not change what it serves."""
    with TestClient(create_app(registry.settings), headers=TENANT_AUTH) as test_client:
        yield test_client


@pytest.fixture
def fresh_client(registry: Registry) -> Iterator[TestClient]:
    """A started app of its own, for tests that reload."""
    with TestClient(create_app(registry.settings, PIPELINE), headers=TENANT_AUTH) as test_client:
        yield test_client


def _metric(client: TestClient, sample_name: str, /, **labels: str) -> float | None:
    """Value of one sample in the app's /metrics answer (None when absent)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _detail_for(response: Any, field: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    matches = [d for d in response.json()["detail"] if d["field"] == field]
    assert matches, response.json()
    return matches[0]


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


def test_single_record_matches_the_registered_model(client: TestClient, registry: Registry) -> None:
    row = registry.test_frame.iloc[[10]]
    response = client.post("/predict", json=_records(row)[0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": PIPELINE, "version": "1", "alias": "champion"}
    assert len(body["predictions"]) == 1
    item = body["predictions"][0]
    expected = registry.lr.predict_proba(row)[0]
    assert set(item["probabilities"]) == {"0", "1"}
    assert item["probabilities"]["1"] == pytest.approx(expected[1], abs=1e-9)
    assert item["prediction"] == int(registry.lr.predict(row)[0])


def test_batch_predict_with_nulls_in_optional_columns(client: TestClient, registry: Registry) -> None:
    frame = registry.test_frame
    response = client.post("/predict", json={"records": _records(frame)})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(frame)
    served = np.array([p["probabilities"]["1"] for p in predictions])
    np.testing.assert_allclose(served, registry.lr.predict_proba(frame)[:, 1], atol=1e-9)
    assert [p["prediction"] for p in predictions] == registry.lr.predict(frame).tolist()


def test_batch_of_more_than_inline_limit_runs_in_thread(client: TestClient, registry: Registry) -> None:
    records = _records(registry.test_frame) * 6  # 360 > INLINE_BATCH_RECORDS
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 360


def test_422_wrong_type_names_record_and_field(client: TestClient, registry: Registry) -> None:
    records = _records(registry.test_frame.head(5))
    records[3]["claim_amount"] = "a lot"
    records[1]["customer_age"] = 41.5
    response = client.post("/predict", json={"records": records})
    detail = _detail_for(response, "claim_amount")
    assert detail["record"] == 3 and "number" in detail["message"]
    assert _detail_for(response, "customer_age")["record"] == 1
    assert len(response.json()["detail"]) == 2


def test_422_unknown_field_and_missing_required(client: TestClient, registry: Registry) -> None:
    record = _records(registry.test_frame.head(1))[0]
    record["favourite_colour"] = "blue"
    del record["region"]
    response = client.post("/predict", json=record)
    assert _detail_for(response, "favourite_colour")["message"] == "Extra inputs are not permitted"
    missing = _detail_for(response, "region")
    assert missing["record"] == 0 and missing["message"] == "Field required"


def test_422_null_is_only_allowed_for_optional_columns(client: TestClient, registry: Registry) -> None:
    record = _records(registry.test_frame.head(1))[0]
    record["claim_amount"] = None  # optional in the signature: fine
    assert client.post("/predict", json=record).status_code == 200
    record["region"] = None  # required
    assert _detail_for(client.post("/predict", json=record), "region")["record"] == 0


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 422),
        (b"[1, 2]", 422),
        (b'{"records": []}', 422),
        (b'{"records": [5]}', 422),
    ],
)
def test_malformed_bodies(client: TestClient, content: bytes, status: int) -> None:
    response = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["detail"][0]["message"]


def test_batch_size_limit(client: TestClient, registry: Registry) -> None:
    record = _records(registry.test_frame.head(1))[0]
    response = client.post("/predict", json={"records": [record] * (MAX_BATCH_RECORDS + 1)})
    assert response.status_code == 413
    assert str(MAX_BATCH_RECORDS) in response.json()["detail"][0]["message"]


def _columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The records as a column-wise batch body's ``columns``."""
    return {name: [r.get(name) for r in records] for name in records[0]}


def test_a_column_wise_batch_is_answered_like_the_same_records(client: TestClient, registry: Registry) -> None:
    """``{"columns": {feature: [values]}}`` (one list per feature) gets exactly the answer of
    ``{"records": [...]}``, request ids and event times included; an optional feature that is not
    sent is null in every record."""
    records = _records(registry.test_frame.head(40))
    ids = [f"col-{i}" for i in range(len(records))]
    by_records = client.post("/predict", json={"records": records, "request_ids": ids}, headers=AUTH)
    by_columns = client.post("/predict", json={"columns": _columns(records), "request_ids": ids}, headers=AUTH)
    assert by_columns.status_code == 200, by_columns.text
    assert by_columns.json() == by_records.json()
    without = _columns(records)
    del without["claim_amount"]  # optional in the signature
    nulls = client.post("/predict", json={"columns": without}, headers=AUTH)
    assert nulls.status_code == 200, nulls.text
    expected = client.post("/predict", json={"records": [r | {"claim_amount": None} for r in records]}, headers=AUTH)
    assert [p["probabilities"] for p in nulls.json()["predictions"]] == [
        p["probabilities"] for p in expected.json()["predictions"]]


def test_a_bad_column_wise_batch_names_the_column_or_the_record(client: TestClient, registry: Registry) -> None:
    records = _records(registry.test_frame.head(5))
    columns = _columns(records)
    columns["claim_amount"][3] = "a lot"  # a bad value: the same per-record error as in "records"
    detail = _detail_for(client.post("/predict", json={"columns": columns}, headers=AUTH), "claim_amount")
    assert detail["record"] == 3 and "number" in detail["message"]
    unknown = _detail_for(client.post("/predict", json={"columns": _columns(records) | {"colour": ["x"] * 5}},
                                      headers=AUTH), "colour")
    assert unknown["record"] is None and "unknown feature" in unknown["message"]
    missing = _columns(records)
    del missing["region"]  # required
    detail = _detail_for(client.post("/predict", json={"columns": missing}, headers=AUTH), "region")
    assert detail["record"] is None and "required" in detail["message"]
    ragged = _columns(records)
    ragged["region"] = ragged["region"][:3]
    response = client.post("/predict", json={"columns": ragged}, headers=AUTH)
    assert response.status_code == 422 and "same length" in response.json()["detail"][0]["message"]
    for bad in ({"columns": []}, {"columns": {"region": "north"}}, {"columns": {"region": []}}):
        assert client.post("/predict", json=bad, headers=AUTH).status_code == 422, bad
    both = client.post("/predict", json={"columns": _columns(records), "records": records}, headers=AUTH)
    assert both.status_code == 422 and "columns" in both.json()["detail"][0]["message"]
    too_many = {name: [value[0]] * (MAX_BATCH_RECORDS + 1) for name, value in _columns(records).items()}
    assert client.post("/predict", json={"columns": too_many}, headers=AUTH).status_code == 413
    ids = client.post("/predict", json={"columns": _columns(records), "request_ids": ["a"] * 5}, headers=AUTH)
    assert ids.status_code == 422 and ids.json()["detail"][0]["field"] == "request_ids"


def test_nan_and_infinity_in_a_body_are_refused_by_name(client: TestClient, registry: Registry) -> None:
    """The standard library's parser still decides what msgspec's refuses: NaN and Infinity
    literals reach the validators, which name the record and field."""
    record = json.dumps(_records(registry.test_frame.head(1))[0])
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = re.sub(r'"claim_amount": [^,}]+', f'"claim_amount": {literal}', record)
        response = client.post("/predict", content=body, headers=AUTH | {"content-type": "application/json"})
        assert _detail_for(response, "claim_amount")["record"] == 0, literal
    assert client.post("/predict", content=b'{"records": [', headers=AUTH).status_code == 422


def test_a_non_finite_model_output_is_an_error_never_json() -> None:
    """A model answering NaN or infinity fails the call (``NonFiniteOutput``: the route answers
    500 "not a finite number" and logs an error row) instead of being written as ``null``."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    from airloop.serving.runtime import NonFiniteOutput, Predictor

    frame = pd.DataFrame({"x": [1.0, 2.0]})
    for value in (np.nan, np.inf):
        regressor = DummyRegressor(strategy="constant", constant=0.0).fit(frame, [0.0, 1.0])
        regressor.constant_ = np.array([[value]])  # what a broken model would answer
        with pytest.raises(NonFiniteOutput, match="not a finite number"):
            Predictor(regressor).predict(frame)
    fine = Predictor(DummyClassifier(strategy="prior").fit(frame, [0, 1])).predict(frame)
    assert fine[0]["probabilities"] == {"0": 0.5, "1": 0.5}


# --------------------------------------------------------------------------------------------
# Health, readiness, model info
# --------------------------------------------------------------------------------------------


def test_health_ready_and_model_info(client: TestClient, registry: Registry) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["model"]["version"] == "1"
    info = client.get("/model").json()
    run_id = registry.client.get_model_version(PIPELINE, "1").run_id
    assert info["name"] == PIPELINE and info["version"] == "1" and info["alias"] == "champion"
    assert info["run_id"] == run_id
    assert info["metrics"] == {"roc_auc": 0.71, "pr_auc": 0.2}
    assert info["tags"] == {"estimator": "logistic_regression"}
    assert "champion" in info["aliases"] and info["loaded_at"]
    inputs = {c["name"]: c for c in info["inputs"]}
    assert set(inputs) == set(registry.features)
    assert inputs["claim_amount"]["required"] is False and inputs["customer_age"]["type"] == "long"


def test_not_ready_without_champion_then_reload_later(tmp_path: Path, registry: Registry) -> None:
    # A second pipeline (same features, its own model name) in the same store, with no model yet.
    name = "claims_fraud_pending"
    raw = yaml.safe_load((registry.settings.pipelines_dir / f"{PIPELINE}.yaml").read_text())
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**raw, "name": name}))
    settings = _settings(tmp_path, registry.uri, AIRLOOP_PIPELINE=name, AIRLOOP_PIPELINES_DIR=str(tmp_path))
    with TestClient(create_app(settings), headers=AUTH) as app_client:
        health = app_client.get("/health")
        assert health.status_code == 200 and health.json()["model_loaded"] is False
        assert "not found" in health.json()["last_error"]
        assert app_client.get("/ready").status_code == 503
        assert app_client.get("/model").status_code == 503
        assert app_client.post("/predict", json=_records(registry.test_frame.head(1))[0]).status_code == 503
        registry.client.create_registered_model(name)  # registered, still no champion
        assert app_client.post("/reload", json={}, headers=AUTH).status_code == 404
        # A champion appears later (a version pointing at the artifacts of claims_fraud v1).
        registry.client.create_model_version(name, source=registry.artifact_dirs["1"])
        registry.client.set_registered_model_alias(name, "champion", "1")
        response = app_client.post("/reload", json={"alias": "champion"}, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["previous_version"] is None
        assert app_client.get("/ready").status_code == 200
        predicted = app_client.post("/predict", json=_records(registry.test_frame.head(1))[0])
        assert predicted.status_code == 200 and predicted.json()["model"]["name"] == name


def test_startup_survives_unreachable_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with TestClient(create_app(_settings(tmp_path, f"http://127.0.0.1:{port}"))) as app_client:
        health = app_client.get("/health").json()
        assert health["status"] == "ok" and "unavailable" in health["last_error"]
        assert app_client.get("/ready").status_code == 503
        response = app_client.post("/reload", json={}, headers=AUTH)
        assert response.status_code == 503 and response.json()["outcome"] == "unavailable"


# --------------------------------------------------------------------------------------------
# Reload
# --------------------------------------------------------------------------------------------


def test_reload_requires_the_admin_token(client: TestClient) -> None:
    assert client.post("/reload", json={"version": "2"}).status_code == 401
    wrong = client.post("/reload", json={"version": "2"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/reload", json={"version": "2"}, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/model").json()["version"] == "1"


def test_reload_is_refused_when_no_token_is_configured(tmp_path: Path, registry: Registry) -> None:
    settings = _settings(tmp_path, registry.uri, token=None)
    with TestClient(create_app(settings), headers=TENANT_AUTH) as app_client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            assert app_client.post("/reload", json={"version": "2"}, headers=headers).status_code == 403
        assert app_client.get("/model").json()["version"] == "1"


def test_check_admin_token() -> None:
    assert check_admin_token(f"Bearer {TOKEN}", TOKEN) is None
    assert check_admin_token(f"bearer  {TOKEN} ", TOKEN) is None
    assert check_admin_token(None, TOKEN) == 401
    assert check_admin_token(f"Bearer {TOKEN}x", TOKEN) == 401
    assert check_admin_token(f"Bearer {TOKEN}", None) == 403
    assert check_admin_token(f"Bearer {TOKEN}", "") == 403


def test_reload_swaps_version_and_back(fresh_client: TestClient, registry: Registry) -> None:
    response = fresh_client.post("/reload", json={"version": "2"}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["version"] == "2" and body["previous_version"] == "1"
    info = fresh_client.get("/model").json()
    assert info["version"] == "2" and info["alias"] is None
    assert info["metrics"] == {"roc_auc": 0.75} and info["tags"] == {"estimator": "hist_gradient_boosting"}
    row = registry.test_frame.iloc[[7]]
    predicted = fresh_client.post("/predict", json=_records(row)[0]).json()
    assert predicted["model"]["version"] == "2"
    assert predicted["predictions"][0]["probabilities"]["1"] == pytest.approx(registry.hgb.predict_proba(row)[0, 1])

    back = fresh_client.post("/reload", json={"alias": "champion"}, headers=AUTH)
    assert back.status_code == 200 and back.json()["previous_version"] == "2"
    assert fresh_client.get("/model").json()["version"] == "1"
    assert _metric(fresh_client, "airloop_serving_reloads_total", outcome="success") == 2
    assert _metric(fresh_client, "airloop_serving_model_version", name=PIPELINE) == 1


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("3", "cannot read model file"),  # model.skops corrupted after registration
        ("4", "only 'skops' models are served"),  # cloudpickle
        ("5", "smoke test"),  # the pipeline needs a column its signature lacks
        ("6", "_operator.neg"),  # whitelisted in its MLmodel, refused by the server's allow-list
        ("7", "cannot download version 7"),  # artifacts missing
    ],
)
def test_failed_reload_keeps_serving_the_old_version(
    fresh_client: TestClient, registry: Registry, version: str, reason: str
) -> None:
    response = fresh_client.post("/reload", json={"version": version}, headers=AUTH)
    assert response.status_code == 409, response.text
    body = response.json()
    assert reason in body["detail"] and body["outcome"] == "rejected"
    assert body["serving"]["version"] == "1"
    assert fresh_client.get("/model").json()["version"] == "1"
    assert fresh_client.get("/ready").status_code == 200
    predicted = fresh_client.post("/predict", json=_records(registry.test_frame.head(1))[0])
    assert predicted.status_code == 200 and predicted.json()["model"]["version"] == "1"
    assert _metric(fresh_client, "airloop_serving_reloads_total", outcome="rejected") == 1


def test_reload_unknown_targets_and_bad_bodies(client: TestClient) -> None:
    assert client.post("/reload", json={"version": "99"}, headers=AUTH).status_code == 404
    assert client.post("/reload", json={"alias": "nope"}, headers=AUTH).status_code == 404
    assert client.post("/reload", json={"alias": "champion", "version": "1"}, headers=AUTH).status_code == 422
    assert client.post("/reload", json={"version": "abc"}, headers=AUTH).status_code == 422
    assert client.post("/reload", json={"stage": "Production"}, headers=AUTH).status_code == 422
    assert client.get("/model").json()["version"] == "1"


# --------------------------------------------------------------------------------------------
# Metrics and skops trust
# --------------------------------------------------------------------------------------------


def test_metrics_expose_counters(fresh_client: TestClient, registry: Registry) -> None:
    records = _records(registry.test_frame.head(4))
    assert fresh_client.post("/predict", json={"records": records}).status_code == 200
    assert fresh_client.post("/predict", json=records[0]).status_code == 200
    assert fresh_client.post("/predict", json={"records": [{"x": 1}]}).status_code == 422
    assert fresh_client.post("/reload", json={}).status_code == 401
    assert _metric(fresh_client, "airloop_serving_requests_total", endpoint="/predict", status="200") == 2
    assert _metric(fresh_client, "airloop_serving_requests_total", endpoint="/predict", status="422") == 1
    assert _metric(fresh_client, "airloop_serving_records_predicted_total") == 5
    assert _metric(fresh_client, "airloop_serving_prediction_latency_seconds_count") == 2
    assert _metric(fresh_client, "airloop_serving_reloads_total", outcome="unauthorized") == 1
    assert _metric(fresh_client, "airloop_serving_model_info", name=PIPELINE, version="1", alias="champion") == 1
    assert _metric(fresh_client, "airloop_serving_model_version", name=PIPELINE) == 1
    # the earlier /metrics calls of _metric are counted too, in this app's registry only
    assert _metric(fresh_client, "airloop_serving_requests_total", endpoint="/metrics", status="200") >= 1


def test_vet_skops_types_trusts_only_sklearn_and_numpy_classes() -> None:
    trusted = ["numpy.dtype", "sklearn.tree._tree.Tree"]
    assert vet_skops_types(trusted) == trusted
    for bad in ("builtins.eval", "os.system", "numpy.load", "sklearn.no_such_module.Thing", "numpyx.dtype"):
        with pytest.raises(UntrustedModelError, match=bad.replace(".", r"\.")):
            vet_skops_types(["numpy.dtype", bad])


def test_skops_trusted_types_for_logging(registry: Registry) -> None:
    assert skops_trusted_types(registry.lr) == ["numpy.dtype"]
    assert "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor" in skops_trusted_types(registry.hgb)


# --------------------------------------------------------------------------------------------
# Prediction log and feedback (real SQLite and PostgreSQL monitoring stores)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_monitoring() -> Iterator[str]:
    """A fresh PostgreSQL monitoring database for this module (dropped afterwards)."""
    with fresh_database() as uri:
        yield uri


@pytest.fixture(params=["sqlite", "postgresql"])
def monitoring_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty monitoring store: a SQLite file, or the module's PostgreSQL database truncated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    uri = request.getfixturevalue("pg_monitoring")
    with store.get_engine(uri).begin() as conn:
        conn.execute(sa.text("TRUNCATE predictions, ground_truth"))
    return uri


def _table(uri: str, table: sa.Table) -> dict[str, dict[str, Any]]:
    with store.get_engine(uri).connect() as conn:
        return {r["request_id"]: dict(r) for r in conn.execute(sa.select(table)).mappings()}


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _spool_files(settings: Settings) -> list[Path]:
    folder = settings.state_dir / "spool" / PIPELINE
    return sorted(folder.glob("*.jsonl")) if folder.exists() else []


def test_predictions_and_feedback_are_stored(tmp_path: Path, registry: Registry, monitoring_uri: str) -> None:
    settings = _settings(tmp_path, registry.uri, AIRLOOP_MONITORING_DB_URI=monitoring_uri)
    frame = registry.test_frame.head(5)
    records = _records(frame)
    ids = [f"claim-{i}" for i in range(5)]
    event_ts = ["2026-02-02T08:00:00Z", "2026-02-02T09:30:00+01:00", "2026-02-02T10:00:00",
                "2026-02-02T11:00:00.250000+00:00", "2026-02-03T00:00:00Z"]
    expected_ts = [datetime(2026, 2, 2, h, m, s, us, tzinfo=timezone.utc)  # naive = UTC
                   for h, m, s, us in ((8, 0, 0, 0), (8, 30, 0, 0), (10, 0, 0, 0), (11, 0, 0, 250000))]
    expected_ts.append(datetime(2026, 2, 3, tzinfo=timezone.utc))
    single = _records(registry.test_frame.iloc[[20]])[0]
    with TestClient(create_app(settings), headers=AUTH) as app_client:
        batch = app_client.post("/predict", json={"records": records, "request_ids": ids, "event_ts": event_ts},
                                headers={"X-Tenant": "acme", **REPLAY_FEB})
        assert batch.status_code == 200, batch.text
        assert [p["request_id"] for p in batch.json()["predictions"]] == ids
        one = app_client.post("/predict", json=single)
        assert one.status_code == 200
        single_id = one.json()["predictions"][0]["request_id"]
        assert len(single_id) == 32 and uuid.UUID(single_id).version == 7  # time-ordered (new_request_ids)

        labels = {"items": [{"request_id": rid, "label": i % 2} for i, rid in enumerate(ids[:4])]}
        labels["items"][0]["label_ts"] = "2026-02-10T00:00:00Z"
        labels["items"][1]["label"] = "1"  # the string form of a class, as in "probabilities"
        response = app_client.post("/feedback", json=labels, headers={"X-Tenant": "acme"})
        assert response.status_code == 200, response.text
        assert response.json() == {"written": 4, "unchanged": 0, "corrected": 0}
        other = app_client.post("/feedback", json={"request_id": "claim-3", "label": 0})
        assert other.json()["written"] == 1  # the default tenant's claim-3: a key of its own
        assert _metric(app_client, "airloop_predlog_rows_logged_total") == 6
        assert _metric(app_client, "airloop_serving_feedback_labels_total") == 5
        assert app_client.get("/health").json()["prediction_log"]["last_error"] is None
    # no explicit flush: app shutdown drains the logger
    rows = _table(monitoring_uri, store.predictions)
    assert sorted(rows) == sorted([*ids, single_id])
    expected = registry.lr.predict_proba(frame)[:, 1]
    for i, rid in enumerate(ids):
        row = rows[rid]
        assert _as_utc(row["ts"]) == expected_ts[i]
        assert row["tenant"] == "acme" and row["pipeline"] == PIPELINE and row["model_name"] == PIPELINE
        assert row["model_version"] == "1" and row["variant"] == "champion" and row["status"] == "ok"
        features = json.loads(row["features"])
        assert list(features) == registry.features  # the validated record, every column, in order
        assert features == {k: records[i].get(k) for k in registry.features}
        assert json.loads(row["prediction"]) == batch.json()["predictions"][i]["prediction"]
        assert row["score"] == pytest.approx(expected[i], abs=1e-9)
        assert row["latency_ms"] > 0 and row["error"] is None
    assert rows[single_id]["tenant"] == "default"
    assert datetime.now(timezone.utc) - _as_utc(rows[single_id]["ts"]) < timedelta(minutes=5)

    truth = _table(monitoring_uri, store.ground_truth)
    assert sorted(truth) == ids[:4]
    assert [json.loads(truth[rid]["label"]) for rid in ids[:4]] == [0, 1, 0, 0]
    assert _as_utc(truth["claim-0"]["label_ts"]) == datetime(2026, 2, 10, tzinfo=timezone.utc)
    assert truth["claim-1"]["label_ts"] == truth["claim-1"]["received_at"]
    assert truth["claim-1"]["tenant"] == "acme" and truth["claim-3"]["tenant"] == "default"
    assert {t["pipeline"] for t in truth.values()} == {PIPELINE}
    assert not _spool_files(settings)


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"request_ids": ["a"]}, "request_ids", "one id per record (3)"),
        ({"request_ids": ["a", "b", "a"]}, "request_ids", "duplicate request id 'a'"),
        ({"request_ids": ["a", "b", "x" * 65]}, "request_ids", "at most 64 characters"),
        ({"request_ids": ["a", 7, "c"]}, "request_ids", "non-empty printable string"),
        ({"request_ids": "abc"}, "request_ids", "must be a list"),
        ({"event_ts": ["2026-02-02T08:00:00Z"] * 2}, "event_ts", "one timestamp per record (3)"),
        ({"event_ts": ["2026-02-02T08:00:00Z", "yesterday", "2026-02-02"]}, "event_ts", "not an ISO-8601"),
        ({"event_ts": ["2026-02-02T08:00:00Z", 1767225600, "2026-02-02"]}, "event_ts", "not an ISO-8601"),
        ({"request_id": ["a", "b", "c"]}, None, "unknown field(s)"),
    ],
)
def test_predict_ids_and_event_times_are_validated(
    client: TestClient, registry: Registry, body: dict[str, Any], field: str | None, fragment: str
) -> None:
    before = client.app.state.prediction_logger.stats().rows_logged
    response = client.post("/predict", json={"records": _records(registry.test_frame.head(3)), **body})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(d["field"] == field and fragment in d["message"] for d in detail), detail
    assert client.app.state.prediction_logger.stats().rows_logged == before  # nothing logged


def test_bad_tenant_header_is_refused(client: TestClient, registry: Registry) -> None:
    record = _records(registry.test_frame.head(1))[0]
    for tenant in ("a b", "x" * 101, "tenant/1"):
        response = client.post("/predict", json=record, headers={"X-Tenant": tenant})
        assert _detail_for(response, "X-Tenant")["message"].startswith("X-Tenant must be")
    assert client.post("/feedback", json={"request_id": "r", "label": 1},
                       headers={"X-Tenant": "a b"}).status_code == 422


def test_failed_prediction_logs_one_error_row(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    settings = _settings(tmp_path, registry.uri, AIRLOOP_MONITORING_DB_URI=uri)
    records = _records(registry.test_frame.head(3))
    with TestClient(create_app(settings), headers=AUTH) as app_client:
        predictor = app_client.app.state.manager.current.predictor

        def broken(frame: pd.DataFrame) -> list[dict[str, Any]]:
            raise RuntimeError("estimator exploded")

        monkeypatch.setattr(predictor, "predict", broken)
        response = app_client.post("/predict", json={"records": records, "request_ids": ["x1", "x2", "x3"],
                                                     "event_ts": ["2026-02-02T08:00:00Z"] * 3}, headers=REPLAY_FEB)
        assert response.status_code == 500 and response.json() == {"detail": "prediction failed"}
        records_bad = [dict(records[0], customer_age="old")]
        assert app_client.post("/predict", json={"records": records_bad}).status_code == 422  # not logged
        assert app_client.app.state.prediction_logger.flush(10)
    rows = list(_table(uri, store.predictions).values())
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "error" and row["error"] == "RuntimeError: estimator exploded"
    assert row["request_id"] not in {"x1", "x2", "x3"}  # a retry with the client's ids is still logged
    assert _as_utc(row["ts"]) == datetime(2026, 2, 2, 8, tzinfo=timezone.utc)
    assert row["prediction"] is None and row["score"] is None and row["model_version"] == "1"
    assert json.loads(row["features"])["batch_size"] == 3


def test_database_down_predictions_answer_and_spool_is_replayed(tmp_path: Path, registry: Registry) -> None:
    """The monitoring database does not exist: predictions still answer 200, rows go to the spool
    (also across an app restart); feedback answers 503. Once the database is created, the spool
    is replayed: every row exactly once, spool files gone."""
    name = f"airloop_test_late_{uuid.uuid4().hex[:12]}"
    uri = pg_uri(name)
    settings = _settings(tmp_path, registry.uri, AIRLOOP_MONITORING_DB_URI=uri)
    records = _records(registry.test_frame.head(10))
    sent: list[str] = []
    try:
        with TestClient(create_app(settings), headers=AUTH) as first:
            for i in range(3):
                response = first.post("/predict", json={"records": records})
                assert response.status_code == 200
                sent += [p["request_id"] for p in response.json()["predictions"]]
        assert len(_spool_files(settings)) >= 1  # the stopped app spooled what it could not write

        with TestClient(create_app(settings), headers=AUTH) as second:
            response = second.post("/predict", json={"records": records[:4], "request_ids": ["k1", "k2", "k3", "k4"]})
            assert response.status_code == 200
            sent += ["k1", "k2", "k3", "k4"]
            response = second.post("/predict", json=records[5])
            sent.append(response.json()["predictions"][0]["request_id"])
            down = second.post("/feedback", json={"request_id": "k1", "label": 1})
            assert down.status_code == 503 and down.headers["retry-after"] == "5"
            assert "monitoring database unavailable" in down.json()["detail"]
            assert second.app.state.prediction_logger.flush(10) is False
            assert _metric(second, "airloop_predlog_db_up") == 0
            assert _metric(second, "airloop_predlog_rows_spooled_total") == 5
            assert second.get("/health").json()["prediction_log"]["db_up"] is False

            admin_sql(f'CREATE DATABASE "{name}"')
            assert second.app.state.prediction_logger.flush(10)
            assert _metric(second, "airloop_predlog_rows_replayed_total") == 35
            assert _metric(second, "airloop_predlog_db_up") == 1
            assert second.post("/feedback", json={"request_id": "k1", "label": 1}).json()["written"] == 1
        rows = _table(uri, store.predictions)
        assert len(sent) == len(set(sent)) == 35
        assert sorted(rows) == sorted(sent)
        assert not _spool_files(settings)
        assert list(_table(uri, store.ground_truth)) == ["k1"]
    finally:
        drop_database(name)


def test_closed_port_predictions_answer_and_feedback_is_503(tmp_path: Path, registry: Registry) -> None:
    settings = _settings(tmp_path, registry.uri,
                         AIRLOOP_MONITORING_DB_URI="postgresql+psycopg://postgres@127.0.0.1:1/monitoring")
    with TestClient(create_app(settings), headers=AUTH) as app_client:
        response = app_client.post("/predict", json={"records": _records(registry.test_frame.head(6))})
        assert response.status_code == 200
        feedback = app_client.post("/feedback", json={"items": [{"request_id": "a", "label": 1}]})
        assert feedback.status_code == 503 and "not stored" in feedback.json()["detail"]
        assert app_client.app.state.prediction_logger.flush(10) is False
        assert _metric(app_client, "airloop_predlog_rows_spooled_total") == 6
        assert _metric(app_client, "airloop_predlog_write_errors_total") >= 1
    ids = [json.loads(line)["request_id"] for f in _spool_files(settings) for line in f.read_text().splitlines()]
    assert sorted(ids) == sorted(p["request_id"] for p in response.json()["predictions"])


def test_prediction_logging_can_be_disabled(tmp_path: Path, registry: Registry) -> None:
    settings = _settings(tmp_path, registry.uri)
    with TestClient(create_app(settings, log_predictions=False), headers=AUTH) as app_client:
        response = app_client.post("/predict", json=_records(registry.test_frame.head(1))[0])
        assert response.status_code == 200 and len(response.json()["predictions"][0]["request_id"]) == 32
        assert app_client.app.state.prediction_logger is None
        assert _metric(app_client, "airloop_predlog_rows_logged_total") is None
        assert app_client.get("/health").json()["prediction_log"] is None
    assert not (settings.state_dir / "monitoring.db").exists()
    assert not (settings.state_dir / "spool").exists()


@pytest.mark.parametrize(
    ("body", "item", "field", "fragment"),
    [
        ({"request_id": "r1"}, 0, "label", "Field required"),
        ({"label": 1}, 0, "request_id", "Field required"),
        ({"request_id": "r1", "label": 2}, 0, "label", "one of the pipeline's classes [0, 1]"),
        ({"request_id": "r1", "label": True}, 0, "label", "one of the pipeline's classes"),
        ({"request_id": "r1", "label": None}, 0, "label", "one of the pipeline's classes"),
        ({"request_id": "r1", "label": 1, "label_ts": "soon"}, 0, "label_ts", "not an ISO-8601"),
        ({"request_id": "r1", "label": 1, "label_ts": 1767225600}, 0, "label_ts", "valid string"),
        ({"request_id": "r1", "label": 1, "tenant": "x"}, 0, "tenant", "Extra inputs"),
        ({"request_id": "", "label": 1}, 0, "request_id", "at least 1 character"),
        ({"request_id": "x" * 65, "label": 1}, 0, "request_id", "at most 64 characters"),
        ({"request_id": 5, "label": 1}, 0, "request_id", "valid string"),
        ({"items": [{"request_id": "a", "label": 1}, {"request_id": "a", "label": 0}]}, 1, "request_id",
         "duplicate request id 'a'"),
        ({"items": [{"request_id": "a", "label": 1}, {"request_id": "b", "label": 7}]}, 1, "label", "classes"),
        ({"items": []}, None, "items", "non-empty list"),
        ({"items": {"request_id": "a"}}, None, "items", "non-empty list"),
        ({"items": [], "extra": 1}, None, None, "unknown field(s)"),
        ([{"request_id": "a", "label": 1}], None, None, "must be a JSON object"),
    ],
)
def test_feedback_validation(
    client: TestClient, body: Any, item: int | None, field: str | None, fragment: str
) -> None:
    response = client.post("/feedback", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(d["item"] == item and d["field"] == field and fragment in d["message"] for d in detail), detail


def test_feedback_limits_and_malformed_json(client: TestClient) -> None:
    response = client.post("/feedback", content=b"{oops", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"][0]["message"]
    too_many = {"items": [{"request_id": f"r{i}", "label": 1} for i in range(MAX_FEEDBACK_ITEMS + 1)]}
    response = client.post("/feedback", json=too_many)
    assert response.status_code == 413 and str(MAX_FEEDBACK_ITEMS) in response.json()["detail"][0]["message"]


def test_feedback_of_a_regression_pipeline_needs_numbers(tmp_path: Path, registry: Registry) -> None:
    name = "claims_amount"
    raw = yaml.safe_load((registry.settings.pipelines_dir / f"{PIPELINE}.yaml").read_text())
    raw = {**raw, "name": name, "task": "regression", "target": "claim_amount_paid"}
    raw.pop("classes")
    raw["training"]["metric"] = "neg_root_mean_squared_error"
    raw["training"]["search_space"].pop("logistic_regression")  # a classifier only
    for binary_only in ("decision", "calibration"):  # the demo's decision threshold and calibration
        raw["training"].pop(binary_only, None)
    raw["promotion"] = {k: v for k, v in raw["promotion"].items() if k != "thresholds"}  # roc_auc gates
    for env in raw["promotion"].get("environments", []):
        env.pop("thresholds", None)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'monitoring.db'}"
    settings = _settings(tmp_path, registry.uri, AIRLOOP_PIPELINE=name, AIRLOOP_PIPELINES_DIR=str(tmp_path),
                         AIRLOOP_MONITORING_DB_URI=uri)
    with TestClient(create_app(settings), headers=AUTH) as app_client:  # no model yet: feedback does not need one
        for bad in ("12.5", True, None, [1]):
            response = app_client.post("/feedback", json={"request_id": "r1", "label": bad})
            assert _detail_for_item(response, "label")["message"].startswith("label must be a finite number")
        response = app_client.post("/feedback", json={"items": [{"request_id": "r1", "label": 1250.5},
                                                                {"request_id": "r2", "label": 80}]})
        assert response.json()["written"] == 2
    truth = _table(uri, store.ground_truth)
    assert {k: json.loads(v["label"]) for k, v in truth.items()} == {"r1": 1250.5, "r2": 80}
    assert {v["pipeline"] for v in truth.values()} == {name}


def _detail_for_item(response: Any, field: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    matches = [d for d in response.json()["detail"] if d["field"] == field]
    assert matches, response.json()
    return matches[0]


def test_request_ids_are_unique_time_ordered_uuid7():
    """Server-drawn ids: valid RFC 9562 version-7 UUIDs (32 hex digits), unique, and ordered by
    the millisecond they were drawn in (what keeps the prediction log's key index append-only)."""
    import time

    first = new_request_ids(50_000)
    assert len(set(first)) == 50_000 and new_request_ids(0) == []
    for rid in first[:1000]:
        parsed = uuid.UUID(rid)
        assert len(rid) == 32 and parsed.hex == rid
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    drawn_ms = int(first[0][:12], 16)
    assert abs(drawn_ms - time.time_ns() // 1_000_000) < 60_000
    time.sleep(0.002)
    later = new_request_ids(3)
    assert all(b > a for a in first for b in later[:1])  # a later millisecond sorts after
    assert not set(later) & set(first)
