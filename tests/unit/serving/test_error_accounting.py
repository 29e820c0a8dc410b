"""Client errors are counted apart from model errors (issue 15): a request the model fails on
logs one ``error`` row and answers 500; a request whose own out-of-domain records make the model
fail answers 422 naming the field and logs a ``client_error`` row; a 4xx body logs nothing; and
the monitoring ``error_rate`` (its alert and the post-deploy guard) counts model errors only.
Real MLflow registry, a real skops model, the real app and SQLite monitoring store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from airloop.core import store
from airloop.core.names import CLIENT_ERROR, MODEL_ERROR
from airloop.data.simulator import generate_day
from airloop.monitoring.guard import guard_breaches
from airloop.monitoring.performance import operations
from airloop.monitoring.rules import rule_states
from airloop.monitoring.traffic import load_interval
from airloop.serving.app import create_app
from airloop.serving.protocol import SMOKE_TENANT
from tests.unit.serving.test_app import AUTH, PIPELINE, TENANT_AUTH, _log_version, registry  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def strict(registry):  # noqa: F811
    """A version whose one-hot encoder refuses categories it never saw (``handle_unknown="error"``),
    trained without region ``central``: an in-domain value the model fails on. Served by an app
    of its own."""
    from datetime import date

    config = registry.config
    train = generate_day(date(2026, 1, 5))
    train = train[(train["region"] != "central") & train["claim_amount"].notna() & train["police_report"].notna()]
    features = list(config.features)
    numeric = [c for c in config.numeric_features]
    categorical = [c for c in config.categorical_features]
    model = Pipeline([("pre", ColumnTransformer([("num", StandardScaler(), numeric),
                                                 ("cat", OneHotEncoder(handle_unknown="error"), categorical)])),
                      ("model", LogisticRegression(max_iter=300))]).fit(train[features], train[config.target])
    experiment = registry.client.get_experiment_by_name(f"airloop/{PIPELINE}").experiment_id
    version = _log_version(registry.client, registry.uri, experiment, model, train[features].head(20))
    with TestClient(create_app(registry.settings), headers=TENANT_AUTH) as client:
        answer = client.post("/reload", json={"version": int(version.version)}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        yield client, json.loads(train[features].head(1).to_json(orient="records"))[0], str(version.version)


def _rows(registry, version: str) -> list[dict]:  # noqa: F811
    """The logged rows of ``version`` (the deploy smoke test's own tenant left out)."""
    engine = store.get_engine(registry.settings.monitoring_db_uri)
    p = store.predictions
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(p).where(
            p.c.model_version == version, p.c.tenant != SMOKE_TENANT)).mappings()]


def _counter(client, kind: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "airloop_serving_prediction_errors_total" and sample.labels["kind"] == kind:
                return sample.value
    return 0.0


def test_model_errors_and_client_errors_are_logged_apart(strict, registry):  # noqa: F811
    client, record, version = strict
    logger = client.app.state.prediction_logger
    model_before, client_before = _counter(client, "model"), _counter(client, "client")

    ok = client.post("/predict", json=record)
    assert ok.status_code == 200, ok.text
    # in the pipeline's domain, unseen in training: the model's own failure
    failed = client.post("/predict", json=record | {"region": "central"})
    assert failed.status_code == 500 and failed.json() == {"detail": "prediction failed"}
    # outside the declared domain, and the model fails on it: the request's failure, named
    refused = client.post("/predict", json=record | {"region": "atlantis"})
    assert refused.status_code == 422, refused.text
    (error,) = refused.json()["detail"]
    assert error["field"] == "region" and error["record"] == 0 and "atlantis" in error["message"]
    # bad bodies: 4xx, never a row
    for body in (b"{not json", b"[1, 2]", json.dumps(record | {"customer_age": "old"}).encode(),
                 json.dumps({k: v for k, v in record.items() if k != "region"}).encode(),
                 b'{"records": [' + b"[" * 10_000 + b"]" * 10_000 + b"]}", json.dumps({"records": []}).encode()):
        answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert 400 <= answer.status_code < 500, (body[:60], answer.status_code)
    assert logger.flush(10.0)

    rows = _rows(registry, version)
    statuses = sorted(r["status"] for r in rows)
    assert statuses == sorted(["ok", MODEL_ERROR, CLIENT_ERROR]), statuses
    (client_row,) = [r for r in rows if r["status"] == CLIENT_ERROR]
    assert "atlantis" in client_row["features"] and "ValueError" in client_row["error"]
    assert _counter(client, "model") == model_before + 1
    assert _counter(client, "client") == client_before + 1 + 6


def test_error_rate_alert_and_guard_count_model_errors_only(registry, tmp_path):  # noqa: F811
    config = registry.config
    engine = store.get_engine(f"sqlite:///{tmp_path / 'monitoring.db'}")
    store.migrate(engine)
    start = datetime(2026, 3, 2, tzinfo=timezone.utc)
    rows = []
    for i, status in enumerate(["ok"] * 95 + [MODEL_ERROR] * 5 + [CLIENT_ERROR] * 400):
        rows.append({"request_id": f"r{i}", "ts": start + timedelta(seconds=i), "tenant": config.tenant,
                     "pipeline": config.name, "model_name": config.model_name, "model_version": "1",
                     "variant": "champion", "features": json.dumps({"claim_amount": 1.0}),
                     "prediction": json.dumps(0 if status == "ok" else None), "score": 0.1 if status == "ok" else None,
                     "latency_ms": 3.0, "status": status, "error": None if status == "ok" else "ValueError: x"})
    store.insert_ignore(engine, store.predictions, rows)
    frame, _ = load_interval(engine, config, config.tenant, start, start + timedelta(days=1))
    assert len(frame) == 500
    ops = operations(frame, [100, 100])
    assert ops["error_rate"] == pytest.approx(5 / 100)  # 400 client errors neither raise nor dilute it
    assert ops["volume"] == 100 and ops["volume_ratio"] == pytest.approx(1.0) and ops["client_errors"] == 400
    assert guard_breaches(config, ops) == []  # 0.05 is the guard's limit, not past it
    states = rule_states(config, ops)
    assert states.get("error_rate") in (False, None), states

    # one more model error crosses the guard's limit: only model errors move it
    more = operations(frame.assign(status=frame["status"].where(frame["request_id"] != "r0", MODEL_ERROR)), [100])
    assert more["error_rate"] == pytest.approx(6 / 100)
    assert guard_breaches(config, more) == ["error_rate = 0.06 > 0.05"]
