"""Closed doors by default (issue 15): every route of a pipeline's app but the probes needs a
token — the tenant's own or the admin token — unless ``AIRLOOP_SERVING_OPEN_ROUTES`` opens it;
401 without a token, 403 with a token that does not prove the tenant, both naming the header;
``X-Tenant`` is honoured only with that tenant's token (or the admin's), so no row is stored under
a tenant the caller has not proven. A real app on a real (empty) MLflow store and monitoring store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from airloop.core import store
from airloop.core.settings import ConfigError, Settings, load_settings
from airloop.serving.app import create_app
from airloop.serving.auth import ANONYMOUS, Caller, identify

REPO_ROOT = Path(__file__).resolve().parents[3]
ADMIN = "auth-admin-token-5e1c"
TOKENS = {"default": "auth-default-token-77aa", "acme": "auth-acme-token-0c3d"}
#: Every guarded route of one pipeline's app, with a body it would otherwise accept or refuse.
GUARDED = [("POST", "/predict", {"x": 1}), ("POST", "/feedback", {"request_id": "r1", "label": 1}),
           ("POST", "/explain", {"records": [{"x": 1}]}), ("GET", "/model", None), ("GET", "/abtest", None)]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _settings(tmp: Path, **extra: str) -> Settings:
    return load_settings({
        "AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp / "state"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "AIRLOOP_PIPELINE": "claims_fraud",
        "AIRLOOP_MONITORING_DB_URI": f"sqlite:///{tmp / 'monitoring.db'}", "AIRLOOP_ADMIN_TOKEN": ADMIN,
        "AIRLOOP_TENANT_TOKENS": ",".join(f"{t}={v}" for t, v in TOKENS.items()), **extra})


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    """The default pipeline's app with the defaults: no route opened (no model registered)."""
    settings = _settings(tmp_path_factory.mktemp("closed"))
    with TestClient(create_app(settings, ab_tests=False)) as client:
        yield client, settings


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    """The same app with ``AIRLOOP_SERVING_OPEN_ROUTES=predict, /Feedback``."""
    settings = _settings(tmp_path_factory.mktemp("opened"), AIRLOOP_SERVING_OPEN_ROUTES="predict, /Feedback")
    with TestClient(create_app(settings, ab_tests=False)) as client:
        yield client, settings


def _call(client: TestClient, method: str, path: str, body, headers=None):
    return client.request(method, path, json=body, headers=headers or {})


def _labels(settings: Settings) -> dict[tuple[str, str], str]:
    with store.get_engine(settings.monitoring_db_uri).connect() as conn:
        g = store.ground_truth
        return {(r.tenant, r.request_id): r.label for r in conn.execute(sa.select(g.c.tenant, g.c.request_id, g.c.label))}


@pytest.mark.parametrize("prefix", ["", "/t/default/claims_fraud"])
def test_every_route_is_closed_by_default(closed, prefix):
    client, _ = closed
    for method, path, body in GUARDED:
        missing = _call(client, method, prefix + path, body)
        assert missing.status_code == 401, (path, missing.text)
        assert missing.headers["www-authenticate"] == "Bearer" and "Authorization" in missing.json()["detail"], path
        wrong = _call(client, method, prefix + path, body, _auth("not-a-token"))
        assert wrong.status_code == 403 and "Authorization" in wrong.json()["detail"], (path, wrong.text)
        basic = _call(client, method, prefix + path, body, {"Authorization": f"Basic {TOKENS['default']}"})
        assert basic.status_code == 401, path  # only a bearer token counts
        for token in (TOKENS["default"], ADMIN):  # the tenant's token, and the admin token everywhere
            status = _call(client, method, prefix + path, body, _auth(token)).status_code
            assert status not in (401, 403), (path, token, status)
    # the admin routes: the admin token only, whatever the tenant tokens
    assert client.post(prefix + "/reload", json={}).status_code == 401
    assert client.post(prefix + "/reload", json={}, headers=_auth(TOKENS["default"])).status_code == 401
    assert client.post(prefix + "/abtest/refresh", headers=_auth(TOKENS["default"])).status_code == 401


def test_reads_stay_open(closed):
    client, _ = closed
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503  # no model: not ready, but not refused either
    assert client.get("/metrics").status_code == 200
    assert client.get("/t/default/claims_fraud/health").status_code == 200


def test_x_tenant_is_honoured_only_with_that_tenants_token(closed):
    client, settings = closed
    label = {"request_id": "xt-1", "label": 1}
    # the default tenant's token cannot file rows under acme, nor acme's token under default
    spoof = client.post("/feedback", json=label, headers={**_auth(TOKENS["default"]), "X-Tenant": "acme"})
    assert spoof.status_code == 403 and "acme" in spoof.json()["detail"] and "X-Tenant" in spoof.json()["detail"]
    assert client.post("/feedback", json=label, headers=_auth(TOKENS["acme"])).status_code == 403
    assert client.post("/feedback", json=label, headers={"X-Tenant": "acme"}).status_code == 401
    assert client.post("/feedback", json=label, headers={**_auth(TOKENS["acme"]), "X-Tenant": "nobody"}).status_code == 403
    assert ("acme", "xt-1") not in _labels(settings) and ("default", "xt-1") not in _labels(settings)
    # acme's own token with X-Tenant acme, and the admin token for any tenant
    own = client.post("/feedback", json=label, headers={**_auth(TOKENS["acme"]), "X-Tenant": "acme"})
    assert own.status_code == 200, own.text
    admin = client.post("/feedback", json={"request_id": "xt-2", "label": 0}, headers={**_auth(ADMIN), "X-Tenant": "zeta"})
    assert admin.status_code == 200, admin.text
    assert {k for k in _labels(settings) if k[1].startswith("xt-")} == {("acme", "xt-1"), ("zeta", "xt-2")}
    # a malformed X-Tenant from a caller of the route's tenant: the route's 422 naming the header
    bad = client.post("/feedback", json=label, headers={**_auth(TOKENS["default"]), "X-Tenant": "a b"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "X-Tenant"


def test_routes_open_only_when_the_operator_says_so(opened):
    client, settings = opened
    assert settings.serving_open_routes == frozenset({"predict", "feedback"})
    assert client.post("/predict", json={"x": 1}).status_code == 503  # open: reaches the route (no model)
    assert client.post("/feedback", json={"request_id": "o-1", "label": 1}).status_code == 200
    for method, path, body in GUARDED[2:]:  # explain, model, abtest stay closed
        assert _call(client, method, path, body).status_code == 401, path
    assert client.post("/reload", json={}).status_code == 401  # admin routes are never opened
    # an open route still proves the tenant a request claims
    assert client.post("/feedback", json={"request_id": "o-2", "label": 1}, headers={"X-Tenant": "acme"}).status_code == 401
    assert client.post("/feedback", json={"request_id": "o-3", "label": 1},
                       headers=_auth("not-a-token")).status_code == 403  # a wrong token is wrong, open or not
    assert {k for k in _labels(settings) if k[1].startswith("o-")} == {("default", "o-1")}


def test_only_guarded_routes_can_be_opened(tmp_path):
    for value in ("reload", "predict,abtest/refresh", "everything"):
        with pytest.raises(ConfigError, match="AIRLOOP_SERVING_OPEN_ROUTES"):
            create_app(_settings(tmp_path, AIRLOOP_SERVING_OPEN_ROUTES=value), log_predictions=False)


def test_identify_compares_every_token():
    tokens = {"default": "t-default", "acme": "t-acme"}
    assert identify(None, "adm", tokens) is ANONYMOUS
    assert identify("adm", "adm", tokens) == Caller(admin=True)
    assert identify("t-acme", "adm", tokens) == Caller(tenant="acme")
    assert identify("t-acme ", "adm", tokens) is None and identify("nope", None, tokens) is None
    assert identify("adm", None, {}) is None  # no admin configured: nothing matches
    assert Caller(admin=True).proves("anyone") and Caller(tenant="acme").proves("acme")
    assert not Caller(tenant="acme").proves("default") and not ANONYMOUS.proves("default")
    assert [c.actor for c in (Caller(admin=True), Caller(tenant="acme"), ANONYMOUS)] == ["admin", "tenant:acme",
                                                                                       "anonymous"]


def test_the_openapi_document_declares_the_bearer_scheme(closed):
    client, _ = closed
    schema = client.get("/openapi.json", headers=_auth(ADMIN)).json()
    assert schema["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearerToken"][
            "description"]}
    paths = schema["paths"]
    assert paths["/predict"]["post"]["security"] == [{"bearerToken": []}]
    assert paths["/feedback"]["post"]["security"] == [{"bearerToken": []}]
    assert paths["/health"]["get"]["security"] == []
    names = {p["name"] for p in paths["/feedback"]["post"]["parameters"]}
    assert {"X-Tenant", "correct"} <= names
    assert "X-Airloop-Replay-Interval" in {p["name"] for p in paths["/predict"]["post"]["parameters"]}
