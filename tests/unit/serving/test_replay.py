"""``airloop replay`` / :func:`airloop.serving.replay.replay_day` against the real serving process
(the gateway under uvicorn, prediction logging on, a real MLflow store and monitoring store), with
simulator files read back through the pipelines' own source: one default-tenant pipeline and one
of the tenant ``acme``; the replay sends the admin token and the day as its replay interval."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timezone
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from airloop.cli.main import main
from airloop.core import store
from airloop.core.pipeline import PipelineConfig, load_pipeline_config
from airloop.core.settings import Settings, load_settings
from airloop.data.features import features_and_target
from airloop.data.simulator import generate_day, partition_path, write_history
from airloop.data.sources import read_partition
from airloop.models.artifact import log_sklearn_model
from airloop.registry.client import get_client, register_version
from airloop.serving.client import ServingEndpoint
from airloop.serving.gateway import create_gateway
from airloop.serving.replay import replay_day, replay_endpoint
from airloop.training.search import build_model
from tests.conftest import ServerThread, free_port
from tests.unit.serving.test_app import REPO_ROOT

ADMIN = "replay-admin-token-2c7e"
ACME = "acme-replay-token-5a1b"
DAY = date(2026, 1, 8)
BROKEN_DAY = date(2026, 1, 9)


@dataclass
class Replay:
    settings: Settings
    default: PipelineConfig
    acme: PipelineConfig
    url: str
    tmp: Path

    def rows(self, config: PipelineConfig) -> pd.DataFrame:
        """The prediction log of ``config`` (waits for the logger to settle: rows there and their
        count unchanged for a second; the log's writer process starts with the first rows)."""
        engine = store.get_engine(self.settings.monitoring_db_uri)
        query = sa.select(store.predictions.c.request_id, store.predictions.c.ts, store.predictions.c.tenant,
                          store.predictions.c.model_version).where(store.predictions.c.pipeline == config.name)
        previous, deadline = -1, time.monotonic() + 30
        while True:
            with engine.connect() as conn:
                rows = pd.read_sql(query, conn)
            if (len(rows) and len(rows) == previous) or time.monotonic() > deadline:
                return rows
            previous = len(rows)
            time.sleep(1.0)  # the logger writes every 0.5 s


def _champion(settings: Settings, config: PipelineConfig, tmp: Path) -> None:
    frame = read_partition(config, date(2026, 1, 5), settings)
    X, y = features_and_target(config, frame)
    model = build_model(config, "logistic_regression", {"C": 1.0}).fit(X, y)
    client = get_client(settings)
    experiment = client.create_experiment(config.experiment_name,
                                          artifact_location=str(tmp / "artifacts" / config.name))
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_sklearn_model(config, model, X, pip_requirements=["scikit-learn"])
    version = register_version(client, config.model_name, info.model_uri, run.info.run_id, f"{config.name}@x", {})
    client.set_registered_model_alias(config.model_name, "champion", version.version)


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    raw = yaml.safe_load((REPO_ROOT / "include" / "pipelines" / "claims_fraud.yaml").read_text())
    (pipelines / "claims_fraud.yaml").write_text(yaml.safe_dump(raw))
    (pipelines / "acme_claims.yaml").write_text(yaml.safe_dump(raw | {"name": "acme_claims", "tenant": "acme"}))
    env = {"AIRLOOP_HOME": str(REPO_ROOT), "AIRLOOP_STATE_DIR": str(tmp / "state"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "AIRLOOP_PIPELINES_DIR": str(pipelines),
           "AIRLOOP_DATA_DIR": str(tmp / "data"), "AIRLOOP_MONITORING_DB_URI": f"sqlite:///{tmp / 'monitoring.db'}",
           "AIRLOOP_ADMIN_TOKEN": ADMIN, "AIRLOOP_TENANT_TOKENS": f"acme={ACME}"}
    settings = load_settings(env)
    default, acme = (load_pipeline_config(n, settings) for n in ("claims_fraud", "acme_claims"))
    root = settings.data_dir / default.source.path  # both pipelines read the same files
    write_history(root, start=date(2026, 1, 5), days=4)
    # a day whose export has a few broken rows
    broken = generate_day(BROKEN_DAY).astype({"customer_age": "float64"})
    broken.loc[0, "customer_age"] = 40.5
    broken.loc[1, "customer_age"] = np.nan
    broken.loc[2, "claim_id"] = np.nan
    broken.loc[3, "region"] = "atlantis"  # not a category the pipeline knows: serving scores it anyway
    path = partition_path(root, default.source.partition, BROKEN_DAY)
    path.parent.mkdir(parents=True, exist_ok=True)
    broken.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    for config in (default, acme):
        _champion(settings, config, tmp)
    with ServerThread(create_gateway(settings), free_port()) as server:
        yield Replay(settings, default, acme, server.url, tmp)


def test_a_day_is_replayed_with_its_ids_and_event_times_and_a_rerun_adds_nothing(replay):
    config, settings = replay.default, replay.settings
    source = read_partition(config, DAY, settings)
    endpoint = replay_endpoint(settings, config, replay.url)
    result = replay_day(settings, config, DAY, batch=150, endpoint=endpoint)
    assert (result.rows, result.sent, result.accepted, result.rejected) == (len(source), len(source), len(source), 0)
    assert result.batches == -(-len(source) // 150) and dict(result.versions) == {"1": len(source)}
    rows = replay.rows(config)
    assert sorted(rows.request_id) == sorted(source.claim_id.astype(str))
    logged = rows.set_index("request_id").ts.map(lambda t: t if t.tzinfo else t.replace(tzinfo=timezone.utc))
    assert (logged[source.claim_id.astype(str)].to_numpy() == source.claim_ts.to_numpy()).all()
    assert set(rows.tenant) == {"default"}

    again = replay_day(settings, config, DAY, batch=100, rate=1000, endpoint=endpoint)
    assert (again.sent, again.accepted, again.rejected) == (len(source), len(source), 0)
    assert again.seconds >= 0.9 * (len(source) - 100) / 1000  # throttled to 1000 records/s
    assert len(replay.rows(config)) == len(source)  # same request ids: the log keeps one row each


def test_broken_rows_are_rejected_with_serving_reasons_and_the_rest_is_served(replay):
    config, settings = replay.default, replay.settings
    result = replay_day(settings, config, BROKEN_DAY, endpoint=replay_endpoint(settings, config, replay.url))
    assert result.rows == len(generate_day(BROKEN_DAY))
    assert (result.sent, result.rejected, result.accepted) == (result.rows - 1, 3, result.rows - 3)
    reasons = dict(result.reasons)
    assert reasons.pop("claim_id: no value (a replayed record needs its request id and event time)") == 1
    assert reasons == {"customer_age: Input should be a valid integer": 2}  # 40.5 and null (a required column)
    broken = generate_day(BROKEN_DAY)
    assert {e["request_id"] for e in result.examples} == {None, str(broken.claim_id[0]), str(broken.claim_id[1])}
    assert "rejected 2: customer_age: Input should be a valid integer" in result.summary()
    print(result.summary())
    logged = set(replay.rows(config).request_id)
    assert len(logged & {str(i) for i in generate_day(BROKEN_DAY).claim_id}) == result.accepted


def test_a_named_tenant_is_replayed_with_the_admin_token(replay, capsys, monkeypatch):
    config, settings = replay.acme, replay.settings
    result = replay_day(settings, config, DAY, endpoint=replay_endpoint(settings, config, replay.url))
    assert result.rejected == 0 and result.accepted == result.rows > 0
    assert set(replay.rows(config).tenant) == {"acme"}
    # without the admin token every row is refused, with serving's reason, after one request
    tokenless = settings.model_copy(update={"admin_token": None})
    refused = replay_day(tokenless, config, DAY, batch=100, endpoint=replay_endpoint(tokenless, config, replay.url))
    assert refused.accepted == 0 and refused.rejected == refused.rows and refused.batches == 1
    (reason,) = refused.reasons
    assert reason.startswith("HTTP 401: tenant acme: bearer token required") and "AIRLOOP_ADMIN_TOKEN" in reason
    # the tenant's own token is not enough for a replay: its event times lie outside the window
    # around now, and only the admin may declare the replay interval
    own = ServingEndpoint(replay.url, ACME).for_pipeline(config)
    alone = replay_day(settings, config, DAY, batch=100, endpoint=own)
    assert alone.accepted == 0 and alone.batches == 1
    (reason,) = alone.reasons
    assert reason.startswith("HTTP 403") and "X-Airloop-Replay-Interval" in reason

    # the command
    from airloop.core.settings import get_settings

    for key, value in {"AIRLOOP_STATE_DIR": str(replay.tmp / "state"),
                       "AIRLOOP_PIPELINES_DIR": str(replay.tmp / "pipelines"), "AIRLOOP_DATA_DIR": str(settings.data_dir), "AIRLOOP_TENANT_TOKENS": f"acme={ACME}",
                       "AIRLOOP_ADMIN_TOKEN": ADMIN,
                       # the command writes its secrets into the environment: set here, restored after
                       "AIRFLOW_CONN_AIRLOOP_SERVING": "",
                       "AIRLOOP_SERVING_URL": replay.url}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        code = main(["replay", "--pipeline", "acme_claims", "--from", "2026-01-07", "--to", "2026-01-08",
                     "--batch", "200"])
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"replaying acme_claims 2026-01-07 .. 2026-01-08 to {replay.url}/t/acme/acme_claims/predict" in out
    assert "2026-01-07 acme_claims:" in out and " 0 rejected (model v1)" in out and "total: " in out
    print(out)
