"""The MLOps view (``airloop_provider.view``) on a real lifecycle store (SQLite MLflow registry
with a real model, SQLite monitoring store), behind the real Airflow login: Airflow's
SimpleAuthManager issues the JWT that the UI keeps in its ``_token`` cookie."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airloop.core import store
from tests.unit.registry.lifecycle_store import lifecycle_store  # noqa: F401 - the module's store

DAYS = [datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(days=i) for i in range(4)]
EVIL = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def auth_manager(airflow_db):
    """Airflow's SimpleAuthManager as the API server initialises it (it checks revoked tokens in the
    metadata DB)."""
    from airflow.api_fastapi.app import init_auth_manager, purge_cached_app

    purge_cached_app()
    manager = init_auth_manager()
    yield manager
    purge_cached_app()


def token(manager, role: str | None) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return manager.generate_jwt(SimpleAuthManagerUser(username=f"u-{role}", role=role))


@pytest.fixture(scope="module")
def history(lifecycle_store):  # noqa: F811 - the fixture imported above
    """claims_fraud with two versions (v1 then v2 in production, so v1 can be rolled back to),
    four monitored days with per-feature drift (one drifted), an alert whose message is markup,
    a retrain request and a ledger reason with markup."""
    from airloop.registry import lifecycle

    pipe = lifecycle_store.pipeline(renamed=False)
    config, settings, engine = pipe.config, lifecycle_store.settings, lifecycle_store.engine
    versions = [pipe.add_version(roc_auc=0.81), pipe.add_version(roc_auc=0.84)]
    for i, version in enumerate(versions):
        evidence = {"champion": {"version": versions[0], "metrics": {"roc_auc": 0.81}}} if i else None
        for env in config.promotion.path():
            lifecycle.promote_version(config, settings, version, env.name, actor="test", reason=f"ship {EVIL}",
                                      force=True, evidence=evidence)
    features = list(config.features)[:2]
    with engine.begin() as conn:
        for i, day in enumerate(DAYS):
            conn.execute(sa.insert(store.monitoring_runs).values(
                tenant="default", pipeline=config.name, interval_start=day, interval_end=day + timedelta(days=1),
                model_version=versions[-1], rows=500 + i, drift_share=0.5 if i == 3 else 0.0,
                drifted_features='["%s"]' % features[0] if i == 3 else "[]", labelled_rows=400,
                performance='{"roc_auc": %.2f}' % (0.80 - 0.02 * i), reference_performance='{"roc_auc": 0.84}',
                volume_ratio=1.0, error_rate=0.0, latency_p50_ms=2.0, latency_p95_ms=5.0))
            for feature in features:
                conn.execute(sa.insert(store.feature_drift).values(
                    tenant="default", pipeline=config.name, interval_start=day, interval_end=day + timedelta(days=1),
                    feature=feature, method="psi", statistic=0.05 + (0.4 if i == 3 and feature == features[0] else 0),
                    threshold=0.2, drifted=i == 3 and feature == features[0], current_rows=500, reference_rows=5000))
        conn.execute(sa.insert(store.alerts).values(
            dedup_key="k1", tenant="default", pipeline=config.name, interval_start=DAYS[3], rule="drift_share",
            severity="high", message=f"drift {EVIL}", raised_at=DAYS[3]))
        conn.execute(sa.insert(store.retrain_requests).values(
            tenant="default", pipeline=config.name, interval_start=DAYS[3], as_of="2026-03-05", requested=True,
            reason="drift_share 0.5 >= 0.3"))
    return {"config": config, "settings": settings, "versions": versions, "features": features}


@pytest.fixture(scope="module")
def client(history, auth_manager):
    """The view mounted as the plugin mounts it, on a parent app (as the API server does)."""
    from airloop.core import settings as settings_module
    from airloop_provider.view import create_view_app

    patch = pytest.MonkeyPatch()
    patch.setattr(settings_module, "get_settings", lambda: history["settings"])
    parent = FastAPI()
    parent.mount("/airloop/ui", create_view_app())
    with TestClient(parent) as test_client:
        yield test_client
    patch.undo()


def test_without_a_login_the_view_asks_to_sign_in(client):
    page = client.get("/airloop/ui/pipelines/claims_fraud")
    assert page.status_code == 401
    assert "text/html" in page.headers["content-type"]
    assert 'href="/auth/login?next=/airloop/ui/pipelines/claims_fraud"' in page.text


def test_a_user_without_a_role_is_refused(client, auth_manager):
    page = client.get("/airloop/ui/pipelines/claims_fraud", cookies={"_token": token(auth_manager, None)})
    assert page.status_code == 403 and "claims_fraud" in page.text and "text/html" in page.headers["content-type"]
    index = client.get("/airloop/ui/", cookies={"_token": token(auth_manager, None)})
    assert index.status_code == 200 and 'data-pipeline="claims_fraud"' not in index.text


def test_the_overview_shows_the_champion_per_environment(client, auth_manager, history):
    page = client.get("/airloop/ui/", cookies={"_token": token(auth_manager, "viewer")})
    assert page.status_code == 200, page.text
    card = page.text.split('data-pipeline="claims_fraud"', 1)[1]
    for env in history["config"].promotion.path():
        row = re.search(rf'<tr data-env="{env.name}">.*?class="champion-version">(.*?)</td>', card, re.S)
        assert row and row.group(1).strip() == f"v{history['versions'][-1]}", env.name
    assert "1 open alerts" in card


def test_the_pipeline_page_has_one_drift_point_per_interval_and_escapes_input(client, auth_manager, history):
    page = client.get("/airloop/ui/pipelines/claims_fraud", cookies={"_token": token(auth_manager, "viewer")})
    assert page.status_code == 200, page.text
    for feature in history["features"]:
        svg = re.search(rf'<svg class="chart drift-chart" data-feature="{feature}".*?</svg>', page.text, re.S).group(0)
        assert svg.count('<circle class="pt') == len(DAYS)
    drifted = re.search(rf'data-feature="{history["features"][0]}".*?</svg>', page.text, re.S).group(0)
    assert drifted.count('class="pt drifted"') == 1
    assert EVIL not in page.text and "&lt;script&gt;" in page.text  # ledger reason and alert message
    assert page.text.count('<li data-action="promote"') == 2 * len(history["config"].promotion.path())
    assert 'data-chart="roc_auc: live vs holdout"' in page.text
    # a viewer sees no action forms (Airflow would refuse its trigger anyway)
    assert 'data-action="rollback"' not in page.text


def test_an_operator_gets_the_action_forms_with_the_lifecycle_dag_ids(client, auth_manager, history):
    config = history["config"]
    page = client.get("/airloop/ui/pipelines/claims_fraud", cookies={"_token": token(auth_manager, "op")})
    assert page.status_code == 200
    for kind in ("promote", "rollback", "abtest", "train"):
        assert f'data-dag-{kind}="{config.dag_id(kind)}"' in page.text
    for action in ("promote", "rollback", "abtest-start", "retrain"):
        assert f'<form data-action="{action}">' in page.text
    assert f'data-model="{config.model_name}"' in page.text


def test_a_bearer_jwt_works_like_the_cookie_and_a_forged_one_does_not(client, auth_manager, history):
    page = client.get("/airloop/ui/", headers={"Authorization": f"Bearer {token(auth_manager, 'viewer')}"})
    assert page.status_code == 200 and 'data-pipeline="claims_fraud"' in page.text
    forged = token(auth_manager, "admin")[:-4] + "AAAA"
    assert client.get("/airloop/ui/", cookies={"_token": forged}).status_code == 401
    machine = client.get("/airloop/ui/pipelines/claims_fraud",
                         headers={"Authorization": f"Bearer {history['settings'].admin_token}"})
    assert machine.status_code == 200 and '<form data-action="rollback">' in machine.text


def test_unknown_pipeline_is_a_404_page(client, auth_manager):
    for name in ("nope", "bad%20name", "a.b", "9lives"):
        page = client.get(f"/airloop/ui/pipelines/{name}", cookies={"_token": token(auth_manager, "viewer")})
        assert page.status_code == 404 and "text/html" in page.headers["content-type"], name


def test_the_dag_tab_maps_a_dag_to_its_pipeline(client, auth_manager, history):
    cookies = {"_token": token(auth_manager, "viewer")}
    moved = client.get(f"/airloop/ui/dags/{history['config'].dag_id('monitor')}", cookies=cookies,
                       follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == "/airloop/ui/pipelines/claims_fraud"
    assert client.get("/airloop/ui/dags/airloop_pipeline_check", cookies=cookies).status_code == 404


def test_static_assets_are_served_from_the_package(client):
    for name in ("airloop.css", "airloop.js", "theme.js"):
        assert client.get(f"/airloop/ui/static/{name}").status_code == 200


def test_the_plugin_mounts_the_view_before_the_api_and_adds_the_nav_item_and_the_dag_tab():
    from airflow import plugins_manager
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    from airloop_plugin import AirloopPlugin

    prefixes = [app["url_prefix"] for app in plugins_manager.get_fastapi_plugins()[0]]
    assert prefixes.index("/airloop/ui") < prefixes.index("/airloop")  # else /airloop would swallow the view
    views = {v.destination: v for v in map(ExternalViewResponse.model_validate, AirloopPlugin.external_views)}
    assert views["nav"].name == "MLOps" and views["nav"].href == "airloop/ui/"
    assert views["dag"].href == "airloop/ui/dags/{DAG_ID}" and views["dag"].url_route != views["nav"].url_route
