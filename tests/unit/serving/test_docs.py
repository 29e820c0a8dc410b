"""Offline API docs (airloop.serving.docs): ``/docs`` of serving (one pipeline's app and the gateway
uvicorn runs) and of the lifecycle API mounted at ``/airloop`` answer with a Swagger UI page whose
JS, CSS, favicon and schema come from the app itself (the ``swagger_ui_bundle`` package), never a
CDN; the docs need no token and open no other route. The schema the page shows is an OpenAPI 3.0
copy (Swagger UI 4 of swagger_ui_bundle renders no 3.1). No lifespan runs: no model is loaded.
A real browser (Chromium, external requests blocked) rendered all three pages and ran "Try it
out" when this was written; these tests check the same URLs without one."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount

from airloop.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
ADMIN = "docs-admin-token-81c4"
GLOBEX = "docs-globex-token-2b7e"
CDN_MARKERS = ("cdn.", "jsdelivr", "unpkg", "fastapi.tiangolo.com", "googleapis")


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """Two pipelines: claims_fraud (default tenant, with a token too) and a copy for tenant globex."""
    tmp = tmp_path_factory.mktemp("docs")
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    raw = yaml.safe_load((ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    (pipelines / "claims_fraud.yaml").write_text(yaml.safe_dump(raw))
    (pipelines / "globex_claims.yaml").write_text(yaml.safe_dump(raw | {"name": "globex_claims", "tenant": "globex"}))
    return load_settings({
        "AIRLOOP_HOME": str(ROOT), "AIRLOOP_STATE_DIR": str(tmp / "state"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "AIRLOOP_PIPELINES_DIR": str(pipelines),
        "AIRLOOP_PIPELINE": "claims_fraud", "AIRLOOP_ADMIN_TOKEN": ADMIN,
        "AIRLOOP_TENANT_TOKENS": f"default=docs-default-token-0d3a,globex={GLOBEX}",
    })


def _page_refs(html: str) -> list[str]:
    """Every URL the page loads: stylesheet, favicon, script and Swagger UI's schema ``url``."""
    refs = re.findall(r'(?:href|src)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert len(refs) == 4, refs
    return refs


def check_docs(client: TestClient, page: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """``page`` answers Swagger UI with only local references; each one (resolved against the page's
    URL, as a browser does) answers with its content type. Returns {resolved path: content type}."""
    answer = client.get(page, headers=headers)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"].startswith("text/html")
    html = answer.text
    assert "SwaggerUIBundle" in html
    for marker in CDN_MARKERS:
        assert marker not in html, marker
    base = f"http://testserver{page}"
    types = {}
    for ref in _page_refs(html):
        assert not urlsplit(ref).scheme and not ref.startswith("//"), ref
        path = urlsplit(urljoin(base, ref)).path
        got = client.get(path, headers=headers)
        assert got.status_code == 200, (path, got.status_code)
        types[path] = got.headers["content-type"]
    prefix = page.removesuffix("/docs")
    assert types[f"{prefix}/docs/assets/swagger-ui-bundle.js"].split(";")[0] in (
        "text/javascript", "application/javascript")
    assert types[f"{prefix}/docs/assets/swagger-ui.css"].startswith("text/css")
    assert types[f"{prefix}/docs/assets/favicon-32x32.png"] == "image/png"
    assert types[f"{prefix}/docs/openapi.json"] == "application/json"
    copy = client.get(f"{prefix}/docs/openapi.json", headers=headers).json()
    assert copy["openapi"] == "3.0.3" and '"null"' not in json.dumps(copy)
    # its server is relative to the copy's own URL: "Try it out" calls <prefix>/<path>
    assert urljoin(f"http://testserver{prefix}/docs/openapi.json", copy["servers"][0]["url"]) \
        == f"http://testserver{prefix}/"
    original = client.get(f"{prefix}/openapi.json", headers=headers)
    assert original.status_code == 200 and original.json()["openapi"].startswith("3.1")
    assert copy["paths"].keys() == original.json()["paths"].keys()
    return types


def test_a_pipeline_app_serves_its_docs_offline(settings):
    from airloop.serving.app import create_app

    app = create_app(settings, "claims_fraud", log_predictions=False)
    client = TestClient(app)
    auth = {"Authorization": "Bearer docs-default-token-0d3a"}
    # the app's own copy sits behind its tenant's token, like /predict (the gateway's is open)
    assert client.get("/docs").status_code == 401
    check_docs(client, "/docs", auth)
    check_docs(client, "/t/default/claims_fraud/docs", auth)
    schema = client.get("/openapi.json", headers=auth).json()
    assert schema["info"]["title"] == "airloop serving: claims_fraud"
    assert "/predict" in schema["paths"] and "/docs" not in schema["paths"]


def test_the_gateway_serves_the_default_pipelines_docs_without_a_token(settings):
    from airloop.serving.gateway import create_gateway

    client = TestClient(create_gateway(settings, log_predictions=False))
    check_docs(client, "/docs")
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "airloop serving: claims_fraud"
    assert {"/predict", "/feedback", "/reload"} <= set(schema["paths"])
    # documentation only: every other route keeps its guard
    assert client.post("/predict", json={}).status_code == 401
    assert client.post("/reload").status_code in (401, 403)
    assert client.post("/docs").status_code == 401  # not the page: falls through to the guarded app
    assert client.get("/docs/assets/index.html").status_code == 404  # only the page's three files
    # another tenant's docs: under its route, behind its token
    route = "/t/globex/globex_claims"
    assert client.get(f"{route}/docs").status_code == 401
    check_docs(client, f"{route}/docs", {"Authorization": f"Bearer {GLOBEX}"})


@pytest.fixture
def lifecycle_app(monkeypatch):
    plugins = str(ROOT / "plugins")
    if plugins not in sys.path:  # what Airflow does for its plugins folder
        monkeypatch.syspath_prepend(plugins)
    from airloop_provider.api import create_api_app

    return create_api_app()


def test_the_lifecycle_api_docs_answer_under_airflows_prefix(lifecycle_app):
    # as the Airflow API server mounts it (plugins/airloop_plugin.py: url_prefix /airloop)
    client = TestClient(Starlette(routes=[Mount("/airloop", app=lifecycle_app)]))
    types = check_docs(client, "/airloop/docs")
    assert set(types) == {"/airloop/docs/assets/swagger-ui-bundle.js", "/airloop/docs/assets/swagger-ui.css",
                          "/airloop/docs/assets/favicon-32x32.png", "/airloop/docs/openapi.json"}
    schema = client.get("/airloop/openapi.json").json()
    assert schema["info"]["title"] == "airloop lifecycle API"
    assert schema["servers"] == [{"url": "/airloop"}]  # "Try it out" calls /airloop/api/v1/...
    assert any(p.startswith("/api/v1/pipelines/") for p in schema["paths"])
    # the docs need no token; the API still does
    assert client.get("/airloop/api/v1/pipelines/claims_fraud/ledger").status_code in (401, 403)
    assert client.post("/airloop/api/v1/pipelines/claims_fraud/rollback", json={}).status_code in (401, 403)


def test_the_lifecycle_api_docs_with_a_root_path(lifecycle_app):
    # a server or proxy that passes the prefix as root_path (uvicorn --root-path /airloop)
    client = TestClient(lifecycle_app, root_path="/airloop")
    check_docs(client, "/airloop/docs")
    assert client.get("/airloop/openapi.json").json()["servers"] == [{"url": "/airloop"}]


def test_the_schema_copy_is_openapi_30():
    from airloop.serving.docs import openapi_30

    schema = {"openapi": "3.1.0", "components": {"schemas": {"Body": {"properties": {
        "reason": {"anyOf": [{"type": "string", "maxLength": 100}, {"type": "null"}], "title": "Reason"},
        "ref": {"anyOf": [{"$ref": "#/components/schemas/X"}, {"type": "null"}]},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "listed": {"type": ["integer", "null"]},
        "kind": {"const": "a"}, "rate": {"type": "number", "exclusiveMinimum": 0, "examples": [0.5, 1]},
        "type": {"type": "string"}, "const": {"type": "string"},  # properties named like keywords
    }}}}}
    props = openapi_30(schema)["components"]["schemas"]["Body"]["properties"]
    assert openapi_30(schema)["openapi"] == "3.0.3"
    assert props["reason"] == {"type": "string", "maxLength": 100, "nullable": True, "title": "Reason"}
    assert props["ref"] == {"nullable": True, "allOf": [{"$ref": "#/components/schemas/X"}]}
    assert props["either"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert props["listed"] == {"type": "integer", "nullable": True}
    assert props["kind"] == {"enum": ["a"]}
    assert props["rate"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True, "example": 0.5}
    assert props["type"] == {"type": "string"} and props["const"] == {"type": "string"}
    assert schema["components"]["schemas"]["Body"]["properties"]["listed"] == {"type": ["integer", "null"]}
