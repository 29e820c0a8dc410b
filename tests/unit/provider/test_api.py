"""The plugin API behind Airflow's login: mounted as the API server mounts plugin apps
(``airflow.api_fastapi.app.init_plugins``: ``app.mount(url_prefix, subapp)``) on an app whose auth
manager is Airflow's real SimpleAuthManager (``init_auth_manager``, which also mounts its
``/auth``), with JWTs it signs; a real MLflow store, a real SQLite monitoring store and a real
Airflow metadata DB (revoked-token lookups)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airloop.core import store
from tests.unit.registry.lifecycle_store import make_lifecycle_store
from tests.unit.serving.test_app import TOKEN

BASE = "/airloop/api/v1/pipelines"
DAY = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """The real store with ``claims_fraud`` itself registered (the API loads pipelines by name)."""
    lc = make_lifecycle_store(tmp_path_factory.mktemp("api"))
    pipeline = lc.pipeline(renamed=False)
    v1 = pipeline.add_version(0.80, rows=900, latency_p95_ms=4.0, tags={"airloop.data_interval": "2026-01-01/2026-02-01"})
    v2 = pipeline.add_version(0.84, rows=950, latency_p95_ms=6.0)
    for alias in ("dev", "champion", "prod"):
        lc.client.set_registered_model_alias(pipeline.name, alias, v1)
    config = pipeline.config
    folder = lc.settings.reports_dir / config.name / config.tenant
    folder.mkdir(parents=True)
    report = folder / "drift_20260301T000000Z.html"
    report.write_text("<html><body>evidently drift report</body></html>")
    key = {"tenant": config.tenant, "pipeline": config.name, "interval_start": DAY}
    store.upsert(lc.engine, store.monitoring_runs, [key | {
        "interval_end": DAY + timedelta(days=1), "model_version": v1, "rows": 400, "drift_share": 0.25,
        "drifted_features": json.dumps(["claim_amount"]), "report_uri": str(report)}])
    store.upsert(lc.engine, store.feature_drift, [key | {
        "feature": name, "interval_end": DAY + timedelta(days=1), "model_version": v1, "method": "psi",
        "statistic": 0.2, "threshold": 0.1, "drifted": True, "current_rows": 400, "reference_rows": 4000}
        for name in list(config.features)[:3]])
    return lc, v1, v2


@pytest.fixture(scope="module")
def auth_manager(airflow_db):
    """Airflow's SimpleAuthManager, initialised as the API server does."""
    from airflow.api_fastapi.app import create_auth_manager

    manager = create_auth_manager()
    manager.init()
    return manager


@pytest.fixture
def client(lifecycle, auth_manager, monkeypatch):
    """The API server's shape: a root app with the auth manager's ``/auth``, the plugin at ``/airloop``."""
    from airflow.api_fastapi.app import init_auth_manager

    from airloop.core import settings as settings_module
    from airloop_provider.api import create_api_app

    monkeypatch.setattr(settings_module, "get_settings", lambda: lifecycle[0].settings)
    root = FastAPI()
    init_auth_manager(root)
    root.mount("/airloop", create_api_app())
    return TestClient(root)


def jwt(auth_manager, role: str | None, name: str | None = None) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username=name or f"{role}-user", role=role))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_or_a_bad_credential_is_401_and_the_docs_stay_open(client):
    for path in ("", "/claims_fraud", "/claims_fraud/versions", "/claims_fraud/drift", "/claims_fraud/ledger"):
        answer = client.get(BASE + path)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["www-authenticate"] == "Bearer"
    assert client.get(f"{BASE}/claims_fraud", headers=bearer("not-a-jwt")).status_code == 401
    assert client.get(f"{BASE}/claims_fraud", cookies={"_token": "not-a-jwt"}).status_code == 401
    assert client.post(f"{BASE}/claims_fraud/rollback", json={"reason": "xyz"}).status_code == 401
    assert client.get("/airloop/docs").status_code == 200
    schema = client.get("/airloop/openapi.json").json()
    assert {"/api/v1/pipelines", "/api/v1/pipelines/{pipeline}/drift",
            "/api/v1/pipelines/{pipeline}/reports/{interval_start}"} <= set(schema["paths"])
    drift_params = {p["name"] for p in schema["paths"]["/api/v1/pipelines/{pipeline}/drift"]["get"]["parameters"]}
    assert drift_params == {"pipeline", "feature", "since", "until"}


def test_the_airflow_login_reads_as_bearer_jwt_and_as_the_ui_cookie(client, auth_manager, lifecycle):
    _, v1, _ = lifecycle
    viewer = jwt(auth_manager, "viewer")
    card = client.get(f"{BASE}/claims_fraud", headers=bearer(viewer))
    assert card.status_code == 200, card.text
    assert card.json()["champion"]["prod"] == v1 and card.json()["last_drift_check"]["drift_share"] == 0.25
    client.cookies.set("_token", viewer)  # what the Airflow UI's login leaves in the browser
    try:
        listed = client.get(BASE)
        assert listed.status_code == 200 and "claims_fraud" in {p["name"] for p in listed.json()["pipelines"]}
        assert client.get(f"{BASE}/claims_fraud/versions").status_code == 200
    finally:
        client.cookies.clear()


def test_a_user_without_permission_is_403(client, auth_manager):
    nobody = bearer(jwt(auth_manager, None, "nobody"))  # signed in, no role
    answer = client.get(f"{BASE}/claims_fraud", headers=nobody)
    assert answer.status_code == 403 and "claims_fraud__train" in answer.json()["detail"]
    assert client.get(BASE, headers=nobody).json() == {"pipelines": []}  # lists only what it may read
    viewer = bearer(jwt(auth_manager, "viewer"))
    refused = client.post(f"{BASE}/claims_fraud/rollback", headers=viewer,
                          json={"environment": "prod", "reason": "viewer tries"})
    assert refused.status_code == 403 and "claims_fraud__rollback" in refused.json()["detail"]
    assert client.post(f"{BASE}/claims_fraud/promote", headers=viewer, json={
        "version": 1, "environment": "dev", "reason": "viewer tries"}).status_code == 403


def test_a_user_who_may_run_dags_gets_past_auth_to_a_real_conflict(client, auth_manager):
    user = bearer(jwt(auth_manager, "user"))
    # staging has never held a version: nothing to roll back to is a real conflict
    answer = client.post(f"{BASE}/claims_fraud/rollback", headers=user,
                         json={"environment": "staging", "reason": "nothing there"})
    assert answer.status_code == 409, answer.text
    assert client.post(f"{BASE}/claims_fraud/rollback", headers=user,
                       json={"environment": "nowhere", "reason": "bad env"}).status_code == 422
    assert client.post(f"{BASE}/claims_fraud/promote", headers=user, json={
        "version": 99, "environment": "dev", "reason": "no such version"}).status_code == 404


def test_the_admin_token_still_works_for_machines(client, lifecycle):
    lc, v1, v2 = lifecycle
    admin = bearer(TOKEN)
    versions = client.get(f"{BASE}/claims_fraud/versions", headers=admin)
    assert versions.status_code == 200, versions.text
    assert [v["version"] for v in versions.json()["versions"]] == [v2, v1]
    assert versions.json()["versions"][1]["environments"] == ["dev", "prod"]
    environments = client.get(f"{BASE}/claims_fraud/environments", headers=admin).json()["environments"]
    assert {e["name"]: e["version"] for e in environments} == {"dev": v1, "staging": None, "prod": v1}


def test_status_codes_and_reads(client, lifecycle):
    _, v1, v2 = lifecycle
    admin = bearer(TOKEN)
    assert client.get(f"{BASE}/nope", headers=admin).status_code == 404
    assert client.get(f"{BASE}/claims_fraud/versions/99", headers=admin).status_code == 404  # not 409
    assert client.get(f"{BASE}/claims_fraud/versions/99/lineage", headers=admin).status_code == 404
    assert client.get(f"{BASE}/claims_fraud/compare", params={"a": v1, "b": 99}, headers=admin).status_code == 404
    assert client.get(f"{BASE}/claims_fraud/versions/0", headers=admin).status_code == 422
    assert client.get(f"{BASE}/claims_fraud/monitoring", params={"limit": 0}, headers=admin).status_code == 422
    bad = client.get(f"{BASE}/claims_fraud/drift", params={"feature": "nope"}, headers=admin)
    assert bad.status_code == 422 and "feature 'nope'" in bad.json()["detail"]
    assert client.get(f"{BASE}/claims_fraud/drift", params={"since": "yesterday"}, headers=admin).status_code == 422
    assert client.get(f"{BASE}/claims_fraud/environments/nowhere/at", params={"time": DAY.isoformat()},
                      headers=admin).status_code == 404
    assert client.get(f"{BASE}/claims_fraud/versions/{v1}/validation", headers=admin).status_code == 404
    assert client.get(f"{BASE}/claims_fraud/ledger", params={"environment": "nowhere"}, headers=admin).status_code == 422

    detail = client.get(f"{BASE}/claims_fraud/versions/{v1}", headers=admin).json()
    assert detail["metrics"] == {"roc_auc": 0.8} and detail["figures"]["rows"] == 900.0
    comparison = client.get(f"{BASE}/claims_fraud/compare", params={"a": v1, "b": v2, "log_artifact": False},
                            headers=admin).json()
    assert comparison["metrics"]["roc_auc"]["better"] == v2
    assert "rows" not in comparison["metrics"] and "latency_p95_ms" not in comparison["metrics"]
    assert comparison["figures"]["rows"]["delta"] == 50.0

    drift = client.get(f"{BASE}/claims_fraud/drift", headers=admin).json()
    assert drift["intervals"] == 1 and len(drift["features"]) == 3
    runs = client.get(f"{BASE}/claims_fraud/monitoring", headers=admin).json()["rows"]
    assert runs[0]["drifted_features"] == ["claim_amount"] and "report_uri" not in runs[0]
    report = client.get(runs[0]["report"], headers=admin)  # the link the read model gives
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "evidently drift report" in report.text
    assert client.get(f"{BASE}/claims_fraud/reports/2026-03-02T00:00:00Z", headers=admin).status_code == 404
    assert client.get(f"{BASE}/claims_fraud/reports/..%2F..%2Fetc%2Fpasswd", headers=admin).status_code in (404, 422)
    for path in ("alerts", "retrains", "abtests", "ledger"):
        answer = client.get(f"{BASE}/claims_fraud/{path}", headers=admin)
        assert answer.status_code == 200 and answer.json()["rows"] == [], (path, answer.text)


def test_a_jwt_from_the_api_servers_login_reads_the_api(client, auth_manager):
    """``POST /auth/token`` with a SimpleAuthManager user's password, as README says a script does."""
    from airflow.configuration import conf

    passwords = json.loads(open(conf.get("core", "simple_auth_manager_passwords_file")).read())
    username, password = next(iter(passwords.items()))
    login = client.post("/auth/token", json={"username": username, "password": password})
    assert login.status_code in (200, 201), login.text
    token = login.json()["access_token"]
    assert client.get(f"{BASE}/claims_fraud/environments", headers=bearer(token)).status_code == 200
    assert client.post("/auth/token", json={"username": username, "password": "wrong"}).status_code == 401
