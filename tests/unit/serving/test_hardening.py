"""Hostile input to serving: every answer is a 4xx naming the field, never a 5xx, and nothing
hostile is logged as the model's error (issue 15 probes: huge bodies, deep nesting, overflowing
timestamps, path-like aliases, ``true`` as a version)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from airloop.core.settings import load_settings
from airloop.models.schema import RecordValidationError
from airloop.serving.app import create_app
from airloop.serving.schema import ReloadRequest, parse_feedback_body, parse_predict_request
from tests.unit.serving.test_app import AUTH, REPO_ROOT, TENANT_AUTH, registry  # noqa: F401  (module fixture)


def _nested(depth: int) -> bytes:
    return b'{"records": [{"claim_amount": ' + b"[" * depth + b"]" * depth + b"}]}"


@pytest.mark.parametrize("depth", [5_000, 200_000])
def test_deeply_nested_json_is_a_422(depth, claims_config):
    for parse in (parse_predict_request, lambda body: parse_feedback_body(body, claims_config)):
        with pytest.raises(RecordValidationError) as err:
            parse(_nested(depth))
        assert err.value.status_code == 422 and "nests too deeply" in str(err.value.errors)


def test_overflowing_label_ts_is_a_422(claims_config):
    body = json.dumps({"request_id": "r1", "label": 1, "label_ts": "9999-12-31T23:59:59-23:59"}).encode()
    with pytest.raises(RecordValidationError) as err:
        parse_feedback_body(body, claims_config)
    assert err.value.status_code == 422 and "label_ts" in str(err.value.errors)


@pytest.mark.parametrize("body", [{"alias": "../../etc"}, {"alias": "champion/../x%2F"}, {"alias": ""},
                                  {"version": True}, {"version": 10**30}, {"version": "10" * 20},
                                  {"version": 0}, {"version": -1}, {"version": 1.5}, {"alias": 5}])
def test_reload_bodies_are_strict(body):
    with pytest.raises(ValueError):
        ReloadRequest.model_validate_json(json.dumps(body)).target()


@pytest.mark.parametrize("body", [{"alias": "champion"}, {"alias": "env-prod_2"}, {"version": 3}, {"version": "12"}, {}])
def test_reload_bodies_that_are_fine(body):
    ReloadRequest.model_validate_json(json.dumps(body)).target()


@pytest.fixture(scope="module")
def small_limit_client(registry, tmp_path_factory):  # noqa: F811
    """The champion served with a 64 KiB body limit and 100 records per request."""
    import os

    old = {k: os.environ.get(k) for k in ("AIRLOOP_SERVING_MAX_BODY_BYTES", "AIRLOOP_SERVING_MAX_RECORDS")}
    os.environ.update(AIRLOOP_SERVING_MAX_BODY_BYTES=str(64 * 1024), AIRLOOP_SERVING_MAX_RECORDS="100")
    try:
        with TestClient(create_app(registry.settings), headers=TENANT_AUTH) as client:
            yield client
    finally:
        for key, value in old.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _records(registry, n):  # noqa: F811
    return json.loads(registry.test_frame.head(1).to_json(orient="records")) * n


def test_body_over_the_limit_is_413_before_parsing(small_limit_client, registry):  # noqa: F811
    big = b'{"records": [' + b",".join([b'{"x": "' + b"a" * 1000 + b'"}'] * 100) + b"]}"
    answer = small_limit_client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert "AIRLOOP_SERVING_MAX_BODY_BYTES" in answer.text

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(100):
            yield b" " * 1024
    answer = small_limit_client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert small_limit_client.post("/feedback", content=big).status_code == 413
    # under the limit, the records limit answers
    answer = small_limit_client.post("/predict", json={"records": _records(registry, 101)})
    assert answer.status_code == 413 and "at most 100 records" in answer.text
    assert small_limit_client.post("/predict", json={"records": _records(registry, 100)}).status_code == 200


def test_hostile_bodies_never_answer_5xx(small_limit_client, registry):  # noqa: F811
    record = _records(registry, 1)[0]
    hostile = [
        _nested(100_000), _nested(900), b"\xff\xfe\x00", b"[]", b"null", b'"x"', b"{}",
        json.dumps({"records": [record], "event_ts": ["9999-12-31T23:59:59-23:59"]}).encode(),
        json.dumps({**record, "claim_amount": "1e999"}).encode(),
        json.dumps({**record, "claim_amount": {"$gt": 1}}).encode(),
    ]
    for body in hostile:
        for route in ("/predict", "/feedback"):
            answer = small_limit_client.post(route, content=body, headers={"content-type": "application/json"})
            assert 400 <= answer.status_code < 500, (route, body[:60], answer.status_code, answer.text[:200])
    # an unseen 10k-character category is out of the model's domain, not an error of the server
    answer = small_limit_client.post("/predict", json={**record, "region": "x" * 10_000})
    assert answer.status_code < 500, answer.text[:200]
    for body in ({"alias": "../../etc"}, {"alias": "champion/../x%2F"}, {"version": 10**30}, {"version": True}):
        answer = small_limit_client.post("/reload", json=body, headers=AUTH)
        assert answer.status_code == 422, (body, answer.status_code, answer.text)
    # no 5xx was counted (the prediction log's error rows are written only with a 5xx answer)
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(small_limit_client.get("/metrics").text)}
    statuses = {s.labels["status"] for s in families["airloop_serving_requests"].samples if s.value}
    assert statuses and not {s for s in statuses if s.startswith("5")}, statuses


def test_settings_repr_hides_secrets(tmp_path):
    settings = load_settings({"AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp_path),
                              "AIRLOOP_ADMIN_TOKEN": "s3cr3t-admin", "AIRLOOP_TENANT_TOKENS": "acme=s3cr3t-acme"})
    assert settings.admin_token == "s3cr3t-admin"
    for text in (repr(settings), str(settings), f"{settings!r}"):
        assert "s3cr3t" not in text
