"""``POST /explain`` and ``get_model_explanations`` against a real app, registry and prediction log.

A temporary SQLite MLflow store holds two versions of ``claims_fraud``, logged the way the
training DAG logs them (``log_sklearn_model``: skops, typed signature, input example; the
monitoring reference in the same run): v1 a histogram gradient boosting pipeline (champion,
TreeSHAP), v2 a logistic regression (exact linear contributions against its reference). The
app runs under FastAPI's TestClient with a tenant token, and its predictions go through the real
prediction logger into a SQLite monitoring store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from scipy.special import expit

from airloop.core.pipeline import PipelineConfig, load_pipeline_config
from airloop.core.settings import Settings, load_settings
from airloop.data.features import features_and_target
from airloop.data.simulator import generate_day
from airloop.models.artifact import log_sklearn_model
from airloop.models.explain import ExplainError
from airloop.models.schema import request_records, signature_inputs
from airloop.monitoring.reference import REFERENCE_DIR, REFERENCE_FILE, reference_frame
from airloop.serving.app import create_app
from airloop.serving.explanations import get_model_explanations
from airloop.training.search import build_model

REPO_ROOT = Path(__file__).resolve().parents[3]
PIPELINE = "claims_fraud"
TOKEN = "tenant-token-explain-7c1"
ADMIN = "admin-token-explain-2b9"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Another tenant (X-Tenant) is honoured only with that tenant's token or the admin token.
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class World:
    settings: Settings
    config: PipelineConfig
    hgb: Any
    lr: Any
    records: list[dict[str, Any]]


def _log(client: MlflowClient, uri: str, experiment_id: str, config: PipelineConfig, model: Any, train: pd.DataFrame,
         tmp: Path) -> str:
    X, _ = features_and_target(config, train)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            path = tmp / run.info.run_id / REFERENCE_FILE
            path.parent.mkdir()
            reference_frame(config, model, train).to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)
            info = log_sklearn_model(config, model, X, pip_requirements=["scikit-learn"])
        version = client.create_model_version(config.model_name, source=info.model_uri, run_id=run.info.run_id,
                                              model_id=info.model_id)
    finally:
        mlflow.set_tracking_uri(previous)
    return str(version.version)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("explain")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {"AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp / "state"), "MLFLOW_TRACKING_URI": uri,
           "AIRLOOP_ADMIN_TOKEN": ADMIN, "AIRLOOP_TENANT_TOKENS": f"default={TOKEN}",
           "AIRLOOP_MONITORING_DB_URI": f"sqlite:///{tmp / 'monitoring.db'}"}
    settings = load_settings(env)
    config = load_pipeline_config(PIPELINE, settings)
    train = pd.concat([generate_day(date(2026, 1, d)) for d in (5, 6, 7)], ignore_index=True)
    X, y = features_and_target(config, train)
    hgb = build_model(config, "hist_gradient_boosting", {"max_iter": 40}).fit(X, y)
    lr = build_model(config, "logistic_regression", {"C": 1.0}).fit(X, y)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(f"airloop/{PIPELINE}", artifact_location=str(tmp / "artifacts"))
    client.create_registered_model(config.model_name)
    assert _log(client, uri, experiment_id, config, hgb, train, tmp) == "1"
    assert _log(client, uri, experiment_id, config, lr, train, tmp) == "2"
    client.set_registered_model_alias(config.model_name, "champion", "1")
    served = generate_day(date(2026, 2, 2))
    records = request_records(signature_inputs(config), served[list(config.features)].head(6))
    return World(settings, config, hgb, lr, records)


@pytest.fixture(scope="module")
def app_client(world: World) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings)) as client:
        yield client


@pytest.fixture(scope="module")
def logged(world: World, app_client: TestClient) -> dict[str, Any]:
    """Six predictions logged under tenant ``acme`` (ids a0..a5), flushed to the store."""
    ids = [f"a{i}" for i in range(6)]
    response = app_client.post("/predict", json={"records": world.records, "request_ids": ids},
                               headers={**ADMIN_AUTH, "X-Tenant": "acme"})
    assert response.status_code == 200, response.text
    assert app_client.app.state.prediction_logger.flush(timeout=30)
    return {p["request_id"]: p for p in response.json()["predictions"]}


def _frame(world: World, records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(records)[list(world.config.features)]


def _additive(item: dict[str, Any]) -> None:
    assert item["base_value"] + sum(item["contributions"].values()) == pytest.approx(item["output"], abs=1e-6)


# ---------------------------------------------------------------------------- posted records
def test_posted_records_are_explained_by_the_champion(world: World, app_client: TestClient) -> None:
    response = app_client.post("/explain", json={"records": world.records, "top_k": 3}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == world.config.model_name
    proba = world.hgb.predict_proba(_frame(world, world.records))[:, 1]
    assert len(body["explanations"]) == len(world.records)
    for item, record, p in zip(body["explanations"], world.records, proba, strict=True):
        assert item["prediction_id"] is None and item["model_version"] == "1"
        assert (item["method"], item["space"], item["class"]) == ("tree_shap", "log_odds", "1")
        assert expit(item["output"]) == pytest.approx(p, abs=1e-9)  # the served probability, in log-odds
        _additive(item)
        assert sorted(item["contributions"]) == sorted(world.config.features)
        sizes = [abs(v) for v in item["contributions"].values()]
        assert sizes == sorted(sizes, reverse=True)
        assert [t["feature"] for t in item["top"]] == list(item["contributions"])[:3]
        assert all(t["value"] == record[t["feature"]] for t in item["top"])


def test_another_version_is_loaded_from_the_registry_and_explained_exactly(world: World, app_client: TestClient) -> None:
    response = app_client.post("/explain", json={"records": world.records[:2], "version": 2}, headers=AUTH)
    assert response.status_code == 200, response.text
    items = response.json()["explanations"]
    proba = world.lr.predict_proba(_frame(world, world.records[:2]))[:, 1]
    for item, p in zip(items, proba, strict=True):
        assert (item["model_version"], item["method"], item["space"]) == ("2", "linear", "log_odds")
        assert expit(item["output"]) == pytest.approx(p, abs=1e-9)
        _additive(item)
    cache = app_client.app.state.explainers
    assert cache.get("2")[1].background_rows == 100  # a sample of v2's reference
    assert app_client.app.state.manager.current.version == "1"  # serving untouched
    missing = app_client.post("/explain", json={"records": world.records[:1], "version": "99"}, headers=AUTH)
    assert missing.status_code == 404 and "99" in missing.json()["detail"]


# ---------------------------------------------------------------------------- logged ids
def test_logged_predictions_round_trip(world: World, app_client: TestClient, logged: dict[str, Any]) -> None:
    ids = ["a3", "a0", "a3"]
    response = app_client.post("/explain", json={"prediction_ids": ids}, headers={**ADMIN_AUTH, "X-Tenant": "acme"})
    assert response.status_code == 200, response.text
    items = response.json()["explanations"]
    assert [i["prediction_id"] for i in items] == ids
    for item in items:
        served = logged[item["prediction_id"]]
        assert item["model_version"] == "1"  # the version that answered
        assert expit(item["output"]) == pytest.approx(served["probabilities"]["1"], abs=1e-9)
        _additive(item)
    posted = app_client.post("/explain", json={"records": [world.records[3]]}, headers=AUTH).json()
    assert posted["explanations"][0]["contributions"] == pytest.approx(items[0]["contributions"], abs=1e-12)
    # the same predictions explained with another version
    other = app_client.post("/explain", json={"prediction_ids": ["a0"], "version": "2"},
                            headers={**ADMIN_AUTH, "X-Tenant": "acme"}).json()["explanations"][0]
    assert other["model_version"] == "2" and other["method"] == "linear"


def test_unknown_and_other_tenants_ids_are_404_naming_them(app_client: TestClient, logged: dict[str, Any]) -> None:
    response = app_client.post("/explain", json={"prediction_ids": ["a1", "nope-1", "nope-2"]},
                               headers={**ADMIN_AUTH, "X-Tenant": "acme"})
    assert response.status_code == 404
    (error,) = response.json()["detail"]
    assert error["field"] == "prediction_ids"
    assert "'nope-1', 'nope-2'" in error["message"] and "'a1'" not in error["message"]
    # logged under acme: invisible to the default tenant and to another one
    for headers in (AUTH, {**ADMIN_AUTH, "X-Tenant": "globex"}):
        hidden = app_client.post("/explain", json={"prediction_ids": ["a1"]}, headers=headers)
        assert hidden.status_code == 404 and "'a1'" in hidden.json()["detail"][0]["message"]


def test_library_function_matches_the_route(world: World, app_client: TestClient, logged: dict[str, Any]) -> None:
    route = app_client.post("/explain", json={"prediction_ids": ["a2", "a4"]},
                            headers={**ADMIN_AUTH, "X-Tenant": "acme"}).json()["explanations"]
    items = get_model_explanations(world.config.model_name, None, ["a2", "a4"], settings=world.settings, tenant="acme")
    assert [i["prediction_id"] for i in items] == ["a2", "a4"]
    for lib, via_http in zip(items, route, strict=True):
        assert lib["model_version"] == "1" and lib["class"] == "1"
        assert lib["output"] == pytest.approx(via_http["output"], abs=1e-12)
        assert lib["contributions"] == pytest.approx(via_http["contributions"], abs=1e-12)
    linear = get_model_explanations(world.config.model_name, 2, ["a2"], settings=world.settings, tenant="acme")
    assert linear[0]["method"] == "linear"
    with pytest.raises(ExplainError, match="a2") as err:
        get_model_explanations(world.config.model_name, 1, ["a2"], settings=world.settings)  # tenant default
    assert err.value.status_code == 404
    with pytest.raises(ValueError, match="registers the model"):
        get_model_explanations("no_such_model", 1, ["a2"], settings=world.settings)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("body", "field"), [
    ({}, None),
    ({"records": [{}], "prediction_ids": ["a1"]}, None),
    ({"records": []}, "records"),
    ({"prediction_ids": [""]}, "prediction_ids"),
    ({"records": [{}], "top_k": 0}, "top_k"),
    ({"records": [{}], "version": "two"}, "version"),
    ({"records": [{}], "colour": "red"}, "colour"),
])
def test_bad_bodies_are_422_naming_the_field(app_client: TestClient, body: dict[str, Any], field: str | None) -> None:
    response = app_client.post("/explain", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    locations = [".".join(map(str, e["loc"])) for e in response.json()["detail"]]
    assert any(field in loc for loc in locations) if field else locations


def test_bad_records_and_class_are_422_naming_record_and_field(world: World, app_client: TestClient) -> None:
    bad = [world.records[0], {**world.records[1], "customer_age": "old"}]
    response = app_client.post("/explain", json={"records": bad}, headers=AUTH)
    assert response.status_code == 422
    assert [(e["record"], e["field"]) for e in response.json()["detail"]] == [(1, "customer_age")]
    wrong = app_client.post("/explain", json={"records": world.records[:1], "class": "7"}, headers=AUTH)
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["field"] == "class"
    garbage = app_client.post("/explain", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert garbage.status_code == 422


def test_explain_needs_the_tenant_token_and_is_documented(app_client: TestClient, world: World) -> None:
    body = {"records": world.records[:1]}
    assert app_client.post("/explain", json=body).status_code == 401
    assert app_client.post("/explain", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
    admin = app_client.post("/explain", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert admin.status_code == 200
    spec = app_client.get("/openapi.json", headers=AUTH).json()
    operation = spec["paths"]["/explain"]["post"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ExplainResponse")
    assert {"base_value", "output", "space", "contributions", "top", "class"} <= \
        set(spec["components"]["schemas"]["RecordExplanation"]["properties"])
    assert json.dumps(spec).count("prediction_ids") >= 1
