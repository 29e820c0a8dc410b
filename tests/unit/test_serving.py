"""Tests of airloop.serving against a real SQLite MLflow registry and real sklearn models.

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
import operator
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
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

from airloop.config import PipelineConfig, Settings, load_pipeline_config, load_settings
from airloop.serving import (
    MAX_BATCH_RECORDS,
    UntrustedModelError,
    check_admin_token,
    create_app,
    skops_trusted_types,
    vet_skops_types,
)
from airloop.simulator import generate_day

REPO_ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "claims_fraud"
TOKEN = "test-admin-token-3f9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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
            PIPELINE, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id, tags=tags
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
    with TestClient(create_app(registry.settings)) as test_client:
        yield test_client


@pytest.fixture
def fresh_client(registry: Registry) -> Iterator[TestClient]:
    """A started app of its own, for tests that reload."""
    with TestClient(create_app(registry.settings, PIPELINE)) as test_client:
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
    with TestClient(create_app(settings)) as app_client:
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
    with TestClient(create_app(settings)) as app_client:
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
