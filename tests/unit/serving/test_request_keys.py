"""Request ids are scoped by tenant and pipeline (issue 12, point 1): two pipelines over the same
entities (same ``id_column``) and two tenants sharing request ids, through the prediction logger
(spool and replay included), ``/predict`` and ``/feedback`` on the real serving gateway, the
monitoring join and the label ingest — on SQLite and on the real PostgreSQL server. Zero rows lost,
zero overwritten: counts per (tenant, pipeline) and each key's own labels are compared."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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
from airloop.core.settings import Settings, load_settings
from airloop.data.simulator import generate_day, write_history
from airloop.monitoring.labels import ingest_labels
from airloop.monitoring.traffic import load_interval
from airloop.serving.predlog import PredictionLogger
from tests.pg import fresh_database
from tests.unit.serving.test_app import REPO_ROOT, _log_version, _preprocessor

UTC = timezone.utc
DAY = date(2026, 2, 2)
T0 = datetime(2026, 2, 2, 8, 0, tzinfo=UTC)
CLOSED_PORT_URI = "postgresql+psycopg://postgres@127.0.0.1:1/airloop_unreachable"
#: claims_b reads the same source as claims_fraud (same claims, same claim_id); claims_g is tenant globex's.
PIPELINES = {"claims_fraud": "default", "claims_b": "default", "claims_g": "globex"}
#: (tenant, pipeline) keys sharing every request id; acme reaches claims_fraud with X-Tenant.
KEYS = [("default", "claims_fraud"), ("acme", "claims_fraud"), ("default", "claims_b"), ("globex", "claims_g")]
N = 30
IDS = [f"claim-{i:04d}" for i in range(N)]


# --------------------------------------------------------------------------------------------
# Stores and settings
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_monitoring() -> Iterator[str]:
    with fresh_database() as uri:
        yield uri


@pytest.fixture(params=["sqlite", "postgresql"])
def monitoring_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty monitoring store: a SQLite file, or the module's PostgreSQL database truncated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    uri = request.getfixturevalue("pg_monitoring")
    with store.get_engine(uri).begin() as conn:
        conn.execute(sa.text("TRUNCATE predictions, shadow_predictions, ground_truth"))
    return uri


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three pipeline files (claims_fraud's, renamed) and a real champion model of each in one
    SQLite MLflow store."""
    tmp = tmp_path_factory.mktemp("request-keys")
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    for name, tenant in PIPELINES.items():
        (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(raw | {"name": name, "tenant": tenant}))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {"AIRLOOP_HOME": str(REPO_ROOT), "MLFLOW_TRACKING_URI": uri, "AIRLOOP_PIPELINES_DIR": str(pipelines),
           "AIRLOOP_PIPELINE": "claims_fraud", "AIRLOOP_STATE_DIR": str(tmp / "state")}
    settings = load_settings(env)
    client = MlflowClient(tracking_uri=uri)
    frame = generate_day(date(2026, 1, 5))
    for name in PIPELINES:
        config = load_pipeline_config(name, settings)
        X, y = frame[list(config.features)], frame[config.target]
        model = Pipeline([("pre", _preprocessor(config)), ("model", LogisticRegression(max_iter=300))]).fit(X, y)
        experiment = client.create_experiment(config.experiment_name, artifact_location=str(tmp / "artifacts" / name))
        client.create_registered_model(config.model_name)
        version = _log_version(client, uri, experiment, model, X, registered_name=config.model_name)
        client.set_registered_model_alias(config.model_name, "champion", version.version)
    return env


def _settings(models: dict[str, Any], tmp_path: Path, monitoring_uri: str) -> Settings:
    return load_settings(models | {"AIRLOOP_STATE_DIR": str(tmp_path / "state"),
                                   "AIRLOOP_MONITORING_DB_URI": monitoring_uri, "AIRLOOP_ADMIN_TOKEN": ADMIN})


def _rows_by_key(uri: str, table: sa.Table) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """{(tenant, pipeline): {request_id: row}} of ``table``."""
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    with store.get_engine(uri).connect() as conn:
        for row in conn.execute(sa.select(table)).mappings():
            out.setdefault((row["tenant"], row["pipeline"]), {})[row["request_id"]] = dict(row)
    return out


def _label_of(key_index: int, i: int) -> int:
    """The label key ``key_index`` sends for request ``i``: a different pattern per key."""
    return (i // (key_index + 1)) % 2


# --------------------------------------------------------------------------------------------
# The prediction logger: queue, spool, replay
# --------------------------------------------------------------------------------------------


def _log_row(tenant: str, pipeline: str, i: int, variant: str = "champion") -> dict[str, Any]:
    return {"request_id": IDS[i], "ts": T0 + timedelta(minutes=i), "tenant": tenant, "pipeline": pipeline,
            "model_name": pipeline, "model_version": "1", "variant": variant, "features": {"claim_amount": 100.0 + i},
            "prediction": i % 2, "score": (i + 1) / (N + 1), "latency_ms": 2.0, "status": "ok"}


@pytest.mark.parametrize("table", [store.predictions, store.shadow_predictions], ids=lambda t: t.name)
def test_prediction_logger_keeps_every_tenant_and_pipeline(monitoring_uri: str, tmp_path: Path,
                                                          table: sa.Table) -> None:
    variant = "shadow" if table is store.shadow_predictions else "champion"
    rows = [_log_row(tenant, pipeline, i, variant) for tenant, pipeline in KEYS for i in range(N)]
    spool = tmp_path / "spool"
    fast = {"flush_interval_s": 0.05, "retry_min_s": 0.05, "retry_max_s": 0.2, "table": table}
    # the database is down: everything goes to the spool
    with PredictionLogger(lambda: store.get_engine(CLOSED_PORT_URI), spool, **fast) as down:
        down.log(rows)
        assert down.flush(10) is False
    files = {p: p.read_bytes() for p in spool.glob("*.jsonl")}
    assert files
    # recovery: replayed, every key kept
    with PredictionLogger(lambda: store.get_engine(monitoring_uri), spool, **fast) as up:
        assert up.flush(10)
        stats = up.stats()
    assert (stats.rows_replayed, stats.rows_duplicate, stats.rows_rejected) == (len(KEYS) * N, 0, 0)
    # the same spool replayed again (a crash between commit and delete), and the same rows logged
    # again through the queue: nothing duplicated, and the duplicates are counted
    for path, data in files.items():
        path.write_bytes(data)
    with PredictionLogger(lambda: store.get_engine(monitoring_uri), spool, **fast) as again:
        assert again.flush(10)
        again.log(rows[:N])
        assert again.flush(10)
        stats = again.stats()
    assert stats.rows_duplicate == len(KEYS) * N + N and stats.rows_rejected == stats.rows_dropped == 0
    stored = _rows_by_key(monitoring_uri, table)
    assert sorted(stored) == sorted(KEYS)
    for tenant, pipeline in KEYS:
        mine = stored[(tenant, pipeline)]
        assert sorted(mine) == IDS  # all N ids of this key, once each
        assert {r["model_name"] for r in mine.values()} == {pipeline} and {r["variant"] for r in mine.values()} == {variant}


# --------------------------------------------------------------------------------------------
# /predict and /feedback on the real serving gateway, and the monitoring join
# --------------------------------------------------------------------------------------------


#: The admin token of these tests: it proves every tenant, and declares the replay of DAY's traffic.
ADMIN = "request-keys-admin-token-9d02"
ADMIN_REPLAY = {"Authorization": f"Bearer {ADMIN}",
                "X-Airloop-Replay-Interval": f"{DAY.isoformat()}T00:00:00Z/{(DAY + timedelta(days=1)).isoformat()}T00:00:00Z"}


def _route(tenant: str, pipeline: str) -> tuple[str, dict[str, str]]:
    """URL prefix and headers reaching (tenant, pipeline) on the gateway (a replay of DAY, admin token)."""
    if pipeline == "claims_fraud":
        return "", ({"X-Tenant": tenant, **ADMIN_REPLAY} if tenant != "default" else ADMIN_REPLAY)
    return f"/t/{PIPELINES[pipeline]}/{pipeline}", ADMIN_REPLAY


def test_predict_and_feedback_with_shared_request_ids(models: dict[str, Any], tmp_path: Path,
                                                      monitoring_uri: str) -> None:
    from airloop.serving.gateway import create_gateway

    settings = _settings(models, tmp_path, monitoring_uri)
    features = list(load_pipeline_config("claims_fraud", settings).features)
    frame = generate_day(DAY)[features].head(N)
    records = json.loads(frame.to_json(orient="records"))
    event_ts = [(T0 + timedelta(minutes=i)).isoformat() for i in range(N)]
    label_ts = (T0 + timedelta(hours=6)).isoformat()
    gateway = create_gateway(settings)
    with TestClient(gateway) as client:
        for k, (tenant, pipeline) in enumerate(KEYS):
            prefix, headers = _route(tenant, pipeline)
            answer = client.post(f"{prefix}/predict", headers=headers,
                                 json={"records": records, "request_ids": IDS, "event_ts": event_ts})
            assert answer.status_code == 200, answer.text
            assert [p["request_id"] for p in answer.json()["predictions"]] == IDS
            labels = {"items": [{"request_id": rid, "label": _label_of(k, i), "label_ts": label_ts}
                                for i, rid in enumerate(IDS)]}
            feedback = client.post(f"{prefix}/feedback", headers=headers, json=labels)
            assert feedback.status_code == 200 and feedback.json()["written"] == N, feedback.text
        # a client re-sending ids of one key: not a new row, counted as duplicates
        prefix, headers = _route(*KEYS[0])
        again = client.post(f"{prefix}/predict", headers=headers,
                            json={"records": records[:5], "request_ids": IDS[:5], "event_ts": event_ts[:5]})
        assert again.status_code == 200
    # the gateway's shutdown drained every app's logger
    loggers = {name: app.state.prediction_logger for name, app in gateway.state.apps.items()}
    assert sum(lg.stats().rows_duplicate for lg in loggers.values()) == 5
    assert all(lg.stats().rows_rejected == lg.stats().rows_dropped == 0 for lg in loggers.values())

    predictions = _rows_by_key(monitoring_uri, store.predictions)
    truth = _rows_by_key(monitoring_uri, store.ground_truth)
    assert sorted(predictions) == sorted(truth) == sorted(KEYS)
    assert {key: len(rows) for key, rows in predictions.items()} == dict.fromkeys(KEYS, N)  # zero lost
    for k, key in enumerate(KEYS):
        assert {rid: json.loads(r["label"]) for rid, r in truth[key].items()} == {
            rid: _label_of(k, i) for i, rid in enumerate(IDS)}, key  # zero overwritten
        assert {r["model_name"] for r in predictions[key].values()} == {load_pipeline_config(key[1], settings).model_name}

    # the monitoring join pairs each key's predictions with its own labels only
    engine = store.get_engine(monitoring_uri)
    start = datetime(2026, 2, 2, tzinfo=UTC)
    for k, (tenant, pipeline) in enumerate(KEYS):
        served, labelled = load_interval(engine, load_pipeline_config(pipeline, settings), tenant,
                                         start, start + timedelta(days=1))
        assert len(served) == N and sorted(served["request_id"]) == IDS
        assert len(labelled) == N, (tenant, pipeline)
        assert dict(zip(labelled["request_id"], labelled["label"])) == {
            rid: _label_of(k, i) for i, rid in enumerate(IDS)}, (tenant, pipeline)


# --------------------------------------------------------------------------------------------
# Label ingest: two pipelines over the same source, two tenants
# --------------------------------------------------------------------------------------------


def test_label_ingest_of_a_second_pipeline_overwrites_nothing(models: dict[str, Any], tmp_path: Path,
                                                              monitoring_uri: str) -> None:
    settings = _settings(models, tmp_path, monitoring_uri)
    first = load_pipeline_config("claims_fraud", settings)
    files = write_history(settings.data_dir / "claims_fraud", start=date(2026, 1, 1), days=20)
    start, end = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 1, 16, tzinfo=UTC)
    window_start = end - timedelta(days=first.monitoring.performance_window_days)
    source = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    label_ts = pd.to_datetime(source[first.label_timestamp], utc=True)
    known = source[(label_ts >= window_start) & (label_ts < end) & source[first.target].notna()]
    expected = {str(rid): int(label) for rid, label in zip(known[first.id_column], known[first.target])}
    assert len(expected) == len(known) > 100

    runs = [(first, None), (first, "acme"), (load_pipeline_config("claims_b", settings), None),
            (load_pipeline_config("claims_g", settings), None)]
    for k, (config, tenant) in enumerate(runs):
        assert config.id_column == first.id_column and config.source.path == first.source.path
        assert ingest_labels(config, settings, start, end, tenant=tenant) == {"labels": len(known)}
        truth = _rows_by_key(monitoring_uri, store.ground_truth)
        assert Counter({key: len(rows) for key, rows in truth.items()}) == Counter(
            dict.fromkeys(KEYS[:k + 1], len(known)))  # the earlier keys keep every label
    for key in KEYS:
        assert {rid: json.loads(r["label"]) for rid, r in truth[key].items()} == expected, key
    # a re-run of the first pipeline rewrites its own rows only
    assert ingest_labels(first, settings, start, end) == {"labels": len(known)}
    assert sum(len(rows) for rows in _rows_by_key(monitoring_uri, store.ground_truth).values()) == len(KEYS) * len(known)


def test_label_ingest_counts_an_id_repeated_in_the_window(models: dict[str, Any], tmp_path: Path,
                                                          monitoring_uri: str) -> None:
    """The same claim twice in the source (a corrected label, re-exported a day later): one key,
    the latest label kept, the repeat counted, the change an audited correction — not a silent
    overwrite, nor a failed upsert."""
    settings = _settings(models, tmp_path, monitoring_uri)
    config = load_pipeline_config("claims_fraud", settings)
    files = write_history(settings.data_dir / "claims_fraud", start=date(2026, 1, 1), days=20)
    start, end = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 1, 16, tzinfo=UTC)
    baseline = ingest_labels(config, settings, start, end)
    with store.get_engine(monitoring_uri).connect() as conn:
        stored_ids = set(conn.execute(sa.select(store.ground_truth.c.request_id)).scalars())
    day_file = next(f for f in files if pd.read_csv(f)[config.id_column].isin(stored_ids).any())
    frame = pd.read_csv(day_file)
    original = frame[frame[config.id_column].isin(stored_ids)].iloc[0]
    again = original.copy()
    again[config.target] = 1 - int(original[config.target])
    again[config.label_timestamp] = (end - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pd.concat([frame, again.to_frame().T], ignore_index=True).to_csv(day_file, index=False)

    # the stored label differs from the file's latest one: applied as a correction by "ingest", audited
    assert ingest_labels(config, settings, start, end) == {"labels": baseline["labels"], "corrected": 1,
                                                           "duplicate_ids": 1}
    truth = _rows_by_key(monitoring_uri, store.ground_truth)[("default", "claims_fraud")]
    assert len(truth) == baseline["labels"]
    assert json.loads(truth[original[config.id_column]]["label"]) == again[config.target]
    with store.get_engine(monitoring_uri).connect() as conn:
        revisions = conn.execute(sa.select(store.label_revisions)).mappings().all()
    assert [(r["request_id"], json.loads(r["old_label"]), json.loads(r["new_label"]), r["actor"], r["applied"])
            for r in revisions] == [(str(original[config.id_column]), int(original[config.target]),
                                     int(again[config.target]), "ingest", True)]
    # a re-run finds the corrected label stored: nothing changes, no second revision
    assert ingest_labels(config, settings, start, end) == {"labels": baseline["labels"], "duplicate_ids": 1}
    with store.get_engine(monitoring_uri).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.label_revisions)).scalar_one() == 1
