"""Multi-tenant serving: two tenants' pipelines in one serving process (the gateway that
``airloop.cli serve`` runs), real registered models in a real MLflow store, the real monitoring
store. Tenant A's token can neither predict with, read the model of, nor send feedback to tenant
B's pipeline; rows are logged under the route's tenant."""

from __future__ import annotations

import time
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from airloop.core import store
from airloop.core.pipeline import load_pipeline_config
from airloop.core.settings import load_settings
from airloop.data.simulator import generate_day
from tests.unit.serving.test_app import REPO_ROOT, _log_version, _preprocessor

TOKENS = {"acme": "acme-token-7d1f", "globex": "globex-token-93ab"}
ADMIN = "gateway-admin-token-55c2"
TENANTS = {"acme": "acme_claims", "globex": "globex_claims"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from airloop.serving.gateway import create_gateway

    tmp = tmp_path_factory.mktemp("gateway")
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    for tenant, name in TENANTS.items():
        (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(raw | {"name": name, "tenant": tenant}))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = load_settings({
        "AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp / "state"), "MLFLOW_TRACKING_URI": uri,
        "AIRLOOP_PIPELINES_DIR": str(pipelines), "AIRLOOP_PIPELINE": "acme_claims", "AIRLOOP_ADMIN_TOKEN": ADMIN,
        "AIRLOOP_TENANT_TOKENS": ",".join(f"{t}={v}" for t, v in TOKENS.items()),
    })
    client = MlflowClient(tracking_uri=uri)
    frame = generate_day(date(2026, 1, 5))
    for tenant, name in TENANTS.items():
        config = load_pipeline_config(name, settings)
        X, y = frame[list(config.features)], frame[config.target]
        model = Pipeline([("pre", _preprocessor(config)), ("model", LogisticRegression(max_iter=300))]).fit(X, y)
        experiment = client.create_experiment(config.experiment_name, artifact_location=str(tmp / "artifacts" / name))
        client.create_registered_model(config.model_name)
        version = _log_version(client, uri, experiment, model, X, registered_name=config.model_name)
        client.set_registered_model_alias(config.model_name, "champion", version.version)
    with TestClient(create_gateway(settings)) as test_client:
        yield test_client, settings, frame


def _route(tenant: str) -> str:
    return f"/t/{tenant}/{TENANTS[tenant]}"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_models_and_experiments_are_named_after_the_tenant(gateway):
    client, settings, _ = gateway
    info = client.get(f"{_route('globex')}/model", headers=_auth(TOKENS["globex"])).json()
    assert info["name"] == "globex__globex_claims"
    assert load_pipeline_config("acme_claims", settings).experiment_name == "airloop/acme/acme_claims"


def test_a_tenant_token_works_only_on_its_own_routes(gateway):
    client, _, frame = gateway
    record = frame[list(load_pipeline_config("claims_fraud").features)].head(1).to_dict(orient="records")[0]
    record = {k: (None if v != v else v) for k, v in record.items()}
    own = client.post(f"{_route('acme')}/predict", json=record, headers=_auth(TOKENS["acme"]))
    assert own.status_code == 200 and own.json()["model"]["name"] == "acme__acme_claims"
    # tenant A's token against tenant B: predict, model, feedback, A/B info — all refused
    assert client.post(f"{_route('globex')}/predict", json=record, headers=_auth(TOKENS["acme"])).status_code == 403
    assert client.get(f"{_route('globex')}/model", headers=_auth(TOKENS["acme"])).status_code == 403
    assert client.get(f"{_route('globex')}/abtest", headers=_auth(TOKENS["acme"])).status_code == 403
    feedback = {"request_id": own.json()["predictions"][0]["request_id"], "label": 1}
    assert client.post(f"{_route('globex')}/feedback", json=feedback, headers=_auth(TOKENS["acme"])).status_code == 403
    # no token: 401 with a challenge; a wrong one: 403
    missing = client.post(f"{_route('globex')}/predict", json=record)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert client.post(f"{_route('globex')}/predict", json=record, headers=_auth("nope")).status_code == 403
    # claiming another tenant's rows with X-Tenant is refused too
    spoof = client.post(f"{_route('acme')}/predict", json=record,
                        headers={**_auth(TOKENS["acme"]), "X-Tenant": "globex"})
    assert spoof.status_code == 403 and "globex" in spoof.json()["detail"]
    # its own token, or the admin token (deploy), work; probes stay open; reload needs the admin
    assert client.post(f"{_route('globex')}/predict", json=record, headers=_auth(TOKENS["globex"])).status_code == 200
    assert client.get(f"{_route('globex')}/model", headers=_auth(ADMIN)).status_code == 200
    assert client.get(f"{_route('globex')}/health").status_code == 200
    assert client.post(f"{_route('globex')}/reload", json={}, headers=_auth(TOKENS["globex"])).status_code == 401
    # the default pipeline also answers at the root, with the same rules
    assert client.post("/predict", json=record, headers=_auth(TOKENS["globex"])).status_code == 403
    assert client.post("/predict", json=record, headers=_auth(TOKENS["acme"])).status_code == 200


def test_rows_are_logged_under_the_route_tenant(gateway):
    client, settings, frame = gateway
    features = list(load_pipeline_config("claims_fraud").features)
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in frame[features].head(5).to_dict("records")]
    ids = {t: [f"{t}-row-{i}" for i in range(5)] for t in TENANTS}
    for tenant in TENANTS:
        answer = client.post(f"{_route(tenant)}/predict", json={"records": records, "request_ids": ids[tenant]},
                             headers=_auth(TOKENS[tenant]))
        assert answer.status_code == 200
        labels = {"items": [{"request_id": rid, "label": 0} for rid in ids[tenant]]}
        assert client.post(f"{_route(tenant)}/feedback", json=labels, headers=_auth(TOKENS[tenant])).status_code == 200
    engine = store.get_engine(settings.monitoring_db_uri)
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as conn:
            rows = pd.read_sql(sa.select(store.predictions.c.request_id, store.predictions.c.tenant,
                                         store.predictions.c.pipeline, store.predictions.c.model_name), conn)
        mine = rows[rows.request_id.str.contains("-row-")]
        if len(mine) == 10 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for tenant, name in TENANTS.items():
        got = mine[mine.request_id.str.startswith(tenant)]
        assert set(got.tenant) == {tenant} and set(got.pipeline) == {name} and len(got) == 5
    with engine.connect() as conn:
        labels = pd.read_sql(sa.select(store.ground_truth.c.request_id, store.ground_truth.c.tenant), conn)
    assert set(labels[labels.request_id.str.startswith("globex")].tenant) == {"globex"}
